"""The fleet as its manifest describes it: the model, its loading and validation, and the graph algorithms.

Plain Python: no Dagster, no subprocess. Everything above imports the fleet from here.
"""

from release_graph.fleet.manifest import (
    DNS_LABEL,
    IMAGE_REFERENCE,
    IMAGE_REPOSITORY,
    Environment,
    Fleet,
    ManifestError,
    Service,
    build_files_problem,
    find_hard_cycles,
    load_fleet,
    resolve_fleet_path,
    topological_order,
)

__all__ = [
    "DNS_LABEL",
    "IMAGE_REFERENCE",
    "IMAGE_REPOSITORY",
    "Environment",
    "Fleet",
    "ManifestError",
    "Service",
    "build_files_problem",
    "find_hard_cycles",
    "load_fleet",
    "resolve_fleet_path",
    "topological_order",
]
