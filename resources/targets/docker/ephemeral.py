"""Ephemeral environments: one private internal network per integration run, torn down when it ends.

`DockerTarget.ephemeral_environment` creates the network `<prefix>-<fleet>-<name>-<random>` (internal: no way
out of the host, and DNS still works because aardvark answers on the gateway) labelled with its expiry, and
removes it with everything on it when the block ends, also when it raises; `reap` removes what a killed
process left once the expiry passed.

Engine behaviour this module is written around (Podman 4.3, measured): on *internal* networks a disconnect
breaks aardvark-dns for the rest of the network, so services get their alias at creation and nothing is
ever reconnected (unlike a deployment, which moves the alias).
"""

import secrets as _random
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from release_graph.fleet.model import Hardening
from resources import labels as L
from resources.containers import RunResult, network_dns_options
from resources.targets.docker import inspect, secret_files
from resources.targets.docker.hardening import hardened
from resources.targets.interface import (
    LOG_TAIL_LINES,
    DeploymentSpec,
    EphemeralEnvironment,
    StartedService,
    check_name,
    container_environment,
    validate_spec,
)

if TYPE_CHECKING:
    from resources.targets.docker.target import DockerTarget


def container_arguments(spec: DeploymentSpec) -> dict[str, list[str]]:
    """`entrypoint` and `command` for the engine, only those the spec sets (the image's own otherwise)."""
    return {key: list(getattr(spec, key)) for key in ("entrypoint", "command") if getattr(spec, key) is not None}


class DockerEphemeralEnvironment(EphemeralEnvironment):
    """Services and test runs on one private network; made by `DockerTarget.ephemeral_environment`."""

    def __init__(self, target: "DockerTarget", *, fleet: str, network: str):
        self.target = target
        self.fleet = fleet
        self.network = network

    def _labels(self, **more: str) -> dict[str, str]:
        return self.target._labels(**{L.FLEET: self.fleet, L.EPHEMERAL: self.network, **more})

    def start(
        self,
        service: str,
        image: str,
        port: int | None = None,
        health: str | None = None,
        env: Mapping[str, str] | None = None,
        *,
        secrets: Mapping[str, str] | None = None,
        timeout_seconds: float | None = None,
        entrypoint: Sequence[str] | None = None,
        command: Sequence[str] | None = None,
        secrets_as: str = "file",
        hardening: Hardening | None = None,
    ) -> StartedService:
        """Start `image` reachable as `service` on this network and wait for it to be healthy.

        Any image reference works here (a test may run a locally built image); a missing one is pulled.
        A service that does not become healthy raises DeploymentFailed with its last log lines. `hardening`:
        locked down as its deployments are (the manifest's); None, for a test's own helper images, leaves the
        engine's defaults.
        """
        check_name("service", service)
        spec = DeploymentSpec(self.fleet, "ephemeral", service, image, port, health, dict(env or {}),
                              dict(secrets or {}), entrypoint=None if entrypoint is None else tuple(entrypoint),
                              command=None if command is None else tuple(command), secrets_as=secrets_as,
                              hardening=hardening or Hardening())
        validate_spec(spec)
        target = self.target
        where = f"{service} in {self.network}"
        target._ensure_image(image, what=f"starting {where}", spec=spec)
        client = target._docker()
        labels = self._labels(**{L.SERVICE: service, L.IMAGE: image})
        if port is not None:
            labels[L.PORT] = str(port)
        folder, mounts = target._secret_mounts(spec, what=f"starting {where}")
        try:
            with target._engine(f"starting {where}"):
                container = client.containers.create(
                    image,
                    **container_arguments(spec),
                    name=f"{self.network}-{service}",
                    environment=container_environment(spec),
                    mounts=mounts,
                    labels=labels,
                    network=self.network,
                    # Aliases at creation: reconnecting on an internal network breaks its DNS (module docstring).
                    networking_config={self.network: client.api.create_endpoint_config(aliases=[service])},
                    init=True,
                    detach=True,
                    **(hardened(hardening) if hardening is not None else {}),
                    **network_dns_options(client, self.network),
                )
        except BaseException:
            secret_files.discard(target.config.secrets_dir, folder)
            raise
        with target._engine(f"starting {where}"):
            container.start()
        seconds = target._wait_healthy(
            container, self.network, port, health,
            service=service, environment=self.network, where=where, image=image, timeout=timeout_seconds,
        )
        container.reload()
        return StartedService(
            service=service,
            container_name=container.name,
            container_id=container.id,
            address=inspect.address(container, self.network) or "",
            url_inside=f"http://{service}:{port}" if port else None,
            health_seconds=round(seconds, 3),
        )

    def run_to_completion(
        self,
        image: str,
        command: str | list[str] | None = None,
        env: Mapping[str, str] | None = None,
        copy_out: str | None = "/reports",
        timeout_seconds: float = 600,
    ) -> RunResult:
        """Run `image` on this network until it exits; exit code, log tail and the files under `copy_out`.

        Delegates to `ContainerEngine.run_to_completion` (the target's engine): a non-zero exit is a result,
        a crash or a timeout raises `ContainerCrashed` / `ContainerTimeout`.
        """
        self.target._ensure_image(image, what=f"running {image} in {self.network}")
        return self.target.engine.run_to_completion(
            image,
            command=command,
            env=dict(env or {}),
            network=self.network,
            labels=self._labels(),
            name=f"{self.network}-run-{_random.token_hex(3)}",
            timeout_seconds=timeout_seconds,
            copy_out=copy_out,
        )

    def logs(self, service: str, tail: int = LOG_TAIL_LINES) -> str:
        """The last log lines of a service started here."""
        with self.target._engine(f"logs of {service} in {self.network}"):
            container = self.target._docker().containers.get(f"{self.network}-{service}")
        return inspect.logs_tail(container, tail)
