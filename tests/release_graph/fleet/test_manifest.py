"""A release manager writes fleet.yaml; every mistake is reported at once with file, line, service and field."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from release_graph.cli.main import main as cli_main
from release_graph.fleet import ManifestError, load_fleet, resolve_fleet_path, topological_order
from release_graph.security.compliance import rule_id_problems

GOOD = """\
fleet: shop
registry: 127.0.0.1:5000/shop
services:
  orders:
    repo: repos/orders
    build: {dockerfile: Dockerfile, test_target: test}
    port: 8080
    health: /healthz
    owners: [orders@example.com, team:orders]
    language: python
    depends_on: [inventory, {name: payments}, {name: collector, soft: true}]
  inventory:
    repo: repos/inventory
    build: {}
  payments:
    repo: git://127.0.0.1:9418/payments
    branch: release/1.x
    build: {context: app, dockerfile: build/Dockerfile}
    env: {LOG_LEVEL: info, WORKERS: 4}
  collector:
    image: 127.0.0.1:5000/vendor/collector@sha256:%s
  redis-cart:
    image: redis:7.2
    infrastructure: true
    health: null
environments:
  staging: {target: docker}
  prod: {target: docker, approval: required}
""" % ("a" * 64)


def write_fleet(tmp_path: Path, text: str, repos=("orders", "inventory")) -> Path:
    for name in repos:
        (tmp_path / "repos" / name).mkdir(parents=True, exist_ok=True)
        (tmp_path / "repos" / name / "Dockerfile").write_text("FROM scratch\n")
    path = tmp_path / "fleet.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def problems_of(path: Path, **kwargs) -> list[str]:
    with pytest.raises(ManifestError) as caught:
        load_fleet(path, **kwargs)
    return caught.value.problems


def replace(text: str, old: str, new: str) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


def test_a_valid_manifest_becomes_typed_models(tmp_path):
    fleet = load_fleet(write_fleet(tmp_path, GOOD))
    assert fleet.name == "shop" and fleet.registry == "127.0.0.1:5000/shop"
    assert list(fleet.environments) == ["staging", "prod"]
    assert fleet.environments["prod"].requires_approval and not fleet.environments["staging"].requires_approval
    orders = fleet.services["orders"]
    assert orders.repo_url == str(tmp_path / "repos" / "orders")
    assert orders.is_local_repo and not orders.is_prebuilt
    assert orders.hard_deps == ("inventory", "payments") and orders.soft_deps == ("collector",)
    assert orders.image_repository(fleet) == "127.0.0.1:5000/shop/orders"
    payments = fleet.services["payments"]
    assert payments.repo_url == "git://127.0.0.1:9418/payments" and not payments.is_local_repo
    assert payments.build.dockerfile == "build/Dockerfile"
    assert dict(payments.env) == {"LOG_LEVEL": "info", "WORKERS": "4"}
    assert fleet.services["redis-cart"].group == "redis_cart" and fleet.services["redis-cart"].health is None
    assert fleet.services["collector"].is_prebuilt
    order = topological_order(fleet.services)
    assert order.index("inventory") < order.index("orders") and order.index("payments") < order.index("orders")


def test_every_problem_is_reported_at_once(tmp_path):
    text = replace(GOOD, "port: 8080", "port: 70000")
    text = replace(text, "[orders@example.com, team:orders]", "[not-an-owner]")
    problems = problems_of(write_fleet(tmp_path, text))
    assert len(problems) == 2
    assert problems[0].startswith("fleet.yaml:7: service 'orders', field 'port':")
    assert "fleet.yaml:9: service 'orders', field 'owners': owner 'not-an-owner'" in problems[1]


def test_a_duplicate_service_is_reported_with_both_lines(tmp_path):
    text = replace(GOOD, "  inventory:\n", "  orders:\n    image: redis:7\n  inventory:\n")
    problems = problems_of(write_fleet(tmp_path, text))
    assert problems == [
        "fleet.yaml:12: key 'orders': defined twice in the same mapping (first at line 4); "
        "the second definition is ignored until the duplicate is removed"
    ]


def test_a_duplicate_key_inside_a_service_is_reported(tmp_path):
    text = replace(GOOD, "    port: 8080\n", "    port: 8080\n    port: 9090\n")
    assert problems_of(write_fleet(tmp_path, text))[0].startswith("fleet.yaml:8: key 'port': defined twice")


@pytest.mark.parametrize("bad_name", ["Orders", "orders_v2", "-orders", "a" * 64])
def test_service_names_must_be_dns_labels(tmp_path, bad_name):
    text = replace(GOOD, "  redis-cart:", f"  {bad_name}:")
    (problem,) = problems_of(write_fleet(tmp_path, text))
    assert f"service '{bad_name}': service names must be DNS labels" in problem


def test_no_service_may_be_called_fleet(tmp_path):
    text = replace(GOOD, "  redis-cart:", "  fleet:")
    (problem,) = problems_of(write_fleet(tmp_path, text))
    assert problem == "fleet.yaml:22: service 'fleet': 'fleet' is reserved (the fleet-level asset group)"


@pytest.mark.parametrize("bad_env", ["source", "image", "integration", "Prod"])
def test_environment_names_are_dns_labels_and_not_stage_names(tmp_path, bad_env):
    text = replace(GOOD, "  staging: {target: docker}", f"  {bad_env}: {{target: docker}}")
    (problem,) = problems_of(write_fleet(tmp_path, text))
    assert f"environment '{bad_env}'" in problem


def test_an_environment_name_ending_in_approval_is_refused(tmp_path):
    # Not a DNS label either, but the reason a reader needs is that it clashes with <env>_approval.
    text = replace(GOOD, "  staging: {target: docker}", "  qa_approval: {target: docker}")
    (problem,) = problems_of(write_fleet(tmp_path, text))
    assert "environment 'qa_approval'" in problem


def test_a_dependency_on_a_missing_service_names_it(tmp_path):
    text = replace(GOOD, "depends_on: [inventory,", "depends_on: [inventroy,")
    (problem,) = problems_of(write_fleet(tmp_path, text))
    assert problem == (
        "fleet.yaml:11: service 'orders', field 'depends_on': depends on 'inventroy', "
        "which is not a service of this fleet"
    )


def test_a_service_cannot_depend_on_itself(tmp_path):
    text = replace(GOOD, "depends_on: [inventory,", "depends_on: [orders, inventory,")
    (problem,) = problems_of(write_fleet(tmp_path, text))
    assert problem.endswith("service 'orders', field 'depends_on': a service cannot depend on itself")


def test_a_cycle_of_hard_edges_lists_the_cycle(tmp_path):
    text = replace(GOOD, "    build: {}\n", "    build: {}\n    depends_on: [payments]\n")
    text = replace(text, "    env: {LOG_LEVEL", "    depends_on: [orders]\n    env: {LOG_LEVEL")
    (problem,) = problems_of(write_fleet(tmp_path, text))
    assert "cycle of hard edges: inventory -> payments -> orders -> inventory" in problem
    assert "mark one edge soft: true, or give the services one deploy_unit" in problem


def test_a_cycle_is_broken_by_a_soft_edge_or_a_deploy_unit(tmp_path):
    soft = replace(GOOD, "    env: {LOG_LEVEL", "    depends_on: [{name: orders, soft: true}]\n    env: {LOG_LEVEL")
    assert load_fleet(write_fleet(tmp_path, soft)).services["payments"].soft_deps == ("orders",)
    unit = replace(GOOD, "    env: {LOG_LEVEL",
                   "    depends_on: [orders]\n    deploy_unit: checkout\n    env: {LOG_LEVEL")
    unit = replace(unit, "    language: python\n", "    language: python\n    deploy_unit: checkout\n")
    assert load_fleet(write_fleet(tmp_path, unit)).services["orders"].deploy_unit == "checkout"


def test_unknown_keys_are_errors_anywhere(tmp_path):
    text = replace(GOOD, "fleet: shop\n", "fleet: shop\ncolour: blue\n")
    text = replace(text, "build: {dockerfile: Dockerfile,", "build: {dockerfle: Dockerfile,")
    text = replace(text, "prod: {target: docker,", "prod: {target: docker, aproval: x,")
    text = replace(text, "{name: collector, soft: true}", "{name: collector, sfot: true}")
    problems = problems_of(write_fleet(tmp_path, text))
    assert [p.split(": unknown key")[0] for p in problems] == [
        "fleet.yaml:2: field 'colour'",
        "fleet.yaml:7: service 'orders', field 'dockerfle'",
        "fleet.yaml:12: service 'orders', field 'sfot'",
        "fleet.yaml:29: environment 'prod', field 'aproval'",
    ]


def test_a_missing_dockerfile_in_a_local_repo_is_reported(tmp_path):
    path = write_fleet(tmp_path, GOOD)
    (tmp_path / "repos" / "orders" / "Dockerfile").unlink()
    (problem,) = problems_of(path)
    assert problem.startswith("fleet.yaml:6: service 'orders', field 'build': Dockerfile 'Dockerfile' does not exist")


def test_a_missing_build_context_in_a_local_repo_is_reported(tmp_path):
    text = replace(GOOD, "  inventory:\n    repo: repos/inventory\n    build: {}",
                   "  inventory:\n    repo: repos/inventory\n    build: {context: src}")
    (problem,) = problems_of(write_fleet(tmp_path, text))
    assert "service 'inventory', field 'build': build context 'src' does not exist" in problem


def test_file_checks_can_wait_for_build_time(tmp_path):
    path = write_fleet(tmp_path, GOOD)
    (tmp_path / "repos" / "orders" / "Dockerfile").unlink()
    assert load_fleet(path, check_files=False).services["orders"].build.dockerfile == "Dockerfile"


@pytest.mark.parametrize("port", ["0", "65536", "'8080'", "true"])
def test_a_port_out_of_range_is_reported(tmp_path, port):
    (problem,) = problems_of(write_fleet(tmp_path, replace(GOOD, "port: 8080", f"port: {port}")))
    assert "service 'orders', field 'port': expected a port number between 1 and 65535" in problem


@pytest.mark.parametrize("registry", ["HTTP://x/shop", "127.0.0.1:5000/Shop", "", "reg/shop:latest"])
def test_a_registry_that_is_not_an_image_reference_is_reported(tmp_path, registry):
    text = replace(GOOD, "registry: 127.0.0.1:5000/shop", f"registry: '{registry}'")
    (problem,) = problems_of(write_fleet(tmp_path, text))
    assert problem.startswith("fleet.yaml:2: field 'registry': expected an image repository")


def test_an_invalid_prebuilt_image_reference_is_reported(tmp_path):
    (problem,) = problems_of(write_fleet(tmp_path, replace(GOOD, "image: redis:7.2", "image: 'Redis::7'")))
    assert problem == "fleet.yaml:23: service 'redis-cart', field 'image': not a valid image reference: 'Redis::7'"


def test_a_service_may_replace_the_images_entrypoint_and_command(tmp_path):
    text = replace(GOOD, "    env: {LOG_LEVEL: info, WORKERS: 4}\n",
                   "    env: {LOG_LEVEL: info, WORKERS: 4}\n    entrypoint: [/bin/sh, -c]\n"
                   "    command: [\"exec worker --queue orders\", 2]\n")
    fleet = load_fleet(write_fleet(tmp_path, text))
    payments = fleet.services["payments"]
    assert (payments.entrypoint, payments.command) == (("/bin/sh", "-c"), ("exec worker --queue orders", "2"))
    assert (fleet.services["orders"].entrypoint, fleet.services["orders"].command) == (None, None)  # the image's own


@pytest.mark.parametrize("value", ["'serve --port 8080'", "[serve, [nested]]", "[true]", "{a: b}"])
def test_a_command_that_is_not_a_list_of_arguments_is_reported(tmp_path, value):
    text = replace(GOOD, "    env: {LOG_LEVEL: info, WORKERS: 4}\n",
                   f"    env: {{LOG_LEVEL: info}}\n    command: {value}\n")
    (problem,) = problems_of(write_fleet(tmp_path, text))
    assert problem.startswith("fleet.yaml:20: service 'payments', field 'command': expected a list of arguments")


@pytest.mark.parametrize("owner", ["orders", "team:", "@example.com", "team:with space"])
def test_owners_must_be_emails_or_teams(tmp_path, owner):
    text = replace(GOOD, "[orders@example.com, team:orders]", f"['{owner}']")
    (problem,) = problems_of(write_fleet(tmp_path, text))
    assert "field 'owners'" in problem and "neither an email address nor team:<name>" in problem


def test_a_service_is_built_or_prebuilt_never_both_or_neither(tmp_path):
    text = replace(GOOD, "    image: redis:7.2\n", "    image: redis:7.2\n    repo: repos/x\n")
    text = replace(text, "  inventory:\n    repo: repos/inventory\n    build: {}", "  inventory:\n    port: 1")
    problems = problems_of(write_fleet(tmp_path, text))
    assert any("service 'redis-cart', field 'image': a service is either built" in p for p in problems)
    assert any("service 'inventory', field 'build': missing" in p for p in problems)


def test_yaml_that_does_not_parse_names_the_line(tmp_path):
    path = write_fleet(tmp_path, GOOD + "  staging: [unclosed\n")
    (problem,) = problems_of(path)
    assert problem.startswith("fleet.yaml:") and "not valid YAML" in problem


def test_a_missing_manifest_file_is_a_clear_error(tmp_path):
    (problem,) = problems_of(tmp_path / "nope.yaml")
    assert problem.endswith("nope.yaml: manifest file not found")


def test_the_fleet_path_comes_from_the_flag_then_the_environment_then_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RELEASE_GRAPH_FLEET", raising=False)
    assert resolve_fleet_path(None) == tmp_path / "fleet.yaml"
    monkeypatch.setenv("RELEASE_GRAPH_FLEET", str(tmp_path / "env.yaml"))
    assert resolve_fleet_path(None) == tmp_path / "env.yaml"
    assert resolve_fleet_path("given.yaml") == tmp_path / "given.yaml"


def test_validate_prints_every_problem_and_exits_non_zero_without_traceback(tmp_path, capsys):
    path = write_fleet(tmp_path, replace(GOOD, "port: 8080", "port: -1"))
    assert cli_main(["validate", "--fleet", str(path)]) == 2
    err = capsys.readouterr().err
    assert "service 'orders', field 'port'" in err and "Traceback" not in err
    good = write_fleet(tmp_path, GOOD)
    assert cli_main(["validate", str(good)]) == 0
    assert "fleet 'shop' is valid: 5 services (3 built, 2 prebuilt)" in capsys.readouterr().out


ENVIRONMENTS = """\
environments:
  staging:
    target: docker
    branch: staging
    publish: {orders: 18080}
    config: {orders: {LOG_LEVEL: debug}}
    secrets: {payments: {PAYMENTS_API_KEY: {aws: shop/staging/payments}, WEBHOOK_TOKEN: {env: SHOP_TOKEN}}}
    scan_threshold: critical
  prod:
    target: docker
    approval: required
    approvers: [alice@example.com, team:release]
    author_cannot_approve: true
