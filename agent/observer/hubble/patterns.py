"""Hubble's name patterns, as its CLI and filters define them: FQDN patterns (`*.example.com`),
node-name patterns (`cluster/node-*`) and Go (RE2) regular expressions, turned into Python
regular expressions. Pure functions; the filters in agent.observer.hubble.filters use them."""

from __future__ import annotations

import re
from collections.abc import Sequence

_FQDN_CHARS = r"(?:[-0-9_a-z]+(?:\.[-0-9_a-z]+)*)"


def _fqdn_pattern_regexp(pattern: str) -> str:
    """Hubble's FQDN pattern -> a regular expression: lowercase, one trailing dot dropped,
    "*" stands for [-.0-9a-z]*; other characters than [-.0-9_a-z*] are refused."""
    pattern = pattern.strip().removesuffix(".").lower()
    if not pattern:
        raise ValueError("empty pattern")
    if pattern.endswith("."):
        raise ValueError("multiple trailing dots in pattern")
    out = []
    for ch in pattern:
        if ch == ".":
            out.append(r"\.")
        elif ch == "*":
            out.append("[-.0-9a-z]*")
        elif ch == "-" or ch == "_" or "0" <= ch <= "9" or "a" <= ch <= "z":
            out.append(ch)
        else:
            raise ValueError(f"{ch!r}: invalid rune in pattern")
    return "".join(out)


def compile_fqdn_patterns(patterns: Sequence[str]) -> re.Pattern:
    return re.compile(r"\A(?:" + "|".join(_fqdn_pattern_regexp(p) for p in patterns) + r")\Z")


def compile_node_name_patterns(patterns: Sequence[str]) -> re.Pattern:
    """"cluster/node" patterns; an empty part matches any name, no slash any cluster."""
    parts = []
    for pattern in patterns:
        if not pattern:
            raise ValueError("empty pattern")
        elems = pattern.split("/")
        if len(elems) > 2:
            raise ValueError("too many slashes in pattern")
        cluster, node = ("", elems[0]) if len(elems) == 1 else elems
        parts.append((_fqdn_pattern_regexp(cluster) if cluster else _FQDN_CHARS) + "/" +
                     (_fqdn_pattern_regexp(node) if node else _FQDN_CHARS))
    return re.compile(r"\A(?:" + "|".join(parts) + r")\Z")


def compile_regexp(pattern: str) -> re.Pattern:
    """A Go (RE2) regular expression in Python's re: \\z (end of text) is spelled \\Z."""
    return re.compile(re.sub(r"(?<!\\)((?:\\\\)*)\\z", r"\1\\Z", pattern))
