"""The FlowFilter engine: allow and deny lists of podflow.v1.FlowFilter compiled into one fast
predicate over Flow records.

GetFlows, `podflow observe` (through the request it sends), the flow log exporter and the
Hubble API evaluate filters here, on the agent's hot path; the TUI's `/` line evaluates the
same words over its own flow keys (tui.filterexpr). Both read values and decide their meaning
through agent.filters.vocabulary, so a word selects the same flows on both paths (a test,
tests/filters/test_same_meaning.py, holds them to it).

A flow passes when it matches any allow filter (or there is none) and no deny filter; within
one filter every set field must match; the values within one field are alternatives. Bad
values raise FilterError naming the field, e.g. "allowlist[0].source_ip: 'x' is not an IP
address or CIDR". Nothing here prints: callers decide how to report.
"""

from __future__ import annotations

import functools
import ipaddress
import operator
from collections.abc import Callable, Sequence

from agent.filters import vocabulary as vocab
from agent.filters.labels import parse_label_selector
from agent.filters.vocabulary import TCP_FLAG_NAMES, FilterError
from agent.wire.flowtext import policy_finding_word, policy_names, policy_verdict_word
from podflow_api.v1 import flow_pb2, observer_pb2

__all__ = ["Predicate", "FilterError", "compile_filters", "compile_filter", "TCP_FLAG_NAMES",
           "parse_label_selector"]

Predicate = Callable[[flow_pb2.Flow], bool]
Check = Callable[[flow_pb2.Flow], bool]


# -- compiling -------------------------------------------------------------------------------

def compile_filters(allow: Sequence[observer_pb2.FlowFilter] = (),
                    deny: Sequence[observer_pb2.FlowFilter] = ()) -> Predicate | None:
    """One predicate for allow/deny lists; None when there are no filters (everything
    passes), so callers can skip the call entirely."""
    allow_preds = [compile_filter(f, f"allowlist[{i}]") for i, f in enumerate(allow)]
    deny_preds = [compile_filter(f, f"denylist[{i}]") for i, f in enumerate(deny)]
    if not allow_preds and not deny_preds:
        return None
    if not deny_preds:
        if len(allow_preds) == 1:
            return allow_preds[0]
        return lambda flow: any(p(flow) for p in allow_preds)
    if not allow_preds:
        if len(deny_preds) == 1:
            only = deny_preds[0]
            return lambda flow: not only(flow)
        return lambda flow: not any(p(flow) for p in deny_preds)
    return lambda flow: (any(p(flow) for p in allow_preds)
                         and not any(p(flow) for p in deny_preds))


def compile_filter(flt: observer_pb2.FlowFilter, path: str = "filter") -> Predicate:
    """All set fields of one FlowFilter must match."""
    checks: list[Check] = []
    for field_desc, values in flt.ListFields():
        builder = _BUILDERS[field_desc.name]
        checks.append(builder(list(values), f"{path}.{field_desc.name}"))
    if not checks:
        return lambda flow: True
    if len(checks) == 1:
        return checks[0]
    return lambda flow: all(c(flow) for c in checks)


# -- one builder per field kind ---------------------------------------------------------------

@functools.lru_cache(maxsize=65536)
def parse_ip(text: str):
    """A record's address as an ip_address (None when it is not one), cached: the same few
    thousand addresses are checked against CIDRs on every flow. Shared with Hubble's
    filters (agent.observer.hubble.filters)."""
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _ip_check(side: str):
    def build(values: list[str], path: str) -> Check:
        exact: set[str] = set()
        nets = []
        for v in values:
            net = vocab.parse_ip_or_cidr(v, path)
            if "/" in v:
                nets.append(net)
            else:
                exact.add(str(net.network_address))

        def check(flow: flow_pb2.Flow) -> bool:
            ip = getattr(flow.ip, side)
            if not ip:
                return False
            if ip in exact:
                return True
            addr = parse_ip(ip)  # cached; also catches non-canonical spellings of an IP
            if addr is None:
                return False
            if exact and str(addr) in exact:
                return True
            return any(addr.version == n.version and addr in n for n in nets)
        return check
    return build


