"""Signed provenance as release stories, on a bare instance (no engine, no registry, no git server).

A fleet with `security: {provenance: {signing_key: {env: ...}}}`: the image step signs an in-toto/SLSA
statement of every image it builds and records the DSSE envelope on `<service>/image`; every deployment
verifies it with the key's public half. A digest with no statement, a changed statement, one signed by another
key: each is refused, by the rule (promotion.verify_provenance) and by the real deploy step before it touches
secrets or the target, saying why. The normal release goes on. The key is in none of the instance's files.
"""

from __future__ import annotations

import base64
import io
import json
import tarfile
import textwrap
from dataclasses import dataclass

import dagster as dg
import pytest

from release_graph.fleet import load_fleet
from release_graph.release import metadata as M
from release_graph.release import promotion
from release_graph.release.errors import ReleaseStepError
from release_graph.release.keys import environment_key, image_key
from release_graph.release.tags import SHA_TAG
from release_graph.security import provenance as P
from resources.secrets import SecretsResource

BUILT = "sha256:" + "b" * 64
SHA = "1a2b3c4d" * 5
KEY_VARIABLE = "RG_TEST_PROVENANCE_KEY"
REPOSITORY = "127.0.0.1:5000/shop/orders"
DOCKERFILE = b"FROM python:3.11-slim\nUSER 10001\n"

MANIFEST = f"""\
fleet: shop
registry: 127.0.0.1:5000/shop
services:
  orders:
    repo: https://git.shop.example/orders.git
    build: {{dockerfile: Dockerfile, test_target: test, args: {{PYTHON: "3.11"}}}}
    port: 8080
environments:
  dev: {{target: docker}}
  staging: {{target: docker}}
security:
  provenance: {{signing_key: {{env: {KEY_VARIABLE}}}}}
"""


@pytest.fixture
def pem(monkeypatch) -> str:
    value = P.generate_key_pem()
    monkeypatch.setenv(KEY_VARIABLE, value)
    return value


@pytest.fixture
def key(pem) -> P.SigningKey:
    return P.load_signing_key(pem)


@pytest.fixture
def fleet(tmp_path):
    path = tmp_path / "fleet.yaml"
    path.write_text(textwrap.dedent(MANIFEST))
    return load_fleet(path, check_files=False)


@pytest.fixture
def orders(fleet):
    return fleet.services["orders"]


@pytest.fixture
def instance(tmp_path):
    (tmp_path / "dagster_home").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster_home")) as instance:
        yield instance


def envelope_for(key: P.SigningKey, digest: str = BUILT, repository: str = REPOSITORY) -> dict:
    return P.sign(P.build_statement(repository=repository, digest=digest, source_repo="https://git.shop.example/o",
                                    sha=SHA, dockerfile="Dockerfile", dockerfile_sha256=P.sha256_hex(DOCKERFILE),
                                    build_args={"GIT_SHA": SHA}), key)


def record(instance, key: dg.AssetKey, **metadata) -> None:
    instance.report_runless_asset_event(dg.AssetMaterialization(key, metadata=metadata))


def build(instance, service, digest: str = BUILT, envelope: dict | None = None) -> None:
    """orders/image recorded `digest` (with this envelope, or none), and its blocking checks passed."""
    extra = {M.PROVENANCE: dg.MetadataValue.json(envelope)} if envelope is not None else {}
    record(instance, image_key(service), **{M.DIGEST: digest, M.GIT_SHA: SHA, **extra})
    for check in ("unit_tests", "sast"):
        instance.report_runless_asset_event(dg.AssetCheckEvaluation(
            asset_key=image_key(service), check_name=check, passed=True, metadata={M.DIGEST: digest}))


def passed_dev(instance, service, digest: str = BUILT) -> None:
    record(instance, environment_key(service, "dev"), **{M.DIGEST: digest, M.GIT_SHA: SHA})
    instance.report_runless_asset_event(dg.AssetCheckEvaluation(
        asset_key=environment_key(service, "dev"), check_name="healthy", passed=True, metadata={M.DIGEST: digest}))


def tampered(envelope: dict) -> dict:
    statement = json.loads(base64.b64decode(envelope["payload"]))
    statement["predicate"]["buildDefinition"]["externalParameters"]["source"]["digest"]["gitCommit"] = "f" * 40
    return {**envelope, "payload": base64.b64encode(json.dumps(statement).encode()).decode()}


REFUSED = rf"refused: {BUILT} has no provenance signed by this fleet's key: "


# --- the rule --------------------------------------------------------------------------------------------


def test_given_a_signed_build_when_staging_deploys_then_its_provenance_verifies(instance, fleet, orders, key):
    build(instance, orders, envelope=envelope_for(key))
    statement = promotion.verify_provenance(instance, orders, fleet.environments["staging"], BUILT,
                                            verify_key=key.public, repository=REPOSITORY)
    assert statement["subject"] == [{"name": REPOSITORY, "digest": {"sha256": "b" * 64}}]


