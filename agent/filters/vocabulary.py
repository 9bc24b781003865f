"""The filter vocabulary: the words a user selects flows with, how their values are written
and what they mean. One module decides, so that a word selects the same flows on every path:
the `podflow observe` and `--flow-log-*` flags (agent.filters.flags) write FlowFilters, the
engine (agent.filters.engine) evaluates FlowFilters on the agent, and the TUI's `/` line
(tui.filterexpr) evaluates the same words over its own flow keys.

How values are written and matched (README, "Filters"):

- names (namespace, Service, workload, node, interface): the exact name, or a glob with
  `*`, `?` and `[...]`; an empty name (a world endpoint has no namespace, most flows have no
  drop reason) never matches;
- pods: a name PREFIX, as Hubble's `--pod` (`cart-` matches `cart-5c7b9-x2x4z`), with the
  same wildcards; `shop/cart-` limits it to a namespace, `shop/` is any pod of `shop`;
- `ns/name` names a Service in one namespace, a bare name means any namespace; workloads
  are `kind/name` (kind case-insensitive) or a bare name; a pod without a controller is its
  own workload;
- ports: `443` or `8000-8100`; the word `port` is the server port (the destination port of a
  request, the source port of a reply), `from-port`/`to-port` a side of the record;
- protocols: tcp, udp, sctp, icmpv4, icmpv6, icmp (both ICMPs), their IANA numbers and the
  aliases icmp4/icmp6; enums (verdict, direction, outcome ...) by their lower-case names;
- NetworkPolicy: `policy-verdict` is the verdict (allowed, denied, not-isolated, unknown) or
  what was seen of it (enforced, not-enforced, dropped-otherwise), as agent.wire.flowtext
  words a record; `policy` names a policy the verdict names, `[namespace/]name`;
- values of one word are alternatives, also written `a,b`; a label selector's comma means
  AND and a TCP flag list's comma means "all of these", so those two keep their commas.

Bad values raise FilterError whose message starts with the path it was given (a FlowFilter
field path, a flag, or the TUI's term): "allowlist[0].source_ip: 'x' is not an IP or CIDR".
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from agent.errors import FilterError
from agent.filters.labels import parse_label_selector
from agent.wire.flowtext import POLICY_FINDING_WORDS, POLICY_VERDICT_WORDS
from podflow_api.v1 import flow_pb2

__all__ = ["FilterError", "Word", "WORDS", "SPELLINGS", "TCP_FLAG_NAMES", "PROTOCOLS"]

NameMatch = Callable[[str], bool]
_WILDCARDS = frozenset("*?[")


# -- names: exact, prefix or glob --------------------------------------------------------------

def has_wildcard(pattern: str) -> bool:
    return not _WILDCARDS.isdisjoint(pattern)


def name_matcher(patterns: Iterable[str], *, prefix: bool = False,
                 ignore_case: bool = False) -> NameMatch:
    """One predicate for alternative name patterns. Exact names are a set lookup and prefixes
    one startswith(), so the common filters cost no regex; globs share one regex. An empty
    name never matches (it is the absence of a name, not a name)."""
    patterns = list(patterns)
    if ignore_case:
        inner = name_matcher([p.lower() for p in patterns], prefix=prefix)
        return lambda name: inner(name.lower())
    exact: set[str] = set()
    prefixes: list[str] = []
    globs: list[str] = []
    for pattern in patterns:
        if has_wildcard(pattern):
            globs.append(pattern + "*" if prefix else pattern)
        elif prefix:
            prefixes.append(pattern)
        else:
            exact.add(pattern)
    starts = tuple(prefixes)
    rx = re.compile("|".join(fnmatch.translate(g) for g in globs)).match if globs else None
    # Each shape gets its own closure: this runs once per flow on the agent's hot path.
    if rx is None and not starts:
        if len(exact) == 1:
            only = next(iter(exact))
            return lambda name: name == only
        return exact.__contains__
    if rx is None and not exact:
        if all(starts):  # "" starts with no non-empty prefix: no test for emptiness needed
            return lambda name: name.startswith(starts)
        return lambda name: name != "" and name.startswith(starts)
    if not starts and not exact and rx("") is None:
        return lambda name: rx(name) is not None
    return lambda name: name != "" and (name in exact or name.startswith(starts)
                                        or (rx is not None and rx(name) is not None))


def _nonempty(text: str, path: str, what: str) -> str:
    value = text.strip()
    if not value:
        raise FilterError(f"{path}: empty {what}")
    return value


def parse_namespace(text: str, path: str) -> str:
    value = text.strip()
    if not value or "/" in value:
        raise FilterError(f"{path}: {text!r} is not a namespace name")
    return value


def parse_pattern(text: str, path: str) -> str:
    """A name or glob (node, interface, drop reason, DNS query)."""
    return _nonempty(text, path, "pattern")


def parse_pod(text: str, path: str) -> tuple[str | None, str]:
    """'[namespace/]name-prefix' -> (namespace pattern or None for any, name prefix)."""
    value = _nonempty(text, path, "pod")
    ns, sep, prefix = value.partition("/")
    if not sep:
        return None, value
    if not ns:
        raise FilterError(f"{path}: {text!r} has an empty namespace")
    if "/" in prefix:
        raise FilterError(f"{path}: {text!r} is not 'namespace/name-prefix'")
    return ns, prefix


def parse_ns_name(text: str, path: str, what: str = "namespace/name") -> tuple[str | None, str]:
    """'[first/]name' (a Service's namespace, a workload's kind) -> (first or None, name)."""
    value = text.strip()
    first, sep, name = value.partition("/")
    if not value or (sep and (not first or not name or "/" in name)):
        raise FilterError(f"{path}: {text!r} is not '{what}' or 'name'")
    return (first, name) if sep else (None, first)


PairMatch = Callable[[str, str], bool]


def _pair_matcher(pairs: Sequence[tuple[str | None, str]], prefix: bool,
                  fold_first: bool = False) -> PairMatch:
    """(first, name) -> bool for alternatives of '[first/]name' (first: a Service's or a
    pod's namespace, a workload's kind, compared lower-case with `fold_first`)."""
    if fold_first:
        pairs = [(first.lower() if first else first, name) for first, name in pairs]
        inner = _pair_matcher(pairs, prefix)
        return lambda first, name: inner(first.lower(), name)
    if not any(has_wildcard(first or "") or has_wildcard(name) for first, name in pairs):
        return _plain_pair_matcher(pairs, prefix)
    by_first: dict[str | None, list[str]] = {}
    for first, name in pairs:
        by_first.setdefault(first, []).append(name)
    anywhere = by_first.pop(None, None)
    any_m = name_matcher(anywhere, prefix=prefix) if anywhere else None
    scoped = [(name_matcher([first]), name_matcher(names, prefix=prefix))
              for first, names in by_first.items()]

    def match(first: str, name: str) -> bool:
        if any_m is not None and any_m(name):
            return True
        return any(name_m(name) and first_m(first) for first_m, name_m in scoped)
    return match


def _plain_pair_matcher(pairs: Sequence[tuple[str | None, str]], prefix: bool) -> PairMatch:
    """_pair_matcher without wildcards, the usual case: comparisons and set lookups only."""
    if prefix:
        tests = tuple(pairs)
        if len(tests) == 1:
            only_first, start = tests[0]
            if only_first is None:
                return lambda first, name: name != "" and name.startswith(start)
            return lambda first, name: (name != "" and name.startswith(start)
                                        and first == only_first)

        def match(first: str, name: str) -> bool:
            if name == "":
                return False
            for want_first, start in tests:
                if name.startswith(start) and (want_first is None or first == want_first):
                    return True
            return False
        return match
    anywhere = frozenset(name for first, name in pairs if first is None)
    scoped = frozenset((first, name) for first, name in pairs if first is not None)
    if not scoped:
        return lambda first, name: name in anywhere
    if not anywhere:
        return lambda first, name: (first, name) in scoped
    return lambda first, name: name in anywhere or (first, name) in scoped


def pod_matcher(values: Iterable[str], path: str) -> PairMatch:
    """(namespace, pod name) -> bool for `pod` values (name prefixes, wildcards allowed)."""
    return _pair_matcher([parse_pod(v, path) for v in values], prefix=True)


def service_matcher(values: Iterable[str], path: str) -> PairMatch:
    """(namespace, Service name) -> bool for `service` values: '[namespace/]name', globs."""
    return _pair_matcher([parse_ns_name(v, path) for v in values], prefix=False)


def parse_workload(text: str, path: str) -> tuple[str | None, str]:
    kind, name = parse_ns_name(text, path, "kind/name")
    return (kind.lower() if kind else None), name


def workload_matcher(values: Iterable[str], path: str) -> PairMatch:
    """(kind, workload name) -> bool for `workload` values: '[kind/]name', kind any case."""
    return _pair_matcher([parse_workload(v, path) for v in values], prefix=False,
                         fold_first=True)


# -- ports, protocols, IPs, TCP flags ----------------------------------------------------------

def parse_port_range(text: str, path: str) -> tuple[int, int]:
    """'443' or '8000-8100' -> (low, high), both within 0-65535."""
    value = text.strip()
    lo_s, sep, hi_s = value.partition("-")
    try:
        lo = int(lo_s)
        hi = int(hi_s) if sep else lo
    except ValueError:
        raise FilterError(f"{path}: {text!r} is not a port or a range like 8000-8100") from None
    if not (0 <= lo <= 65535 and 0 <= hi <= 65535) or hi < lo:
        raise FilterError(f"{path}: {text!r} is not a port range within 0-65535")
    return lo, hi


def port_matcher(values: Iterable[str], path: str) -> Callable[[int], bool]:
    ranges = [parse_port_range(v, path) for v in values]
    singles = frozenset(lo for lo, hi in ranges if lo == hi)
    spans = tuple((lo, hi) for lo, hi in ranges if lo != hi)
    if not spans:
        return singles.__contains__
    return lambda port: port in singles or any(lo <= port <= hi for lo, hi in spans)


# word -> the l4 oneof names of a Flow it selects (`icmp` is either version)
PROTOCOLS: dict[str, frozenset[str]] = {
    "tcp": frozenset({"tcp"}), "udp": frozenset({"udp"}), "sctp": frozenset({"sctp"}),
    "icmp": frozenset({"icmpv4", "icmpv6"}), "icmpv4": frozenset({"icmpv4"}),
    "icmpv6": frozenset({"icmpv6"}),
}
_PROTOCOL_ALIASES = {"6": "tcp", "17": "udp", "132": "sctp", "1": "icmpv4", "58": "icmpv6",
                     "icmp4": "icmpv4", "icmp6": "icmpv6", "ipv6-icmp": "icmpv6"}


def parse_protocol(text: str, path: str) -> frozenset[str]:
    key = text.strip().lower()
    key = _PROTOCOL_ALIASES.get(key, key)
    if key not in PROTOCOLS:
        raise FilterError(f"{path}: unknown protocol: {text!r} is not one of "
                          f"{', '.join(PROTOCOLS)} (or 6, 17, 132, 1, 58)")
    return PROTOCOLS[key]


def protocols(values: Iterable[str], path: str) -> frozenset[str]:
    """The l4 oneof names (tcp, udp, sctp, icmpv4, icmpv6) that alternatives select."""
    out: frozenset[str] = frozenset()
    for v in values:
        out |= parse_protocol(v, path)
    return out


def parse_ip_or_cidr(text: str, path: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """An address ('10.0.0.1', a /32 or /128 network) or a CIDR ('10.0.0.0/8')."""
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise FilterError(f"{path}: {text!r} is not an IP address or CIDR") from None


TCP_FLAG_NAMES = ("FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR")


def parse_tcp_flags(text: str, path: str) -> tuple[str, ...]:
    """'SYN,ACK' -> ('SYN', 'ACK'): a record matches when all of them are set."""
    names = tuple(x.strip().upper() for x in text.split(",") if x.strip())
    if not names:
        raise FilterError(f"{path}: empty TCP flag list")
    for n in names:
        if n not in TCP_FLAG_NAMES:
            raise FilterError(f"{path}: unknown TCP flag {n!r} (one of {', '.join(TCP_FLAG_NAMES)})")
    return names


# -- enums: verdict, direction, outcome ... ----------------------------------------------------

class EnumWords:
    """An enum of flow.proto by lower-case dashed names (`no-reply`, `pod-to-world`), plus
    `unknown` for its zero value where that is UNKNOWN, and aliases (egress, 4, 6)."""

    def __init__(self, enum_type, aliases: dict[str, str] | None = None):
        self.enum_type = enum_type
        self.numbers: dict[str, int] = {}
        for v in enum_type.DESCRIPTOR.values:
            if v.number:
                self.numbers[v.name.lower().replace("_", "-")] = v.number
        zero = enum_type.DESCRIPTOR.values_by_number[0].name
        if zero.endswith("UNKNOWN"):
            self.numbers["unknown"] = 0
        self.aliases = {k: self.numbers[v] for k, v in (aliases or {}).items()}

    def parse(self, text: str, path: str) -> int:
        key = text.strip().lower().replace("_", "-")
        if key in self.numbers:
            return self.numbers[key]
        if key in self.aliases:
            return self.aliases[key]
        try:  # the proto's own name, e.g. FROM_POD or VERDICT_UNKNOWN
            return self.enum_type.Value(text.strip().upper().replace("-", "_"))
        except ValueError:
            pass
        raise FilterError(f"{path}: {text.strip()!r} is not one of {', '.join(self.numbers)}")

    def check_numbers(self, numbers: Iterable[int], path: str) -> frozenset[int]:
        """Enum values as they arrive in a FlowFilter (numbers); unknown numbers are errors."""
        known = set(self.enum_type.values())
        for n in numbers:
            if n not in known:
                raise FilterError(f"{path}: {n} is not a {self.enum_type.DESCRIPTOR.name} value")
        return frozenset(numbers)


VERDICT = EnumWords(flow_pb2.Verdict)
DIRECTION = EnumWords(flow_pb2.TrafficDirection, {"egress": "from-pod", "ingress": "to-pod"})
OBSERVATION_POINT = EnumWords(flow_pb2.ObservationPoint)
IP_VERSION = EnumWords(flow_pb2.IPVersion, {"4": "ipv4", "6": "ipv6"})
CATEGORY = EnumWords(flow_pb2.FlowCategory)
OUTCOME = EnumWords(flow_pb2.ConnectionOutcome)


# -- NetworkPolicy: a verdict word or a finding word (agent.wire.flowtext decides which holds) --

POLICY_VERDICTS = POLICY_VERDICT_WORDS + POLICY_FINDING_WORDS


def parse_policy_verdict(text: str, path: str) -> str:
    """allowed, denied, not-isolated, unknown (the verdict) or enforced, not-enforced,
    dropped-otherwise (what was seen of it), any case, `_` for `-`."""
    word = text.strip().lower().replace("_", "-")
    if word not in POLICY_VERDICTS:
        raise FilterError(f"{path}: {text.strip()!r} is not one of {', '.join(POLICY_VERDICTS)}")
    return word


def policy_verdict_matcher(values: Iterable[str], path: str) -> Callable[[str, str], bool]:
    """(verdict word, finding word) of a record -> bool for `policy-verdict` values."""
    wanted = frozenset(parse_policy_verdict(v, path) for v in values)
    return lambda verdict, finding: verdict in wanted or finding in wanted


def policy_matcher(values: Iterable[str], path: str) -> Callable[[Iterable[str]], bool]:
    """The policies a record's verdict names ("namespace/name" each) -> bool for `policy`
    values: '[NAMESPACE/]NAME', globs in either part."""
    match = service_matcher(values, path)

    def check(names: Iterable[str]) -> bool:
        for ref in names:
            ns, _, name = ref.partition("/")
            if match(ns, name):
                return True
        return False
    return check


# -- the words ---------------------------------------------------------------------------------

def _checked(parse: Callable[[str, str], object]) -> Callable[[str, str], str]:
    """A text word's value as it goes into a FlowFilter: checked now, kept as written."""
    def parse_text(text: str, path: str) -> str:
        parse(text, path)
        return text.strip()
    return parse_text


