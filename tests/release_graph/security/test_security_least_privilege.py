"""Given a fleet whose services read secrets, when the IAM policy each needs is generated and a deployed policy is
checked against it, then wildcards and other services' secrets are reported; and given running containers, the
ones that run as root or with a writable root filesystem are reported."""

from __future__ import annotations

import json
from types import SimpleNamespace

import boto3
import pytest

from release_graph.fleet import Hardening
from release_graph.security import least_privilege as lp

REGION, ACCOUNT = "eu-west-1", "123456789012"
FLEET = SimpleNamespace(
    services={"orders": object(), "payments": object(), "web": object()},
    environments={"staging": object(), "prod": object()},
)
REFS = {
    "staging": {
        "orders": {"DB_PASSWORD": {"aws": "shop/staging/orders-db"}, "LOG_TOKEN": {"env": "LOG_TOKEN"}},
        "payments": {"PSP_KEY": {"aws": "shop/staging/psp-key"}},
    },
    "prod": {
        "orders": {"DB_PASSWORD": {"aws": "shop/prod/orders-db"}},
        "payments": {"PSP_KEY": {"aws": "shop/prod/psp-key"}, "PSP_WEBHOOK": {"aws": "shop/prod/psp-webhook"}},
    },
}


def arn(secret_id: str) -> str:
    return f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:{secret_id}-??????"


def test_each_service_needs_read_access_to_exactly_its_own_secrets():
    policies = lp.needed_policies(FLEET, REFS, region=REGION, account=ACCOUNT)
    assert policies["prod"]["payments"] == {
        "Version": "2012-10-17",
        "Statement": [{
            "Sid": "ReadOwnSecrets",
            "Effect": "Allow",
            "Action": ["secretsmanager:GetSecretValue"],
            "Resource": [arn("shop/prod/psp-key"), arn("shop/prod/psp-webhook")],
        }],
    }
    assert policies["staging"]["orders"]["Statement"][0]["Resource"] == [arn("shop/staging/orders-db")]
    # env-sourced secrets need no IAM; a service without aws secrets needs no permission at all.
    assert policies["prod"]["web"] == {"Version": "2012-10-17", "Statement": []}


def test_a_policy_granting_exactly_what_is_needed_has_no_excess():
    needed = lp.needed_policies(FLEET, REFS, region=REGION, account=ACCOUNT)["prod"]["orders"]
    concrete_arn = f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:shop/prod/orders-db-AbC123"
    granted = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "secretsmanager:getsecretvalue", "Resource": concrete_arn},
        {"Effect": "Deny", "Action": "*", "Resource": "*"},
    ]}
    assert lp.policy_excess(granted, needed, service="orders") == []
    assert lp.policy_excess(json.dumps(needed), needed, service="orders") == []


def test_wildcards_and_another_services_secret_are_excess():
    granted = {"Version": "2012-10-17", "Statement": [
        {"Sid": "Mine", "Effect": "Allow", "Action": "secretsmanager:GetSecretValue",
         "Resource": [arn("shop/prod/orders-db"), arn("shop/prod/psp-key")]},
        {"Sid": "Lazy", "Effect": "Allow", "Action": "secretsmanager:*",
         "Resource": f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:*"},
        {"Sid": "Prefix", "Effect": "Allow", "Action": "secretsmanager:GetSecretValue",
         "Resource": f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:shop/prod/orders-db-*"},
        {"Sid": "Except", "Effect": "Allow", "NotAction": "iam:*", "Resource": "*"},
    ]}
    excess = lp.check_service_policy(FLEET, "prod", "orders", granted, region=REGION, account=ACCOUNT, refs=REFS)
    assert [(e.statement, e.action, e.resource.rsplit(":", 1)[-1], e.reason) for e in excess] == [
        ("Mine", "secretsmanager:GetSecretValue", "shop/prod/psp-key-??????", "secret of service 'payments'"),
        ("Lazy", "secretsmanager:*", "*", "action not needed (wildcard)"),
        # `-*` would also match shop/prod/orders-db-admin-XyZ123, another secret.
        ("Prefix", "secretsmanager:GetSecretValue", "shop/prod/orders-db-*",
         "resource is not one of the service's own secrets"),
        ("Except", "all but iam:*", "*", "NotAction grants everything except what it lists"),
    ]
    item = excess[0].as_finding("prod")
    assert (item.rule, item.severity, item.location) == ("RG_IAM_EXCESS", "HIGH", "orders in prod statement Mine")


def test_the_policy_attached_to_a_role_in_iam_is_checked_as_deployed(moto_server, monkeypatch, run_id):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    iam = boto3.client("iam", region_name="us-east-1", endpoint_url=moto_server)
    role = f"{run_id}-web"
    iam.create_role(RoleName=role, AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"Service": "ecs-tasks.amazonaws.com"}, "Action": "sts:AssumeRole"}]}))
    try:
        iam.put_role_policy(RoleName=role, PolicyName="secrets", PolicyDocument=json.dumps({
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": ["secretsmanager:GetSecretValue"],
                           "Resource": [arn("shop/prod/psp-key")]}]}))
        deployed = [iam.get_role_policy(RoleName=role, PolicyName=name)["PolicyDocument"]
                    for name in iam.list_role_policies(RoleName=role)["PolicyNames"]]
        excess = lp.check_service_policy(FLEET, "prod", "web", deployed, region=REGION, account=ACCOUNT, refs=REFS)
        assert [(e.service, e.reason) for e in excess] == [("web", "the service needs no IAM permission at all")]
    finally:
        iam.delete_role_policy(RoleName=role, PolicyName="secrets")
        iam.delete_role(RoleName=role)


