"""Given two services' secrets in Secrets Manager and an IAM user carrying the generated policy of one of them, on
a `moto_server` that enforces IAM (INITIAL_NO_AUTH_ACTION_COUNT), then: what moto itself decides is measured
here, and the decision moto cannot make (which secret) is made by IAM's evaluation rules in `allows`, over the
ARNs moto's Secrets Manager issued and the policy read back from moto's IAM.

Measured on moto 5.2.5: moto authenticates every Secrets Manager call (signature, known access key) and
authorizes the action, but it judges every Secrets Manager request against the resource "*" (its secretsmanager
responses name no resource). So no policy scoped to secrets can let a principal read one secret and not another
there: a policy on exact ARNs denies both, `Resource: "*"` allows both, and the generated `<id>-??????` pattern
makes moto fail with a 500 (it turns the pattern into a regular expression, where `??????` is invalid). The
test asserts those measurements, so a moto that starts judging resources fails it: then assert the refusal on
moto directly.
"""

from __future__ import annotations

import json

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from release_graph.security import least_privilege as lp

REGION, ACCOUNT = "eu-west-1", "123456789012"  # moto's default account
READ = "secretsmanager:GetSecretValue"
# The calls `setup` makes before enforcement starts: 2 secrets, 3 users, 3 policies, 3 access keys.
SETUP_CALLS = 11
NO_RETRY = Config(retries={"total_max_attempts": 1})


def client(url: str, service: str, key: dict | None = None):
    key = key or {"AccessKeyId": "setup", "SecretAccessKey": "setup"}
    return boto3.client(service, region_name=REGION, endpoint_url=url, config=NO_RETRY,
                        aws_access_key_id=key["AccessKeyId"], aws_secret_access_key=key["SecretAccessKey"])


def setup(url: str) -> dict:
    """Exactly SETUP_CALLS calls, made before moto enforces anything (any credentials pass)."""
    secrets, iam = client(url, "secretsmanager"), client(url, "iam")
    orders = secrets.create_secret(Name="shop/prod/orders-db", SecretString="orders-value")["ARN"]
    payments = secrets.create_secret(Name="shop/prod/psp-key", SecretString="payments-value")["ARN"]
    refs = {"DB_PASSWORD": {"aws": "shop/prod/orders-db"}}
    policy = lp.needed_policy(refs, region=REGION, account=ACCOUNT)
    iam.create_user(UserName="orders")
    iam.put_user_policy(UserName="orders", PolicyName="least-privilege", PolicyDocument=json.dumps(policy))
    orders_key = iam.create_access_key(UserName="orders")["AccessKey"]
    iam.create_user(UserName="auditor")
    iam.put_user_policy(UserName="auditor", PolicyName="everything", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
    auditor_key = iam.create_access_key(UserName="auditor")["AccessKey"]
    # The generated policy with the exact ARN moto issued in place of the `-??????` pattern.
    iam.create_user(UserName="orders-exact")
    iam.put_user_policy(UserName="orders-exact", PolicyName="exact-arn", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": READ, "Resource": orders}]}))
    exact_key = iam.create_access_key(UserName="orders-exact")["AccessKey"]
    return {"orders_arn": orders, "payments_arn": payments, "policy": policy,
            "orders_key": orders_key, "auditor_key": auditor_key, "exact_key": exact_key}


def refusal(call) -> tuple[int, str]:
    """(HTTP status, text) of a refused call. moto answers Secrets Manager refusals in XML, which botocore's
    JSON parser does not read: the code is then in the message."""
    with pytest.raises(ClientError) as caught:
        call()
    error = caught.value.response
    return error["ResponseMetadata"]["HTTPStatusCode"], f"{error['Error'].get('Code')} {error['Error'].get('Message')}"


@pytest.fixture
def enforcing_moto(start_moto_server):
    with start_moto_server({"INITIAL_NO_AUTH_ACTION_COUNT": str(SETUP_CALLS)}) as url:
        world = setup(url)
        # Enforcement is on from here: credentials IAM does not know are refused.
        status, text = refusal(lambda: client(url, "secretsmanager").list_secrets())
        assert (status, "InvalidClientTokenId" in text) == (403, True), "moto is not enforcing IAM after setup"
        yield url, world


def test_moto_authenticates_and_authorizes_the_action_of_secrets_manager_calls(enforcing_moto):
    url, world = enforcing_moto
    orders = client(url, "secretsmanager", world["orders_key"])
    # The orders policy grants only GetSecretValue: every other action is refused, on any secret.
    for call in (lambda: orders.list_secrets(),
                 lambda: orders.put_secret_value(SecretId=world["orders_arn"], SecretString="x"),
                 lambda: orders.delete_secret(SecretId=world["payments_arn"])):
        status, text = refusal(call)
        assert status == 403 and "AccessDenied" in text and "user/orders" in text
    # A principal whose policy allows everything reads both secrets: moto's allow works.
    auditor = client(url, "secretsmanager", world["auditor_key"])
    assert [auditor.get_secret_value(SecretId=arn)["SecretString"]
            for arn in (world["orders_arn"], world["payments_arn"])] == ["orders-value", "payments-value"]


def test_moto_does_not_judge_which_secret_so_the_decision_is_made_by_iams_rules_over_its_arns(enforcing_moto):
    url, world = enforcing_moto
    orders = client(url, "secretsmanager", world["orders_key"])
    # Measured: moto cannot tell the two secrets apart. The generated pattern breaks its matcher (500) on both.
    measured = [refusal(lambda arn=arn: orders.get_secret_value(SecretId=arn))[0]
                for arn in (world["orders_arn"], world["payments_arn"])]
    # With the exact ARN instead, moto refuses both: it compares the ARN with the resource "*".
    exact = client(url, "secretsmanager", world["exact_key"])
    measured += [refusal(lambda arn=arn: exact.get_secret_value(SecretId=arn))[0]
                 for arn in (world["orders_arn"], world["payments_arn"])]
    assert measured == [500, 500, 403, 403], (
        f"moto answered {measured}: it may judge Secrets Manager resources now; assert the read and the refusal "
        "on moto itself")

    # The decision, made by IAM's evaluation rules: the policy as moto's IAM holds it, the ARNs moto issued.
    auditor_iam = client(url, "iam", world["auditor_key"])
    attached = auditor_iam.get_user_policy(UserName="orders", PolicyName="least-privilege")["PolicyDocument"]
    attached = json.loads(attached) if isinstance(attached, str) else attached
    assert attached == world["policy"]
    assert lp.allows(attached, READ, world["orders_arn"]) is True
    assert lp.allows(attached, READ, world["payments_arn"]) is False
    assert lp.allows(attached, "secretsmanager:PutSecretValue", world["orders_arn"]) is False
    # ... and the attached policy is the one the deploy step accepts: nothing beyond its own secret.
    fleet = type("Fleet", (), {"services": {"orders": 0, "payments": 0}, "environments": {"prod": 0}})
    refs = {"prod": {"orders": {"DB_PASSWORD": {"aws": "shop/prod/orders-db"}},
                     "payments": {"PSP_KEY": {"aws": "shop/prod/psp-key"}}}}
    lp.check_policy(attached, "orders", "prod", fleet, region=REGION, account=ACCOUNT, refs=refs)