teams:
  release: [rm@example.com, Alice@example.com]
"""


def with_environments(text: str) -> str:
    return GOOD.split("environments:\n")[0] + text


def test_environments_carry_config_secrets_approvers_and_promotion_branches(tmp_path):
    fleet = load_fleet(write_fleet(tmp_path, with_environments(ENVIRONMENTS)))
    staging, prod = fleet.environments["staging"], fleet.environments["prod"]
    assert staging.branch == "staging" and dict(staging.publish) == {"orders": 18080}
    assert staging.service_env(fleet.services["orders"]) == {"LOG_LEVEL": "debug"}
    refs = staging.secrets["payments"]
    assert refs["PAYMENTS_API_KEY"].describe() == "aws:shop/staging/payments"
    assert refs["WEBHOOK_TOKEN"].source == "env" and staging.scan_threshold == "CRITICAL"
    assert prod.approvers == ("alice@example.com", "team:release") and prod.author_cannot_approve
    # the team resolved through `teams:`; Alice is in the list and in the team, and counts once
    assert prod.eligible_approvers == ("alice@example.com", "rm@example.com")
    assert prod.approvals_required == 1 and prod.approval_expires_after_hours is None


def test_environment_settings_name_the_environment_and_field(tmp_path):
    text = ENVIRONMENTS.replace("publish: {orders: 18080}", "publish: {ordres: 18080}")
    text = text.replace("{env: SHOP_TOKEN}", "{vault: x}")
    text = text.replace("approvers: [alice@example.com, team:release]", "approvers: [alice]")
    problems = problems_of(write_fleet(tmp_path, with_environments(text)))
    assert problems == [
        "fleet.yaml:30: environment 'staging', field 'publish.ordres': 'ordres' is not a service of this fleet",
        "fleet.yaml:32: environment 'staging', field 'secrets.payments.WEBHOOK_TOKEN': "
        "expected {aws: <Secrets Manager secret id>} or {env: <VARIABLE of the orchestrator>}",
        "fleet.yaml:37: environment 'prod', field 'approvers': approver 'alice' is neither an email address "
        "nor team:<name>",
    ]


# --- approvals: who may approve, how many, for how long -------------------------------------------------

APPROVALS = """\
environments:
  staging: {target: docker}
  prod:
    target: docker
    approval: required
    approvers: [team:release-managers, ops@example.com]
    approvals_required: 2
    approval_expires_after_hours: 24
    author_cannot_approve: true
