"""Hubble's FlowFilter semantics over Hubble flows (the output of mapping.py).

`hubble observe` flags, Hubble Relay and Hubble UI send flow.FlowFilter lists; a podflow
agent must answer them exactly as a Cilium agent would, or the same command shows different
flows on different clusters. The semantics here are Hubble's, not podflow's own
(agent/filters.py), where they differ:

- a flow passes when it matches ANY whitelist filter (or there is none) and NO blacklist
  filter; within one filter every set field must match (AND); the values of one field are
  alternatives (OR); an empty filter matches everything (so an empty blacklist entry
  blocks everything, as in Hubble);
- source_pod / destination_pod / *_service: "namespace/name-prefix"; a value without a slash
  means the namespace "default"; "namespace/" is the whole namespace; "/prefix" any namespace;
- source_ip / destination_ip: a CIDR ("10.0.0.0/8") or an address compared as text;
- ports: decimal numbers (no ranges), TCP/UDP/SCTP only;
- protocol: tcp udp sctp icmp icmpv4 icmpv6 vrrp igmp (L4) and dns http kafka (L7);
- node_name: "cluster/node" patterns where "*" stands for [-.0-9a-z]*; a node name without a
  cluster is in the cluster "default"; a pattern without a slash matches any cluster;
- source_fqdn / destination_fqdn: the same patterns, on source_names / destination_names;
- dns_query: regular expressions searched in l7.dns.query (Go's RE2 syntax; Python's re
  runs them, with \\z accepted for end of text);
- labels: Kubernetes label selectors (a=b, a==b, a!=b, a in (x,y), a notin (x,y), a, !a,
  a>1, a<1, comma = AND) on "source:key=value" labels; a key may name its source
  ("k8s:app=x" matches only k8s labels), a key without one matches any source;
- reply: a flow without is_reply matches only when it is DROPPED (counted as not a reply);
- event_type: type 0 matches any type; the sub-type only when match_sub_type is set;
- HTTP filters are checked for validity and then match nothing (podflow has no HTTP
  records), and so do the fields podflow never fills (cluster names, SNAT addresses).

Bad values raise HubbleFilterError (a ValueError) whose message starts with the field's
path, e.g. "whitelist[0].source_port: invalid port '8o'"; the servicer answers
INVALID_ARGUMENT with it. A filter carrying fields this declaration does not know (a newer
client) is refused the same way rather than half applied. CEL expressions are refused.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Sequence

from google.protobuf import unknown_fields

from agent.filters.engine import parse_ip
from agent.filters.labels import parse_hubble_selector, parse_labels
from agent.observer.hubble.patterns import (compile_fqdn_patterns, compile_node_name_patterns,
                                            compile_regexp)
from podflow_hubble.flow import flow_pb2 as hb

Predicate = Callable[[hb.Flow], bool]

# Hubble's L4 and L7 protocol names for the `protocol` field.
L4_PROTOCOLS = ("icmp", "icmpv4", "icmpv6", "tcp", "udp", "sctp", "vrrp", "igmp")
L7_PROTOCOLS = ("dns", "http", "kafka")
# Cilium's monitor message type of L7 records (HTTP filters require it in event_type).
EVENT_L7 = 129
# The cluster a node name without one belongs to (Cilium's default cluster name).
DEFAULT_CLUSTER = "default"
DEFAULT_NAMESPACE = "default"
TCP_FLAG_NAMES = ("FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR", "NS")


class HubbleFilterError(ValueError):
    """A FlowFilter that cannot be applied; the message starts with the field's path."""


# ---------------------------------------------------------------------------------------
# Compiling


def compile_filters(whitelist: Sequence[hb.FlowFilter] = (),
                    blacklist: Sequence[hb.FlowFilter] = ()) -> Predicate | None:
    """One predicate for GetFlowsRequest's whitelist and blacklist; None when both are
    empty (everything passes), so callers can skip the call."""
    allow = [compile_filter(f, f"whitelist[{i}]") for i, f in enumerate(whitelist)]
    deny = [compile_filter(f, f"blacklist[{i}]") for i, f in enumerate(blacklist)]
    if not allow and not deny:
        return None
    if not deny:
        return allow[0] if len(allow) == 1 else (lambda flow: any(p(flow) for p in allow))
    if not allow:
        return lambda flow: not any(p(flow) for p in deny)
    return lambda flow: any(p(flow) for p in allow) and not any(p(flow) for p in deny)


