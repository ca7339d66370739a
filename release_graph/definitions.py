"""Entry point for `dagster dev` / workspace.yaml: the fleet named by $RELEASE_GRAPH_FLEET or ./fleet.yaml."""

from release_graph.wiring import load_definitions

defs = load_definitions()