teams:
  release-managers: [ann@example.com, bob@example.com]
"""


def test_prod_asks_two_distinct_approvers_from_a_team_within_a_day(tmp_path):
    fleet = load_fleet(write_fleet(tmp_path, with_environments(APPROVALS)))
    prod = fleet.environments["prod"]
    assert dict(fleet.teams) == {"release-managers": ("ann@example.com", "bob@example.com")}
    assert prod.eligible_approvers == ("ann@example.com", "bob@example.com", "ops@example.com")
    assert prod.approvals_required == 2 and prod.approval_expires_after_hours == 24
    # exact identities: the whole email, any case; never a part of one, never the team's name typed by hand
    assert prod.may_approve("Bob@Example.com") and prod.may_approve("ops@example.com")
    assert not prod.may_approve("ann") and not prod.may_approve("team:release-managers")
    assert not prod.may_approve("joanna@example.com")
    # an environment without approvers lets anyone approve
    assert fleet.environments["staging"].may_approve("anyone at all")


def test_an_approvers_team_the_manifest_does_not_define_is_refused(tmp_path):
    text = APPROVALS.replace("team:release-managers", "team:release-manager")
    problems = problems_of(write_fleet(tmp_path, with_environments(text)))
    assert problems == [
        "fleet.yaml:31: environment 'prod', field 'approvers': team 'release-manager' is not defined in the "
        "manifest's teams: section (defined: release-managers)"]


def test_a_team_without_a_teams_section_is_refused(tmp_path):
    text = APPROVALS.split("teams:")[0].replace("approvals_required: 2", "approvals_required: 1")
    assert problems_of(write_fleet(tmp_path, with_environments(text))) == [
        "fleet.yaml:31: environment 'prod', field 'approvers': team 'release-managers' is not defined in the "
        "manifest's teams: section (defined: none)"]


def test_bad_teams_name_the_team_and_what_is_wrong(tmp_path):
    text = APPROVALS.replace("  release-managers: [ann@example.com, bob@example.com]\n", """\
  release-managers: [ann@example.com, team:ops, bob]
  empty: []
  on call: [carl@example.com]
