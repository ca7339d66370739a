"""Least privilege, from the manifest: the IAM policy each service needs, what a granted policy has beyond it,
and how its containers run (user, root filesystem, privileges).

Secret references come from the manifest (`Environment.secrets`: {service: {VAR: SecretRef}}) or the same
shape as plain data, `{env: {service: {VAR: {"aws": "<secret id>"} | {"env": "<VARIABLE>"}}}}`. Only `aws`
references need IAM: `secretsmanager:GetSecretValue` on exactly those secrets. Secrets Manager appends six
random characters to a secret's ARN (`<id>-AbCdEf`), so the ARN pattern ends in `-??????`: `-*` would also
grant `<id>-admin-XyZ123`, another secret.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from release_graph.fleet.model import Hardening, capability_name
from release_graph.security.findings import Finding, finding

GET_SECRET_VALUE = "secretsmanager:GetSecretValue"
POLICY_VERSION = "2012-10-17"
ROOT_USERS = {"", "0", "root"}


class PolicyDocumentError(ValueError):
    """A granted policy that is not an IAM policy document."""


class PolicyRefused(ValueError):
    """A policy that grants a service more than reading its own secrets in its environment."""

    def __init__(self, service: str, environment: str, excess: list[Excess]):
        self.service, self.environment, self.excess = service, environment, excess
        grants = "; ".join(f"statement {e.statement} grants {e.action} on {e.resource} ({e.reason})" for e in excess)
        super().__init__(f"the IAM policy of service '{service}' in environment '{environment}' grants more than "
                         f"reading its own secrets there: {grants}")


@dataclass(frozen=True)
class Excess:
    """One action on one resource that a granted policy allows beyond what the service needs."""

    service: str
    statement: str  # the statement's Sid, or #<index>
    action: str
    resource: str
    reason: str

    def as_finding(self, environment: str | None = None) -> Finding:
        where = f"{self.service}" + (f" in {environment}" if environment else "") + f" statement {self.statement}"
        return finding("release-graph", "RG_IAM_EXCESS", "HIGH", where,
                       f"grants {self.action} on {self.resource}: {self.reason}")


def secret_arn(secret_id: str, *, region: str, account: str) -> str:
    return f"arn:aws:secretsmanager:{region}:{account}:secret:{secret_id}-??????"


def _aws_secret_ids(refs: Mapping[str, Any]) -> list[str]:
    """The Secrets Manager ids among one service's references (SecretRef objects or {"aws": id} dicts)."""
    ids = []
    for variable, ref in refs.items():
        if hasattr(ref, "source") and hasattr(ref, "name"):
            source, name = ref.source, ref.name
        elif isinstance(ref, Mapping) and len(ref) == 1:
            (source, name), = ref.items()
        else:
            raise ValueError(f"secret reference {variable}: expected {{aws: <secret id>}} or {{env: <VARIABLE>}}, "
                             f"got {ref!r}")
        if source == "aws":
            ids.append(str(name))
        elif source != "env":
            raise ValueError(f"secret reference {variable}: unknown source {source!r} (expected aws or env)")
    return sorted(set(ids))


def fleet_secret_refs(fleet: Any) -> dict[str, dict[str, Mapping[str, Any]]]:
    """{environment: {service: {VAR: SecretRef}}} from a Fleet's environments."""
    return {name: dict(env.secrets) for name, env in fleet.environments.items()}


def needed_policy(refs: Mapping[str, Any], *, region: str, account: str) -> dict[str, Any]:
    """The IAM policy one service needs in one environment: read exactly its own Secrets Manager secrets."""
    ids = _aws_secret_ids(refs)
    statements = []
    if ids:
        statements.append({
            "Sid": "ReadOwnSecrets",
            "Effect": "Allow",
            "Action": [GET_SECRET_VALUE],
            "Resource": [secret_arn(i, region=region, account=account) for i in ids],
        })
    return {"Version": POLICY_VERSION, "Statement": statements}


def needed_policies(
    fleet: Any, refs: Mapping[str, Mapping[str, Mapping[str, Any]]] | None = None, *, region: str, account: str
) -> dict[str, dict[str, dict[str, Any]]]:
    """{environment: {service: policy}} for every environment and every service of the fleet.

    A service without `aws` secrets gets a policy with no statement: it needs no IAM permission at all.
    """
    refs = fleet_secret_refs(fleet) if refs is None else refs
    unknown_envs = sorted(set(refs) - set(fleet.environments))
    if unknown_envs:
        raise ValueError(f"secret references name environments the fleet does not have: {', '.join(unknown_envs)}")
    result: dict[str, dict[str, dict[str, Any]]] = {}
    for env_name in fleet.environments:
        env_refs = refs.get(env_name, {})
        unknown = sorted(set(env_refs) - set(fleet.services))
        if unknown:
            raise ValueError(f"environment '{env_name}': secret references name unknown services: {', '.join(unknown)}")
        result[env_name] = {
            service: needed_policy(env_refs.get(service, {}), region=region, account=account)
            for service in fleet.services
        }
    return result