def test_the_generated_policy_of_every_service_and_environment_passes_check_policy():
    for environment, services in lp.needed_policies(FLEET, REFS, region=REGION, account=ACCOUNT).items():
        for service, policy in services.items():
            lp.check_policy(policy, service, environment, FLEET, region=REGION, account=ACCOUNT, refs=REFS)


@pytest.mark.parametrize(("statement", "reason"), [
    ({"Action": "secretsmanager:*", "Resource": "*"}, "action not needed (wildcard)"),
    ({"Action": "secretsmanager:GetSecretValue", "Resource": "*"}, "wildcard resource: every secret of the account"),
    ({"Action": "secretsmanager:GetSecretValue", "Resource": arn("shop/prod/psp-key")},
     "secret of service 'payments'"),
    ({"Action": "secretsmanager:GetSecretValue", "Resource": arn("shop/staging/orders-db")},
     "resource is not one of the service's own secrets"),  # its own secret, but of another environment
    ({"Action": "secretsmanager:PutSecretValue", "Resource": arn("shop/prod/orders-db")}, "action not needed"),
    ({"Action": "secretsmanager:GetSecretValue", "NotResource": arn("shop/prod/orders-db")},
     "NotResource grants everything except what it lists"),
])
def test_check_policy_refuses_a_grant_beyond_the_services_own_secrets_naming_service_environment_and_statement(
        statement, reason):
    granted = {"Version": "2012-10-17", "Statement": [
        {"Sid": "ReadOwnSecrets", "Effect": "Allow", "Action": "secretsmanager:GetSecretValue",
         "Resource": arn("shop/prod/orders-db")},
        {"Sid": "TooMuch", "Effect": "Allow", **statement},
    ]}
    with pytest.raises(lp.PolicyRefused) as refused:
        lp.check_policy(granted, "orders", "prod", FLEET, region=REGION, account=ACCOUNT, refs=REFS)
    assert [(e.statement, e.reason) for e in refused.value.excess] == [("TooMuch", reason)]
    message = str(refused.value)
    assert message.startswith("the IAM policy of service 'orders' in environment 'prod' grants more than reading "
                              "its own secrets there: statement TooMuch grants ")
    assert reason in message


def test_a_secret_id_written_as_a_pattern_makes_the_generated_policy_over_broad():
    refs = {"prod": {"orders": {"DB_PASSWORD": {"aws": "shop/prod/*"}}}}
    policy = lp.needed_policies(FLEET, refs, region=REGION, account=ACCOUNT)["prod"]["orders"]
    with pytest.raises(lp.PolicyRefused, match=r"statement ReadOwnSecrets grants secretsmanager:GetSecretValue on "
                       r".*secret:shop/prod/\*-\?{6} \(the manifest's secret id 'shop/prod/\*' is a pattern"):
        lp.check_policy(policy, "orders", "prod", FLEET, region=REGION, account=ACCOUNT, refs=refs)


def test_allows_evaluates_a_request_as_iam_does():
    concrete = f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:shop/prod/orders-db-AbC123"
    needed = lp.needed_policies(FLEET, REFS, region=REGION, account=ACCOUNT)["prod"]["orders"]
    assert lp.allows(needed, "secretsmanager:getsecretvalue", concrete)
    assert not lp.allows(needed, "secretsmanager:GetSecretValue", concrete.replace("orders-db", "psp-key"))
    assert not lp.allows(needed, "secretsmanager:GetSecretValue", concrete.replace("-AbC123", "-admin-XyZ123"))
    assert not lp.allows(needed, "secretsmanager:PutSecretValue", concrete)
    assert not lp.allows([needed, {"Statement": {"Effect": "Deny", "Action": "*", "Resource": "*"}}],
                         "secretsmanager:GetSecretValue", concrete)
    # IAM's wildcards are * and ? only: brackets are literal.
    assert not lp.allows({"Statement": [{"Effect": "Allow", "Action": "s:[ab]", "Resource": "*"}]}, "s:a", "x")