""")
    problems = problems_of(write_fleet(tmp_path, with_environments(text)))
    assert problems == [
        "fleet.yaml:36: field 'teams.release-managers': member 'team:ops' is not an email address (a team lists "
        "people, not other teams)",
        "fleet.yaml:36: field 'teams.release-managers': member 'bob' is not an email address (a team lists people, "
        "not other teams)",
        "fleet.yaml:37: field 'teams.empty': expected a list of at least one member email",
        "fleet.yaml:38: field 'teams.on call': a team name is letters, digits, '.', '_' and '-'",
        # a team with bad members is not defined, so prod's reference to it is a problem of its own
        "fleet.yaml:31: environment 'prod', field 'approvers': team 'release-managers' is not defined in the "
        "manifest's teams: section (defined: none)",
    ]


def test_teams_must_be_a_mapping(tmp_path):
    text = APPROVALS.replace("approvers: [team:release-managers, ops@example.com]", "approvers: [ops@example.com]")
    text = text.replace("approvals_required: 2", "approvals_required: 1")
    text = text.split("teams:")[0] + "teams: [ann@example.com]\n"
    assert problems_of(write_fleet(tmp_path, with_environments(text))) == [
        "fleet.yaml:35: field 'teams': expected a mapping of team name to a list of member emails, such as "
        "{release: [ann@shop.example]}"]


@pytest.mark.parametrize(("setting", "problem"), [
    ("approvals_required: 0", "field 'approvals_required': expected a whole number of at least 1, got 0"),
    ("approvals_required: two", "field 'approvals_required': expected a whole number of at least 1, got 'two'"),
    ("approvals_required: 1.5", "field 'approvals_required': expected a whole number of at least 1, got 1.5"),
    ("approvals_required: 4", "field 'approvals_required': 4 distinct approvals are required but the approvers "
     "resolve to 3 (ann@example.com, bob@example.com, ops@example.com): the environment could never deploy"),
    ("approval_expires_after_hours: 0", "field 'approval_expires_after_hours': expected a number of at least 0.01, "
     "got 0"),
    ("approval_expires_after_hours: 24h", "field 'approval_expires_after_hours': expected a number of at least "
     "0.01, got '24h'"),
])
def test_bad_approval_policies_name_the_environment_and_field(tmp_path, setting, problem):
    key = setting.split(":")[0]
    text = "\n".join(f"    {setting}" if line.strip().startswith(key + ":") else line
                     for line in APPROVALS.splitlines()) + "\n"
    (found,) = problems_of(write_fleet(tmp_path, with_environments(text)))
    assert found.endswith(f"environment 'prod', {problem}")


def test_approval_policies_only_apply_where_an_approval_is_required(tmp_path):
    text = APPROVALS.replace("  staging: {target: docker}",
                             "  staging: {target: docker, approvals_required: 2, approval_expires_after_hours: 8}")
    assert problems_of(write_fleet(tmp_path, with_environments(text))) == [
        "fleet.yaml:27: environment 'staging', field 'approvals_required': approvals_required only applies with "
        "approval: required",
        "fleet.yaml:27: environment 'staging', field 'approval_expires_after_hours': approval_expires_after_hours "
        "only applies with approval: required",
    ]


# --- security: -------------------------------------------------------------------------------------------------

SECURITY = """\
security:
  waivers: policy/waivers.yaml
  scanner: ecr
  ecr: {region: eu-west-1, endpoint_url: "http://127.0.0.1:5001", registry_id: "123456789012"}
  compliance_blocking: [DL3007, CKV_DOCKER_3]
  sbom: false
