"""podflow.v1.Flow records, read and written for policy: the connection a record belongs to
(in its original orientation, after DNAT), what the record shows of it getting through, and
a verdict as the record's `policy` field.

The agent judges records inside enrichment (agent/policy/judge.py), which knows the
connection already; tools that read recorded flows (`podflow policy`, bench/policy.py) call
`connection_of` / `judge` here.
"""

from __future__ import annotations

from agent.policy.evaluate import PolicyEvaluator
from agent.policy.finding import Finding, Seen, join
from agent.policy.verdict import Connection, ConnectionVerdict, DirectionVerdict
from podflow_api.v1 import flow_pb2

_PROTOCOLS = {"tcp": "TCP", "udp": "UDP", "sctp": "SCTP", "icmpv4": "ICMP", "icmpv6": "ICMPv6"}
_WITH_PORTS = ("tcp", "udp", "sctp")
_DEFINED = frozenset(("TCP", "UDP", "SCTP"))   # the protocols NetworkPolicy defines
# Outcomes only an answer from the destination can produce. REFUSED is not one: an RST may
# come from a policy engine that rejects (iptables REJECT --reject-with tcp-reset).
ANSWERED = frozenset((flow_pb2.ESTABLISHED, flow_pb2.RESET, flow_pb2.CLOSED))
# Plain ints: attribute access on the protobuf enum wrapper is slow on the hot path.
_DROPPED, _TO_POD, _POD_VETH = flow_pb2.DROPPED, flow_pb2.TO_POD, flow_pb2.POD_VETH


def _oriented(flow: flow_pb2.Flow, reply: bool | None = None
              ) -> tuple[str, str, int, str, bool] | None:
    """(client IP, server IP after DNAT, server port after DNAT, protocol, is_reply): the
    fields read once, in the order that stops earliest for records without a connection
    (protobuf field reads dominate this stage's cost)."""
    ip = flow.ip
    src = ip.source
    if not src or ip.fragment:
        return None
    l4 = flow.l4
    which = l4.WhichOneof("protocol")
    if which is None:
        return None
    dst = ip.destination
    if not dst:
        return None
    if reply is None:
        reply = flow.is_reply
    if which in _WITH_PORTS:
        ports = getattr(l4, which)
        if reply:
            src, dst, dport = dst, src, ports.source_port
        else:
            dport = ports.destination_port
    else:
        dport = 0
        if reply:
            src, dst = dst, src
    backend = flow.backend   # unset: the default instance, ip ""
    backend_ip = backend.ip
    if backend_ip:
        dst, dport = backend_ip, backend.port or dport
    return src, dst, dport, _PROTOCOLS[which], reply


def connection_of(flow: flow_pb2.Flow, reply: bool | None = None) -> Connection | None:
    """The connection of a record: reply records turned around, the Service side replaced
    by the backend that answered (flow.backend, filled by enrichment). None for records
    without an IP header or a known L4 protocol, and for non-first fragments (no ports).
    `reply` overrides the record's is_reply."""
    oriented = _oriented(flow, reply)
    if oriented is None:
        return None
    return Connection(*oriented[:4])


_IN_FLIGHT, _DELIVERED = (Seen.IN_FLIGHT, ""), (Seen.DELIVERED, "")


def seen_in(flow: flow_pb2.Flow, reply: bool | None) -> tuple[Seen, str]:
    """seen_of, for a caller that knows whether the record is a reply (None: read it)."""
    # Ordered for the common record (forwarded, leaving its pod): three field reads.
    if flow.verdict == _DROPPED:
        return Seen.DROPPED, flow.drop_reason
    if flow.outcome in ANSWERED:
        return _DELIVERED
    if flow.observation_point == _POD_VETH:
        if reply is None:
            reply = flow.is_reply
        # The server pod's own veth: a request going in, or a reply coming out of it.
        if (flow.traffic_direction == _TO_POD) != reply:
            return _DELIVERED
    return _IN_FLIGHT


def seen_of(flow: flow_pb2.Flow) -> tuple[Seen, str]:
    """What this record proves about its connection, and the kernel's drop reason.

    DROPPED: a drop record. DELIVERED: a request seen entering the destination pod (TO_POD
    at a pod veth, i.e. past the host's netfilter), a reply seen leaving it (FROM_POD at its
    veth: the server had the request), or an outcome only an answer gives. A reply entering
    the client proves nothing: a policy engine's REJECT sends one in the server's name.
    Anything else (a packet leaving the source pod, seen before the host's netfilter where
    policy is usually enforced) proves nothing yet: IN_FLIGHT."""
    return seen_in(flow, None)


def judge(evaluator: PolicyEvaluator, flow: flow_pb2.Flow
          ) -> tuple[ConnectionVerdict, Finding] | None:
    """The policy verdict of a record's connection and what the record shows of it: what the
    pipeline stage computes per record (None for records without a connection)."""
    oriented = _oriented(flow)
    if oriented is None:
        return None
    src, dst, dport, protocol, reply = oriented
    verdict = evaluator.evaluate(src, dst, dport, protocol)
    seen, reason = seen_in(flow, reply)
    return verdict, join(verdict, seen, reason, protocol in _DEFINED)


def _direction(verdict: DirectionVerdict, out: flow_pb2.DirectionPolicy) -> None:
    out.verdict = int(verdict.verdict)     # Verdict's values are PolicyVerdict's
    out.policies.extend(verdict.policies)
    for ref in verdict.rules:
        out.rules.add(policy=ref.policy, index=ref.index)
    out.reason = int(verdict.reason)       # Reason's values are PolicyAllowReason's
    out.unresolved_named_ports.extend(verdict.unresolved)


def policy_message(verdict: ConnectionVerdict,
                   enforcement: int = flow_pb2.POLICY_ENFORCEMENT_UNDECIDED) -> flow_pb2.Policy:
    """A verdict as a record's `policy` field."""
    out = flow_pb2.Policy(enforcement=enforcement)
    _direction(verdict.egress, out.egress)
    _direction(verdict.ingress, out.ingress)
    return out
