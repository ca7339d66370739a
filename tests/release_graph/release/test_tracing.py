"""A release's trace ids come from the release itself: every run and process that works on it finds them alone."""

import hashlib

from release_graph.release.tracing import ReleaseTrace, log_prefix

SHA = "1a2b3c4d5e6f7a8b9c0d1a2b3c4d5e6f7a8b9c0d"


def test_the_same_release_has_the_same_trace_in_every_process_and_another_commit_another():
    release = ReleaseTrace("shop", "orders", SHA)
    digest = hashlib.sha256(f"shop\0orders\0{SHA}".encode()).digest()
    assert release.trace_id == int.from_bytes(digest[:16], "big")
    assert release.root_span_id == int.from_bytes(digest[16:24], "big")
    assert release.trace_id_hex == digest[:16].hex()
    assert ReleaseTrace("shop", "orders", SHA) == release and ReleaseTrace("shop", "orders", SHA).trace_id_hex \
        == release.trace_id_hex
    others = [ReleaseTrace("shop", "orders", "f" * 40), ReleaseTrace("shop", "payments", SHA),
              ReleaseTrace("staging-shop", "orders", SHA)]
    assert len({o.trace_id for o in others} | {release.trace_id}) == 4


def test_the_root_is_named_after_the_service_and_the_short_commit_and_spans_carry_ci_cd_conventions():
    release = ReleaseTrace("shop", "orders", SHA)
    assert release.root_name == "release orders 1a2b3c4"
    assert release.release_attributes() == {
        "cicd.pipeline.name": "shop/orders", "cicd.pipeline.run.id": release.trace_id_hex,
        "vcs.ref.head.revision": SHA, "release_graph.fleet": "shop", "service.name": "orders"}
    assert release.service_attributes() == {"service.name": "orders", "service.namespace": "shop"}


def test_a_log_line_names_the_service_the_environment_the_commit_and_the_trace():
    assert log_prefix("orders", "dev", SHA, "ab" * 16) == (
        f"[service=orders environment=dev sha=1a2b3c4d5e6f trace_id={'ab' * 16}]")
    assert log_prefix("orders", None, None, None) == "[service=orders environment=- sha=- trace_id=-]"