"""


def with_security(text: str, security: str = SECURITY) -> str:
    return replace(text, "services:\n", security + "services:\n")


def test_without_a_security_block_only_sast_and_sbom_are_on(tmp_path):
    fleet = load_fleet(write_fleet(tmp_path, GOOD))
    security = fleet.security
    assert security.scanner == "none" and security.ecr is None and security.sbom is True
    assert security.compliance_blocking is None and security.waivers is None
    # A waivers.yaml beside the manifest is the default waivers file
    (tmp_path / "waivers.yaml").write_text("waivers: []\n")
    assert load_fleet(tmp_path / "fleet.yaml").security.waivers == tmp_path / "waivers.yaml"


def test_the_security_block_names_scanner_waivers_compliance_rules_and_sbom(tmp_path, monkeypatch):
    (tmp_path / "policy").mkdir()
    (tmp_path / "policy" / "waivers.yaml").write_text("waivers: []\n")
    fleet = load_fleet(write_fleet(tmp_path, with_security(GOOD)))
    security = fleet.security
    assert security.waivers == tmp_path / "policy" / "waivers.yaml"
    assert security.scanner == "ecr" and security.sbom is False
    assert security.ecr.region == "eu-west-1" and security.ecr.registry_id == "123456789012"
    assert security.ecr.resolved_endpoint_url() == "http://127.0.0.1:5001"
    assert security.compliance_blocking == ("DL3007", "CKV_DOCKER_3")
    # Without endpoint_url, the endpoint comes from the environment at use time (else AWS itself)
    text = with_security(GOOD, "security:\n  scanner: ecr\n  ecr: {region: us-east-1, registry_id: 012345678901}\n"
                         "  compliance_blocking: []\n")
    security = load_fleet(write_fleet(tmp_path, text)).security
    assert security.ecr.registry_id == "012345678901" and security.compliance_blocking == ()
    monkeypatch.delenv("RELEASE_GRAPH_AWS_ENDPOINT_URL", raising=False)
    assert security.ecr.resolved_endpoint_url() is None
    monkeypatch.setenv("RELEASE_GRAPH_AWS_ENDPOINT_URL", "http://127.0.0.1:5999")
    assert security.ecr.resolved_endpoint_url() == "http://127.0.0.1:5999"


def test_security_mistakes_name_the_line_and_field(tmp_path):
    text = with_security(GOOD, """\