def compile_filter(flt: hb.FlowFilter, path: str = "filter") -> Predicate:
    """All set fields of one FlowFilter must match."""
    unknown = unknown_fields.UnknownFieldSet(flt)
    if len(unknown):
        numbers = sorted({field.field_number for field in unknown})
        raise HubbleFilterError(
            f"{path}: field number(s) {numbers} of flow.FlowFilter are not supported by "
            f"podflow")
    checks: list[Predicate] = []
    for field_desc, value in flt.ListFields():
        name = field_desc.name
        builder = _BUILDERS.get(name)
        if builder is None:  # a declared field without semantics here: a bug, say so
            raise HubbleFilterError(f"{path}.{name}: not supported by podflow")
        check = builder(value, f"{path}.{name}", flt)
        if check is not None:
            checks.append(check)
    if not checks:
        return lambda flow: True
    if len(checks) == 1:
        return checks[0]
    return lambda flow: all(c(flow) for c in checks)


# ---------------------------------------------------------------------------------------
# Addresses, ports, protocols


def _ip_check(get_ip: Callable[[hb.Flow], str]):
    def build(values, path, _flt) -> Predicate:
        exact: set[str] = set()
        nets = []
        for value in values:
            if "/" in value:
                try:
                    nets.append(ipaddress.ip_network(value, strict=False))
                except ValueError:
                    raise HubbleFilterError(f"{path}: invalid IP prefix {value!r}") from None
            else:
                try:
                    ipaddress.ip_address(value)
                except ValueError:
                    raise HubbleFilterError(f"{path}: invalid IP address {value!r}") from None
                exact.add(value)

        def check(flow: hb.Flow) -> bool:
            ip = get_ip(flow)
            if not ip:
                return False
            if ip in exact:
                return True
            if not nets:
                return False
            addr = parse_ip(ip)
            return addr is not None and any(addr in net for net in nets)
        return check
    return build



def _never_filled_ip(values, path, flt) -> Predicate:
    """source_ip_xlated: validated like any address list; podflow reports no SNAT address,
    so it matches nothing (as Hubble does for a flow without one)."""
    _ip_check(lambda flow: "")(values, path, flt)
    return lambda flow: False


_PORT = re.compile(r"[0-9]+")


def _ports_of(flow: hb.Flow) -> tuple[int, int] | None:
    kind = flow.l4.WhichOneof("protocol")
    if kind in ("TCP", "UDP", "SCTP"):
        l4 = getattr(flow.l4, kind)
        return l4.source_port, l4.destination_port
    return None


def _port_check(index: int):
    def build(values, path, _flt) -> Predicate:
        ports = set()
        for value in values:
            if not _PORT.fullmatch(value) or int(value) > 65535:
                raise HubbleFilterError(f"{path}: invalid port {value!r}")
            ports.add(int(value))

        def check(flow: hb.Flow) -> bool:
            found = _ports_of(flow)
            return found is not None and found[index] in ports
        return check
    return build


def _protocol(values, path, _flt) -> Predicate:
    l4: set[str] = set()
    l7: set[str] = set()
    for value in values:
        proto = value.lower()
        if proto in L4_PROTOCOLS:
            l4.add(proto)
        elif proto in L7_PROTOCOLS:
            l7.add(proto)
        else:
            raise HubbleFilterError(f"{path}: unknown protocol {value!r}")
    wanted_l4 = set()
    for proto in l4:
        wanted_l4.update({"icmp": ("ICMPv4", "ICMPv6"), "icmpv4": ("ICMPv4",),
                          "icmpv6": ("ICMPv6",), "tcp": ("TCP",), "udp": ("UDP",),
                          "sctp": ("SCTP",)}.get(proto, ()))  # vrrp, igmp: never seen
    wanted_l7 = {"dns"} & l7  # podflow has no HTTP or Kafka records

    def check(flow: hb.Flow) -> bool:
        if flow.l4.WhichOneof("protocol") in wanted_l4:
            return True
        return bool(wanted_l7) and flow.l7.WhichOneof("record") in wanted_l7
    return check


def _tcp_flags(values, _path, _flt) -> Predicate:
    wanted = [tuple(name for name in TCP_FLAG_NAMES if getattr(f, name)) for f in values]

    def check(flow: hb.Flow) -> bool:
        if flow.l4.WhichOneof("protocol") != "TCP" or not flow.l4.TCP.HasField("flags"):
            return False
        flags = flow.l4.TCP.flags
        return any(all(getattr(flags, name) for name in names) for names in wanted)
    return check


def _ip_version(values, _path, _flt) -> Predicate:
    wanted = set(values)
    return lambda flow: flow.IP.ipVersion in wanted


# ---------------------------------------------------------------------------------------
# Kubernetes names