def _statements(policy: Any) -> list[dict[str, Any]]:
    if isinstance(policy, (str, bytes)):
        try:
            policy = json.loads(policy)
        except ValueError as exc:
            raise PolicyDocumentError(f"granted policy is not JSON: {exc}") from exc
    if not isinstance(policy, Mapping) or "Statement" not in policy:
        raise PolicyDocumentError("granted policy is not an IAM policy document (no Statement)")
    statements = policy["Statement"]
    statements = [statements] if isinstance(statements, Mapping) else statements
    if not isinstance(statements, list) or not all(isinstance(s, Mapping) for s in statements):
        raise PolicyDocumentError("granted policy: Statement must be an object or a list of objects")
    return list(statements)


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    return [str(v) for v in (value if isinstance(value, list) else [value])]


def _pattern_within(granted: str, needed: str, *, case_insensitive: bool = False) -> bool:
    """Whether every string the IAM pattern `granted` matches is matched by `needed` (* and ? wildcards).

    Exact for a granted pattern without wildcards, and for equal patterns. Any other wildcard in `granted` is
    taken as broader than needed unless it only extends a literal prefix that `needed` allows with a final `*`:
    when inclusion cannot be shown, the permission is reported, never assumed safe.
    """
    if case_insensitive:
        granted, needed = granted.lower(), needed.lower()
    if granted == needed:
        return True
    if not any(c in granted for c in "*?"):
        return fnmatchcase(granted, needed)
    prefix = needed[:-1]
    return needed.endswith("*") and not any(c in prefix for c in "*?") and granted.startswith(prefix)


def policy_excess(
    granted: Any,
    needed: Mapping[str, Any],
    *,
    service: str,
    owners_of: Mapping[str, str] | None = None,
    not_allowed: Mapping[str, str] | None = None,
) -> list[Excess]:
    """Every (action, resource) an Allow statement of `granted` grants beyond `needed`.

    `granted` is a policy document (dict or JSON text) or a list of them (all policies of a role). Deny
    statements only take away and are skipped; NotAction/NotResource grant everything not listed and are
    always excess. `owners_of` ({resource pattern: service}) lets the reason name whose secret it is;
    `not_allowed` ({resource: reason}) are resources of `needed` that are excess all the same.
    """
    not_allowed = not_allowed or {}
    documents = granted if isinstance(granted, list) else [granted]
    allowed = [
        (action, resource)
        for statement in _statements(needed)
        if statement.get("Effect") == "Allow"
        for action in _as_list(statement.get("Action"))
        for resource in _as_list(statement.get("Resource"))
        if resource not in not_allowed
    ]
    excess: list[Excess] = []
    for document in documents:
        for index, statement in enumerate(_statements(document)):
            if statement.get("Effect") != "Allow":
                continue
            label = str(statement.get("Sid") or f"#{index}")
            if "NotAction" in statement or "NotResource" in statement:
                action = _negated(statement, "Action")
                resource = _negated(statement, "Resource")
                key = "NotAction" if "NotAction" in statement else "NotResource"
                excess.append(Excess(service, label, action, resource, f"{key} grants everything except what it lists"))
                continue
            resources = _as_list(statement.get("Resource")) or ["*"]
            for action in _as_list(statement.get("Action")):
                for resource in resources:
                    if any(
                        _pattern_within(action, need_action, case_insensitive=True)
                        and _pattern_within(resource, need_resource)
                        for need_action, need_resource in allowed
                    ):
                        continue
                    reason = not_allowed.get(resource) or _reason(action, resource, allowed, owners_of or {})
                    excess.append(Excess(service, label, action, resource, reason))
    return excess


def _negated(statement: Mapping[str, Any], key: str) -> str:
    if f"Not{key}" in statement:
        return "all but " + ", ".join(_as_list(statement[f"Not{key}"]))
    return ", ".join(_as_list(statement.get(key))) or "*"


