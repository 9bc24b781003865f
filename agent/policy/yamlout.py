"""A small deterministic YAML writer with comments, for manifests people read and apply.

PyYAML cannot write comments, and advise must say in a comment which DNS names an ipBlock
stands for and what each rule was seen allowing. This writes the subset manifests use
(mappings, lists, strings, integers, booleans) in kubectl's layout, in the order given, and
quotes every string YAML 1.1 or 1.2 could read as something else ("true", "yes", "1e3",
"0x1f", "y", anything with ': ' or ' #'). Its output is checked by parsing it back.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import yaml

_PLAIN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_./-]*$")
# YAML 1.1 booleans that go-yaml (kubectl) reads but PyYAML's safe_load does not flag.
_YAML11_BOOLS = frozenset(("y", "Y", "n", "N", "yes", "Yes", "YES", "no", "No", "NO",
                           "on", "On", "ON", "off", "Off", "OFF"))


@dataclass(frozen=True, slots=True)
class Commented:
    """A value with a comment: after a scalar on its line; after `key:` for a mapping or
    list value; on its own line above a list item that is a mapping."""

    value: object
    comment: str


def scalar(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    text = str(value)
    if (_PLAIN.match(text) and text not in _YAML11_BOOLS
            and yaml.safe_load(text) == text):
        return text
    return json.dumps(text)   # a JSON string is a valid YAML double-quoted scalar


def _comment(text: str) -> str:
    return "  # " + " ".join(text.split()) if text else ""


def _unwrap(value) -> tuple[object, str]:
    if isinstance(value, Commented):
        return value.value, value.comment
    return value, ""


def _empty_or_scalar(value) -> str | None:
    if isinstance(value, dict):
        return "{}" if not value else None
    if isinstance(value, list):
        return "[]" if not value else None
    return scalar(value)


def _mapping(value: dict, indent: int, out: list[str]) -> None:
    pad = " " * indent
    for key, raw in value.items():
        item, comment = _unwrap(raw)
        flat = _empty_or_scalar(item)
        if flat is not None:
            out.append(f"{pad}{scalar(key)}: {flat}{_comment(comment)}")
        elif isinstance(item, dict):
            out.append(f"{pad}{scalar(key)}:{_comment(comment)}")
            _mapping(item, indent + 2, out)
        else:
            out.append(f"{pad}{scalar(key)}:{_comment(comment)}")
            _sequence(item, indent, out)


def _sequence(value: list, indent: int, out: list[str]) -> None:
    pad = " " * indent
    for raw in value:
        item, comment = _unwrap(raw)
        flat = _empty_or_scalar(item)
        if flat is not None:
            out.append(f"{pad}- {flat}{_comment(comment)}")
            continue
        if comment:
            out.append(f"{pad}# {' '.join(comment.split())}")
        inner: list[str] = []
        if isinstance(item, dict):
            _mapping(item, indent + 2, inner)
        else:
            _sequence(item, indent + 2, inner)
        inner[0] = f"{pad}- {inner[0][indent + 2:]}"
        out.extend(inner)


def dump(value, comment: str = "") -> str:
    """One document (a mapping), with optional full-line comments above it."""
    out: list[str] = [f"# {line}".rstrip() for line in comment.splitlines()] if comment else []
    item, _ = _unwrap(value)
    if isinstance(item, dict):
        _mapping(item, 0, out)
    elif isinstance(item, list):
        _sequence(item, 0, out)
    else:
        out.append(scalar(item))
    return "\n".join(out) + "\n"


def dump_all(documents: list[tuple[object, str]], header: str = "") -> str:
    """Several documents, `---` separated, each (value, comment above it)."""
    parts = [f"# {line}".rstrip() + "\n" for line in header.splitlines()] if header else []
    for value, comment in documents:
        parts.append("---\n")
        parts.append(dump(value, comment))
    return "".join(parts)