def parse_namespaced_name(value: str) -> tuple[str, str]:
    """Hubble's "namespace/name-prefix": no slash means the namespace "default"; only the
    first two parts of a longer path count."""
    parts = value.split("/")
    if len(parts) > 1:
        return parts[0], parts[1]
    return DEFAULT_NAMESPACE, parts[0]


def _namespaced_check(get: Callable[[hb.Flow], tuple[str, str]]):
    def build(values, path, _flt) -> Predicate:
        wanted = []
        for value in values:
            if value == "":
                raise HubbleFilterError(f"{path}: name must not be empty")
            wanted.append(parse_namespaced_name(value))

        def check(flow: hb.Flow) -> bool:
            ns, name = get(flow)
            if not ns and not name:
                return False
            return any((not prefix or name.startswith(prefix)) and (not want_ns or want_ns == ns)
                       for want_ns, prefix in wanted)
        return check
    return build


def _workload_check(side: str):
    def build(values, _path, _flt) -> Predicate:
        wanted = [(w.name, w.kind) for w in values]

        def check(flow: hb.Flow) -> bool:
            for workload in getattr(flow, side).workloads:
                for name, kind in wanted:
                    if (not name or name == workload.name) and (not kind or kind == workload.kind):
                        return True
            return False
        return check
    return build


def _identity_check(side: str):
    def build(values, _path, _flt) -> Predicate:
        wanted = set(values)
        return lambda flow: flow.HasField(side) and getattr(flow, side).identity in wanted
    return build


def _cluster_name(values, path, _flt) -> Predicate:
    if "" in values:
        raise HubbleFilterError(f"{path}: name must not be empty")
    return lambda flow: False  # podflow names no cluster: an endpoint's cluster is ""


# ---------------------------------------------------------------------------------------
# Name patterns (FQDNs, node names) and regular expressions

def _fqdn_check(side: str):
    def build(values, path, _flt) -> Predicate:
        try:
            regexp = compile_fqdn_patterns(list(values))
        except ValueError as exc:
            raise HubbleFilterError(f"{path}: {exc}") from None
        return lambda flow: any(regexp.match(name) for name in getattr(flow, side))
    return build


def _node_name(values, path, _flt) -> Predicate:
    try:
        regexp = compile_node_name_patterns(list(values))
    except ValueError as exc:
        raise HubbleFilterError(f"{path}: {exc}") from None

    def check(flow: hb.Flow) -> bool:
        name = flow.node_name
        if not name:
            return False
        if "/" not in name:
            name = f"{DEFAULT_CLUSTER}/{name}"
        return regexp.match(name) is not None
    return check


def _regexps(values, path) -> list[re.Pattern]:
    out = []
    for value in values:
        try:
            out.append(compile_regexp(value))
        except re.error as exc:
            raise HubbleFilterError(f"{path}: invalid regular expression {value!r}: {exc}") \
                from None
    return out


def _dns_query(values, path, _flt) -> Predicate:
    regexps = _regexps(values, path)

    def check(flow: hb.Flow) -> bool:
        if flow.l7.WhichOneof("record") != "dns":
            return False
        query = flow.l7.dns.query
        return any(r.search(query) for r in regexps)
    return check


def _label_check(get: Callable[[hb.Flow], Sequence[str]]):
    def build(values, path, _flt) -> Predicate:
        selectors = []
        for value in values:
            try:
                selectors.append(parse_hubble_selector(value))
            except ValueError as exc:
                raise HubbleFilterError(f"{path}: {exc}") from None

        def check(flow: hb.Flow) -> bool:
            labels = parse_labels(tuple(get(flow)))
            return any(sel(labels) for sel in selectors)
        return check
    return build


# ---------------------------------------------------------------------------------------
# Verdicts, event types, directions, identifiers


def _contains(get: Callable[[hb.Flow], object]):
    def build(values, _path, _flt) -> Predicate:
        wanted = set(values)
        return lambda flow: get(flow) in wanted
    return build


def _drop_reason_desc(values, _path, _flt) -> Predicate:
    wanted = set(values)
    return lambda flow: flow.verdict == hb.DROPPED and flow.drop_reason_desc in wanted


def _reply(values, _path, _flt) -> Predicate:
    wanted = set(values)

    def check(flow: hb.Flow) -> bool:
        if not flow.HasField("is_reply") and flow.verdict != hb.DROPPED:
            return False
        return flow.is_reply.value in wanted
    return check


def _event_type(values, _path, _flt) -> Predicate:
    wanted = [(f.type, f.match_sub_type, f.sub_type) for f in values]

    def check(flow: hb.Flow) -> bool:
        if not flow.HasField("event_type"):
            return False
        event = flow.event_type
        for type_, match_sub, sub in wanted:
            if type_ and event.type != type_:
                continue
            if match_sub and sub != event.sub_type:
                continue
            return True
        return False
    return check