def _pod_check(side: str):
    def build(values: list[str], path: str) -> Check:
        match = vocab.pod_matcher(values, path)

        def check(flow: flow_pb2.Flow) -> bool:
            ep = getattr(flow, side)
            return match(ep.namespace, ep.pod_name)
        return check
    return build


def _name_check(get: Callable[[flow_pb2.Flow], str], names: list[str], **how) -> Check:
    """`get` (an attrgetter) reads the name; exact names, the usual filter, are one set
    lookup without a further call per flow."""
    if not how and not any(vocab.has_wildcard(n) for n in names):
        wanted = frozenset(names)
        return lambda flow: get(flow) in wanted
    match = vocab.name_matcher(names, **how)
    return lambda flow: match(get(flow))


def _namespace_check(side: str):
    get = operator.attrgetter(f"{side}.namespace")

    def build(values: list[str], path: str) -> Check:
        return _name_check(get, [vocab.parse_namespace(v, path) for v in values])
    return build


def _labels_dict(labels) -> dict[str, str]:
    out = {}
    for kv in labels:
        k, _, v = kv.partition("=")
        out[k] = v
    return out


def _label_check(side: str):
    def build(values: list[str], path: str) -> Check:
        selectors = [parse_label_selector(v, path) for v in values]

        def check(flow: flow_pb2.Flow) -> bool:
            labels = _labels_dict(getattr(flow, side).labels)
            return any(s(labels) for s in selectors)
        return check
    return build


def _service_names_match(names, match: vocab.PairMatch) -> bool:
    """Endpoint DNS names like 'cart.shop.svc.cluster.local' name a Service too."""
    for dns_name in names:
        labels = dns_name.rstrip(".").split(".")
        if len(labels) >= 3 and labels[2] == "svc" and match(labels[1], labels[0]):
            return True
    return False


def _side_service_check(side: str):
    def build(values: list[str], path: str) -> Check:
        match = vocab.service_matcher(values, path)
        # The Service a flow went to is its destination, or its source for reply packets.
        want_reply = side == "source"

        def check(flow: flow_pb2.Flow) -> bool:
            if flow.is_reply == want_reply:
                svc = flow.service
                if match(svc.namespace, svc.name):
                    return True
            return _service_names_match(getattr(flow, side).names, match)
        return check
    return build


def _service_check(values: list[str], path: str) -> Check:
    match = vocab.service_matcher(values, path)

    def check(flow: flow_pb2.Flow) -> bool:
        svc = flow.service
        return match(svc.namespace, svc.name)
    return check


def _workload_check(side: str):
    def build(values: list[str], path: str) -> Check:
        match = vocab.workload_matcher(values, path)

        def check(flow: flow_pb2.Flow) -> bool:
            ep = getattr(flow, side)
            if not ep.pod_name:
                return False
            wl = ep.workload
            if wl.name:
                return match(wl.kind, wl.name)
            return match("pod", ep.pod_name)  # a pod without a controller is its own workload
        return check
    return build


_PORT_PROTOCOLS = ("tcp", "udp", "sctp")


def _port_check(side: str):
    """source_port / destination_port: that side of the record; server_port: the server's
    side, the destination of a request and the source of a reply (`is_reply`). Two closures
    rather than one with a branch: this runs per flow."""
    attr = f"{side}_port"

    def build(values: list[str], path: str) -> Check:
        match = vocab.port_matcher(values, path)

        def server(flow: flow_pb2.Flow) -> bool:
            l4 = flow.l4
            which = l4.WhichOneof("protocol")
            if which not in _PORT_PROTOCOLS:
                return False
            ports = getattr(l4, which)
            return match(ports.source_port if flow.is_reply else ports.destination_port)

        def one_side(flow: flow_pb2.Flow) -> bool:
            l4 = flow.l4
            which = l4.WhichOneof("protocol")
            if which not in _PORT_PROTOCOLS:
                return False
            return match(getattr(getattr(l4, which), attr))
        return server if side == "server" else one_side
    return build