def _reason(action: str, resource: str, allowed: list[tuple[str, str]], owners_of: Mapping[str, str]) -> str:
    if not allowed:
        return "the service needs no IAM permission at all"
    if not any(_pattern_within(action, a, case_insensitive=True) for a, _ in allowed):
        return "action not needed" + (" (wildcard)" if "*" in action else "")
    if resource == "*" or resource.endswith(":*") or resource.endswith("secret:*"):
        return "wildcard resource: every secret of the account"
    for pattern, owner in owners_of.items():
        if fnmatchcase(resource, pattern) or resource == pattern:
            return f"secret of service '{owner}'"
    return "resource is not one of the service's own secrets"


def check_service_policy(
    fleet: Any,
    environment: str,
    service: str,
    granted: Any,
    *,
    region: str,
    account: str,
    refs: Mapping[str, Mapping[str, Mapping[str, Any]]] | None = None,
) -> list[Excess]:
    """policy_excess for one service of the fleet, naming the other services whose secrets it could read.

    A secret id of the manifest with an IAM wildcard (`*`, `?`, which no Secrets Manager name contains) is a
    pattern, not one secret: its generated resource is excess too, so the generated policy is checked as well.
    """
    policies = needed_policies(fleet, refs, region=region, account=account)
    refs = fleet_secret_refs(fleet) if refs is None else refs
    if environment not in policies:
        raise ValueError(f"no environment '{environment}' in the fleet")
    if service not in policies[environment]:
        raise ValueError(f"no service '{service}' in the fleet")
    owners_of = {
        resource: other
        for other, policy in policies[environment].items()
        if other != service
        for statement in policy["Statement"]
        for resource in statement["Resource"]
    }
    not_allowed = {
        secret_arn(secret_id, region=region, account=account):
            f"the manifest's secret id '{secret_id}' is a pattern (IAM wildcards * ?), not one secret"
        for secret_id in _aws_secret_ids(refs.get(environment, {}).get(service, {}))
        if any(c in secret_id for c in "*?")
    }
    return policy_excess(granted, policies[environment][service], service=service, owners_of=owners_of,
                         not_allowed=not_allowed)


def check_policy(
    policy: Any,
    service: str,
    environment: str,
    fleet: Any,
    *,
    region: str,
    account: str,
    refs: Mapping[str, Mapping[str, Mapping[str, Any]]] | None = None,
) -> None:
    """Refuse (PolicyRefused) a policy that lets `service` do more in `environment` than read its own secrets.

    Every Allow statement is judged: an action other than `secretsmanager:GetSecretValue`, a wildcard action or
    resource, another service's secret (named), a secret of another environment, a prefix pattern (`<id>-*`),
    NotAction/NotResource, and a secret id of the manifest that is itself a pattern. The message names the
    service, the environment and each offending statement. `policy` is one document (dict or JSON) or a list.
    """
    excess = check_service_policy(fleet, environment, service, policy, region=region, account=account, refs=refs)
    if excess:
        raise PolicyRefused(service, environment, excess)


# --- judging a request ---------------------------------------------------------------------------------------


def allows(policy: Any, action: str, resource: str) -> bool:
    """Whether an identity policy (one document or a list) allows `action` on the concrete ARN `resource`.

    IAM's evaluation for one principal without boundaries: an explicit Deny wins, then any Allow, else the
    implicit deny. Actions match case-insensitively, resources case-sensitively, `*` and `?` as IAM's
    wildcards; NotAction/NotResource are honoured. Conditions are not evaluated: an Allow with a Condition is
    taken as granting and a Deny with one as not denying, so a Condition never hides a grant from a check.
    """
    documents = policy if isinstance(policy, list) else [policy]
    allowed = False
    for document in documents:
        for statement in _statements(document):
            if not _applies(statement, action, resource):
                continue
            if statement.get("Effect") == "Deny" and "Condition" not in statement:
                return False
            allowed = allowed or statement.get("Effect") == "Allow"
    return allowed


def _iam_glob(pattern: str, value: str, *, case_insensitive: bool) -> bool:
    """IAM's matching: `*` any run of characters, `?` one character, everything else literal (no [sets])."""
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, value, re.DOTALL | (re.IGNORECASE if case_insensitive else 0)) is not None


def _applies(statement: Mapping[str, Any], action: str, resource: str) -> bool:
    def matches(key: str, value: str, *, case_insensitive: bool) -> bool:
        return any(_iam_glob(p, value, case_insensitive=case_insensitive) for p in _as_list(statement.get(key)))

    if "NotAction" in statement:
        action_ok = not matches("NotAction", action, case_insensitive=True)
    else:
        action_ok = matches("Action", action, case_insensitive=True)
    if "NotResource" in statement:
        resource_ok = not matches("NotResource", resource, case_insensitive=False)
    else:
        resource_ok = matches("Resource", resource, case_insensitive=False)
    return action_ok and resource_ok


