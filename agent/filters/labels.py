"""Label selectors in Kubernetes' syntax, the one parser for every filter that takes them.

`app=cart,tier!=db`, `app in (a,b)`, `env notin (dev)`, `canary`, `!canary`, and the two
comparisons Cilium adds, `replicas>2` / `replicas<5`. A key may carry a label source the way
Hubble writes labels (`k8s:app=cart`); without one it matches a label of any source.

Two kinds of labels are matched:
  - podflow's own records (the `label` filter word of `podflow observe` and the TUI's `/`
    line, agent.filters.vocabulary/engine): a {key: value} dict of a pod's Kubernetes labels,
    whose source is "k8s" (`parse_label_selector`);
  - Hubble flows (agent.observer.hubble.filters): Cilium's "source:key=value" strings, parsed
    once by `parse_labels` into (source, key, value) tuples (`parse_hubble_selector`).
The grammar and its validation (label key and value syntax, as Kubernetes' own parser
checks them) are written once, in `parse_requirements`.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass

from agent.errors import FilterError

_SPECIAL = "=!(),<>"
_VALUE = re.compile(r"(?:[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?)?")
_NAME = re.compile(r"[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?")
_SUBDOMAIN = re.compile(r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?(?:\.[a-z0-9](?:[-a-z0-9]*[a-z0-9])?)*")
_INTEGER = re.compile(r"[-+]?[0-9]+")

ANY_SOURCE = "any"
HubbleLabels = tuple  # of (source, key, value), sorted: parse_labels()


@dataclass(frozen=True)
class Requirement:
    """One comma-separated term of a selector. `op`: exists, !exists, =, !=, in, notin, >, <."""

    source: str
    key: str
    op: str
    values: frozenset = frozenset()
    bound: int = 0


def _lex(selector: str) -> list[str]:
    tokens: list[str] = []
    i, n = 0, len(selector)
    while i < n:
        ch = selector[i]
        if ch.isspace():
            i += 1
        elif ch in _SPECIAL:
            two = selector[i:i + 2]
            if two in ("!=", "=="):
                tokens.append(two)
                i += 2
            else:
                tokens.append(ch)
                i += 1
        else:
            j = i
            while j < n and not selector[j].isspace() and selector[j] not in _SPECIAL:
                j += 1
            tokens.append(selector[i:j])
            i = j
    return tokens


def _is_ident(token: str | None) -> bool:
    return bool(token) and token[0] not in _SPECIAL


def _selector_key(raw: str) -> tuple[str, str]:
    """A selector key -> (label source, key), as Cilium reads it: "k8s:app" is the key "app"
    of source k8s; "app" is "app" of any source. The key must be a valid label key."""
    source, sep, key = raw.partition(":")
    if not sep:
        source, key = ANY_SOURCE, raw
    translated = f"{source}.{key}"  # what Kubernetes' selector parser validates in Cilium
    prefix, slash, name = translated.rpartition("/")
    if (len(name) > 63 or not _NAME.fullmatch(name)
            or (slash and (len(prefix) > 253 or not _SUBDOMAIN.fullmatch(prefix)))):
        raise ValueError(f"invalid label key {raw!r}")
    return source, key


def _label_value(value: str) -> str:
    if len(value) > 63 or not _VALUE.fullmatch(value):
        raise ValueError(f"invalid label value {value!r}")
    return value


def parse_requirements(selector: str) -> list[Requirement]:
    """The terms of a selector ([] for an empty one, which selects everything). Raises
    ValueError naming what is wrong."""
    tokens = _lex(selector)
    reqs: list[Requirement] = []
    pos = 0

    def peek() -> str | None:
        return tokens[pos] if pos < len(tokens) else None

    def take() -> str | None:
        nonlocal pos
        token = peek()
        pos += 1
        return token

    while pos < len(tokens):
        token = take()
        if token == "!":
            raw = take()
            if not _is_ident(raw):
                raise ValueError(f"expected a label key after '!' in {selector!r}")
            reqs.append(Requirement(*_selector_key(raw), "!exists"))
        elif _is_ident(token) and token not in ("in", "notin"):
            source, key = _selector_key(token)
            op = peek()
            if op is None or op == ",":
                reqs.append(Requirement(source, key, "exists"))
            elif op in ("=", "==", "!="):
                take()
                nxt = peek()
                value = "" if nxt is None or nxt == "," else take()
                if value and not _is_ident(value):
                    raise ValueError(f"expected a value after {op!r} in {selector!r}")
                reqs.append(Requirement(source, key, "!=" if op == "!=" else "=",
                                        frozenset((_label_value(value),))))
            elif op in ("in", "notin"):
                take()
                if take() != "(":
                    raise ValueError(f"expected '(' after {op!r} in {selector!r}")
                values: set[str] = set()
                while True:
                    nxt = take()
                    if nxt is None:
                        raise ValueError(f"missing ')' in {selector!r}")
                    if nxt == ",":
                        continue
                    if nxt == ")":
                        if not values:
                            raise ValueError(f"{op!r} needs at least one value in {selector!r}")
                        break
                    if not _is_ident(nxt):
                        raise ValueError(f"unexpected {nxt!r} in the values of {selector!r}")
                    values.add(_label_value(nxt))
                reqs.append(Requirement(source, key, op, frozenset(values)))
            elif op in (">", "<"):
                take()
                raw_value = take()
                if not _is_ident(raw_value) or not _INTEGER.fullmatch(raw_value):
                    raise ValueError(f"{op!r} needs an integer in {selector!r}")
                reqs.append(Requirement(source, key, op, bound=int(raw_value)))
            else:
                raise ValueError(f"unexpected {op!r} after {token!r} in {selector!r}")
        else:
            raise ValueError(f"expected a label key, found {token!r} in {selector!r}")
        after = take()
        if after is None:
            break
        if after != ",":
            raise ValueError(f"expected ',' or the end, found {after!r} in {selector!r}")
        if peek() is None:
            raise ValueError(f"a requirement must follow ',' in {selector!r}")
    return reqs


def _holds(req: Requirement, value: str, exists: bool) -> bool:
    op = req.op
    if op == "exists":
        return exists
    if op == "!exists":
        return not exists
    if op == "=":
        return exists and value in req.values
    if op == "!=":
        return not exists or value not in req.values
    if op == "in":
        return exists and value in req.values
    if op == "notin":
        return not exists or value not in req.values
    if not exists or not _INTEGER.fullmatch(value):
        return False
    return int(value) > req.bound if op == ">" else int(value) < req.bound


def _matcher(reqs: list[Requirement], lookup: Callable) -> Callable:
    if not reqs:
        return lambda labels: True

    def matches(labels) -> bool:
        for req in reqs:
            value, exists = lookup(labels, req.source, req.key)
            if not _holds(req, value, exists):
                return False
        return True
    return matches


def _lookup_k8s(labels: dict, source: str, key: str) -> tuple[str, bool]:
    """podflow's records hold Kubernetes labels: a selector key of source k8s (or of none)
    finds them."""
    if source not in (ANY_SOURCE, "k8s"):
        return "", False
    value = labels.get(key)
    return ("", False) if value is None else (value, True)


def _lookup_hubble(labels: HubbleLabels, source: str, key: str) -> tuple[str, bool]:
    for label_source, label_key, value in labels:
        if label_key == key and (source == ANY_SOURCE or source == label_source):
            return value, True
    return "", False


def parse_label_selector(selector: str, path: str = "label") -> Callable[[dict], bool]:
    """A selector as a predicate on a pod's {key: value} labels; FilterError names `path`.
    Unlike Hubble's, an empty selector is refused: a `label` filter word without a value is
    a mistake, not "everything"."""
    if not selector.strip():
        raise FilterError(f"{path}: empty label selector")
    try:
        return _matcher(parse_requirements(selector), _lookup_k8s)
    except ValueError as exc:
        raise FilterError(f"{path}: {exc}") from None


def parse_hubble_selector(selector: str) -> Callable[[HubbleLabels], bool]:
    """A selector as a predicate on Hubble labels (see `parse_labels`); an empty selector
    selects everything, as in Hubble. Raises ValueError naming what is wrong."""
    return _matcher(parse_requirements(selector), _lookup_hubble)


@functools.lru_cache(maxsize=16384)
def parse_labels(labels: tuple[str, ...]) -> HubbleLabels:
    """Cilium's "source:key=value" labels -> sorted (source, key, value); a label without a
    source has the source "unspec" (only a source-less selector key finds it)."""
    out = []
    for label in labels:
        source, sep, rest = label.partition(":")
        if not sep:
            source, rest = "unspec", label
        key, _, value = rest.partition("=")
        out.append((source, key, value))
    out.sort()
    return tuple(out)