def _protocol_check(values: list[str], path: str) -> Check:
    wanted = vocab.protocols(values, path)
    return lambda flow: flow.l4.WhichOneof("protocol") in wanted


def _tcp_flags_check(values: list[str], path: str) -> Check:
    sets = [vocab.parse_tcp_flags(v, path) for v in values]

    def check(flow: flow_pb2.Flow) -> bool:
        if flow.l4.WhichOneof("protocol") != "tcp":
            return False
        flags = flow.l4.tcp.flags
        return any(all(getattr(flags, n) for n in names) for names in sets)
    return check


def _enum_check(attr: str, words: vocab.EnumWords):
    def build(values: list[int], path: str) -> Check:
        wanted = words.check_numbers(values, path)
        if attr == "ip_version":
            return lambda flow: flow.ip.ip_version in wanted
        return lambda flow: getattr(flow, attr) in wanted
    return build


def _pattern_check(attr: str, **how):
    get = operator.attrgetter(attr)

    def build(values: list[str], path: str) -> Check:
        return _name_check(get, [vocab.parse_pattern(v, path) for v in values], **how)
    return build


def _dns_query_check(values: list[str], path: str) -> Check:
    names = [vocab.parse_pattern(v.strip().rstrip("."), path) for v in values]
    match = vocab.name_matcher(names, ignore_case=True)
    return lambda flow: match(flow.dns.query.rstrip("."))


def _policy_verdict_check(values: list[str], path: str) -> Check:
    match = vocab.policy_verdict_matcher(values, path)
    return lambda flow: match(policy_verdict_word(flow), policy_finding_word(flow))


def _policy_check(values: list[str], path: str) -> Check:
    match = vocab.policy_matcher(values, path)
    return lambda flow: match(policy_names(flow))


_BUILDERS: dict[str, Callable[[list, str], Check]] = {
    "source_ip": _ip_check("source"),
    "destination_ip": _ip_check("destination"),
    "source_pod": _pod_check("source"),
    "destination_pod": _pod_check("destination"),
    "source_namespace": _namespace_check("source"),
    "destination_namespace": _namespace_check("destination"),
    "source_label": _label_check("source"),
    "destination_label": _label_check("destination"),
    "source_service": _side_service_check("source"),
    "destination_service": _side_service_check("destination"),
    "source_workload": _workload_check("source"),
    "destination_workload": _workload_check("destination"),
    "source_port": _port_check("source"),
    "destination_port": _port_check("destination"),
    "server_port": _port_check("server"),
    "protocol": _protocol_check,
    "tcp_flags": _tcp_flags_check,
    "verdict": _enum_check("verdict", vocab.VERDICT),
    "traffic_direction": _enum_check("traffic_direction", vocab.DIRECTION),
    "observation_point": _enum_check("observation_point", vocab.OBSERVATION_POINT),
    "interface": _pattern_check("interface.name"),
    "node_name": _pattern_check("node_name"),
    "ip_version": _enum_check("ip_version", vocab.IP_VERSION),
    "category": _enum_check("category", vocab.CATEGORY),
    "drop_reason": _pattern_check("drop_reason", ignore_case=True),
    "outcome": _enum_check("outcome", vocab.OUTCOME),
    "dns_query": _dns_query_check,
    "service": _service_check,
    "policy_verdict": _policy_verdict_check,
    "policy": _policy_check,
}
assert set(_BUILDERS) == {f.name for f in observer_pb2.FlowFilter.DESCRIPTOR.fields}, \
    "every FlowFilter field needs a builder"