@pytest.mark.parametrize("case, reason", [
    ("no statement", "the build of 1a2b3c4d.* recorded no statement"),
    ("tampered", r"the signature of key [0-9a-f]{16} does not match the payload \(the statement or its "
                 r"signature was changed\)"),
    ("another key", r"it is signed by another key \([0-9a-f]{16}\), not by this fleet's key [0-9a-f]{16}"),
    ("another image", "the statement is about another image"),
    ("never built", "orders/image never recorded it"),
])
def test_given_a_digest_without_a_valid_statement_from_the_fleets_key_then_the_rule_refuses_it(
        instance, fleet, orders, key, case, reason):
    envelope = {"no statement": None, "tampered": tampered(envelope_for(key)),
                "another key": envelope_for(P.load_signing_key(P.generate_key_pem())),
                "another image": envelope_for(key, digest="sha256:" + "c" * 64), "never built": None}[case]
    if case != "never built":
        build(instance, orders, envelope=envelope)
    with pytest.raises(ReleaseStepError, match=REFUSED + reason):
        promotion.verify_provenance(instance, orders, fleet.environments["staging"], BUILT,
                                    verify_key=key.public, repository=REPOSITORY)


def test_given_no_provenance_key_configured_then_the_deploy_step_keeps_todays_rule(instance, orders, tmp_path):
    """A fleet without `security.provenance`: an unsigned build deploys (today's "built by orders/image")."""
    path = tmp_path / "unsigned.yaml"
    path.write_text(MANIFEST.split("security:")[0])
    unsigned = load_fleet(path, check_files=False)
    assert unsigned.security.provenance is None
    build(instance, orders)
    passed_dev(instance, orders)
    assert promotion.verify_provenance(instance, orders, unsigned.environments["staging"], BUILT) is None
    result, touched = deploy_staging(instance, unsigned, unsigned.services["orders"])
    assert touched, "an unsigned build was refused without a provenance key: " + failure_message(result)


# --- the real deploy step --------------------------------------------------------------------------------


class Untouchable:
    """An adapter the step must not reach; what it tried is listed in `touched`."""

    def __init__(self):
        self.touched: list[str] = []

    def __getattr__(self, name):
        if name.startswith("_"):  # Dagster probing the object while wrapping it as a resource
            raise AttributeError(name)
        self.touched.append(name)
        raise AssertionError(f"the step reached the adapters ({name})")


def deploy_staging(instance, fleet, orders):
    """The staging deploy step, its target and engine untouchable; (result, what it tried to reach)."""
    from release_graph.assets.deployment import deployment_asset
    from resources.tracing import ReleaseTracer

    targets = Untouchable()
    step = deployment_asset(fleet, orders, fleet.environments["staging"])
    result = dg.materialize([step], instance=instance, raise_on_error=False,
                            resources={"deploy_targets": targets, "secrets": SecretsResource(),
                                       "engine": Untouchable(), "release_tracer": ReleaseTracer()})
    return result, targets.touched


def failure_message(result) -> str:
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    return failure.step_failure_data.error.message


@pytest.mark.parametrize("case, reason", [
    ("no statement", "recorded no statement"),
    ("tampered", "does not match the payload"),
    ("another key", "signed by another key"),
])
def test_given_a_digest_without_a_valid_statement_when_the_staging_step_runs_then_it_refuses_before_the_target(
        instance, fleet, orders, key, case, reason):
    envelope = {"no statement": None, "tampered": tampered(envelope_for(key)),
                "another key": envelope_for(P.load_signing_key(P.generate_key_pem()))}[case]
    build(instance, orders, envelope=envelope)
    passed_dev(instance, orders)
    result, touched = deploy_staging(instance, fleet, orders)
    assert not result.success and touched == []
    message = failure_message(result)
    assert f"service 'orders', environment 'staging': refused: {BUILT} has no provenance signed by this " \
           f"fleet's key: " in message and reason in message


def test_given_a_signed_build_when_the_staging_step_runs_then_it_passes_provenance_and_goes_on_to_the_target(
        instance, fleet, orders, key):
    build(instance, orders, envelope=envelope_for(key))
    passed_dev(instance, orders)
    result, touched = deploy_staging(instance, fleet, orders)
    assert touched, "the step stopped before the target: " + failure_message(result)  # provenance let it through


def test_given_the_key_is_missing_from_the_secret_store_when_the_step_runs_then_it_says_where_it_looked(
        instance, fleet, orders, key, monkeypatch):
    build(instance, orders, envelope=envelope_for(key))
    passed_dev(instance, orders)
    monkeypatch.delenv(KEY_VARIABLE)
    result, touched = deploy_staging(instance, fleet, orders)
    assert touched == []
    assert (f"the provenance signing key of fleet 'shop' (env:{KEY_VARIABLE})" in failure_message(result)
            and f"environment variable {KEY_VARIABLE} is not set" in failure_message(result))


# --- the image step signs; the statement it records is what the deploy step verifies ---------------------


