"""Flow filters: allow and deny lists of podflow.v1.FlowFilter compiled into one fast predicate,
and the command-line flags that build those lists.

One place for the semantics so GetFlows, `podflow observe`, the flow log exporter
(prefix "flow-log-") and the TUI agree on what a filter means: a flow passes when it matches
any allow filter (or there is none) and no deny filter; within one filter every set field
must match; the values within one field are alternatives. Bad values raise FilterError (a
ValueError) naming the field, e.g. "allowlist[0].source_ip: 'x' is not an IP or CIDR".
Nothing here prints: callers decide how to report.
"""

from __future__ import annotations

import argparse
import fnmatch
import functools
import ipaddress
import re
from collections.abc import Callable, Sequence

from agent.errors import ConfigError
from podflow_api.v1 import flow_pb2, observer_pb2

Predicate = Callable[[flow_pb2.Flow], bool]
Check = Callable[[flow_pb2.Flow], bool]

TCP_FLAG_NAMES = ("FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR")
PROTOCOLS = {"tcp": ("tcp",), "udp": ("udp",), "sctp": ("sctp",), "icmpv4": ("icmpv4",),
             "icmpv6": ("icmpv6",), "icmp": ("icmpv4", "icmpv6")}


class FilterError(ValueError):
    """A filter value that cannot be understood; the message starts with the field path."""


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
def _parse_ip(text: str):
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _ip_check(side: str):
    def build(values: list[str], path: str) -> Check:
        exact: set[str] = set()
        nets = []
        for v in values:
            try:
                net = ipaddress.ip_network(v.strip(), strict=False)
            except ValueError:
                raise FilterError(f"{path}: {v!r} is not an IP address or CIDR") from None
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
            addr = _parse_ip(ip)  # cached; also catches non-canonical spellings of an IP
            if addr is None:
                return False
            if exact and str(addr) in exact:
                return True
            return any(addr.version == n.version and addr in n for n in nets)
        return check
    return build


def _pod_check(side: str):
    def build(values: list[str], path: str) -> Check:
        wanted: list[tuple[str | None, str]] = []
        for v in values:
            if not v.strip():
                raise FilterError(f"{path}: empty pod")
            ns, sep, prefix = v.strip().partition("/")
            if sep:
                if not ns:
                    raise FilterError(f"{path}: {v!r} has an empty namespace")
                if "/" in prefix:
                    raise FilterError(f"{path}: {v!r} is not 'namespace/name-prefix'")
                wanted.append((ns, prefix))
            else:
                wanted.append((None, ns))

        def check(flow: flow_pb2.Flow) -> bool:
            ep = getattr(flow, side)
            name = ep.pod_name
            if not name:
                return False
            for ns, prefix in wanted:
                if (ns is None or ep.namespace == ns) and name.startswith(prefix):
                    return True
            return False
        return check
    return build


def _namespace_check(side: str):
    def build(values: list[str], path: str) -> Check:
        names = set()
        for v in values:
            if not v.strip() or "/" in v:
                raise FilterError(f"{path}: {v!r} is not a namespace name")
            names.add(v.strip())
        return lambda flow: getattr(flow, side).namespace in names
    return build


# label selector, kubectl syntax: a=b, a==b, a!=b, a in (x,y), a notin (x,y), a, !a
_LABEL_KEY = r"[A-Za-z0-9]([-A-Za-z0-9_./]*[A-Za-z0-9])?"
_SEL_SET = re.compile(rf"^\s*(?P<key>{_LABEL_KEY})\s+(?P<op>in|notin)\s*\((?P<vals>[^)]*)\)\s*$")
_SEL_CMP = re.compile(rf"^\s*(?P<key>{_LABEL_KEY})\s*(?P<op>==|=|!=)\s*(?P<val>[^=!,()\s]*)\s*$")
_SEL_EXISTS = re.compile(rf"^\s*(?P<neg>!?)\s*(?P<key>{_LABEL_KEY})\s*$")


def _split_selector(selector: str) -> list[str]:
    """Split on commas outside parentheses."""
    parts, depth, cur = [], 0, []
    for ch in selector:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return parts


