"""How a flow is written as text, in one place: the words, arrows, verdicts and times of
`podflow observe` (agent.client.printer lays them out as a table or compact lines), the TUI's
Flows view and detail pane, the demo's summary, and the `summary` line the agent puts in
every record (agent.datapath.decode, agent.annotate.drops).

Where the copies used to disagree, the choices are: an ASCII arrow `->` (a terminal in any
locale shows it, grep and copy-paste keep it); the verdict as its enum name with the drop
reason in parentheses, `DROPPED (NETFILTER_DROP)`, `FORWARDED`; a pod as `namespace/pod`, any
other end as its address, marked `(world)` or `(node NAME)`; a Service as `ns/name:port ->
ns/backend-pod:port` (the ports where a column has room); ICMP as `type 8 code 0`; times in
UTC (agent.wire.timefmt), as in the flow logs.
"""

from __future__ import annotations

from podflow_api.v1 import flow_pb2

ARROW = "->"
PROTO_NAMES = {"tcp": "TCP", "udp": "UDP", "sctp": "SCTP", "icmpv4": "ICMPv4",
               "icmpv6": "ICMPv6"}
TCP_FLAG_NAMES = tuple(f.name for f in flow_pb2.TCPFlags.DESCRIPTOR.fields)  # FIN, SYN, ...
_PORTED = ("tcp", "udp", "sctp")
_ICMP = ("icmpv4", "icmpv6")
_DIRECTIONS = {flow_pb2.FROM_POD: "from-pod", flow_pb2.TO_POD: "to-pod"}
_VERDICTS = {flow_pb2.FORWARDED: "FORWARDED", flow_pb2.DROPPED: "DROPPED"}


def host_port(host: str, port: int | None) -> str:
    """'10.0.0.1:80', '[fd00::1]:80', or the host alone without a port."""
    if port is None:
        return host
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def ports(flow: flow_pb2.Flow) -> tuple[int | None, int | None]:
    """(source port, destination port) of TCP/UDP/SCTP, else (None, None)."""
    which = flow.l4.WhichOneof("protocol")
    if which in _PORTED:
        l4 = getattr(flow.l4, which)
        return l4.source_port, l4.destination_port
    return None, None


def pod_name(namespace: str, pod: str) -> str:
    return f"{namespace}/{pod}" if namespace else pod


def endpoint_text(ep: flow_pb2.Endpoint, ip: str, port: int | None = None) -> str:
    """'ns/pod[:port]' for a pod; the address otherwise, with '(node NAME)' for a node's
    own address and '(world)' for one outside the cluster."""
    if ep.pod_name:
        return host_port(pod_name(ep.namespace, ep.pod_name), port)
    text = host_port(ip or "?", port)
    if ep.kind == flow_pb2.NODE and ep.node_name:
        text += f" (node {ep.node_name})"
    elif ep.kind == flow_pb2.WORLD:
        text += " (world)"
    return text


def service_text(flow: flow_pb2.Flow, with_ports: bool = True) -> str:
    """'ns/name:port -> ns/backend-pod:port' (ports left out with `with_ports=False`), the
    backend's address when it is not a pod, '-> (no endpoints)' when the Service had none;
    '' for a flow to no Service."""
    svc = flow.service
    if not svc.name:
        return ""
    text = pod_name(svc.namespace, svc.name)
    if with_ports and svc.port:
        text += f":{svc.port}"
    be = flow.backend
    port = (be.port or None) if with_ports else None
    if be.pod_name:
        text += f" {ARROW} {host_port(pod_name(be.namespace, be.pod_name), port)}"
    elif be.ip:
        text += f" {ARROW} {host_port(be.ip, port)}"
    elif svc.no_endpoints:
        text += f" {ARROW} (no endpoints)"
    return text


def proto_text(flow: flow_pb2.Flow) -> str:
    """TCP, UDP, SCTP, ICMPv4, ICMPv6, or IP for anything else."""
    return PROTO_NAMES.get(flow.l4.WhichOneof("protocol") or "", "IP")


def icmp_text(flow: flow_pb2.Flow) -> str:
    """'type 8 code 0' for ICMP, else ''."""
    which = flow.l4.WhichOneof("protocol")
    if which in _ICMP:
        icmp = getattr(flow.l4, which)
        return f"type {icmp.type} code {icmp.code}"
    return ""


