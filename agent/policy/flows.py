"""podflow.v1.Flow records, read for policy: the connection a record belongs to (in its
original orientation, after DNAT) and what the record shows of it getting through.

The pipeline stage calls `connection_of` and `seen_of` per record, evaluates the connection
(agent/policy/evaluate.py) and joins the two (agent/policy/finding.py).
"""

from __future__ import annotations

from agent.policy.evaluate import Connection
from agent.policy.finding import Seen
from podflow_api.v1 import flow_pb2

_PROTOCOLS = {"tcp": "TCP", "udp": "UDP", "sctp": "SCTP", "icmpv4": "ICMP", "icmpv6": "ICMPv6"}
_WITH_PORTS = ("tcp", "udp", "sctp")
# Outcomes only an answer from the destination can produce. REFUSED is not one: an RST may
# come from a policy engine that rejects (iptables REJECT --reject-with tcp-reset).
_ANSWERED = frozenset((flow_pb2.ESTABLISHED, flow_pb2.RESET, flow_pb2.CLOSED))


def connection_of(flow: flow_pb2.Flow) -> Connection | None:
    """The connection of a record: reply records turned around, the Service side replaced
    by the backend that answered (flow.backend, filled by enrichment). None for records
    without an IP header or a known L4 protocol, and for non-first fragments (no ports)."""
    ip = flow.ip
    if not ip.source or not ip.destination or ip.fragment:
        return None
    which = flow.l4.WhichOneof("protocol")
    if which is None:
        return None
    sport = dport = 0
    if which in _WITH_PORTS:
        l4 = getattr(flow.l4, which)
        sport, dport = l4.source_port, l4.destination_port
    backend_ip, backend_port = "", 0
    if flow.HasField("backend") and flow.backend.ip:
        backend_ip, backend_port = flow.backend.ip, flow.backend.port
    return Connection.of_record(ip.source, sport, ip.destination, dport, _PROTOCOLS[which],
                                flow.is_reply, backend_ip, backend_port)


def seen_of(flow: flow_pb2.Flow) -> tuple[Seen, str]:
    """What this record proves about its connection, and the kernel's drop reason.

    DROPPED: a drop record. DELIVERED: a request seen entering the destination pod (TO_POD
    at a pod veth, i.e. past the host's netfilter), or an outcome only an answer gives.
    Anything else (a packet leaving the source pod, seen before the host's netfilter where
    policy is usually enforced) proves nothing yet: IN_FLIGHT."""
    if flow.verdict == flow_pb2.DROPPED:
        return Seen.DROPPED, flow.drop_reason
    if flow.outcome in _ANSWERED:
        return Seen.DELIVERED, ""
    if (not flow.is_reply and flow.observation_point == flow_pb2.POD_VETH
            and flow.traffic_direction == flow_pb2.TO_POD):
        return Seen.DELIVERED, ""
    return Seen.IN_FLIGHT, ""