@dataclass
class Commit:
    author_name: str = "Joanna Smith"
    author_email: str = "joanna@shop.example"
    message: str = "orders: faster checkout"
    committed_at: str = "2026-12-05T11:00:00+00:00"


class FakeGit:
    """The commit's tree holds one Dockerfile; nothing else is asked of git when the image already exists."""

    def ensure_commit(self, url, sha):
        return None

    def commit_info(self, url, sha):
        return Commit()

    def archive_bytes(self, url, sha, subpath="."):
        out = io.BytesIO()
        with tarfile.open(fileobj=out, mode="w") as tar:
            info = tarfile.TarInfo("Dockerfile")
            info.size = len(DOCKERFILE)
            tar.addfile(info, io.BytesIO(DOCKERFILE))
        return out.getvalue()


class ExistingImage:
    """The registry already has the commit's image: the step records its digest without building."""

    def manifest_digest(self, repository, tag):
        return BUILT


def test_the_image_step_signs_what_it_built_the_deploy_step_verifies_it_and_the_key_is_stored_nowhere(
        instance, fleet, orders, key, pem, tmp_path):
    from release_graph.assets.image import image_asset
    from resources.tracing import ReleaseTracer

    step = image_asset(fleet, orders)
    built = dg.materialize([step], instance=instance, tags={SHA_TAG: SHA},
                           resources={"git": FakeGit(), "engine": Untouchable(), "registry": ExistingImage(),
                                      "secrets": SecretsResource(), "release_tracer": ReleaseTracer()})
    assert built.success
    (materialization,) = built.asset_materializations_for_node("orders__image")
    meta = materialization.metadata
    assert meta[M.PROVENANCE_KEY_ID].value == key.public.keyid
    statement = P.verify(meta[M.PROVENANCE].value, key.public, digest=BUILT, repository=REPOSITORY)
    external = statement["predicate"]["buildDefinition"]["externalParameters"]
    assert external["source"] == {"uri": "https://git.shop.example/orders.git", "digest": {"gitCommit": SHA}}
    assert external["dockerfile"] == {"path": "Dockerfile", "digest": {"sha256": P.sha256_hex(DOCKERFILE)}}
    assert external["buildArgs"] == {"GIT_SHA": SHA, "PYTHON": "3.11"}
    assert statement["predicate"]["runDetails"]["metadata"]["invocationId"] == built.run_id

    for check in ("unit_tests", "sast"):
        instance.report_runless_asset_event(dg.AssetCheckEvaluation(
            asset_key=image_key(orders), check_name=check, passed=True, metadata={M.DIGEST: BUILT}))
    passed_dev(instance, orders)
    result, touched = deploy_staging(instance, fleet, orders)
    assert touched, "the signed build was refused: " + failure_message(result)

    # The key (PEM, its base64, its raw 32 bytes in base64) is in no file of the instance: event log, run
    # storage, compute logs.
    from cryptography.hazmat.primitives import serialization

    raw = key.private.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                    serialization.NoEncryption())
    body = "".join(line for line in pem.splitlines() if "-----" not in line)
    needles = [pem.encode(), body.encode(), base64.b64encode(pem.encode()),
               base64.b64encode(pem.encode()).rstrip(b"="), base64.b64encode(raw).rstrip(b"="), raw.hex().encode()]
    searched = 0
    for path in (tmp_path / "dagster_home").rglob("*"):
        if path.is_file():
            searched += 1
            data = path.read_bytes()
            for needle in needles:
                assert needle not in data, f"the provenance key is in {path}"
    assert searched > 0
    # ... nor in any run's config or tags
    for run in instance.get_runs():
        assert pem not in json.dumps(run.run_config) and pem not in json.dumps(run.tags)


def test_the_time_provenance_adds_to_a_deployment_is_printed(instance, fleet, orders, key, capsys):
    """Per deploy: the rule as the deploy step runs it (read `orders/image`'s history from the instance, verify the
    envelope), with 50 earlier builds in the history; and what the image step adds (build + sign). `-s` shows it."""
    import time

    for index in range(50):
        build(instance, orders, digest=f"sha256:{index:064x}", envelope=envelope_for(key, f"sha256:{index:064x}"))
    build(instance, orders, envelope=envelope_for(key))
    staging = fleet.environments["staging"]
    rounds = 20
    started = time.perf_counter()
    for _ in range(rounds):
        promotion.verify_provenance(instance, orders, staging, BUILT, verify_key=key.public, repository=REPOSITORY)
    verify_ms = (time.perf_counter() - started) * 1000 / rounds
    started = time.perf_counter()
    for _ in range(rounds):
        crypto_only = P.verify(envelope_for(key), key.public, digest=BUILT, repository=REPOSITORY)
    sign_and_verify_ms = (time.perf_counter() - started) * 1000 / rounds
    assert crypto_only
    with capsys.disabled():
        print(f"\nprovenance per deploy: the rule on a SQLite instance with 51 builds {verify_ms:.2f} ms; "
              f"build + sign + verify one statement {sign_and_verify_ms:.3f} ms ({rounds} rounds)")
    assert verify_ms < 2000
