"""The deployment spec every target checks before anything changes: refusals name the service and the field."""

import re

import pytest

from resources.containers import ContainerEngine
from resources.targets import DeploymentSpec, DockerTarget, InvalidDeploymentSpec, validate_spec

PORT = 8080


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"service": "Orders_API"}, "service 'Orders_API' is not a DNS label"),
        ({"environment": "staging!"}, "environment 'staging!' is not a DNS label"),
        ({"port": 70000}, "api in staging: port 70000 is not a port number"),
        ({"health": "healthz"}, "api in staging: health 'healthz' must be an HTTP path starting with '/'"),
        ({"port": None}, "api in staging: a health path needs a port to ask"),
        ({"port": None, "health": None, "publish": 8080}, "api in staging: publish needs the container port"),
        ({"env": {"not-a-name": "x"}}, "api in staging: env name 'not-a-name' is not an environment variable name"),
        ({"secrets": {"API_KEY": 12345}}, "api in staging: secrets API_KEY must be a string, not int"),
        ({"env": {"API_KEY": "a"}, "secrets": {"API_KEY": "b"}}, "API_KEY given both as plain env and as secret"),
        ({"labels": {"release-graph.digest": "x"}}, "labels release-graph.digest are reserved for release-graph"),
        ({"image": "127.0.0.1:5000/shop/api"}, "is not pinned by digest"),
        ({"image": "127.0.0.1:5000/shop/api@sha256:abc"}, "a sha256 digest has exactly 64 lowercase hex characters"),
    ],
)
def test_a_bad_deployment_spec_is_refused_with_a_message_naming_service_and_field(overrides, message):
    values = {
        "fleet": "shop", "environment": "staging", "service": "api", "port": PORT, "health": "/healthz",
        "image": f"127.0.0.1:5000/shop/api@sha256:{'a' * 64}",
    } | overrides
    unreachable = DockerTarget(ContainerEngine(docker_host="unix:///nonexistent/engine.sock"))  # needs no engine
    with pytest.raises(InvalidDeploymentSpec, match=re.escape(message)):
        unreachable.deploy(DeploymentSpec(**values))


def test_a_deployment_may_set_its_own_release_graph_labels_but_not_those_the_target_owns():
    spec = DeploymentSpec("shop", "staging", "api", f"127.0.0.1:5000/shop/api@sha256:{'a' * 64}", PORT, "/healthz",
                          labels={"io.release-graph.git-sha": "0" * 40})
    validate_spec(spec)  # no error
    for owned in ("io.release-graph.digest", "io.release-graph.managed", "release-graph", "release-graph.git-sha"):
        with pytest.raises(InvalidDeploymentSpec, match=re.escape(f"labels {owned} are reserved for release-graph")):
            validate_spec(DeploymentSpec("shop", "staging", "api", spec.image, labels={owned: "x"}))


def test_entrypoint_and_command_reach_the_engine_and_the_fingerprint_only_when_set():
    from resources.targets.docker.ephemeral import container_arguments
    from resources.targets.docker.target import config_fingerprint

    image = f"127.0.0.1:5000/shop/worker@sha256:{'a' * 64}"
    plain = DeploymentSpec("shop", "staging", "worker", image)
    worker = DeploymentSpec("shop", "staging", "worker", image, entrypoint=("/bin/sh", "-c"), command=("run.sh",))
    assert container_arguments(plain) == {}  # the image's own ENTRYPOINT and CMD
    assert container_arguments(worker) == {"entrypoint": ["/bin/sh", "-c"], "command": ["run.sh"]}
    # a changed command is another container; a spec without one keeps the fingerprint it always had
    assert config_fingerprint(worker) != config_fingerprint(plain)
    assert config_fingerprint(plain) == config_fingerprint(DeploymentSpec("shop", "staging", "worker", image,
                                                                          command=None))
    with pytest.raises(InvalidDeploymentSpec, match="worker in staging: command must be a list of text arguments"):
        validate_spec(DeploymentSpec("shop", "staging", "worker", image, command=("run.sh", 3)))
