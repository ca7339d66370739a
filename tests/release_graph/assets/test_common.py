"""The one table helper: findings, waivers and edges all reach the UI through rows_table."""

from __future__ import annotations

from release_graph.assets.common import rows_table


def test_text_columns_show_missing_values_as_empty_and_typed_columns_keep_their_values():
    rows = [{"rule": "DL3007", "line": 2, "message": None}, {"rule": "DL3008", "line": 5}, {"rule": "DL3009"}]
    table = rows_table(rows, ["rule", ("line", "int"), "message"], limit=2)
    assert [(c.name, c.type) for c in table.schema.columns] == [("rule", "string"), ("line", "int"),
                                                                 ("message", "string")]
    assert [r.data for r in table.records] == [{"rule": "DL3007", "line": 2, "message": ""},
                                               {"rule": "DL3008", "line": 5, "message": ""}]