def ports_text(flow: flow_pb2.Flow) -> str:
    """'TCP 40000 -> 80', 'ICMPv4 type 8 code 0', 'IP': protocol and ports in one cell."""
    sport, dport = ports(flow)
    if sport is not None:
        return f"{proto_text(flow)} {sport} {ARROW} {dport}"
    icmp = icmp_text(flow)
    return f"{proto_text(flow)} {icmp}" if icmp else proto_text(flow)


def tcp_flags_text(flags) -> str:
    """'SYN,ACK' (a TCPFlags message)."""
    return ",".join(n for n in TCP_FLAG_NAMES if getattr(flags, n))


def flags_text(flow: flow_pb2.Flow) -> str:
    """TCP flags ('SYN,ACK') or ICMP type and code; '' otherwise."""
    if flow.l4.WhichOneof("protocol") == "tcp":
        return tcp_flags_text(flow.l4.tcp.flags)
    return icmp_text(flow)


def verdict_text(flow: flow_pb2.Flow) -> str:
    """'FORWARDED', 'DROPPED (NETFILTER_DROP)' ('DROPPED' without a reason), '' unknown."""
    text = _VERDICTS.get(flow.verdict, "")
    if flow.verdict == flow_pb2.DROPPED and flow.drop_reason:
        text += f" ({flow.drop_reason})"
    return text


def direction_text(flow: flow_pb2.Flow) -> str:
    """'from-pod' or 'to-pod' (the pod's point of view), '' unknown."""
    return _DIRECTIONS.get(flow.traffic_direction, "")


def dns_text(flow: flow_pb2.Flow) -> str:
    """'DNS api.example.com NXDOMAIN' for a flow that carried a DNS message, else ''."""
    dns = flow.dns
    if not dns.query:
        return ""
    return f"DNS {dns.query}" + (f" {dns.rcode}" if dns.rcode else "")


def summary(flow: flow_pb2.Flow, proto_label: str | None = None) -> str:
    """The record's one-line `summary` from its addresses: 'TCP 10.0.0.1:4242 ->
    10.96.0.10:80 SYN', 'UDP 10.0.0.1 -> 10.0.0.2 fragment', 'ICMPv4 a -> b type 8 code 0'
    (a drop's record puts its verdict_text in front). `proto_label` names a protocol the flow
    has no field for ('IP proto 47')."""
    name = proto_label or proto_text(flow)
    src, dst = flow.ip.source, flow.ip.destination
    sport, dport = ports(flow)
    if flow.ip.fragment:
        text = f"{name} {src} {ARROW} {dst} fragment"
    elif sport is not None:
        text = f"{name} {host_port(src, sport)} {ARROW} {host_port(dst, dport)}"
        flags = flags_text(flow)
        if flags:
            text += f" {flags}"
    else:
        icmp = icmp_text(flow)
        text = f"{name} {src} {ARROW} {dst}" + (f" {icmp}" if icmp else "")
    return text


# -- NetworkPolicy (flow.policy, filled by agent/policy) ----------------------------------------
#
# A record's verdict in one word, and what was seen of it in another: the words `observe
# --policy-verdict`, the TUI's `policy-verdict=`, the metrics' labels and the screens use.

POLICY_VERDICT_WORDS = ("allowed", "denied", "not-isolated", "unknown")
_FINDINGS = {flow_pb2.POLICY_ENFORCED: "enforced", flow_pb2.POLICY_NOT_ENFORCED: "not-enforced",
             flow_pb2.POLICY_DROPPED_OTHERWISE: "dropped-otherwise"}
POLICY_FINDING_WORDS = tuple(_FINDINGS.values())
_ALLOWED, _DENIED = flow_pb2.POLICY_ALLOWED, flow_pb2.POLICY_DENIED
_EVALUATED = frozenset((flow_pb2.POLICY_NOT_ISOLATED, flow_pb2.POLICY_ALLOWED,
                        flow_pb2.POLICY_DENIED, flow_pb2.POLICY_NOT_APPLICABLE))


def policy_verdict_word(flow: flow_pb2.Flow) -> str:
    """The connection's NetworkPolicy verdict: 'denied' (a policy denies it in either
    direction), 'allowed' (a pod of it is isolated and a policy allows it), 'not-isolated'
    (no policy selects either pod), 'unknown' (not evaluated)."""
    policy = flow.policy
    egress, ingress = policy.egress.verdict, policy.ingress.verdict
    if egress == _DENIED or ingress == _DENIED:
        return "denied"
    if egress == _ALLOWED or ingress == _ALLOWED:
        return "allowed"
    if egress in _EVALUATED or ingress in _EVALUATED:
        return "not-isolated"
    return "unknown"


