"""A step that failed because something outside the commit was down is tried again, with backoff and a bound;
a failure caused by the commit itself is not."""

import dagster as dg
import docker.errors
import pytest

from release_graph.assets import retry
from release_graph.assets.retry import retry_when_transient, transient_cause
from resources.containers import BuildError, ContainerEngineError, PushError
from resources.registry import RegistryUnavailable


@pytest.mark.parametrize("error", [
    RegistryUnavailable("registry 127.0.0.1:5999 did not answer (connection refused)"),
    ContainerEngineError("container engine at unix:///run/x.sock did not answer: Connection aborted"),
    PushError("push of 127.0.0.1:5999/shop/orders:abc failed: dial tcp: connection refused",
              reference="127.0.0.1:5999/shop/orders:abc", registry="127.0.0.1:5999"),
    # the registry stopped in the middle of a blob upload (seen in the transient story)
    PushError('push of 127.0.0.1:5999/shop/orders:abc to registry 127.0.0.1:5999 failed: the engine reported an '
              'error: writing blob: Patch "http://127.0.0.1:5999/v2/shop/orders/blobs/uploads/1": write tcp '
              "127.0.0.1:33530->127.0.0.1:5999: use of closed network connection",
              reference="127.0.0.1:5999/shop/orders:abc", registry="127.0.0.1:5999"),
    # seen on a live demo while another program removed images: nothing about the commit
    BuildError("build of 127.0.0.1:5000/shop/inventory:b19-integration failed: checking if cached image exists "
               "from a previous build: getting top layer info: layer not known", tag="x"),
    docker.errors.APIError("500 Server Error: failed to convert ImageData to ImageInspect: image not known"),
])
def test_an_outage_outside_the_commit_is_transient(error):
    assert transient_cause(error)


def test_a_cause_hidden_behind_another_error_is_found():
    try:
        try:
            raise RegistryUnavailable("registry 127.0.0.1:5999 did not answer")
        except RegistryUnavailable as inner:
            raise RuntimeError("could not record the digest") from inner
    except RuntimeError as outer:
        assert "registry did not answer" in transient_cause(outer)


@pytest.mark.parametrize("error", [
    BuildError("build of orders failed: RUN pytest exited 1", tag="x"),
    ContainerEngineError("image 127.0.0.1:5000/shop/orders:abc is not in the engine"),
    ValueError("a bug"),
])
def test_a_failure_of_the_commit_itself_is_not_transient(error):
    assert transient_cause(error) is None


def _asset_failing(times: int, error: Exception, calls: list):
    @dg.asset
    def stage(context: dg.AssetExecutionContext):
        return step(context)

    @retry_when_transient("the stage")
    def step(context):
        calls.append(context.retry_number)
        if len(calls) <= times:
            raise error
        return dg.MaterializeResult(metadata={"attempts": len(calls)})

    return stage


def test_a_registry_outage_is_ridden_out_and_the_stage_succeeds_when_it_is_back(monkeypatch):
    monkeypatch.setattr(retry, "FIRST_WAIT_SECONDS", 0)
    calls: list[int] = []
    result = dg.materialize([_asset_failing(2, RegistryUnavailable("registry down"), calls)])
    assert result.success and calls == [0, 1, 2]


def test_an_outage_that_outlasts_the_bound_fails_with_the_cause_named(monkeypatch):
    monkeypatch.setattr(retry, "FIRST_WAIT_SECONDS", 0)
    calls: list[int] = []
    with dg.instance_for_test() as instance:
        result = dg.materialize([_asset_failing(99, RegistryUnavailable("registry 127.0.0.1:5999 down"), calls)],
                                instance=instance, raise_on_error=False)
        assert not result.success and len(calls) == retry.MAX_RETRIES + 1
        (failure,) = [e for e in result.all_events if e.is_step_failure]
        message = failure.step_failure_data.error.message
        assert "the registry did not answer" in message and "127.0.0.1:5999" in message
        # and says that nobody has to act: it runs again once the registry answers (sensor transient_retries)
        assert "runs again by itself once that answers" in message
        # the run is marked, so what retries later can tell a transient failure from the commit's own
        assert instance.get_run_by_id(result.run_id).tags[retry.FAILURE_TAG] == "transient"


def test_a_failure_of_the_commit_is_not_retried(monkeypatch):
    monkeypatch.setattr(retry, "FIRST_WAIT_SECONDS", 0)
    calls: list[int] = []
    result = dg.materialize([_asset_failing(1, BuildError("tests failed", tag="x"), calls)], raise_on_error=False)
    assert not result.success and calls == [0]