def _interface(values, _path, _flt) -> Predicate:
    wanted = [(i.index, i.name) for i in values]

    def check(flow: hb.Flow) -> bool:
        if not flow.HasField("interface"):
            return False
        iface = flow.interface
        return any((not index or index == iface.index) and (not name or name == iface.name)
                   for index, name in wanted)
    return check


def _trace_id(values, _path, _flt) -> Predicate:
    # podflow carries no trace context: a flow's trace id is "".
    matches = "" in values
    return lambda flow: matches


def _ip_trace_id(values, _path, _flt) -> Predicate:
    matches = 0 in values  # podflow carries no IP trace id: it is 0
    return lambda flow: matches


def _encrypted(values, _path, _flt) -> Predicate:
    matches = False in values  # podflow does not report encryption: never encrypted
    return lambda flow: matches


def _experimental(value: hb.FlowFilter.Experimental, path, _flt) -> Predicate | None:
    if value.cel_expression:
        raise HubbleFilterError(f"{path}.cel_expression: CEL expressions are not supported by "
                                f"podflow")
    return None


# ---------------------------------------------------------------------------------------
# HTTP: validated as Hubble does, then nothing matches (podflow has no HTTP records)

_STATUS_FULL = re.compile(r"[1-5][0-9]{2}")
_STATUS_PREFIX = re.compile(r"[1-5][0-9]?\+")


def _http(what: str, validate: Callable[[Sequence, str], None] | None = None):
    def build(values, path, flt) -> Predicate:
        types = flt.event_type
        if types and not any(t.type == EVENT_L7 for t in types):
            raise HubbleFilterError(f"{path}: filtering by http {what} requires the event "
                                    f"type filter to only match 'l7' events")
        if validate is not None:
            validate(values, path)
        return lambda flow: False
    return build


def _validate_status(values, path) -> None:
    for value in values:
        if not (_STATUS_FULL.fullmatch(value) or _STATUS_PREFIX.fullmatch(value)):
            raise HubbleFilterError(f"{path}: invalid status code prefix {value!r}")


def _validate_regexps(values, path) -> None:
    _regexps(values, path)


# ---------------------------------------------------------------------------------------

_BUILDERS = {
    "uuid": _contains(lambda flow: flow.uuid),
    "source_ip": _ip_check(lambda flow: flow.IP.source),
    "destination_ip": _ip_check(lambda flow: flow.IP.destination),
    "source_ip_xlated": _never_filled_ip,
    "source_pod": _namespaced_check(lambda f: (f.source.namespace, f.source.pod_name)),
    "destination_pod": _namespaced_check(
        lambda f: (f.destination.namespace, f.destination.pod_name)),
    "source_service": _namespaced_check(
        lambda f: (f.source_service.namespace, f.source_service.name)),
    "destination_service": _namespaced_check(
        lambda f: (f.destination_service.namespace, f.destination_service.name)),
    "source_fqdn": _fqdn_check("source_names"),
    "destination_fqdn": _fqdn_check("destination_names"),
    "source_label": _label_check(lambda flow: flow.source.labels),
    "destination_label": _label_check(lambda flow: flow.destination.labels),
    "node_labels": _label_check(lambda flow: ()),  # podflow reports no node labels
    "source_workload": _workload_check("source"),
    "destination_workload": _workload_check("destination"),
    "source_cluster_name": _cluster_name,
    "destination_cluster_name": _cluster_name,
    "traffic_direction": _contains(lambda flow: flow.traffic_direction),
    "verdict": _contains(lambda flow: flow.verdict),
    "drop_reason_desc": _drop_reason_desc,
    "interface": _interface,
    "event_type": _event_type,
    "protocol": _protocol,
    "source_port": _port_check(0),
    "destination_port": _port_check(1),
    "reply": _reply,
    "dns_query": _dns_query,
    "source_identity": _identity_check("source"),
    "destination_identity": _identity_check("destination"),
    "tcp_flags": _tcp_flags,
    "node_name": _node_name,
    "ip_version": _ip_version,
    "trace_id": _trace_id,
    "ip_trace_id": _ip_trace_id,
    "encrypted": _encrypted,
    "http_status_code": _http("status code", _validate_status),
    "http_method": _http("method"),
    "http_path": _http("path", _validate_regexps),
    "http_url": _http("url", _validate_regexps),
    "http_header": _http("headers"),
    "experimental": _experimental,
}
