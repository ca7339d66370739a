"""Every process of one installation finds its runtime state in the same folder."""

from __future__ import annotations

from resources.state import state_dir


def test_state_is_release_graph_state_then_dagster_home_then_the_working_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RELEASE_GRAPH_STATE", raising=False)
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    assert state_dir() == tmp_path / ".dagster_home"
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    assert state_dir() == tmp_path / "home"
    monkeypatch.setenv("RELEASE_GRAPH_STATE", "state")
    assert state_dir() == tmp_path / "state"
    assert list(tmp_path.iterdir()) == []  # nothing is created