def parse_label_selector(selector: str, path: str = "label") -> Callable[[dict], bool]:
    """A kubectl-style label selector as a predicate on a {key: value} dict."""
    reqs: list[Callable[[dict], bool]] = []
    if not selector.strip():
        raise FilterError(f"{path}: empty label selector")
    for part in _split_selector(selector):
        if m := _SEL_SET.match(part):
            key, op = m["key"], m["op"]
            vals = frozenset(x.strip() for x in m["vals"].split(",") if x.strip())
            if not vals:
                raise FilterError(f"{path}: {part.strip()!r} has an empty value set")
            if op == "in":
                reqs.append(lambda labels, k=key, vs=vals: labels.get(k) in vs)
            else:
                reqs.append(lambda labels, k=key, vs=vals: labels.get(k) not in vs)
        elif m := _SEL_CMP.match(part):
            key, op, val = m["key"], m["op"], m["val"]
            if op == "!=":
                reqs.append(lambda labels, k=key, v=val: labels.get(k) != v)
            else:
                reqs.append(lambda labels, k=key, v=val: labels.get(k) == v)
        elif m := _SEL_EXISTS.match(part):
            key = m["key"]
            if m["neg"]:
                reqs.append(lambda labels, k=key: k not in labels)
            else:
                reqs.append(lambda labels, k=key: k in labels)
        else:
            raise FilterError(f"{path}: cannot parse {part.strip()!r} in label selector "
                              f"{selector!r}")
    return lambda labels: all(r(labels) for r in reqs)


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


def _parse_ns_name(v: str, path: str, what: str) -> tuple[str | None, str]:
    v = v.strip()
    ns, sep, name = v.partition("/")
    if not v or (sep and (not ns or not name or "/" in name)):
        raise FilterError(f"{path}: {v!r} is not '{what}' or 'name'")
    return (ns, name) if sep else (None, ns)


def _service_matches(svc: flow_pb2.Service, wanted) -> bool:
    if not svc.name:
        return False
    return any(svc.name == name and (ns is None or svc.namespace == ns) for ns, name in wanted)


def _names_match(names, wanted) -> bool:
    """Endpoint DNS names like 'cart.shop.svc.cluster.local' name a Service too."""
    for dns_name in names:
        labels = dns_name.rstrip(".").split(".")
        if len(labels) >= 3 and labels[2] == "svc":
            if any(labels[0] == name and (ns is None or labels[1] == ns) for ns, name in wanted):
                return True
    return False


def _side_service_check(side: str):
    def build(values: list[str], path: str) -> Check:
        wanted = [_parse_ns_name(v, path, "namespace/name") for v in values]
        # The Service a flow went to is its destination, or its source for reply packets.
        want_reply = side == "source"

        def check(flow: flow_pb2.Flow) -> bool:
            if flow.is_reply == want_reply and _service_matches(flow.service, wanted):
                return True
            return _names_match(getattr(flow, side).names, wanted)
        return check
    return build


def _service_check(values: list[str], path: str) -> Check:
    wanted = [_parse_ns_name(v, path, "namespace/name") for v in values]
    return lambda flow: _service_matches(flow.service, wanted)


def _workload_check(side: str):
    def build(values: list[str], path: str) -> Check:
        wanted = []
        for v in values:
            kind, name = _parse_ns_name(v, path, "kind/name")
            wanted.append((kind.lower() if kind else None, name))

        def check(flow: flow_pb2.Flow) -> bool:
            wl = getattr(flow, side).workload
            if not wl.name:
                return False
            kind = wl.kind.lower()
            return any(wl.name == name and (k is None or kind == k) for k, name in wanted)
        return check
    return build


def parse_port_range(v: str, path: str) -> tuple[int, int]:
    text = v.strip()
    lo_s, sep, hi_s = text.partition("-")
    try:
        lo = int(lo_s)
        hi = int(hi_s) if sep else lo
    except ValueError:
        raise FilterError(f"{path}: {v!r} is not a port or a range like 8000-8100") from None
    if not (0 <= lo <= 65535 and 0 <= hi <= 65535) or hi < lo:
        raise FilterError(f"{path}: {v!r} is not a port range within 0-65535")
    return lo, hi


def _l4_ports(flow: flow_pb2.Flow):
    which = flow.l4.WhichOneof("protocol")
    if which in ("tcp", "udp", "sctp"):
        return getattr(flow.l4, which)
    return None


def _port_check(side: str):
    attr = f"{side}_port"

    def build(values: list[str], path: str) -> Check:
        ranges = [parse_port_range(v, path) for v in values]

        def check(flow: flow_pb2.Flow) -> bool:
            l4 = _l4_ports(flow)
            if l4 is None:
                return False
            port = getattr(l4, attr)
            return any(lo <= port <= hi for lo, hi in ranges)
        return check
    return build


