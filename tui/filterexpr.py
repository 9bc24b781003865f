"""The `/` filter line: a tiny expression language over FlowKey, applied to every view.

    ns=shop  pod=cart-*  svc=shop/cart  port=443  proto=udp  verdict=dropped  node=node-b

Terms are separated by spaces and must all match. Within one term, comma-separated values
are alternatives (`proto=tcp,udp`). `!term` or `key!=value` negates a term. Globs (`*`, `?`)
work on names. `ns`, `pod` and `workload` match either end of the flow; `port` is the
server port (destination port of a request, source port of a reply), a number or a range
`8000-8100`. An empty expression matches everything.

Filters are evaluated on FlowKeys, which repeat a lot, so each compiled filter memoises its
answers per key; that is what keeps filtering cheap at 20,000 flows/s.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from typing import Callable

from tui.flowkey import FlowKey

PROTOCOLS = ("tcp", "udp", "sctp", "icmpv4", "icmpv6", "icmp")
VERDICTS = ("forwarded", "dropped", "unknown")
KEYS = ("ns", "pod", "workload", "svc", "port", "proto", "verdict", "node")
_MEMO_LIMIT = 200_000


class FilterError(ValueError):
    """A filter expression is wrong; the message says which term and why."""


def _glob(pattern: str) -> Callable[[str], bool]:
    if any(ch in pattern for ch in "*?["):
        rx = re.compile(fnmatch.translate(pattern))
        return lambda s: bool(rx.match(s))
    return lambda s: s == pattern


def _name_term(values: list[str], ns_fields: tuple[str, ...], name_fields: tuple[str, ...]):
    """Matchers for `pod`/`workload`: "glob" on the name, or "ns/glob" on both."""
    matchers = []
    for value in values:
        if "/" in value and ns_fields:
            ns, _, name = value.partition("/")
            ns_m, name_m = _glob(ns), _glob(name)
            matchers.append(lambda k, ns_m=ns_m, name_m=name_m: any(
                ns_m(getattr(k, nf)) and name_m(getattr(k, f))
                for nf, f in zip(ns_fields, name_fields)))
        else:
            m = _glob(value)
            matchers.append(lambda k, m=m: any(m(getattr(k, f)) for f in name_fields))
    return lambda k: any(fn(k) for fn in matchers)


def _port_term(term: str, values: list[str]):
    ranges = []
    for value in values:
        lo_s, sep, hi_s = value.partition("-")
        try:
            lo = int(lo_s)
            hi = int(hi_s) if sep else lo
        except ValueError:
            raise FilterError(f"{term}: {value!r} is not a port or a range like 8000-8100") from None
        if not (0 <= lo <= 65535 and 0 <= hi <= 65535) or lo > hi:
            raise FilterError(f"{term}: {value!r} is not a port range within 0-65535")
        ranges.append((lo, hi))
    return lambda k: any(lo <= k.port <= hi for lo, hi in ranges)


def _choice_term(term: str, values: list[str], allowed: tuple[str, ...], field_name: str):
    for value in values:
        if value not in allowed:
            raise FilterError(f"{term}: {value!r} is not one of {', '.join(allowed)}")
    wanted = set(values)
    if field_name == "proto" and "icmp" in wanted:
        wanted |= {"icmpv4", "icmpv6"}
    return lambda k: getattr(k, field_name) in wanted


def _compile_term(term: str) -> Callable[[FlowKey], bool]:
    negate = False
    body = term
    if body.startswith("!"):
        negate, body = True, body[1:]
    key, sep, raw = body.partition("=")
    if not sep:
        raise FilterError(f"{term!r}: expected key=value with key one of {', '.join(KEYS)}")
    if key.endswith("!"):
        negate, key = not negate, key[:-1]
    key = key.strip().lower()
    values = [v for v in raw.split(",") if v]
    if not values:
        raise FilterError(f"{term!r}: {key} needs a value")
    if key in ("ns", "namespace"):
        ms = [_glob(v) for v in values]
        fn = lambda k: any(m(k.src_ns) or m(k.dst_ns) for m in ms)  # noqa: E731
    elif key == "pod":
        fn = _name_term(values, ("src_ns", "dst_ns"), ("src_pod", "dst_pod"))
    elif key == "workload":
        fn = _name_term(values, (), ("src_workload", "dst_workload"))
    elif key in ("svc", "service"):
        ms = []
        for v in values:
            m = _glob(v)
            if "/" in v:
                ms.append(lambda k, m=m: bool(k.service) and m(k.service))
            else:  # a bare name matches the Service in any namespace
                ms.append(lambda k, m=m: bool(k.service) and m(k.service.rpartition("/")[2]))
        fn = lambda k: any(m(k) for m in ms)  # noqa: E731
    elif key == "port":
        fn = _port_term(term, values)
    elif key in ("proto", "protocol"):
        fn = _choice_term(term, [v.lower() for v in values], PROTOCOLS, "proto")
    elif key == "verdict":
        fn = _choice_term(term, [v.lower() for v in values], VERDICTS, "verdict")
    elif key == "node":
        ms = [_glob(v) for v in values]
        fn = lambda k: any(m(k.node) for m in ms)  # noqa: E731
    else:
        raise FilterError(f"{term!r}: unknown key {key!r}; use one of {', '.join(KEYS)}")
    if negate:
        return lambda k: not fn(k)
    return fn


@dataclass
class FlowFilter:
    """A compiled expression. Call it with a FlowKey; `text` is what the user typed."""

    text: str = ""
    _terms: list = field(default_factory=list, repr=False)
    _memo: dict = field(default_factory=dict, repr=False)

    def __call__(self, key: FlowKey) -> bool:
        if not self._terms:
            return True
        hit = self._memo.get(key)
        if hit is None:
            hit = all(term(key) for term in self._terms)
            if len(self._memo) >= _MEMO_LIMIT:
                self._memo.clear()
            self._memo[key] = hit
        return hit

    @property
    def empty(self) -> bool:
        return not self._terms


def parse_filter(text: str) -> FlowFilter:
    """Compile an expression; raises FilterError naming the bad term."""
    text = " ".join(text.split())
    terms = [_compile_term(t) for t in text.split(" ") if t]
    return FlowFilter(text=text, _terms=terms)
