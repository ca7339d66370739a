"""Reading deploy files as YAML 1.2 with the line of every key and list item.

Compose (yaml.v3) and Kubernetes tools read YAML 1.2, where `yes`, `on` and `22:22` are text; PyYAML's
default is YAML 1.1, which would turn `DEBUG: yes` into a boolean and the port mapping `22:22` into the
number 1342. Errors from here name the file and line, because a user fixes a file, not a parse tree.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.parser import Parser
from yaml.reader import Reader
from yaml.resolver import BaseResolver
from yaml.scanner import Scanner


class InputError(Exception):
    """Input the importer cannot turn into a fleet; `problems` are lines like `file:line: what is wrong`."""

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


class LineDict(dict):
    """A mapping that knows its own line and the line of each key (1-based)."""

    line: int = 0
    key_lines: dict

    def line_of(self, key: Any) -> int:
        return getattr(self, "key_lines", {}).get(key, self.line)


class LineList(list):
    """A sequence that knows its own line and the line of each item (1-based)."""

    line: int = 0
    item_lines: list

    def line_of(self, index: int) -> int:
        lines = getattr(self, "item_lines", [])
        return lines[index] if 0 <= index < len(lines) else self.line


class NumberText(float):
    """A YAML float that remembers how it was written: `1.10` must stay `1.10` in an env value."""

    text: str = ""

    def __str__(self) -> str:
        return self.text or float.__repr__(self)


class Reset:
    """Compose `!reset`: drop the value inherited from earlier files."""

    def __init__(self, line: int):
        self.line = line


class Override:
    """Compose `!override`: replace the inherited value instead of merging with it."""

    def __init__(self, value: Any, line: int):
        self.value = value
        self.line = line


class _Resolver(BaseResolver):
    """The YAML 1.2 core schema: only true/false are booleans; no sexagesimal numbers, no timestamps."""


_Resolver.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_Resolver.add_implicit_resolver(
    "tag:yaml.org,2002:int", re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$"), list("-+0123456789")
)
_Resolver.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."),
)
_Resolver.add_implicit_resolver("tag:yaml.org,2002:null", re.compile(r"^(?:~|null|Null|NULL|)$"), ["~", "n", "N", ""])
_Resolver.add_implicit_resolver("tag:yaml.org,2002:merge", re.compile(r"^(?:<<)$"), ["<"])


class _Constructor(SafeConstructor):
    duplicate_keys: list[tuple[str, int, int]]


def _construct_mapping(loader: _Constructor, node: yaml.MappingNode) -> LineDict:
    # Duplicates are judged among the keys written in this mapping; keys that `<<` merges in may be
    # overridden, which is what merge keys are for.
    seen: dict[str, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
            continue
        line = key_node.start_mark.line + 1
        if key_node.value in seen:
            loader.duplicate_keys.append((key_node.value, line, seen[key_node.value]))
        seen.setdefault(key_node.value, line)
    loader.flatten_mapping(node)
    result = LineDict()
    result.line = node.start_mark.line + 1
    result.key_lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if isinstance(key, list | dict):
            raise yaml.constructor.ConstructorError(
                None, None, "a mapping key must be a plain value", key_node.start_mark
            )
        result[key] = loader.construct_object(value_node, deep=True)
        result.key_lines[key] = key_node.start_mark.line + 1
    return result


def _construct_sequence(loader: _Constructor, node: yaml.SequenceNode) -> LineList:
    result = LineList(loader.construct_object(child, deep=True) for child in node.value)
    result.line = node.start_mark.line + 1
    result.item_lines = [child.start_mark.line + 1 for child in node.value]
    return result


def _construct_int(loader: _Constructor, node: yaml.ScalarNode) -> int:
    text = loader.construct_scalar(node).replace("_", "")
    if text.startswith(("0o", "0x")):
        return int(text, 0)
    return int(text, 10)  # YAML 1.2: a leading zero is still decimal


def _construct_float(loader: _Constructor, node: yaml.ScalarNode) -> NumberText:
    text = loader.construct_scalar(node)
    number = NumberText(SafeConstructor.construct_yaml_float(loader, node))
    number.text = text
    return number


def _construct_node_value(loader: _Constructor, node: yaml.Node) -> Any:
    if isinstance(node, yaml.MappingNode):
        return _construct_mapping(loader, node)
    if isinstance(node, yaml.SequenceNode):
        return _construct_sequence(loader, node)
    value = loader.construct_scalar(node)
    return None if value in ("", "~", "null") else value


def _construct_reset(loader: _Constructor, node: yaml.Node) -> Reset:
    return Reset(node.start_mark.line + 1)


def _construct_override(loader: _Constructor, node: yaml.Node) -> Override:
    return Override(_construct_node_value(loader, node), node.start_mark.line + 1)


_Constructor.add_constructor("tag:yaml.org,2002:map", _construct_mapping)
_Constructor.add_constructor("tag:yaml.org,2002:seq", _construct_sequence)
_Constructor.add_constructor("tag:yaml.org,2002:int", _construct_int)
_Constructor.add_constructor("tag:yaml.org,2002:float", _construct_float)
_Constructor.add_constructor("!reset", _construct_reset)
_Constructor.add_constructor("!override", _construct_override)


class _Loader(Reader, Scanner, Parser, Composer, _Constructor, _Resolver):
    def __init__(self, stream: str):
        Reader.__init__(self, stream)
        Scanner.__init__(self)
        Parser.__init__(self)
        Composer.__init__(self)
        _Constructor.__init__(self)
        _Resolver.__init__(self)
        self.duplicate_keys = []


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
    loader = _Loader(text)
    documents: list[tuple[Any, int]] = []
    try:
        while loader.check_node():
            node = loader.get_node()
            line = node.start_mark.line + 1
            documents.append((loader.construct_document(node), line))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{label}:{mark.line + 1}:{mark.column + 1}" if mark else label
        what = exc.problem or exc.context or "unreadable"
        if exc.context and exc.problem:
            what = f"{exc.problem} ({exc.context})"
        raise InputError(f"{where}: not valid YAML: {what}") from None
    except yaml.YAMLError as exc:
        raise InputError(f"{label}: not valid YAML: {exc}") from None
    finally:
        loader.dispose()
    if loader.duplicate_keys:
        raise InputError([
            f"{label}:{line}: key '{key}' is defined twice in one mapping (first at line {first}); "
            "YAML readers disagree on which one wins, so remove one"
            for key, line, first in loader.duplicate_keys
        ])
    return documents
