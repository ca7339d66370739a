"""Secrets for deployments: AWS Secrets Manager (boto3) or the process environment, resolved at deploy time.

The manifest names secrets, never holds them: `environments.<env>.secrets.<service>.<ENV_NAME>` is
`{aws: <secret id or ARN>}` or `{env: <VARIABLE>}` (the integration stage's own: `integration.secrets.<service>`).
`SecretsResource.resolve` turns those references into the values a container receives (as files by default,
as environment variables where a service opts in: `resources/targets/docker/secret_files.py`).

Values never leave `resolve`'s return value: no log line, exception message, repr or metadata here carries
one. A reference that names nothing raises `MissingSecret` (naming the reference, the variable, the service
and the environment); AWS that cannot be asked raises `SecretsUnavailable` (naming the endpoint). Errors about
malformed references do not echo what was written either, since a pasted value is the likely mistake.
botocore logs raw response bodies at DEBUG; a filter on its `botocore.parsers` logger (installed when the
first AWS client is made) blanks bodies that carry a secret, so a DEBUG log configuration cannot leak one.

`aws_endpoint_url` points boto3 elsewhere (`moto_server` in tests, a VPC endpoint in production);
credentials come from boto3's usual chain (environment, profile, instance role). Nothing touches the network
at import or construction time.
"""

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import dagster as dg
from pydantic import Field

SOURCES = ("aws", "env")
ENV_VAR_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Secrets Manager names: 1-512 of letters, digits and /_+=.@-; ARNs add ':'.
AWS_SECRET_ID = re.compile(r"^[A-Za-z0-9/_+=.@:-]{1,2048}$")
NOT_FOUND_CODES = {"ResourceNotFoundException"}
# The secret exists but has no value to give right now (deleted pending recovery, no current version).
NO_VALUE_CODES = {"InvalidRequestException", "InvalidParameterException"}


class _RedactSecretBodies(logging.Filter):
    """botocore logs every raw response body at DEBUG (`botocore.parsers`): a GetSecretValue answer would put
    the value into any log that keeps DEBUG records. Those records keep their line, without the body."""

    MARKERS = (b"SecretString", b"SecretBinary", "SecretString", "SecretBinary")

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        if any(isinstance(a, bytes | str) and any(m in a for m in self.MARKERS if type(m) is type(a)) for a in args):
            record.args = tuple("<redacted: a Secrets Manager value>" for _ in args)
        return True


_BOTOCORE_BODY_LOGGER = "botocore.parsers"


def _redact_botocore_bodies() -> None:
    logger = logging.getLogger(_BOTOCORE_BODY_LOGGER)
    if not any(isinstance(f, _RedactSecretBodies) for f in logger.filters):
        logger.addFilter(_RedactSecretBodies())


@dataclass(frozen=True)
class SecretRef:
    """Where a secret lives: `source` "aws" (a Secrets Manager id or ARN) or "env" (a variable name)."""

    source: Literal["aws", "env"]
    name: str

    def __str__(self) -> str:
        return f"{self.source}:{self.name}"

    def to_manifest(self) -> dict[str, str]:
        return {self.source: self.name}


class SecretsError(Exception):
    """A secret could not be resolved. Messages never contain a secret value."""


@dataclass(frozen=True)
class MissingRef:
    variable: str  # the environment variable the container would have received
    ref: SecretRef
    reason: str


class MissingSecret(SecretsError):
    """One or more references name nothing; `missing` lists each with its variable and reason."""

    def __init__(self, missing: list[MissingRef], *, service: str, environment: str):
        self.missing = tuple(missing)
        self.service = service
        self.environment = environment
        parts = [f"{m.variable} ({m.ref}): {m.reason}" for m in missing]
        noun = "secret" if len(parts) == 1 else f"{len(parts)} secrets"
        super().__init__(
            f"{noun} of service {service} in environment {environment} missing: " + "; ".join(parts)
        )


class SecretsUnavailable(SecretsError):
    """The secret store could not be asked (endpoint down, no credentials, access denied, throttled)."""

    def __init__(self, message: str, *, endpoint: str):
        self.endpoint = endpoint
        super().__init__(message)


def parse_secret_ref(raw: Any) -> SecretRef:
    """A SecretRef from manifest YAML (`{aws: id}` or `{env: VAR}`) or any object with `source` and `name`.

    ValueError says what is wrong without repeating what was written (it may be the value itself).
    """
    if isinstance(raw, SecretRef):
        raw = raw.to_manifest()
    elif not isinstance(raw, Mapping) and isinstance(getattr(raw, "source", None), str) and hasattr(raw, "name"):
        raw = {raw.source: raw.name}  # another module's (source, name) reference, e.g. the manifest's
    if not isinstance(raw, Mapping):
        kind = "a string" if isinstance(raw, str) else f"a {type(raw).__name__}"
        raise ValueError(
            f"expected a reference {{aws: <secret id>}} or {{env: <VARIABLE>}}, got {kind}; "
            "secret values never belong in the manifest"
        )
    keys = list(raw)
    if len(keys) != 1 or keys[0] not in SOURCES:
        # Key names are shown (a typo like 'ENV' is the usual mistake); values never are.
        got = ", ".join(repr(str(k)[:40]) for k in keys) if keys else "an empty mapping"
        raise ValueError(
            f"expected exactly one key, 'aws' (Secrets Manager id) or 'env' (environment variable name), got {got}"
        )
    source = keys[0]
    name = raw[source]
    if not isinstance(name, str) or not name:
        got = "an empty string" if name == "" else f"a {type(name).__name__}"
        raise ValueError(f"'{source}' must name the secret with a non-empty string, got {got}")
    if source == "env" and not ENV_VAR_NAME.match(name):
        raise ValueError(
            "'env' must be an environment variable name (letters, digits and '_', not starting with a digit)"
        )
    if source == "aws" and not AWS_SECRET_ID.match(name):
        raise ValueError(
            "'aws' must be a Secrets Manager name or ARN (letters, digits and /_+=.@:-, at most 2048 characters)"
        )
    return SecretRef(source, name)  # type: ignore[arg-type]