security:
  waivers: missing.yaml
  scanner: clair
  ecr: {region: us-east-1}
  sbom: yes please
  scan_threshold: high
""")
    assert problems_of(write_fleet(tmp_path, text)) == [
        "fleet.yaml:8: field 'security.scan_threshold': unknown key (expected one of: compliance_blocking, ecr, "
        "osv, provenance, sbom, scanner, waivers)",
        f"fleet.yaml:4: field 'security.waivers': waivers file 'missing.yaml' does not exist in {tmp_path}",
        "fleet.yaml:5: field 'security.scanner': expected one of none, ecr, trivy, grype, osv, got 'clair'",
        "fleet.yaml:6: field 'security.ecr': ECR settings only apply with scanner: ecr (scanner is 'none')",
        "fleet.yaml:7: field 'security.sbom': expected true or false, got 'yes please'",
    ]


def test_the_provenance_signing_key_is_named_never_written(tmp_path):
    text = with_security(GOOD, "security:\n  provenance: {signing_key: {env: SHOP_PROVENANCE_KEY}}\n")
    fleet = load_fleet(write_fleet(tmp_path, text))
    assert fleet.security.provenance.signing_key.describe() == "env:SHOP_PROVENANCE_KEY"
    text = with_security(GOOD, """\
security:
  provenance:
    signing_key: "-----BEGIN PRIVATE KEY----- MC4CAQAwBQYDK2VwBCIEI"
    public_key: key.pub
""")
    problems = problems_of(write_fleet(tmp_path, text))
    assert problems == [
        "fleet.yaml:6: field 'security.provenance.public_key': unknown key (expected one of: signing_key)",
        "fleet.yaml:5: field 'security.provenance.signing_key': the signing key is a secret: name where it is "
        "kept, {env: <VARIABLE of the orchestrator>} or {aws: <Secrets Manager secret id>}, never the key itself",
    ]
    assert not any("MC4CAQ" in p for p in problems)


def test_ecr_settings_are_checked(tmp_path):
    text = with_security(GOOD, """\
security:
  scanner: ecr
  ecr:
    region: Europe
    endpoint_url: 127.0.0.1:5001
    registry_id: "12345"
    profile: default
""")
    assert problems_of(write_fleet(tmp_path, text)) == [
        "fleet.yaml:9: field 'security.ecr.profile': unknown key (expected one of: endpoint_url, region, registry_id)",
        "fleet.yaml:6: field 'security.ecr.region': expected an AWS region such as eu-west-1, got 'Europe'",
        "fleet.yaml:7: field 'security.ecr.endpoint_url': expected an http(s) URL such as http://127.0.0.1:5001, "
        "got '127.0.0.1:5001' (leave it out to use $RELEASE_GRAPH_AWS_ENDPOINT_URL, else AWS itself)",
        "fleet.yaml:8: field 'security.ecr.registry_id': expected a 12-digit AWS account id, got '12345'",
    ]
    text = with_security(GOOD, "security: {scanner: ecr}\n")
    assert problems_of(write_fleet(tmp_path, text)) == [
        "fleet.yaml:3: field 'security.scanner': scanner: ecr needs ecr: {region: <AWS region>} "
        "(endpoint_url and registry_id are optional)",
    ]


def test_the_osv_scanner_reads_a_folder_or_a_zip_beside_the_manifest(tmp_path):
    (tmp_path / "osv" / "PyPI").mkdir(parents=True)
    fleet = load_fleet(write_fleet(tmp_path, with_security(GOOD, "security: {scanner: osv, osv: {database: osv}}\n")))
    assert fleet.security.scanner == "osv" and fleet.security.osv.database == tmp_path / "osv"
    (tmp_path / "PyPI-all.zip").write_bytes(b"PK\x05\x06" + b"\0" * 18)  # an empty zip
    text = with_security(GOOD, "security: {scanner: osv, osv: {database: PyPI-all.zip}}\n")
    assert load_fleet(write_fleet(tmp_path, text)).security.osv.database == tmp_path / "PyPI-all.zip"


def test_osv_settings_are_checked(tmp_path):
    (tmp_path / "notes.txt").write_text("not a database\n")
    text = with_security(GOOD, """\