def _protocol_check(values: list[str], path: str) -> Check:
    wanted: set[str] = set()
    for v in values:
        key = v.strip().lower()
        if key not in PROTOCOLS:
            raise FilterError(f"{path}: unknown protocol {v!r} (one of {', '.join(PROTOCOLS)})")
        wanted.update(PROTOCOLS[key])
    return lambda flow: flow.l4.WhichOneof("protocol") in wanted


def _tcp_flags_check(values: list[str], path: str) -> Check:
    sets = []
    for v in values:
        names = [x.strip().upper() for x in v.split(",") if x.strip()]
        if not names:
            raise FilterError(f"{path}: empty TCP flag list")
        for n in names:
            if n not in TCP_FLAG_NAMES:
                raise FilterError(f"{path}: unknown TCP flag {n!r} "
                                  f"(one of {', '.join(TCP_FLAG_NAMES)})")
        sets.append(names)

    def check(flow: flow_pb2.Flow) -> bool:
        if flow.l4.WhichOneof("protocol") != "tcp":
            return False
        flags = flow.l4.tcp.flags
        return any(all(getattr(flags, n) for n in names) for names in sets)
    return check


def _enum_check(attr: str, enum_type):
    known = set(enum_type.values())

    def build(values: list[int], path: str) -> Check:
        for v in values:
            if v not in known:
                raise FilterError(f"{path}: {v} is not a {enum_type.DESCRIPTOR.name} value")
        wanted = frozenset(values)
        if attr == "ip_version":
            return lambda flow: flow.ip.ip_version in wanted
        return lambda flow: getattr(flow, attr) in wanted
    return build


def _glob_regex(values: list[str], path: str, ignore_case: bool = False):
    if any(not v.strip() for v in values):
        raise FilterError(f"{path}: empty pattern")
    pattern = "|".join(fnmatch.translate(v.strip()) for v in values)
    return re.compile(pattern, re.IGNORECASE if ignore_case else 0)


def _interface_check(values: list[str], path: str) -> Check:
    rx = _glob_regex(values, path)
    return lambda flow: bool(flow.interface.name) and rx.match(flow.interface.name) is not None


def _node_check(values: list[str], path: str) -> Check:
    rx = _glob_regex(values, path)
    return lambda flow: rx.match(flow.node_name) is not None


def _drop_reason_check(values: list[str], path: str) -> Check:
    rx = _glob_regex(values, path, ignore_case=True)
    return lambda flow: bool(flow.drop_reason) and rx.match(flow.drop_reason) is not None


def _dns_query_check(values: list[str], path: str) -> Check:
    rx = _glob_regex([v.strip().rstrip(".") for v in values], path, ignore_case=True)
    return lambda flow: bool(flow.dns.query) and rx.match(flow.dns.query.rstrip(".")) is not None


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
    "protocol": _protocol_check,
    "tcp_flags": _tcp_flags_check,
    "verdict": _enum_check("verdict", flow_pb2.Verdict),
    "traffic_direction": _enum_check("traffic_direction", flow_pb2.TrafficDirection),
    "observation_point": _enum_check("observation_point", flow_pb2.ObservationPoint),
    "interface": _interface_check,
    "node_name": _node_check,
    "ip_version": _enum_check("ip_version", flow_pb2.IPVersion),
    "category": _enum_check("category", flow_pb2.FlowCategory),
    "drop_reason": _drop_reason_check,
    "outcome": _enum_check("outcome", flow_pb2.ConnectionOutcome),
    "dns_query": _dns_query_check,
    "service": _service_check,
}
assert set(_BUILDERS) == {f.name for f in observer_pb2.FlowFilter.DESCRIPTOR.fields}, \
    "every FlowFilter field needs a builder"


# -- command-line flags -----------------------------------------------------------------------

def _enum_parser(enum_type, aliases: dict[str, str] | None = None):
    names = [n for n in enum_type.keys() if enum_type.Value(n) != 0]

    def parse(text: str) -> int:
        key = text.strip().upper().replace("-", "_")
        key = (aliases or {}).get(key, key)
        if key not in enum_type.keys():
            choices = ", ".join(n.lower().replace("_", "-") for n in names)
            raise FilterError(f"unknown value {text!r} (one of {choices})")
        return enum_type.Value(key)
    return parse


