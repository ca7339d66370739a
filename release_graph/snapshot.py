"""A snapshot of the whole asset graph (keys, deps, groups, checks, kinds, owners, automation), committed
and compared strictly by the tests, so a change of the graph is always a reviewed change.

`python -m release_graph.snapshot [--fleet PATH] [--write FILE]` prints (or writes) the snapshot of a fleet
(default: $RELEASE_GRAPH_FLEET, then ./fleet.yaml). Rewrite the demo's committed snapshot after an intended
change with `make snapshot`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import dagster as dg

from release_graph.fleet import load_fleet, resolve_fleet_path


def describe_condition(condition: dg.AutomationCondition | None) -> str | None:
    """A stable, readable text of a condition tree: operator, label and operands."""
    if condition is None:
        return None
    label = condition.get_label()
    text = condition.name + (f"[{label}]" if label else "")
    children = condition.children
    return text + (f"({', '.join(describe_condition(c) for c in children)})" if children else "")


def graph_snapshot(defs: dg.Definitions) -> dict:
    graph = defs.resolve_asset_graph()
    assets = {}
    for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
        node = graph.get(key)
        assets[key.to_user_string()] = {
            "group": node.group_name,
            "deps": sorted(k.to_user_string() for k in node.parent_keys),
            "kinds": sorted(t.removeprefix("dagster/kind/") for t in node.tags if t.startswith("dagster/kind/")),
            "tags": {k: v for k, v in sorted(node.tags.items()) if not k.startswith("dagster/kind/")},
            "owners": list(node.owners),
            "execution": "observable" if node.is_observable else (
                "materializable" if node.is_materializable else "external"),
            "automation": describe_condition(node.automation_condition),
            "pools": sorted(node.pools or []),
            "checks": {
                check_key.name: {
                    "blocking": graph.get_check_spec(check_key).blocking,
                    "automation": describe_condition(graph.get(check_key).automation_condition),
                }
                for check_key in sorted(node.check_keys, key=lambda c: c.name)
            },
        }
    return {
        "assets": assets,
        "sensors": sorted(s.name for s in defs.sensors or []),
        "jobs": sorted(j.name for j in defs.jobs or []),
    }


def fleet_snapshot(path: str | Path) -> dict:
    """The snapshot of the manifest at `path` with the default adapters."""
    from release_graph.wiring import build_definitions, default_resources

    # check_files=False: the snapshot describes the graph, whether or not the repos exist yet.
    fleet = load_fleet(path, check_files=False)
    return graph_snapshot(build_definitions(fleet, resources=default_resources(fleet)))


def snapshot_text(path: str | Path) -> str:
    return json.dumps(fleet_snapshot(path), indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fleet", help="the fleet manifest (default: $RELEASE_GRAPH_FLEET, then ./fleet.yaml)")
    parser.add_argument("--write", type=Path, metavar="FILE", help="write the snapshot to FILE instead of stdout")
    args = parser.parse_args(argv)
    text = snapshot_text(resolve_fleet_path(args.fleet))
    if args.write:
        args.write.write_text(text)
        print(f"wrote {args.write}")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
