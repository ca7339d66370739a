"""Health of a container, asked from this host: one HTTP GET (`http_status`), a single probe
(`probe_container`) and the wait of a new container until it is healthy (`wait_healthy`).

The question goes straight to the container's address on its network, which holds for a local engine:
bridge-network container addresses answer from the host, internal networks included (Podman's netavark
and Docker's bridge route to the host; Podman 4.3, measured). Podman never runs image health checks by
itself (it schedules them with systemd timers), so they are not used: the health path is polled here.
A service without an HTTP health path counts as healthy once it has stayed up `RUNNING_SETTLE_SECONDS`.
"""

import http.client
import time

from resources.targets.docker import inspect
from resources.targets.interface import DeploymentFailed, HealthProbe

HEALTH_POLL_SECONDS = 0.25
HEALTH_REQUEST_TIMEOUT_SECONDS = 2.0
# A service without an HTTP health check counts as healthy once it has stayed up this long.
RUNNING_SETTLE_SECONDS = 1.0


def http_status(address: str, port: int, path: str, timeout: float) -> tuple[int | None, str]:
    """(status, problem) of one GET; status None when there was no HTTP answer."""
    conn = http.client.HTTPConnection(address, port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"User-Agent": "release-graph-health", "Connection": "close"})
        response = conn.getresponse()
        response.read(4096)
        return response.status, f"GET {path} answered {response.status}"
    except (OSError, http.client.HTTPException) as exc:
        return None, f"GET {path} got no answer ({type(exc).__name__}: {exc})"
    finally:
        conn.close()


def answers_healthy(address: str, port: int, path: str, timeout: float = HEALTH_REQUEST_TIMEOUT_SECONDS) -> bool:
    status, _ = http_status(address, port, path, timeout)
    return status is not None and 200 <= status < 300


def probe_container(container, network: str, port: int | None, path: str | None) -> HealthProbe:
    """One health question to `container` on `network`; running without a health path is healthy."""
    status = inspect.status(container)
    address = inspect.address(container, network)
    if status != "running" or not address:
        return HealthProbe(False, f"container {container.name} is {status}")
    if not path or not port:
        return HealthProbe(True, f"container {container.name} is running (no HTTP health check)")
    started = time.monotonic()
    answer, detail = http_status(address, port, path, HEALTH_REQUEST_TIMEOUT_SECONDS)
    seconds = round(time.monotonic() - started, 3)
    healthy = answer is not None and 200 <= answer < 300
    return HealthProbe(healthy, f"{container.name}: {detail} in {seconds:g} s", answer, seconds)


def wait_healthy(
    container,
    network: str,
    port: int | None,
    health: str | None,
    *,
    service: str,
    environment: str,
    where: str,
    image: str,
    timeout: float,
    engine_address: str,
) -> float:
    """Seconds until `container` answered `health` with 2xx (or stayed running); DeploymentFailed if not.

    A container that exits first fails at once; either failure carries its last log lines.
    """
    started = time.monotonic()
    deadline = started + timeout
    running_since: float | None = None
    problem = "it did not start"
    while True:
        with inspect.engine_errors(engine_address, f"watching {container.name} for {where}"):
            container.reload()
        state = container.attrs.get("State") or {}
        status = inspect.status(container)
        now = time.monotonic()
        if status in ("exited", "dead", "removing", "stopped"):
            logs = inspect.logs_tail(container)
            raise DeploymentFailed(
                f"{where}: new container {container.name} ({image}) exited with code {state.get('ExitCode')} "
                f"before it became healthy{read_only_write(container, logs)}; the previous version keeps serving",
                service=service, environment=environment, image=image, logs_tail=logs,
            )
        if status == "running":
            running_since = running_since or now
            address = inspect.address(container, network)
            if health is None:
                if now - running_since >= RUNNING_SETTLE_SECONDS:
                    return now - started
                problem = "it had not stayed up yet"
            elif address and port:
                answer, problem = http_status(
                    address, port, health, min(HEALTH_REQUEST_TIMEOUT_SECONDS, max(deadline - now, 0.2))
                )
                if answer is not None and 200 <= answer < 300:
                    return time.monotonic() - started
            else:
                problem = f"it has no address on network {network}"
        if time.monotonic() >= deadline:
            logs = inspect.logs_tail(container)
            raise DeploymentFailed(
                f"{where}: new container {container.name} ({image}) was not healthy within {timeout:g} s: "
                f"{problem}{read_only_write(container, logs)}; the previous version keeps serving",
                service=service, environment=environment, image=image, logs_tail=logs,
            )
        time.sleep(HEALTH_POLL_SECONDS)


def read_only_write(container, logs: str) -> str:
    """What to tell when a container with a read-only root filesystem died writing to it (EROFS in its log):
    the image writes outside the folders the manifest declares writable."""
    host = container.attrs.get("HostConfig") or {}
    if not host.get("ReadonlyRootfs") or "read-only file system" not in logs.lower():
        return ""
    writable = ", ".join(sorted(host.get("Tmpfs") or {})) or "none"
    return (f" (it wrote to its read-only root filesystem: its log says 'Read-only file system'; writable are only "
            f"{writable}. Declare the folder in the service's `hardening.tmpfs`, or `hardening.writable_root: "
            f"<why>` in the manifest)")