def policy_finding_word(flow: flow_pb2.Flow) -> str:
    """What was seen of the verdict: 'enforced' (denied and dropped), 'not-enforced' (denied
    but delivered: the CNI does not enforce the policy), 'dropped-otherwise' (allowed but
    dropped: the kernel's reason says by what); '' when nothing to report yet."""
    return _FINDINGS.get(flow.policy.enforcement, "")


def policy_names(flow: flow_pb2.Flow) -> tuple[str, ...]:
    """Every policy ("namespace/name") the verdict names, egress first: the ones whose rules
    allow the connection and the ones that isolate a pod and deny it."""
    policy = flow.policy
    names = list(policy.egress.policies)
    names += [p for p in policy.ingress.policies if p not in names]
    return tuple(names)


def rule_text(policy: str, direction: str, index: int) -> str:
    """'shop/allow-web ingress[0]': one rule of one policy, as every screen names it."""
    return f"{policy} {direction}[{index}]"


def policy_rules(flow: flow_pb2.Flow) -> tuple[str, ...]:
    """The rules (rule_text) that allowed the record's connection, egress first."""
    policy = flow.policy
    return (tuple(rule_text(r.policy, "egress", r.index) for r in policy.egress.rules)
            + tuple(rule_text(r.policy, "ingress", r.index) for r in policy.ingress.rules))


def denying_policies(flow: flow_pb2.Flow) -> tuple[str, ...]:
    """The policies that deny the record's connection (either direction)."""
    out: list[str] = []
    for side in (flow.policy.egress, flow.policy.ingress):
        if side.verdict == _DENIED:
            out += [p for p in side.policies if p not in out]
    return tuple(out)


_REASONS = {flow_pb2.POLICY_ALLOW_OWN_NODE: "from its own node",
            flow_pb2.POLICY_ALLOW_SELF: "to itself"}


def _direction_text(name: str, side: flow_pb2.DirectionPolicy) -> str:
    verdict = side.verdict
    if verdict == _ALLOWED:
        why = _REASONS.get(side.reason)
        if why is not None:
            return f"{name} allowed ({why})"
        rules = ", ".join(rule_text(r.policy, name, r.index) for r in side.rules)
        return f"{name} allowed by {rules or ', '.join(side.policies)}"
    if verdict == _DENIED:
        text = f"{name} DENIED by {', '.join(side.policies)}"
        if side.unresolved_named_ports:
            text += (f" (named ports {', '.join(side.unresolved_named_ports)} unresolved: "
                     "container ports unknown)")
        return text
    if verdict == flow_pb2.POLICY_NOT_ISOLATED:
        return f"{name} not isolated"
    return ""


def policy_text(flow: flow_pb2.Flow) -> str:
    """'egress allowed by shop/allow-dns egress[0]; ingress DENIED by data/db-in: denied and
    dropped'; '' when the record carries no verdict. Directions where NetworkPolicy does not
    apply (a world or node end) are left out."""
    if not flow.HasField("policy"):
        return ""
    parts = [t for t in (_direction_text("egress", flow.policy.egress),
                         _direction_text("ingress", flow.policy.ingress)) if t]
    finding = flow.policy.enforcement
    if finding == flow_pb2.POLICY_ENFORCED:
        parts.append("denied and dropped (enforced)")
    elif finding == flow_pb2.POLICY_NOT_ENFORCED:
        parts.append("denied but delivered: the CNI does not enforce it")
    elif finding == flow_pb2.POLICY_DROPPED_OTHERWISE:
        parts.append(f"allowed but dropped ({flow.drop_reason or 'reason unknown'})")
    return "; ".join(parts) or "not applicable (no pod end)"


def policy_short(flow: flow_pb2.Flow) -> str:
    """'policy denied by data/db-in (not-enforced)', 'policy allowed by shop/cart-in': a
    record's verdict where a policy decided it, for one-line outputs; '' otherwise."""
    word = policy_verdict_word(flow)
    if word not in ("allowed", "denied"):
        return ""
    names = ", ".join(policy_names(flow))
    text = f"policy {word}" + (f" by {names}" if names else "")
    finding = policy_finding_word(flow)
    return f"{text} ({finding})" if finding else text
