"""What every asset of a service shares: its group, owners and tags, its description, its edges as metadata."""

from collections.abc import Iterable, Mapping, Sequence
from itertools import islice

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
    consumers = fleet.callers_of(service.name, hard_only=True)
    rows = [
        {
            "service": edge.name,
            "kind": "soft" if edge.soft else ("hard, start-up only" if edge.startup_only else "hard"),
            "evidence": "; ".join(edge.evidence),
        }
        for edge in service.depends_on
    ]
    return {
        "depends_on": rows_table(rows, ("service", "kind", "evidence")),
        "hard_dependencies": ", ".join(service.hard_deps) or "none",
        "soft_dependencies": ", ".join(service.soft_deps) or "none",
        "used_by": ", ".join(consumers) or "none",
    }


def rows_table(
    rows: Iterable[Mapping[str, object]], columns: Sequence[str | tuple[str, str]], *, limit: int | None = None
) -> dg.TableMetadataValue:
    """Rows as a table in the UI: the one table helper of the checks and assets.

    A column is a name (shown as text; a missing or empty value is "") or a (name, Dagster column type) pair
    such as ("line", "int"), whose value is kept as is. `limit` keeps the first rows (report counts apart).
    """
    spec = [(column, "string") if isinstance(column, str) else column for column in columns]
    schema = dg.TableSchema(columns=[dg.TableColumn(name, type=kind) for name, kind in spec])
    records = [
        dg.TableRecord({
            name: str(row.get(name, "") or "") if kind == "string" else row.get(name) for name, kind in spec
        })
        for row in islice(rows, limit)
    ]
    return dg.MetadataValue.table(records=records, schema=schema)