def test_bad_references_and_documents_are_named():
    with pytest.raises(ValueError, match="name unknown services: billing"):
        lp.needed_policies(FLEET, {"prod": {"billing": {}}}, region=REGION, account=ACCOUNT)
    with pytest.raises(ValueError, match="environments the fleet does not have: qa"):
        lp.needed_policies(FLEET, {"qa": {}}, region=REGION, account=ACCOUNT)
    with pytest.raises(ValueError, match="secret reference DB: unknown source 'vault'"):
        lp.needed_policy({"DB": {"vault": "x"}}, region=REGION, account=ACCOUNT)
    with pytest.raises(lp.PolicyDocumentError, match="not JSON"):
        lp.policy_excess("{not json", {"Statement": []}, service="web")
    with pytest.raises(lp.PolicyDocumentError, match="no Statement"):
        lp.policy_excess({"Version": "2012-10-17"}, {"Statement": []}, service="web")


@pytest.fixture
def run_container(docker_client, registry_addr, run_id):
    started = []

    def run(name: str, **options):
        container = docker_client.containers.run(
            f"{registry_addr}/base/python:bookworm", ["sleep", "60"], detach=True, init=True,
            name=f"{run_id}-{name}", labels={"release-graph.test-run": run_id}, **options)
        started.append(container)
        return docker_client.api.inspect_container(container.id)

    yield run
    for container in started:
        container.remove(force=True)


def test_a_container_as_the_engine_starts_it_by_default_is_reported_on_every_lock(run_container, run_id):
    inspect = run_container("root")
    findings = lp.container_hardening(inspect)
    assert [(f.rule, f.severity, f.location) for f in findings] == [
        ("RG_CONTAINER_ROOT", "HIGH", f"container {run_id}-root"),
        ("RG_CONTAINER_WRITABLE_ROOT_FS", "MEDIUM", f"container {run_id}-root"),
        ("RG_CONTAINER_CAPABILITIES_KEPT", "MEDIUM", f"container {run_id}-root"),
        ("RG_CONTAINER_PRIVILEGE_ESCALATION", "MEDIUM", f"container {run_id}-root"),
    ]
    assert "no user (the image default, root)" in findings[0].message
    assert "CHOWN" in findings[2].message and "SETUID" in findings[2].message
    # A service the manifest allows to write its root filesystem (with its reason) still may not run as root.
    reported, waived = lp.review_hardening(inspect, Hardening(writable_root="a vendor image that writes its pid"))
    assert [f.rule for f in reported] == [
        "RG_CONTAINER_ROOT", "RG_CONTAINER_CAPABILITIES_KEPT", "RG_CONTAINER_PRIVILEGE_ESCALATION"]
    assert [(f.rule, reason) for f, reason in waived] == [
        ("RG_CONTAINER_WRITABLE_ROOT_FS", "a vendor image that writes its pid")]


def test_a_non_root_read_only_container_without_capabilities_or_escalation_passes(run_container):
    inspect = run_container("hardened", user="10001", read_only=True, cap_drop=["ALL"],
                            security_opt=["no-new-privileges"])
    assert lp.container_hardening(inspect) == []


def test_a_capability_given_back_is_waived_only_when_the_manifest_gives_it_back_with_a_reason(run_container):
    inspect = run_container("binds-80", user="10001", read_only=True, cap_drop=["ALL"],
                            cap_add=["NET_BIND_SERVICE"], security_opt=["no-new-privileges"])
    assert {f.rule for f in lp.container_hardening(inspect)} & {"RG_CONTAINER_CAP_ADD",
                                                                "RG_CONTAINER_CAPABILITIES_KEPT"}
    declared = Hardening(capabilities=("NET_BIND_SERVICE",), capabilities_reason="listens on port 80")
    reported, waived = lp.review_hardening(inspect, declared)
    assert reported == [] and {reason for _, reason in waived} == {"listens on port 80"}
    # another capability than the one declared is still reported
    reported, _ = lp.review_hardening(inspect, Hardening(capabilities=("CHOWN",), capabilities_reason="x"))
    assert reported


def test_privileges_are_reported_from_the_inspect_document():
    inspect = {"Name": "/orders-1", "Config": {"User": "0:0", "Image": "shop/orders@sha256:ab"},
               "HostConfig": {"ReadonlyRootfs": True, "Privileged": True, "CapAdd": ["SYS_ADMIN", "NET_ADMIN"],
                              "CapDrop": ["ALL"], "SecurityOpt": ["no-new-privileges:true"]}}
    assert [(f.rule, f.message) for f in lp.container_hardening(inspect)] == [
        ("RG_CONTAINER_ROOT", "runs as root: user '0:0'; image shop/orders@sha256:ab. Set a numeric non-root user "
                              "(USER 10001)"),
        ("RG_CONTAINER_PRIVILEGED", "runs privileged: it has every capability and the host's devices"),
        ("RG_CONTAINER_CAP_ADD", "adds Linux capabilities: NET_ADMIN, SYS_ADMIN"),
    ]
    # privileged is never waived, whatever the manifest says
    reported, _ = lp.review_hardening(inspect, Hardening(run_as_root="legacy", capabilities=("NET_ADMIN", "SYS_ADMIN"),
                                                         capabilities_reason="a VPN sidecar"))
    assert [f.rule for f in reported] == ["RG_CONTAINER_PRIVILEGED"]
