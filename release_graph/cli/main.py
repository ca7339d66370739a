"""`release-graph`: the command line for release managers and CI.

Every command takes `--fleet PATH` (default: $RELEASE_GRAPH_FLEET, then ./fleet.yaml). Bad input prints
what is wrong (file, service, field) and exits non-zero, never with a traceback.
"""

from __future__ import annotations

import argparse
import sys

from release_graph.fleet import ManifestError, load_fleet, resolve_fleet_path

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1


def _fleet_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--fleet", help="the fleet manifest (default: $RELEASE_GRAPH_FLEET, then ./fleet.yaml)")


def cmd_validate(args: argparse.Namespace) -> int:
    from release_graph.security.compliance import rule_id_problems

    path = resolve_fleet_path(args.fleet or args.fleet_positional)
    fleet = load_fleet(path)
    problems = rule_id_problems(fleet)  # asks the installed tools, which loading the manifest never does
    if problems:
        raise ManifestError(problems)
    built = len(fleet.built_services)
    print(
        f"{path}: fleet '{fleet.name}' is valid: {len(fleet.services)} services ({built} built, "
        f"{len(fleet.services) - built} prebuilt), environments: {', '.join(fleet.environments)}"
    )
    for environment in fleet.environments.values():
        if environment.kubernetes is None:
            continue
        from resources.targets.kubernetes.objects import KubernetesObjectError, validate_environment

        try:
            count = validate_environment(fleet, environment)
        except KubernetesObjectError as exc:
            raise ManifestError([f"{path.name}: {exc}"]) from None
        print(f"environment '{environment.name}': the {count} Kubernetes objects a release sends are valid for "
              f"Kubernetes {environment.kubernetes.version} (strict schema validation)")
    if args.explain_network:
        from release_graph.fleet.network import allowed_calls

        print("calls the manifest allows (its edges, published ports and end-to-end tests): the only calls the network "
              "admits, on the docker target (its switch) and in the NetworkPolicies generated for kubernetes:")
        for call in allowed_calls(fleet):
            print(f"  {call.line()}")
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    from release_graph.cli.operations import build_image

    fleet = load_fleet(resolve_fleet_path(args.fleet))
    return build_image(fleet, args.service, sha=args.sha)


def cmd_deploy(args: argparse.Namespace) -> int:
    from release_graph.cli.operations import deploy

    return deploy(load_fleet(resolve_fleet_path(args.fleet)), args.service, args.env, digest=args.digest)


def cmd_approve(args: argparse.Namespace) -> int:
    from release_graph.cli.operations import approve

    return approve(load_fleet(resolve_fleet_path(args.fleet)), args.service, args.env, by=args.by,
                   ticket=args.ticket, digest=args.digest)


def cmd_status(args: argparse.Namespace) -> int:
    from release_graph.cli.operations import status

    return status(load_fleet(resolve_fleet_path(args.fleet)), as_json=args.json)


def cmd_retry(args: argparse.Namespace) -> int:
    from release_graph.cli.operations import retry

    return retry(load_fleet(resolve_fleet_path(args.fleet)), args.service, args.env)


def cmd_environments(args: argparse.Namespace) -> int:
    from release_graph.cli.operations import environments

    return environments(load_fleet(resolve_fleet_path(args.fleet)), as_json=args.json)


def cmd_teardown(args: argparse.Namespace) -> int:
    from release_graph.cli.operations import teardown

    fleet = load_fleet(resolve_fleet_path(args.fleet))
    if not args.all and not args.env:
        print("release-graph teardown: name an environment with --env, or --all", file=sys.stderr)
        return EXIT_BAD_INPUT
    return teardown(fleet, list(fleet.environments) if args.all else args.env)


def cmd_why(args: argparse.Namespace) -> int:
    from release_graph.cli.operations import why

    return why(load_fleet(resolve_fleet_path(args.fleet)), args.service, args.env, as_json=args.json)


def cmd_rollout(args: argparse.Namespace) -> int:
    from release_graph.cli.operations import rollout

    return rollout(load_fleet(resolve_fleet_path(args.fleet)), args.action, args.service, args.env)


def cmd_rollback(args: argparse.Namespace) -> int:
    from release_graph.cli.operations import rollback

    return rollback(load_fleet(resolve_fleet_path(args.fleet)), args.service, args.env, by=args.by,
                    reason=args.reason)