class SecretsResource(dg.ConfigurableResource):
    """Resolves secret references for one deployment: `resolve(refs, environment=..., service=...)`."""

    aws_endpoint_url: str | None = Field(
        default=None, description="Secrets Manager endpoint (e.g. a moto_server URL). None: AWS's own for the region."
    )
    aws_region: str = Field(default="us-east-1", description="Region of the Secrets Manager client.")
    timeout_seconds: float = Field(default=5, description="Connect and read timeout of each AWS call.")

    def endpoint_description(self) -> str:
        return self.aws_endpoint_url or f"the AWS Secrets Manager endpoint of {self.aws_region}"

    def _client(self):
        import boto3
        from botocore.config import Config

        _redact_botocore_bodies()
        config = Config(
            connect_timeout=self.timeout_seconds,
            read_timeout=self.timeout_seconds,
            retries={"max_attempts": 2, "mode": "standard"},
        )
        return boto3.session.Session().client(
            "secretsmanager", region_name=self.aws_region, endpoint_url=self.aws_endpoint_url, config=config
        )

    def resolve(self, refs: Mapping[str, Any], *, environment: str, service: str) -> dict[str, str]:
        """{ENV_NAME: value} for every reference, or MissingSecret listing every one that names nothing.

        `refs` maps the variable the container receives to a SecretRef (or its manifest form). All missing
        references are reported together; the store being unreachable raises SecretsUnavailable at once.
        """
        parsed: dict[str, SecretRef] = {}
        for variable, raw in refs.items():
            if not isinstance(variable, str) or not ENV_VAR_NAME.match(variable):
                raise ValueError(
                    f"service {service} in environment {environment}: secret variable {variable!r} is not an "
                    "environment variable name"
                )
            try:
                parsed[variable] = parse_secret_ref(raw)
            except ValueError as exc:
                raise ValueError(f"service {service} in environment {environment}: secret {variable}: {exc}") from exc

        values: dict[str, str] = {}
        missing: list[MissingRef] = []
        for variable, ref in parsed.items():
            if ref.source == "env":
                value = os.environ.get(ref.name)
                if value is None:
                    missing.append(MissingRef(variable, ref, f"environment variable {ref.name} is not set"))
                else:
                    values[variable] = value

        aws_refs = {v: r for v, r in parsed.items() if r.source == "aws"}
        if aws_refs:
            client = self._client()
            for variable, ref in aws_refs.items():
                found = self._get_aws(client, variable, ref, environment=environment, service=service)
                if isinstance(found, MissingRef):
                    missing.append(found)
                else:
                    values[variable] = found

        if missing:
            raise MissingSecret(missing, service=service, environment=environment)
        return values

    def resolve_value(self, ref: Any, *, what: str) -> str:
        """The value of one reference, for something other than a container's variable (`what` names it in
        errors, e.g. "the password of registry 127.0.0.1:5000"). SecretsError (MissingSecret's reason, or
        SecretsUnavailable) when it names nothing or the store cannot be asked; never the value."""
        parsed = parse_secret_ref(ref)
        if parsed.source == "env":
            value = os.environ.get(parsed.name)
            if value is None:
                raise SecretsError(f"{what}: secret {parsed} is missing: environment variable {parsed.name} is not set")
            return value
        found = self._get_aws(self._client(), "value", parsed, environment="", service="",
                              where=f"{what}: secret {parsed}")
        if isinstance(found, MissingRef):
            raise SecretsError(f"{what}: secret {parsed} is missing: {found.reason}")
        return found

    def _get_aws(self, client, variable: str, ref: SecretRef, *, environment: str, service: str,
                 where: str | None = None) -> "str | MissingRef":
        from botocore.exceptions import BotoCoreError, ClientError

        where = where or f"secret {variable} ({ref}) of service {service} in environment {environment}"
        try:
            answer = client.get_secret_value(SecretId=ref.name)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            if code in NOT_FOUND_CODES:
                return MissingRef(variable, ref, f"no such secret in {self.endpoint_description()}")
            if code in NO_VALUE_CODES:
                return MissingRef(variable, ref, f"{self.endpoint_description()} has no value for it ({code})")
            raise SecretsUnavailable(
                f"{where}: {self.endpoint_description()} refused: {code or 'error'}: {error.get('Message', '')}",
                endpoint=self.endpoint_description(),
            ) from None  # the original carries the request; keep the chain short and value-free
        except BotoCoreError as exc:
            raise SecretsUnavailable(
                f"{where}: {self.endpoint_description()} could not be asked: {type(exc).__name__}: {exc}",
                endpoint=self.endpoint_description(),
            ) from None
        if answer.get("SecretString") is not None:
            return answer["SecretString"]
        binary = answer.get("SecretBinary")
        if binary is not None:
            try:
                return bytes(binary).decode("utf-8")
            except UnicodeDecodeError:
                raise SecretsError(
                    f"{where}: the secret is binary and not UTF-8 text, so it cannot be an environment variable"
                ) from None
        return MissingRef(variable, ref, f"{self.endpoint_description()} returned no value")


__all__ = [
    "MissingRef",
    "MissingSecret",
    "SecretRef",
    "SecretsError",
    "SecretsResource",
    "SecretsUnavailable",
    "parse_secret_ref",
]