# flag -> (source-side field, destination-side field) for symmetric flags ("either side", as
# Hubble does), or (field, None) for a flag that applies to one field.
_SYMMETRIC = "sym"
FLAGS: dict[str, tuple[str, str | None, Callable | None, str]] = {
    # flag: (field, other-side field or None, value parser, help)
    "namespace": ("source_namespace", "destination_namespace", None,
                  "flows with a pod of this namespace on either side"),
    "from-namespace": ("source_namespace", None, None, "source namespace"),
    "to-namespace": ("destination_namespace", None, None, "destination namespace"),
    "pod": ("source_pod", "destination_pod", None,
            "either side is this pod: [NAMESPACE/]NAME-PREFIX"),
    "from-pod": ("source_pod", None, None, "source pod: [NAMESPACE/]NAME-PREFIX"),
    "to-pod": ("destination_pod", None, None, "destination pod: [NAMESPACE/]NAME-PREFIX"),
    "label": ("source_label", "destination_label", None,
              "either side matches this label selector, e.g. 'app=cart,tier!=db'"),
    "from-label": ("source_label", None, None, "source label selector"),
    "to-label": ("destination_label", None, None, "destination label selector"),
    "service": ("service", None, None, "the Service the flow went to: [NAMESPACE/]NAME"),
    "from-service": ("source_service", None, None, "source Service: [NAMESPACE/]NAME"),
    "to-service": ("destination_service", None, None, "destination Service: [NAMESPACE/]NAME"),
    "workload": ("source_workload", "destination_workload", None,
                 "either side belongs to this workload: [KIND/]NAME"),
    "from-workload": ("source_workload", None, None, "source workload: [KIND/]NAME"),
    "to-workload": ("destination_workload", None, None, "destination workload: [KIND/]NAME"),
    "ip": ("source_ip", "destination_ip", None, "either side has this IP or is in this CIDR"),
    "from-ip": ("source_ip", None, None, "source IP or CIDR"),
    "to-ip": ("destination_ip", None, None, "destination IP or CIDR"),
    "port": ("source_port", "destination_port", None, "either port: PORT or LOW-HIGH"),
    "from-port": ("source_port", None, None, "source port: PORT or LOW-HIGH"),
    "to-port": ("destination_port", None, None, "destination port: PORT or LOW-HIGH"),
    "protocol": ("protocol", None, None, "tcp, udp, sctp, icmp, icmpv4, icmpv6"),
    "tcp-flags": ("tcp_flags", None, None, "all of these TCP flags set, e.g. SYN or SYN,ACK"),
    "verdict": ("verdict", None, _enum_parser(flow_pb2.Verdict), "forwarded or dropped"),
    "direction": ("traffic_direction", None,
                  _enum_parser(flow_pb2.TrafficDirection,
                               {"EGRESS": "FROM_POD", "INGRESS": "TO_POD"}),
                  "from-pod (egress) or to-pod (ingress), from the pod's point of view"),
    "observation-point": ("observation_point", None, _enum_parser(flow_pb2.ObservationPoint),
                          "pod-veth, bridge or host-stack"),
    "interface": ("interface", None, None, "interface name or glob, e.g. 'veth*'"),
    "node": ("node_name", None, None, "node name or glob"),
    "ip-version": ("ip_version", None,
                   _enum_parser(flow_pb2.IPVersion, {"4": "IPV4", "6": "IPV6"}), "4 or 6"),
    "category": ("category", None, _enum_parser(flow_pb2.FlowCategory),
                 "pod-to-pod-same-node, pod-to-pod-cross-node, pod-to-service, "
                 "outside-to-service, pod-to-world, host-to-pod, other"),
    "outcome": ("outcome", None, _enum_parser(flow_pb2.ConnectionOutcome),
                "established, refused, unanswered, reset, closed, no-reply, in-progress"),
    "drop-reason": ("drop_reason", None, None, "kernel drop reason (glob), e.g. NETFILTER_DROP"),
    "dns-query": ("dns_query", None, None, "DNS query name glob, e.g. '*.shop.svc.*'"),
}


_COMMA_LIST_FLAGS = {"protocol"}


def _ops_dest(prefix: str) -> str:
    return f"{prefix.replace('-', '_')}filter_ops"


def _pending_dest(prefix: str) -> str:
    return f"_{prefix.replace('-', '_')}filter_not_pending"


