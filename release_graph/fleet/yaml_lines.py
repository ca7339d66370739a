"""YAML that remembers where everything was written: the line of every mapping, key, sequence and item.

The one line-tracking loader of release-graph, in two schemas:

- `Yaml11LineLoader` reads the fleet manifest (YAML 1.1, PyYAML's safe schema; keys become text).
- `Yaml12LineLoader` reads deploy files (compose and Kubernetes tools read YAML 1.2, where `yes`, `on` and
  `22:22` are text; YAML 1.1 would turn `DEBUG: yes` into a boolean and the port mapping `22:22` into the
  number 1342). A float keeps the text it was written as (`1.10` stays `1.10` in an env value).

A key written twice in one mapping is recorded in `duplicate_keys` (key, line, line of the first) and the
first definition is kept: callers report duplicates, they never silently apply one. Keys merged in with `<<`
may be overridden by the mapping's own keys: that is what merge keys are for.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

import yaml
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.parser import Parser
from yaml.reader import Reader
from yaml.resolver import BaseResolver
from yaml.scanner import Scanner


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


def empty_line_dict(line: int) -> LineDict:
    """An empty mapping placed at `line` (for a key written with no value)."""
    result = LineDict()
    result.line, result.key_lines = line, {}
    return result


class NumberText(float):
    """A YAML 1.2 float that remembers how it was written: `1.10` must stay `1.10` in an env value."""

    text: str = ""

    def __str__(self) -> str:
        return self.text or float.__repr__(self)


class Duplicate(NamedTuple):
    key: str
    line: int
    first_line: int


class _LineConstructor:
    """Line-tracking construction of mappings and sequences, shared by both schemas."""

    duplicate_keys: list[Duplicate]
    string_keys = False  # True: every key becomes text (str(key)); False: a list or mapping key is an error

    def construct_line_mapping(self, node: yaml.MappingNode) -> LineDict:
        # Duplicates are judged among the keys written in this mapping (merged keys may be overridden).
        first_lines: dict[Any, int] = {}
        later: set[int] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                continue
            line = key_node.start_mark.line + 1
            if key_node.value in first_lines:
                self.duplicate_keys.append(Duplicate(key_node.value, line, first_lines[key_node.value]))
                later.add(id(key_node))
            else:
                first_lines[key_node.value] = line
        self.flatten_mapping(node)
        result = LineDict()
        result.line = node.start_mark.line + 1
        result.key_lines = {}
        for key_node, value_node in node.value:
            if id(key_node) in later:
                continue  # the first definition is kept; the caller reports the duplicate
            key = self.construct_object(key_node, deep=True)
            if self.string_keys and not isinstance(key, str):
                key = str(key)
            elif isinstance(key, list | dict):
                raise yaml.constructor.ConstructorError(
                    None, None, "a mapping key must be a plain value", key_node.start_mark
                )
            result[key] = self.construct_object(value_node, deep=True)
            result.key_lines[key] = key_node.start_mark.line + 1
        return result

    def construct_line_sequence(self, node: yaml.SequenceNode) -> LineList:
        result = LineList(self.construct_object(child, deep=True) for child in node.value)
        result.line = node.start_mark.line + 1
        result.item_lines = [child.start_mark.line + 1 for child in node.value]
        return result


class Yaml11LineLoader(_LineConstructor, yaml.SafeLoader):
    """PyYAML's safe YAML 1.1 schema, with lines and duplicate keys; every key becomes text."""

    string_keys = True

    def __init__(self, stream: str):
        super().__init__(stream)
        self.duplicate_keys = []


Yaml11LineLoader.add_constructor("tag:yaml.org,2002:map", Yaml11LineLoader.construct_line_mapping)
Yaml11LineLoader.add_constructor("tag:yaml.org,2002:seq", Yaml11LineLoader.construct_line_sequence)


class _Resolver12(BaseResolver):
    """The YAML 1.2 core schema: only true/false are booleans; no sexagesimal numbers, no timestamps."""


_Resolver12.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_Resolver12.add_implicit_resolver(
    "tag:yaml.org,2002:int", re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$"), list("-+0123456789")
)
_Resolver12.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."),
)
_Resolver12.add_implicit_resolver(
    "tag:yaml.org,2002:null", re.compile(r"^(?:~|null|Null|NULL|)$"), ["~", "n", "N", ""]
)
_Resolver12.add_implicit_resolver("tag:yaml.org,2002:merge", re.compile(r"^(?:<<)$"), ["<"])


class Yaml12LineLoader(Reader, Scanner, Parser, Composer, _LineConstructor, SafeConstructor, _Resolver12):
    """The YAML 1.2 core schema, with lines and duplicate keys. Subclasses add their own tags."""

    def __init__(self, stream: str):
        Reader.__init__(self, stream)
        Scanner.__init__(self)
        Parser.__init__(self)
        Composer.__init__(self)
        SafeConstructor.__init__(self)
        _Resolver12.__init__(self)
        self.duplicate_keys = []

    def construct_yaml12_int(self, node: yaml.ScalarNode) -> int:
        text = self.construct_scalar(node).replace("_", "")
        if text.startswith(("0o", "0x")):
            return int(text, 0)
        return int(text, 10)  # YAML 1.2: a leading zero is still decimal

    def construct_yaml12_float(self, node: yaml.ScalarNode) -> NumberText:
        text = self.construct_scalar(node)
        number = NumberText(SafeConstructor.construct_yaml_float(self, node))
        number.text = text
        return number


Yaml12LineLoader.add_constructor("tag:yaml.org,2002:map", Yaml12LineLoader.construct_line_mapping)
Yaml12LineLoader.add_constructor("tag:yaml.org,2002:seq", Yaml12LineLoader.construct_line_sequence)
Yaml12LineLoader.add_constructor("tag:yaml.org,2002:int", Yaml12LineLoader.construct_yaml12_int)
Yaml12LineLoader.add_constructor("tag:yaml.org,2002:float", Yaml12LineLoader.construct_yaml12_float)


def load_single(text: str, loader_class: type = Yaml11LineLoader) -> tuple[Any, list[Duplicate]]:
    """The one document of `text` and the duplicate keys found; yaml.YAMLError for text that is not YAML."""
    loader = loader_class(text)
    try:
        return loader.get_single_data(), loader.duplicate_keys
    finally:
        loader.dispose()


def load_all(text: str, loader_class: type = Yaml12LineLoader) -> tuple[list[tuple[Any, int]], list[Duplicate]]:
    """Every document of `text` with the line it starts on, and the duplicate keys found; yaml.YAMLError."""
    loader = loader_class(text)
    documents: list[tuple[Any, int]] = []
    try:
        while loader.check_node():
            node = loader.get_node()
            documents.append((loader.construct_document(node), node.start_mark.line + 1))
    finally:
        loader.dispose()
    return documents, loader.duplicate_keys