def cmd_dora(args: argparse.Namespace) -> int:
    from release_graph.cli.operations import dora

    if args.days is not None and args.days < 1:
        print(f"release-graph dora: --days must be at least 1, got {args.days}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return dora(load_fleet(resolve_fleet_path(args.fleet)), days=args.days, as_json=args.json)


def cmd_webhooks(args: argparse.Namespace) -> int:
    import os

    from release_graph.webhooks import serve

    return serve(resolve_fleet_path(args.fleet), host=args.host, port=args.port, secret_variable=args.secret_env,
                 environ=os.environ)


def cmd_import(argv: list[str]) -> int:
    from release_graph.importer.cli import run

    return run(argv)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="release-graph", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    validate = commands.add_parser("validate", help="check a fleet manifest and list every problem")
    validate.add_argument("fleet_positional", nargs="?", metavar="FLEET", help="the manifest (same as --fleet)")
    _fleet_argument(validate)
    validate.add_argument("--explain-network", action="store_true",
                          help="also list the calls the network allows: the manifest's edges and published ports")
    validate.set_defaults(handler=cmd_validate)

    build = commands.add_parser("build", help="build, test and push one service's image for a commit")
    build.add_argument("service")
    build.add_argument("--sha", help="the commit (full or abbreviated; default: the branch head)")
    _fleet_argument(build)
    build.set_defaults(handler=cmd_build)

    deploy = commands.add_parser("deploy", help="deploy a digest that passed the previous stage (rollback too)")
    deploy.add_argument("service")
    deploy.add_argument("--env", required=True)
    deploy.add_argument("--digest", help="sha256:... (default: what the previous stage passed last)")
    _fleet_argument(deploy)
    deploy.set_defaults(handler=cmd_deploy)

    approve = commands.add_parser("approve", help="approve a digest for an approval-gated environment")
    approve.add_argument("service")
    approve.add_argument("--env", required=True)
    approve.add_argument("--by", required=True,
                         help="who approves: an email the environment's approvers name (any name where they name "
                         "none); behind the UI's authenticating proxy, approve in the UI instead")
    approve.add_argument("--ticket", help="change ticket")
    approve.add_argument("--digest", help="the digest approved (default: what the previous environment runs)")
    _fleet_argument(approve)
    approve.set_defaults(handler=cmd_approve)

    status = commands.add_parser("status", help="which version runs where; exits 1 when an environment drifted")
    status.add_argument("--json", action="store_true")
    _fleet_argument(status)
    status.set_defaults(handler=cmd_status)

    retry = commands.add_parser("retry", help="run one stage again (integration or an environment); the release "
                                "continues from there")
    retry.add_argument("service")
    retry.add_argument("--env", required=True, help="an environment, or `integration`")
    _fleet_argument(retry)
    retry.set_defaults(handler=cmd_retry)

    envs = commands.add_parser("environments", help="what runs per environment: containers (of any instance), "
                               "proxies and ports")
    envs.add_argument("--json", action="store_true")
    _fleet_argument(envs)
    envs.set_defaults(handler=cmd_environments)

    teardown = commands.add_parser("teardown", help="remove an environment's containers, network and proxy")
    teardown.add_argument("--env", action="append", help="an environment (repeatable)")
    teardown.add_argument("--all", action="store_true", help="every environment of the fleet")
    _fleet_argument(teardown)
    teardown.set_defaults(handler=cmd_teardown)

    why = commands.add_parser("why", help="why a stage is where it is: running, up to date, waiting for what, "
                              "blocked or failed; exits 1 when blocked or failed")
    why.add_argument("service")
    why.add_argument("--env", required=True, help="an environment, or `integration`")
    why.add_argument("--json", action="store_true")
    _fleet_argument(why)
    why.set_defaults(handler=cmd_why)

    rollout = commands.add_parser("rollout", help="a progressive rollout: status (exits 1 when interrupted), "
                                  "promote a paused one, abort one")
    rollout.add_argument("action", choices=["status", "promote", "abort"])
    rollout.add_argument("service")
    rollout.add_argument("--env", required=True)
    _fleet_argument(rollout)
    rollout.set_defaults(handler=cmd_rollout)

    rollback = commands.add_parser("rollback", help="back to the digest deployed before the current one, at once, "
                                   "recorded with who and why")
    rollback.add_argument("service")
    rollback.add_argument("--env", required=True)
    rollback.add_argument("--reason", required=True)
    rollback.add_argument("--by", required=True, help="who rolls back (email or name)")
    _fleet_argument(rollback)
    rollback.set_defaults(handler=cmd_rollback)

    dora = commands.add_parser("dora", help="DORA's four figures for production: deployment frequency, lead time, "
                               "change failure rate, time to restore, per service and for the fleet")
    dora.add_argument("--days", type=int, help="one window of this many days (default: 7, 30 and 90)")
    dora.add_argument("--json", action="store_true")
    _fleet_argument(dora)
    dora.set_defaults(handler=cmd_dora)

    webhooks = commands.add_parser("webhooks", help="receive Git push events (GitHub, GitLab, Gitea; signed) and "
                                   "make the Git sensor look at the pushed branch at once")
    webhooks.add_argument("--port", type=int, required=True, help="the port to listen on (0: any free one)")
    webhooks.add_argument("--host", default="127.0.0.1", help="the address to listen on (default: 127.0.0.1)")
    webhooks.add_argument("--secret-env", default="RELEASE_GRAPH_WEBHOOK_SECRET", metavar="VARIABLE",
                          help="the environment variable holding the webhook secret (default: "
                          "RELEASE_GRAPH_WEBHOOK_SECRET)")
    _fleet_argument(webhooks)
    webhooks.set_defaults(handler=cmd_webhooks)

    commands.add_parser("import", add_help=False,
                        help="write a fleet.yaml from docker-compose files, Kubernetes manifests or an Aspire manifest")
    return parser


def quiet_dagster() -> None:
    """The terminal gets each command's own summary: Dagster's beta and preview warnings and its event
    stream are for the UI and the log, not for a release manager's terminal."""
    import logging
    import warnings

    warnings.filterwarnings("ignore", module=r"dagster(\.|$)")
    warnings.filterwarnings("ignore", message=r".*(is currently in (beta|preview)|deprecated).*")
    logging.getLogger("dagster").setLevel(logging.ERROR)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "import":
        # The importer owns its arguments (files, folders, output); hand them over untouched.
        return cmd_import(argv[1:])
    quiet_dagster()
    parser = build_parser()
    args = parser.parse_args(argv)
    from resources.git import GitError
    from resources.targets import TargetError

    try:
        return args.handler(args)
    except (ManifestError, GitError) as exc:
        print(f"release-graph {args.command}: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except TargetError as exc:  # the engine or a proxy did not answer: one line, not a traceback
        print(f"release-graph {args.command}: {exc}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    raise SystemExit(main())