# --- containers ----------------------------------------------------------------------------------------------


# The capabilities an engine gives a container unless told otherwise (Docker's and Podman's default set).
ENGINE_DEFAULT_CAPABILITIES = frozenset({
    "AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD", "NET_BIND_SERVICE", "NET_RAW",
    "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT",
})


def _capabilities(values: Any) -> set[str]:
    return {capability_name(c) for c in _as_list(values) if c}


def container_hardening(inspect: Mapping[str, Any]) -> list[Finding]:
    """Findings for a container as `docker inspect` shows it: root user, writable root filesystem, privileged,
    capabilities kept or added, privilege escalation allowed. `review_hardening` then sets aside those the
    manifest opts the service out of."""
    name = str(inspect.get("Name") or inspect.get("Id", "?")[:12]).lstrip("/")
    config = inspect.get("Config") or {}
    host = inspect.get("HostConfig") or {}
    location = f"container {name}"
    image = config.get("Image") or inspect.get("Image") or "?"
    findings = []
    user = str(config.get("User") or "")
    user_part = user.split(":", 1)[0]
    if user_part in ROOT_USERS:
        shown = f"user {user!r}" if user else "no user (the image default, root)"
        findings.append(finding("release-graph", "RG_CONTAINER_ROOT", "HIGH", location,
                                f"runs as root: {shown}; image {image}. Set a numeric non-root user (USER 10001)"))
    if not host.get("ReadonlyRootfs"):
        findings.append(finding("release-graph", "RG_CONTAINER_WRITABLE_ROOT_FS", "MEDIUM", location,
                                "the root filesystem is writable; run read-only with tmpfs for scratch folders"))
    if host.get("Privileged"):
        findings.append(finding("release-graph", "RG_CONTAINER_PRIVILEGED", "CRITICAL", location,
                                "runs privileged: it has every capability and the host's devices"))
    added, kept = _capability_sets(host)
    if added:
        findings.append(finding("release-graph", "RG_CONTAINER_CAP_ADD", "HIGH", location,
                                f"adds Linux capabilities: {', '.join(sorted(added))}"))
    if kept:
        findings.append(finding("release-graph", "RG_CONTAINER_CAPABILITIES_KEPT", "MEDIUM", location,
                                f"keeps the engine's default capabilities {', '.join(sorted(kept))}: drop them all "
                                "(cap_drop ALL) and give back only what it needs"))
    options = {str(o).replace("=", ":") for o in _as_list(host.get("SecurityOpt"))}
    if not options & {"no-new-privileges", "no-new-privileges:true"}:
        findings.append(finding("release-graph", "RG_CONTAINER_PRIVILEGE_ESCALATION", "MEDIUM", location,
                                "a setuid binary may gain privileges: run with no-new-privileges"))
    return findings


def review_hardening(inspect: Mapping[str, Any],
                     hardening: Hardening) -> tuple[list[Finding], list[tuple[Finding, str]]]:
    """`container_hardening`'s findings as (reported, waived with the manifest's reason): a finding the service's
    `hardening:` opts out of, with a reason, is waived; a privileged container never is, and capabilities only
    those the manifest gives back."""
    added, kept = _capability_sets(inspect.get("HostConfig") or {})
    declared = set(hardening.capabilities)
    reasons = {"RG_CONTAINER_ROOT": hardening.run_as_root,
               "RG_CONTAINER_WRITABLE_ROOT_FS": hardening.writable_root,
               "RG_CONTAINER_PRIVILEGE_ESCALATION": hardening.privilege_escalation,
               "RG_CONTAINER_CAP_ADD": hardening.capabilities_reason if added <= declared else None,
               "RG_CONTAINER_CAPABILITIES_KEPT": hardening.capabilities_reason if kept <= declared else None}
    reported, waived = [], []
    for item in container_hardening(inspect):
        reason = reasons.get(item.rule)
        if reason:
            waived.append((item, reason))
        else:
            reported.append(item)
    return reported, waived


def _capability_sets(host: Mapping[str, Any]) -> tuple[set[str], set[str]]:
    """(added, the engine's defaults kept): Docker shows a drop of all as `ALL`, Podman as the default set."""
    added = _capabilities(host.get("CapAdd"))
    dropped = _capabilities(host.get("CapDrop"))
    return added, (set() if "ALL" in dropped else set(ENGINE_DEFAULT_CAPABILITIES - dropped - added))

