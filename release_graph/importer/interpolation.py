"""Compose variable interpolation and `.env` files, as the Compose specification defines them.

`${VAR}`, `$VAR`, `${VAR:-default}` (unset or empty), `${VAR-default}` (unset), `${VAR:?error}`,
`${VAR?error}`, `${VAR:+replacement}`, `${VAR+replacement}`, nesting in the default
(`${A:-${B}}`) and `$$` for a literal `$`. An unset variable without a default becomes the empty
string, as in Compose, and is reported so the written fleet.yaml can say so.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path

from release_graph.importer.yamlfiles import InputError, read_text

NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_OPERATORS = (":-", ":?", ":+", "-", "?", "+")


class InterpolationError(ValueError):
    """The message says what is wrong in the value; the caller adds file and line."""


def interpolate(text: str, variables: Mapping[str, str], on_unset: Callable[[str], None] | None = None) -> str:
    out: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char != "$":
            out.append(char)
            i += 1
            continue
        following = text[i + 1: i + 2]
        if following == "$":
            out.append("$")
            i += 2
        elif following == "{":
            end = _closing_brace(text, i + 2)
            out.append(_braced(text[i + 2: end], variables, on_unset))
            i = end + 1
        else:
            match = NAME.match(text, i + 1)
            if not match:
                raise InterpolationError(
                    f"invalid interpolation in {text!r}: '$' must start $NAME, ${{NAME}} or $$ (a literal $)"
                )
            out.append(_lookup(match.group(), variables, on_unset))
            i = match.end()
    return "".join(out)


def _closing_brace(text: str, start: int) -> int:
    depth = 0
    i = start
    while i < len(text):
        if text.startswith("$$", i):
            i += 2
            continue
        if text.startswith("${", i):
            depth += 1
            i += 2
            continue
        if text[i] == "}":
            if depth == 0:
                return i
            depth -= 1
        i += 1
    raise InterpolationError(f"invalid interpolation in {text!r}: '${{' without a closing '}}'")


def _braced(body: str, variables: Mapping[str, str], on_unset: Callable[[str], None] | None) -> str:
    match = NAME.match(body)
    if not match:
        raise InterpolationError(f"invalid interpolation ${{{body}}}: expected a variable name after '${{'")
    name, rest = match.group(), body[match.end():]
    if not rest:
        return _lookup(name, variables, on_unset)
    operator = next((op for op in _OPERATORS if rest.startswith(op)), None)
    if operator is None:
        raise InterpolationError(
            f"invalid interpolation ${{{body}}}: after the name Compose accepts only "
            ":-, -, :?, ?, :+ or + (no other shell substitutions)"
        )
    word = rest[len(operator):]
    is_set = name in variables
    value = variables.get(name, "")
    usable = is_set and (value != "" or not operator.startswith(":"))
    if operator in (":-", "-"):
        return value if usable else interpolate(word, variables, on_unset)
    if operator in (":?", "?"):
        if not usable:
            message = interpolate(word, variables, on_unset) if word else "it must be set"
            raise InterpolationError(f"required variable {name} is missing a value: {message}")
        return value
    return interpolate(word, variables, on_unset) if usable else ""


def _lookup(name: str, variables: Mapping[str, str], on_unset: Callable[[str], None] | None) -> str:
    if name in variables:
        return variables[name]
    if on_unset is not None:
        on_unset(name)
    return ""


def read_dotenv(path: Path, label: str, known: Mapping[str, str] | None = None,
                lines_of: dict[str, int] | None = None) -> dict[str, str]:
    """`KEY=VALUE` lines (optionally `export KEY=VALUE`), `#` comments, single quotes literal, double
    quotes with escapes and interpolation, unquoted values interpolated and cut at ` #`. Later lines may
    use earlier ones. A line without `=` would take its value from the shell, which the importer does not
    read (so the same files always give the same fleet.yaml): it is left unset. `lines_of`, when given,
    receives the line each variable is set on (evidence that cites a value must say where it came from).
    """
    text = read_text(path, label)
    values: dict[str, str] = {}
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        line_number = index + 1
        raw = lines[index]
        index += 1
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.startswith("export "):
            stripped = stripped[len("export "):].lstrip()
        if "=" not in stripped:
            if NAME.fullmatch(stripped):
                continue
            raise InputError(f"{label}:{line_number}: expected NAME=VALUE, got {stripped!r}")
        name, value = stripped.split("=", 1)
        name = name.strip()
        if not NAME.fullmatch(name):
            raise InputError(f"{label}:{line_number}: {name!r} is not a variable name")
        value = value.lstrip()
        if lines_of is not None:
            lines_of[name] = line_number
        scope = {**(known or {}), **values}
        try:
            if value[:1] in ("'", '"'):
                quote = value[0]
                body = value[1:]
                while not _has_closing_quote(body, quote):
                    if index >= len(lines):
                        raise InputError(f"{label}:{line_number}: value of {name} has no closing {quote}")
                    body += "\n" + lines[index]
                    index += 1
                body = body[: _closing_quote_at(body, quote)]
                if quote == '"':
                    body = _unescape(body)
                    body = interpolate(body, scope)
                values[name] = body
            else:
                value = re.split(r"\s+#", value, maxsplit=1)[0].strip()
                values[name] = interpolate(value, scope)
        except InterpolationError as exc:
            raise InputError(f"{label}:{line_number}: {exc}") from None
    return values


def _closing_quote_at(body: str, quote: str) -> int:
    i = 0
    while i < len(body):
        if quote == '"' and body[i] == "\\":
            i += 2
            continue
        if body[i] == quote:
            return i
        i += 1
    return -1


def _has_closing_quote(body: str, quote: str) -> bool:
    return _closing_quote_at(body, quote) >= 0


def _unescape(body: str) -> str:
    # `\$` is a literal dollar, so it must survive the interpolation that follows.
    escapes = {"n": "\n", "r": "\r", "t": "\t", "$": "$$"}
    return re.sub(r"\\([nrt\"\\$])", lambda m: escapes.get(m.group(1), m.group(1)), body)
