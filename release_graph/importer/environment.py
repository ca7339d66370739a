"""What of a service's environment the manifest can hold: plain values, secret references, REVIEW notes.

Credentials found in deploy files become secret references, never values in the manifest. A variable whose
name says secret (`DB_PASSWORD`, `API_KEY`), whose value carries a password (URL user info, `Password=` in
a connection string) or that a Kubernetes Secret feeds is written as
`environments.<env>.secrets.<service>.<VAR>: {env: <SERVICE>_<VAR>}`: the deploy step reads the value
from that variable of the orchestrator's process at deploy time. One REVIEW note per service lists them,
since someone must set those variables (or point them at a secrets manager) before the first deploy.

Deploy targets pass only environment variable names (`[A-Za-z_][A-Za-z0-9_]*`); compose and Kubernetes
accept more (`Logging__Level__My.Namespace`), so such variables are left out with a REVIEW note.
"""

from __future__ import annotations

import re

from release_graph.importer.edges import has_credentials, is_secret_name
from release_graph.importer.model import ImportedService

# What the deploy targets accept as an environment variable name.
ENV_VAR_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# A switch is not a credential, whatever its name says: `MYSQL_ALLOW_EMPTY_PASSWORD=true`.
_SWITCHES = {"true", "false", "yes", "no", "on", "off", "0", "1"}


def is_secret(name: str, value: str | None) -> bool:
    if value is not None and value.strip().lower() in _SWITCHES:
        return False
    return is_secret_name(name) or (value is not None and has_credentials(value))


def orchestrator_variable(service: str, variable: str) -> str:
    """The variable of the orchestrator's process that holds the value: `ORDERS_API_DB_PASSWORD`."""
    return re.sub(r"[^A-Za-z0-9]+", "_", f"{service}_{variable}").strip("_").upper()


def withhold(service: ImportedService, variable: str, value: str | None = None, *, why: str = "") -> None:
    """Record that `variable` is a secret of `service`: referenced in the manifest, its value never written."""
    if not why:
        why = "credentials in its value" if value and has_credentials(value) else "its name says secret"
    service.secrets[variable] = why


def review_environment(service: ImportedService) -> None:
    """Leave out what no target can pass, and write the REVIEW notes a person must act on."""
    unusable = sorted(name for name in service.env if not ENV_VAR_NAME.match(name))
    for name in unusable:
        del service.env[name]
    if unusable:
        service.review.append(f"variables whose names are no environment variable name a target accepts, so not "
                              f"written: {', '.join(unusable)}: rename them (.NET reads `__` for `:`)")
    writable = {v: why for v, why in sorted(service.secrets.items()) if ENV_VAR_NAME.match(v)}
    unwritable = sorted(v for v in service.secrets if not ENV_VAR_NAME.match(v))
    if writable:
        listed = "; ".join(f"{v} ({why}) from ${orchestrator_variable(service.name, v)}" for v, why in writable.items())
        service.review.append(f"secrets, written as references in environments.dev.secrets, never as values: "
                              f"{listed}. Set those variables where release-graph runs, or change a reference to "
                              "{aws: <Secrets Manager secret id>}")
    if unwritable:
        service.review.append(f"secrets whose names are no environment variable name a target accepts, so not "
                              f"written at all: {', '.join(unwritable)}: give the service another way to get them")
