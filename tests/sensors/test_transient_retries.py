"""A stage that gave up while the registry was down runs again once the registry answers: no commit is lost
to an outage, and nothing is retried while it lasts."""

import textwrap

import dagster as dg
import pytest

from release_graph.assets import retry
from release_graph.assets.retry import retry_when_transient
from release_graph.fleet import load_fleet
from resources.containers import ContainerEngine
from resources.registry import Registry, RegistryUnavailable
from sensors.transient_retries import RETRIES_TAG, build_transient_retry_sensor

pytestmark = pytest.mark.engine  # the sensor asks the real engine whether it answers


def fleet_at(tmp_path, registry: str):
    (tmp_path / "repos" / "inventory").mkdir(parents=True)
    (tmp_path / "repos" / "inventory" / "Dockerfile").write_text("FROM scratch\n")
    (tmp_path / "fleet.yaml").write_text(textwrap.dedent(f"""\
        fleet: shop
        registry: {registry}/shop
        services:
          inventory: {{repo: repos/inventory, build: {{dockerfile: Dockerfile}}}}
        environments:
          dev: {{target: docker}}
        """))
    return load_fleet(tmp_path / "fleet.yaml")


@dg.asset(key=["inventory", "image"])
def image(context: dg.AssetExecutionContext):
    return build(context)


@retry_when_transient("building the image")
def build(context):
    raise RegistryUnavailable("registry 127.0.0.1:9 did not answer (connection refused)")


def tick(sensor, instance, cursor=None):
    with dg.build_sensor_context(instance=instance, cursor=cursor,
                                 resources={"registry": Registry(timeout_seconds=1), "engine": ContainerEngine()},
                                 ) as context:
        return sensor(context)


def test_a_build_that_gave_up_during_an_outage_runs_again_once_the_registry_answers(
    tmp_path, monkeypatch, free_port, registry_addr
):
    monkeypatch.setattr(retry, "FIRST_WAIT_SECONDS", 0)
    with dg.instance_for_test() as instance:
        # Given a build that gave up because the registry did not answer
        job = dg.Definitions(assets=[image]).resolve_implicit_global_asset_job_def()
        failed = job.execute_in_process(instance=instance, raise_on_error=False,
                                        asset_selection=[dg.AssetKey(["inventory", "image"])],
                                        tags={"release/service": "inventory", "release/git_sha": "a" * 40})
        assert not failed.success

        # While the registry is still down, nothing is retried and the tick says why
        down = build_transient_retry_sensor(fleet_at(tmp_path / "down", f"127.0.0.1:{free_port}"))
        result = tick(down, instance)
        assert "1 stage(s) wait until this answers again" in result.skip_message
        assert f"127.0.0.1:{free_port}" in result.skip_message

        # Once it answers, the same stage runs again with the same commit, once
        up = build_transient_retry_sensor(fleet_at(tmp_path / "up", registry_addr))
        (request,) = tick(up, instance)
        assert request.asset_selection == [dg.AssetKey(["inventory", "image"])]
        assert request.tags["release/git_sha"] == "a" * 40 and request.tags[RETRIES_TAG] == "1"
        assert request.tags["dagster/max_retries"] == "2"  # and its process dying would not lose it either
        assert request.run_key == f"after-outage:{failed.run_id}"