security:
  scanner: osv
  osv: {database: vulns, mirror: nightly}
""")
    assert problems_of(write_fleet(tmp_path, text)) == [
        "fleet.yaml:5: field 'security.osv.mirror': unknown key (expected one of: database)",
        f"fleet.yaml:5: field 'security.osv.database': OSV database 'vulns' does not exist in {tmp_path}",
    ]
    text = with_security(GOOD, "security: {scanner: osv, osv: {database: notes.txt}}\n")
    assert problems_of(write_fleet(tmp_path, text)) == [
        f"fleet.yaml:3: field 'security.osv.database': OSV database 'notes.txt' is neither a folder nor a .zip "
        f"file in {tmp_path}",
    ]
    text = with_security(GOOD, "security: {scanner: osv, osv: {database: /srv/osv}}\n")
    assert problems_of(write_fleet(tmp_path, text)) == [
        "fleet.yaml:3: field 'security.osv.database': expected a path relative to this file: a folder of OSV JSON "
        "records or an OSV all.zip (e.g. osv or osv/PyPI-all.zip), got '/srv/osv'",
    ]
    assert problems_of(write_fleet(tmp_path, with_security(GOOD, "security: {scanner: osv}\n"))) == [
        "fleet.yaml:3: field 'security.scanner': scanner: osv needs osv: {database: <folder of OSV JSON records, "
        "or an OSV all.zip, beside this file>}",
    ]
    text = with_security(GOOD, "security: {scanner: trivy, osv: {database: osv}}\n")
    assert problems_of(write_fleet(tmp_path, text)) == [
        "fleet.yaml:3: field 'security.osv': OSV settings only apply with scanner: osv (scanner is 'trivy')",
    ]


def test_an_unknown_compliance_rule_id_is_an_error_naming_it(tmp_path, capsys):
    text = with_security(GOOD, "security:\n  compliance_blocking: [DL3007, CKV_DOCKER_999, DL9999]\n")
    path = write_fleet(tmp_path, text)
    # Loading runs no tool: `release-graph validate` (and the compliance check) ask the installed tools.
    fleet = load_fleet(path)
    assert fleet.security.compliance_blocking == ("DL3007", "CKV_DOCKER_999", "DL9999")
    (problem,) = rule_id_problems(fleet)
    assert problem.startswith("fleet.yaml:4: field 'security.compliance_blocking': unknown rule ids "
                              "CKV_DOCKER_999, DL9999: not a hadolint rule")
    assert cli_main(["validate", str(path)]) == 2
    assert f"  - {problem}\n" in capsys.readouterr().err
    text = with_security(GOOD, "security:\n  compliance_blocking: DL3007\n")
    assert problems_of(write_fleet(tmp_path, text)) == [
        "fleet.yaml:4: field 'security.compliance_blocking': expected a list of rule ids such as "
        "[DL3007, CKV_DOCKER_3], got 'DL3007'",
    ]
    text = with_security(GOOD, "security:\n  compliance_blocking: [DL3007, 7]\n")
    assert problems_of(write_fleet(tmp_path, text)) == [
        "fleet.yaml:4: field 'security.compliance_blocking': rule ids must be text such as DL3007 or "
        "CKV_DOCKER_2, got [7]",
    ]


def test_compliance_rules_cannot_be_checked_without_checkov(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RELEASE_GRAPH_TOOLS", str(tmp_path / "no-tools"))
    path = write_fleet(tmp_path, with_security(GOOD, "security:\n  compliance_blocking: [CKV_DOCKER_3]\n"))
    fleet = load_fleet(path)  # without checkov the manifest still loads (and the graph builds)
    (problem,) = rule_id_problems(fleet)
    assert problem.startswith("fleet.yaml:4: field 'security.compliance_blocking': cannot check the rule ids: "
                              f"checkov is not installed: no {tmp_path}/no-tools/checkov-venv/bin/checkov")
    assert cli_main(["validate", str(path)]) == 2
    assert problem in capsys.readouterr().err


def test_an_environment_rolls_out_as_a_canary_with_steps_a_bake_time_and_an_analysis(tmp_path):
    text = replace(GOOD, "  prod: {target: docker, approval: required}\n", """\
  prod:
    target: docker
    approval: required
    rollout:
      strategy: canary
      steps: [{weight: 10, pause_seconds: 30}, {weight: 50, pause_seconds: 60, manual: true}]
      bake_seconds: 120
      analysis:
        providers: [haproxy, prometheus, cloudwatch]
        max_error_rate: 0.01
        max_p95_ms: 300
        on_inconclusive: rollback
        prometheus: {url: "http://127.0.0.1:9091"}
        cloudwatch: {region: eu-west-1, alarms: [orders-5xx]}