class _FilterAction(argparse.Action):
    """Records (flag, value, negated) in command-line order so --not applies to the NEXT
    filter flag, and checks the value at once so an error names the flag."""

    def __init__(self, option_strings, dest, flag: str, prefix: str, **kw):
        super().__init__(option_strings, dest, **kw)
        self.flag = flag
        self.prefix = prefix

    def __call__(self, parser, namespace, value, option_string=None):
        field, other, parse, _ = FLAGS[self.flag]
        # Fixed-vocabulary flags also take a comma list (`--outcome refused,unanswered`);
        # free-form values keep their commas (a label selector's comma means AND).
        values = value.split(",") if parse or self.flag in _COMMA_LIST_FLAGS else [value]
        parsed_values = []
        try:
            for one in values:
                parsed = parse(one) if parse else one.strip()
                compile_filter(observer_pb2.FlowFilter(**{field: [parsed]}), field)
                parsed_values.append(parsed)
        except FilterError as exc:
            msg = str(exc)
            if msg.startswith(f"{field}: "):
                msg = msg[len(field) + 2:]
            raise argparse.ArgumentError(self, msg) from exc
        pending = _pending_dest(self.prefix)
        negate = getattr(namespace, pending, False)
        setattr(namespace, pending, False)
        ops = list(getattr(namespace, _ops_dest(self.prefix), None) or [])
        ops.extend((self.flag, parsed, negate) for parsed in parsed_values)
        setattr(namespace, _ops_dest(self.prefix), ops)


class _NotAction(argparse.Action):
    def __init__(self, option_strings, dest, prefix: str, **kw):
        super().__init__(option_strings, dest, nargs=0, **kw)
        self.prefix = prefix

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, _pending_dest(self.prefix), True)


def add_filter_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup,
                         prefix: str = "") -> None:
    """Add the filter flags (`--namespace`, `--pod` ... and `--not`), each named
    `--{prefix}{flag}`. Every flag is repeatable; values of one flag are alternatives."""
    parser.set_defaults(**{_ops_dest(prefix): []})
    parser.add_argument(f"--{prefix}not", action=_NotAction, prefix=prefix,
                        dest=f"_{prefix.replace('-', '_')}not_flag", default=False,
                        help="turn the NEXT filter flag into a deny filter")
    for flag, (_field, _other, _parse, help_text) in FLAGS.items():
        parser.add_argument(f"--{prefix}{flag}", action=_FilterAction, flag=flag, prefix=prefix,
                            dest=f"_{prefix.replace('-', '_')}flag_{flag.replace('-', '_')}",
                            default=None, metavar="VALUE", help=help_text)


class _SideTracker:
    """Builds one filter list the way Hubble's CLI does: flags that name a side go into every
    filter; a symmetric flag (--pod X) splits the list into a source-side filter and a
    destination-side filter, so the flow matches when either side has X."""

    def __init__(self):
        self.left = observer_pb2.FlowFilter()
        self.right: observer_pb2.FlowFilter | None = None
        self.used = False

    def add(self, field: str, other: str | None, value) -> None:
        self.used = True
        if other is None:
            getattr(self.left, field).append(value)
            if self.right is not None:
                getattr(self.right, field).append(value)
            return
        if self.right is None:
            self.right = observer_pb2.FlowFilter()
            self.right.CopyFrom(self.left)
        getattr(self.left, field).append(value)
        getattr(self.right, other).append(value)

    def filters(self) -> list[observer_pb2.FlowFilter]:
        if not self.used:
            return []
        return [self.left] if self.right is None else [self.left, self.right]


def filters_from_args(args: argparse.Namespace, prefix: str = "",
                      ) -> tuple[list[observer_pb2.FlowFilter], list[observer_pb2.FlowFilter]]:
    """(allowlist, denylist) from the flags added by add_filter_arguments. A --not that no
    filter flag follows is a ConfigError (it would silently deny nothing)."""
    if getattr(args, _pending_dest(prefix), False):
        raise ConfigError(f"--{prefix}not must be followed by a filter flag, e.g. "
                          f"--{prefix}not --{prefix}namespace kube-system")
    allow, deny = _SideTracker(), _SideTracker()
    for flag, value, negate in getattr(args, _ops_dest(prefix), None) or []:
        field, other, _parse, _help = FLAGS[flag]
        (deny if negate else allow).add(field, other, value)
    return allow.filters(), deny.filters()


def predicate_from_args(args: argparse.Namespace, prefix: str = "") -> Predicate | None:
    allow, deny = filters_from_args(args, prefix)
    return compile_filters(allow, deny)
