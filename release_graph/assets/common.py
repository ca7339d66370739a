"""What every asset of a service shares: its group, owners and tags, its description, its edges as metadata."""

import dagster as dg

from release_graph.fleet import Fleet, Service
from release_graph.release.tags import SERVICE_TAG


def asset_attributes(service: Service) -> dict:
    """Group, owners and tags of every asset of `service` (the group name has `_` for `-`: Dagster's rule)."""
    return {
        "group_name": service.group,
        "owners": list(service.owners) or None,
        "tags": {SERVICE_TAG: service.name, **({"language": service.language} if service.language else {})},
    }


def describe(service: Service, what: str) -> str:
    return f"{what}\n\n{service.description}".strip() if service.description else what


def edges_metadata(fleet: Fleet, service: Service) -> dict:
    """The service's edges as a release manager reads them; hard ones order deployments (later stages)."""
    consumers = sorted(s.name for s in fleet.services.values() if service.name in s.hard_deps)
    rows = [
        dg.TableRecord({
            "service": edge.name,
            "kind": "soft" if edge.soft else ("hard, start-up only" if edge.startup_only else "hard"),
            "evidence": "; ".join(edge.evidence),
        })
        for edge in service.depends_on
    ]
    return {
        "depends_on": dg.MetadataValue.table(
            records=rows,
            schema=dg.TableSchema(columns=[
                dg.TableColumn("service", "string"), dg.TableColumn("kind", "string"),
                dg.TableColumn("evidence", "string"),
            ]),
        ),
        "hard_dependencies": ", ".join(service.hard_deps) or "none",
        "soft_dependencies": ", ".join(service.soft_deps) or "none",
        "used_by": ", ".join(consumers) or "none",
    }