""")
    rollout = load_fleet(write_fleet(tmp_path, text)).environments["prod"].rollout
    assert rollout.strategy == "canary" and [(s.weight, s.pause_seconds, s.manual) for s in rollout.steps] == [
        (10, 30, False), (50, 60, True)]
    assert rollout.bake_seconds == 120 and rollout.progressive
    assert rollout.analysis.providers == ("haproxy", "prometheus", "cloudwatch")
    assert (rollout.analysis.max_p95_ms, rollout.analysis.on_inconclusive) == (300, "rollback")
    assert rollout.analysis.prometheus.url == "http://127.0.0.1:9091"
    assert rollout.analysis.cloudwatch.alarms == ("orders-5xx",)
    # without a rollout block an environment replaces at once, as before
    assert load_fleet(write_fleet(tmp_path, GOOD)).environments["prod"].rollout.strategy == "replace"


def test_a_kubernetes_rollout_that_measures_needs_a_provider_other_than_the_docker_target_s_haproxy(tmp_path):
    def environment(rollout: str) -> str:
        return replace(GOOD, "  prod: {target: docker, approval: required}\n", f"""\
  prod:
    target: kubernetes
    kubernetes: {{namespace: shop-prod, version: '1.33'}}
    rollout: {rollout}
""")

    measured = environment("{strategy: canary, steps: [{weight: 10, pause_seconds: 30}]}")
    problems = "\n".join(problems_of(write_fleet(tmp_path, measured)))
    assert ("environment 'prod', field 'rollout.analysis.providers': haproxy measures the docker target's switch; a "
            "kubernetes environment's rollout is measured by prometheus or cloudwatch") in problems
    prometheus = environment("{strategy: blue-green, hold_seconds: 60, analysis: {providers: [prometheus], "
                             "prometheus: {url: 'http://127.0.0.1:9090'}}}")
    assert load_fleet(write_fleet(tmp_path, prometheus)).environments["prod"].rollout.strategy == "blue-green"
    unmeasured = environment("{strategy: canary, steps: [{weight: 10}]}")  # no pause: nothing to measure
    assert load_fleet(write_fleet(tmp_path, unmeasured)).environments["prod"].rollout.steps[0].weight == 10


def test_a_broken_rollout_names_the_environment_and_each_field(tmp_path):
    text = replace(GOOD, "  prod: {target: docker, approval: required}\n", """\
  prod:
    target: docker
    rollout:
      strategy: canary
      steps: [{weight: 50}, {weight: 20, pause_seconds: -1}]
      hold_seconds: 10
      analysis: {providers: [datadog], max_error_rate: 2, consecutive_error_limit: 0,
                 prometheus: {url: "ftp://metrics", p95_query: 95},
                 cloudwatch: {region: 7, alarms: orders-5xx, dimension: x}}
  staging:
    rollout: {strategy: rainbow}
""").replace("  staging: {target: docker}\n", "")
    problems = "\n".join(problems_of(write_fleet(tmp_path, text)))
    assert ("environment 'prod', field 'rollout.steps[1].weight': weights must grow step by step: 20 follows 50"
            in problems)
    assert "field 'rollout.steps[1].pause_seconds': expected a number of at least 0, got -1" in problems
    assert "field 'rollout.hold_seconds': only a blue-green rollout keeps the previous color" in problems
    assert "field 'rollout.analysis.providers': expected a list of haproxy, prometheus, cloudwatch" in problems
    assert "field 'rollout.analysis.max_error_rate': expected a number between 0 and 1, got 2" in problems
    assert "field 'rollout.analysis.consecutive_error_limit'" in problems
    assert "field 'rollout.analysis.prometheus.url': expected an http(s) URL, got 'ftp://metrics'" in problems
    assert "field 'rollout.analysis.prometheus.p95_query': expected a PromQL query, got 95" in problems
    assert "field 'rollout.analysis.cloudwatch.region': expected a non-empty string, got 7" in problems
    assert "field 'rollout.analysis.cloudwatch.alarms': expected a list of alarm names, got 'orders-5xx'" in problems
    assert "field 'dimension': unknown key (expected one of: alarms, endpoint_url, namespace, region)" in problems
    assert "environment 'staging', field 'rollout.strategy': expected one of replace, blue-green, canary" in problems
    assert "fleet.yaml:" in problems  # every problem names the file and its line
