"""The fleet as its manifest describes it: the model, its loading and validation, and the graph algorithms.

Plain Python: no Dagster, no subprocess. Everything above imports the fleet from here.

- model.py: the frozen dataclasses (Fleet, Service, Environment, ...)
- loader.py: reading and validating a manifest (load_fleet, ManifestError)
- yaml_lines.py: YAML with the line of every key (the manifest's and the importer's)
- dependencies.py: deployment order and cycles of hard edges
- references.py: image references (`host/path:tag@digest`)
"""

from release_graph.fleet.dependencies import find_hard_cycles, strongly_connected, topological_order
from release_graph.fleet.loader import (
    DNS_LABEL,
    ManifestError,
    build_files_problem,
    load_fleet,
    resolve_fleet_path,
)
from release_graph.fleet.model import (
    Build,
    Edge,
    Environment,
    Fleet,
    Hardening,
    RegistryAuth,
    SecretRef,
    Security,
    Service,
)
from release_graph.fleet.references import (
    ImageReference,
    is_image_reference,
    is_image_repository,
    parse_image_reference,
)

__all__ = [
    "DNS_LABEL",
    "Build",
    "Edge",
    "Environment",
    "Fleet",
    "ImageReference",
    "ManifestError",
    "RegistryAuth",
    "SecretRef",
    "Security",
    "Service",
    "Hardening",
    "build_files_problem",
    "find_hard_cycles",
    "is_image_reference",
    "is_image_repository",
    "load_fleet",
    "parse_image_reference",
    "resolve_fleet_path",
    "strongly_connected",
    "topological_order",
]