@dataclass(frozen=True)
class Word:
    """One filter word: the FlowFilter fields it fills and how its values are read.

    `either` holds one field (the word means that field) or a source and a destination field
    (the word means either side); `source`/`destination` are the fields of from-WORD and
    to-WORD. `parse(text, path)` checks one value and returns what the FlowFilter holds (the
    text as written, or an enum's number). `commas`: `a,b` are alternatives."""

    name: str
    either: tuple[str, ...]
    parse: Callable[[str, str], object]
    help: str
    source: str | None = None
    destination: str | None = None
    commas: bool = True


def _sided(name: str, parse, help_text: str, commas: bool = True) -> Word:
    field = name.replace("-", "_")
    return Word(name, (f"source_{field}", f"destination_{field}"), parse, help_text,
                f"source_{field}", f"destination_{field}", commas)


WORDS: tuple[Word, ...] = (
    _sided("namespace", _checked(parse_namespace),
           "a pod of this namespace on either side (name or glob)"),
    _sided("pod", _checked(parse_pod),
           "either side is this pod: [NAMESPACE/]NAME-PREFIX (wildcards * ? allowed)"),
    _sided("label", _checked(parse_label_selector),
           "either side matches this label selector, e.g. 'app=cart,tier!=db'", commas=False),
    Word("service", ("service",), _checked(parse_ns_name),
         "the Service the flow went to: [NAMESPACE/]NAME (globs allowed)",
         "source_service", "destination_service"),
    _sided("workload", _checked(parse_workload),
           "either side belongs to this workload: [KIND/]NAME (a bare pod is its own)"),
    _sided("ip", _checked(parse_ip_or_cidr), "either side has this IP or is in this CIDR"),
    Word("port", ("server_port",), _checked(parse_port_range),
         "the server port (destination of a request, source of a reply): PORT or LOW-HIGH",
         "source_port", "destination_port"),
    Word("protocol", ("protocol",), _checked(parse_protocol),
         "tcp, udp, sctp, icmp (either version), icmpv4, icmpv6, or a protocol number"),
    Word("tcp-flags", ("tcp_flags",), _checked(parse_tcp_flags),
         "all of these TCP flags set, e.g. SYN or SYN,ACK", commas=False),
    Word("verdict", ("verdict",), VERDICT.parse, "forwarded, dropped or unknown"),
    Word("direction", ("traffic_direction",), DIRECTION.parse,
         "from-pod (egress) or to-pod (ingress), from the pod's point of view"),
    Word("observation-point", ("observation_point",), OBSERVATION_POINT.parse,
         "pod-veth, bridge or host-stack"),
    Word("interface", ("interface",), _checked(parse_pattern),
         "interface name or glob, e.g. 'veth*'"),
    Word("node", ("node_name",), _checked(parse_pattern), "node name or glob"),
    Word("ip-version", ("ip_version",), IP_VERSION.parse, "4 or 6"),
    Word("category", ("category",), CATEGORY.parse,
         "pod-to-pod-same-node, pod-to-pod-cross-node, pod-to-service, outside-to-service, "
         "pod-to-world, host-to-pod, other"),
    Word("outcome", ("outcome",), OUTCOME.parse,
         "established, refused, unanswered, reset, closed, no-reply, in-progress"),
    Word("drop-reason", ("drop_reason",), _checked(parse_pattern),
         "kernel drop reason (glob, any case), e.g. NETFILTER_DROP"),
    Word("dns-query", ("dns_query",), _checked(parse_pattern),
         "DNS query name glob (any case), e.g. '*.shop.svc.*'"),
    Word("policy-verdict", ("policy_verdict",), parse_policy_verdict,
         "NetworkPolicy verdict: allowed, denied, not-isolated, unknown; or what was seen of "
         "it: enforced (denied and dropped), not-enforced (denied but delivered), "
         "dropped-otherwise (allowed but dropped)"),
    Word("policy", ("policy",), _checked(parse_ns_name),
         "a NetworkPolicy that allows or denies the flow: [NAMESPACE/]NAME (globs allowed)"),
)


def _spellings() -> dict[str, tuple[Word, str, str | None]]:
    """WORD, from-WORD, to-WORD -> (word, field, other-side field or None). Two fields mean
    either side; a single field is that field."""
    out: dict[str, tuple[Word, str, str | None]] = {}
    for word in WORDS:
        out[word.name] = (word, word.either[0], word.either[1] if len(word.either) > 1 else None)
        if word.source:
            out[f"from-{word.name}"] = (word, word.source, None)
        if word.destination:
            out[f"to-{word.name}"] = (word, word.destination, None)
    return out


SPELLINGS = _spellings()


def split_values(word: Word, text: str) -> list[str]:
    """The alternatives one value of `word` holds: 'a,b' -> ['a', 'b'] unless the word's
    values have commas of their own (label selectors, TCP flag lists)."""
    return text.split(",") if word.commas else [text]
