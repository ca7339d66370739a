"""Reading deploy files as YAML 1.2 with the line of every key and list item (release_graph.fleet.yaml_lines),
plus compose's `!reset` and `!override` tags.

Compose (yaml.v3) and Kubernetes tools read YAML 1.2. Errors from here name the file and line, because a user
fixes a file, not a parse tree.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from release_graph.fleet.yaml_lines import (
    LineDict,
    LineList,
    NumberText,
    Yaml12LineLoader,
    empty_line_dict,
    load_all,
)

__all__ = ["InputError", "LineDict", "LineList", "NumberText", "Override", "Reset", "empty_line_dict", "load_documents",
           "read_text"]


class InputError(Exception):
    """Input the importer cannot turn into a fleet; `problems` are lines like `file:line: what is wrong`."""

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


class Reset:
    """Compose `!reset`: drop the value inherited from earlier files."""

    def __init__(self, line: int):
        self.line = line


class Override:
    """Compose `!override`: replace the inherited value instead of merging with it."""

    def __init__(self, value: Any, line: int):
        self.value = value
        self.line = line


class _DeployFileLoader(Yaml12LineLoader):
    """YAML 1.2 with lines, plus compose's `!reset` and `!override` tags."""

    def construct_reset(self, node: yaml.Node) -> Reset:
        return Reset(node.start_mark.line + 1)

    def construct_override(self, node: yaml.Node) -> Override:
        if isinstance(node, yaml.MappingNode):
            value = self.construct_line_mapping(node)
        elif isinstance(node, yaml.SequenceNode):
            value = self.construct_line_sequence(node)
        else:
            scalar = self.construct_scalar(node)
            value = None if scalar in ("", "~", "null") else scalar
        return Override(value, node.start_mark.line + 1)


_DeployFileLoader.add_constructor("!reset", _DeployFileLoader.construct_reset)
_DeployFileLoader.add_constructor("!override", _DeployFileLoader.construct_override)


def read_text(path: Path, label: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{label}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise InputError(f"{label}: cannot read: {exc.strerror or exc}") from None


def load_documents(path: Path, label: str) -> list[tuple[Any, int]]:
    """Every document of a YAML file with the line it starts on. Raises InputError naming file and line."""
    text = read_text(path, label)
    try:
        documents, duplicates = load_all(text, _DeployFileLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{label}:{mark.line + 1}:{mark.column + 1}" if mark else label
        what = exc.problem or exc.context or "unreadable"
        if exc.context and exc.problem:
            what = f"{exc.problem} ({exc.context})"
        raise InputError(f"{where}: not valid YAML: {what}") from None
    except yaml.YAMLError as exc:
        raise InputError(f"{label}: not valid YAML: {exc}") from None
    if duplicates:
        raise InputError([
            f"{label}:{line}: key '{key}' is defined twice in one mapping (first at line {first}); "
            "YAML readers disagree on which one wins, so remove one"
            for key, line, first in duplicates
        ])
    return documents
