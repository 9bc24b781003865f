"""The `/` filter line: the filter words of `podflow observe`, written as terms and evaluated
over FlowKey.

    ns=shop  pod=cart-  svc=shop/cart  port=443  proto=udp  verdict=dropped  node=node-b

Terms are separated by spaces and must all match. Within one term, comma-separated values
are alternatives (`proto=tcp,udp`). `!term` or `key!=value` negates a term. A word means here
what `--WORD` means to `podflow observe` (the README's filter table):
agent.filters.vocabulary reads the values and decides their meaning for both, and
tests/filters/test_same_meaning.py holds them to it. So names are exact or globs (`*`, `?`),
a pod is a name prefix (`pod=cart-`, `pod=shop/cart-*`), `port` is the server port
(destination port of a request, source port of a reply), a number or a range `8000-8100`.
`ns`, `pod` and `workload` match either end; `from-`/`to-` pick one. The TUI knows the words
its keys can answer (KEYS); an empty expression matches everything.

Filters are evaluated on FlowKeys, which repeat a lot, so each compiled filter memoises its
answers per key; that is what keeps filtering cheap at 20,000 flows/s.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Callable

from agent.errors import FilterError
from agent.filters import vocabulary as vocab
from podflow_api.v1 import flow_pb2
from tui.flowkey import FlowKey

__all__ = ["FilterError", "FlowFilter", "parse_filter", "KEYS"]

KeyCheck = Callable[[FlowKey], bool]
_MEMO_LIMIT = 200_000
_PORT_PROTOCOLS = frozenset({"tcp", "udp", "sctp"})
# how FlowKey spells a verdict and an outcome (tui.flowkey)
_VERDICT_KEYS = {flow_pb2.FORWARDED: "forwarded", flow_pb2.DROPPED: "dropped",
                 flow_pb2.VERDICT_UNKNOWN: "unknown"}
_ALIASES = {"ns": "namespace", "svc": "service", "proto": "protocol"}
_SIDES = {"": (("src_ns", "src_pod", "src_workload"), ("dst_ns", "dst_pod", "dst_workload")),
          "from-": (("src_ns", "src_pod", "src_workload"),),
          "to-": (("dst_ns", "dst_pod", "dst_workload"),)}


def _sides(side: str, column: int) -> tuple[int, ...]:
    """FlowKey tuple positions of a column (0 ns, 1 pod, 2 workload) on the named sides."""
    return tuple(FlowKey._fields.index(names[column]) for names in _SIDES[side])


def _on_sides(side: str, column: int, match: vocab.NameMatch) -> KeyCheck:
    cols = _sides(side, column)
    if len(cols) == 1:
        (col,) = cols
        return lambda k: match(k[col])
    src, dst = cols
    return lambda k: match(k[src]) or match(k[dst])


def _namespace(side: str, values: list[str], path: str) -> KeyCheck:
    return _on_sides(side, 0, vocab.name_matcher([vocab.parse_namespace(v, path)
                                                  for v in values]))


def _pod(side: str, values: list[str], path: str) -> KeyCheck:
    match = vocab.pod_matcher(values, path)
    pairs = tuple(zip(_sides(side, 0), _sides(side, 1)))

    def check(k: FlowKey) -> bool:
        for ns_col, pod_col in pairs:
            name = k[pod_col]
            # "(world)", "(node)": how the key names an end that is no pod; no pod name
            if name and name[0] != "(" and match(k[ns_col], name):
                return True
        return False
    return check


def _workload(side: str, values: list[str], path: str) -> KeyCheck:
    wanted = [vocab.parse_workload(v, path) for v in values]
    if any(kind for kind, _name in wanted):
        raise FilterError(f"{path}: the TUI knows workloads by name only; "
                          "write workload=NAME (`podflow observe --workload KIND/NAME` has kinds)")
    return _on_sides(side, 2, vocab.name_matcher([name for _kind, name in wanted]))


def _service(values: list[str], path: str) -> KeyCheck:
    match = vocab.service_matcher(values, path)

    def check(k: FlowKey) -> bool:
        ns, _, name = k.service.rpartition("/")
        return match(ns, name)
    return check


def _port(values: list[str], path: str) -> KeyCheck:
    match = vocab.port_matcher(values, path)
    return lambda k: k.proto in _PORT_PROTOCOLS and match(k.port)


def _protocol(values: list[str], path: str) -> KeyCheck:
    wanted = vocab.protocols(values, path)
    return lambda k: k.proto in wanted


def _verdict(values: list[str], path: str) -> KeyCheck:
    wanted = {_VERDICT_KEYS[vocab.VERDICT.parse(v, path)] for v in values}
    return lambda k: k.verdict in wanted


def _outcome(values: list[str], path: str) -> KeyCheck:
    wanted = {flow_pb2.ConnectionOutcome.Name(vocab.OUTCOME.parse(v, path)).lower()
              for v in values}
    return lambda k: k.outcome in wanted


def _node(values: list[str], path: str) -> KeyCheck:
    match = vocab.name_matcher([vocab.parse_pattern(v, path) for v in values])
    return lambda k: match(k.node)


def _policy_verdict(values: list[str], path: str) -> KeyCheck:
    match = vocab.policy_verdict_matcher(values, path)
    return lambda k: match(k.policy, k.policy_finding)


def _policy(values: list[str], path: str) -> KeyCheck:
    match = vocab.policy_matcher(values, path)
    return lambda k: match(k.policies)


_SIDED = {"namespace": _namespace, "pod": _pod, "workload": _workload}
_TERMS: dict[str, Callable[[list[str], str], KeyCheck]] = {
    **{f"{side}{word}": functools.partial(build, side)
       for word, build in _SIDED.items() for side in _SIDES},
    "service": _service, "port": _port, "protocol": _protocol, "verdict": _verdict,
    "outcome": _outcome, "node": _node, "policy-verdict": _policy_verdict, "policy": _policy,
}
assert set(_TERMS) <= set(vocab.SPELLINGS), "a `/` word is an observe flag of the same name"
KEYS = ("ns", "pod", "workload", "svc", "port", "proto", "verdict", "outcome", "node",
        "policy", "policy-verdict",
        "from-ns", "to-ns", "from-pod", "to-pod", "from-workload", "to-workload")


def _word(key: str) -> str:
    """'ns' -> 'namespace', 'from-ns' -> 'from-namespace'; other keys as they are."""
    for side in ("from-", "to-"):
        if key.startswith(side):
            return side + _ALIASES.get(key[len(side):], key[len(side):])
    return _ALIASES.get(key, key)


def _compile_term(term: str) -> KeyCheck:
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
    build = _TERMS.get(_word(key))
    if build is None:
        raise FilterError(f"{term!r}: unknown key {key!r}; use one of {', '.join(KEYS)}")
    fn = build(values, term)
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
