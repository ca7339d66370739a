"""Transient failures heal themselves; failures caused by the commit do not repeat.

A step that fails because something outside the commit is down (the registry, the container engine's API,
the secret store) asks Dagster to run it again, with backoff and a bound (`dg.RetryRequested`), and says
first what was down. Anything else (the commit's tests, its health check, a policy) fails at once: running
it again would give the same answer. The instance (dagster.yaml) retries whole runs whose process died,
never runs a step failed.
"""

import functools
import inspect
import socket

import dagster as dg
import docker.errors
import requests

from release_graph.release.errors import ReleaseStepError
from release_graph.release.tags import FAILURE_TAG
from resources.containers import ENGINE_CACHE_RACES, REGISTRY_DOWN_SIGNS, ContainerEngineError
from resources.registry import RegistryUnavailable
from resources.secrets import SecretsUnavailable

MAX_RETRIES = 5
FIRST_WAIT_SECONDS = 10
LONGEST_WAIT_SECONDS = 60  # 10, 20, 40, 60, 60: about three minutes of outage are ridden out
ENGINE_DOWN_SIGNS = ("did not answer", "connection aborted", "connection refused", "no such file or directory",
                     "remote end closed", "read timed out")


def transient_cause(exc: BaseException) -> str | None:
    """What outside the commit was down, in words, or None when the failure is the commit's own."""
    seen = set()
    error: BaseException | None = exc
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        text = str(error).lower()
        if isinstance(error, RegistryUnavailable):
            return f"the registry did not answer: {error}"
        if isinstance(error, SecretsUnavailable):
            return f"the secret store did not answer: {error}"
        if isinstance(error, requests.exceptions.ConnectionError | ConnectionRefusedError | socket.timeout):
            return f"the container engine's API did not answer: {error}"
        if isinstance(error, docker.errors.APIError) and any(race in text for race in ENGINE_CACHE_RACES):
            # the engine's API answered, but an image or layer vanished under it (another program removed it)
            return f"the container engine lost an image or layer to another program: {error}"
        if isinstance(error, ContainerEngineError):
            if any(sign in text for sign in REGISTRY_DOWN_SIGNS):
                return f"the registry did not answer: {error}"
            if any(sign in text for sign in ENGINE_DOWN_SIGNS):
                return f"the container engine's API did not answer: {error}"
            # Podman's build cache lost a layer to another program's build or image removal (seen on a busy
            # host even after the build's own retry): the same build succeeds a little later.
            if any(race in text for race in ENGINE_CACHE_RACES):
                return f"the container engine's build cache lost a layer to another build: {error}"
        error = error.__cause__ or error.__context__
    return None


def _retry(context, what: str, cause: str) -> Exception:
    attempt = context.retry_number
    if attempt >= MAX_RETRIES:
        # The failure a release manager reads first names what was down, not "Error occurred while executing".
        context.instance.add_run_tags(context.run.run_id, {FAILURE_TAG: "transient"})
        # The sensor transient_retries runs it again once that answers: nobody has to do anything.
        return ReleaseStepError(f"{what}: {cause} (still down after {MAX_RETRIES + 1} attempts, not the commit's "
                                "fault; it runs again by itself once that answers)")
    wait = min(FIRST_WAIT_SECONDS * 2 ** attempt, LONGEST_WAIT_SECONDS)
    context.log.warning(f"{what}: {cause}; not the commit's fault: trying again in {wait} s "
                        f"(attempt {attempt + 2} of {MAX_RETRIES + 1})")
    return dg.RetryRequested(max_retries=MAX_RETRIES, seconds_to_wait=wait)


def _transient_or_raise(context, what: str, exc: Exception) -> Exception:
    """The exception to raise instead of `exc`: a retry request (or the named give-up) when transient."""
    if isinstance(exc, dg.RetryRequested):
        return exc
    cause = transient_cause(exc)
    return exc if cause is None else _retry(context, what, cause)


def retry_when_transient(what: str):
    """Decorates a step (`fn(context, ...)`, plain or generator) so a transient failure is retried."""

    def decorate(step):
        if inspect.isgeneratorfunction(step):

            @functools.wraps(step)
            def generator_step(context, *args, **kwargs):
                try:
                    yield from step(context, *args, **kwargs)
                except Exception as exc:
                    replacement = _transient_or_raise(context, what, exc)
                    if replacement is exc:
                        raise
                    raise replacement from exc

            return generator_step

        @functools.wraps(step)
        def plain_step(context, *args, **kwargs):
            try:
                return step(context, *args, **kwargs)
            except Exception as exc:
                replacement = _transient_or_raise(context, what, exc)
                if replacement is exc:
                    raise
                raise replacement from exc

        return plain_step

    return decorate
