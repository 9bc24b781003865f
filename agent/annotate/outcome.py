"""Connection outcomes: did the connection work, and if not, how did it fail?

A flow record only carries the TCP flags of one direction at one observation point, so it
cannot say "refused" or "unanswered" by itself. This module pairs each record with the
records of the reverse 5-tuple seen at the SAME interface (a pod's veth sees both directions
of every connection of its pod) and keeps a small state per connection. Bridge records get
no outcome: a bridge sees requests after kube-proxy's DNAT and replies before the reverse
translation, so the two directions do not pair up there.

    TCP  SYN, then the other side's SYN+ACK            -> ESTABLISHED
         SYN, then the other side's RST (no SYN+ACK)    -> REFUSED
         SYN and nothing back within --syn-timeout      -> UNANSWERED (IN_PROGRESS before)
         established, then RST from either side         -> RESET
         established, then FIN                          -> CLOSED
         no handshake seen (agent started mid-connection) but both directions -> ESTABLISHED
    UDP  packets both ways                              -> ESTABLISHED
         one way only, for --syn-timeout                -> NO_REPLY (IN_PROGRESS before)

A connection whose timeout passes without any new record of it gets one extra record (a copy
of its last record with zero packets and bytes) carrying the final outcome, so "unanswered"
reaches users even when the kernel never reports the flow again. Zero counts keep sums exact.
Plain Python, no kernel access: the tests drive it with hand-built records.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from podflow_api.v1 import flow_pb2

TCP_FIN, TCP_SYN, TCP_RST, TCP_ACK = 1, 2, 4, 16
# Plain ints: attribute access on the protobuf enum wrapper is slow on the hot path.
_CLOSED = flow_pb2.CLOSED
_ESTABLISHED = flow_pb2.ESTABLISHED
_IN_PROGRESS = flow_pb2.IN_PROGRESS
_NO_REPLY = flow_pb2.NO_REPLY
_OUTCOME_UNKNOWN = flow_pb2.OUTCOME_UNKNOWN
_REFUSED = flow_pb2.REFUSED
_RESET = flow_pb2.RESET
_UNANSWERED = flow_pb2.UNANSWERED
_UNPAIRED = (flow_pb2.BRIDGE, flow_pb2.HOST_STACK)

# (interface index, protocol, (ip, port) of one side, (ip, port) of the other): sorted so
# both directions of a connection share one key.
ConnKey = tuple


def _l4(flow: flow_pb2.Flow):
    kind = flow.l4.WhichOneof("protocol")
    if kind in ("tcp", "udp"):
        return kind, getattr(flow.l4, kind)
    return None, None


def _tcp_bits(flags: flow_pb2.TCPFlags) -> int:
    return ((TCP_FIN if flags.FIN else 0) | (TCP_SYN if flags.SYN else 0)
            | (TCP_RST if flags.RST else 0) | (TCP_ACK if flags.ACK else 0))


def connection_key(flow: flow_pb2.Flow) -> tuple[ConnKey, tuple] | None:
    """The direction-free key of a record's connection and the (src, dst) endpoints of this
    record, or None for traffic without ports (ICMP, fragments) or without an interface."""
    kind, l4 = _l4(flow)
    if kind is None or flow.ip.fragment:
        return None
    src = (flow.ip.source, l4.source_port)
    dst = (flow.ip.destination, l4.destination_port)
    lo, hi = (src, dst) if src <= dst else (dst, src)
    return (flow.interface.index, kind, lo, hi), src


@dataclass
class _Conn:
    """What one connection showed so far, per side. `initiator` is the (ip, port) that
    opened it (sent the first SYN, or the first packet for UDP)."""

    proto: str
    initiator: tuple | None = None
    flags: dict = field(default_factory=dict)      # (ip, port) -> OR of TCP flag bits
    packets: dict = field(default_factory=dict)    # (ip, port) -> packets seen from it
    opened_ns: int = 0        # monotonic time the first record arrived
    touched_ns: int = 0       # monotonic time of the last record
    closed: bool = False      # a flow_end record arrived
    last_record: flow_pb2.Flow | None = None
    final_emitted: bool = False
    outcome: int = _OUTCOME_UNKNOWN


# The Flow fields the enrich stage (and the policy verdict within it) fills.
_ENRICHED = ("source", "destination", "category", "service", "backend", "translation",
             "policy")


class OutcomeTracker:
    """Outcome state per connection, bounded: the oldest connection is forgotten first
    (`evicted` counts them) and finished ones are forgotten `linger_s` after their end."""

    def __init__(self, syn_timeout_s: float = 3.0, max_connections: int = 65536,
                 linger_s: float = 30.0, clock=time.monotonic_ns):
        self.syn_timeout_ns = int(syn_timeout_s * 1e9)
        self.max_connections = max_connections
        self.linger_ns = int(linger_s * 1e9)
        self._clock = clock
        self._conns: OrderedDict[ConnKey, _Conn] = OrderedDict()
        self._deadlines: deque = deque()  # (opened_ns + syn timeout, key, conn), in order
        self._cleaned_ns = 0
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._conns)

    def annotate(self, flows: list[flow_pb2.Flow]) -> list[flow_pb2.Flow]:
        """Set `outcome` on every TCP/UDP record of `flows` (forwarded traffic only) and
        return the extra records of connections whose timeout passed silently."""
        now = self._clock()
        touched: list[tuple[flow_pb2.Flow, _Conn]] = []
        # Learn from the whole batch first: both directions often arrive together, and the
        # reply record must decide the outcome of the request record of the same batch.
        for flow in sorted(flows, key=lambda f: (f.first_seen.seconds, f.first_seen.nanos)):
            # A bridge sees a connection's two directions on either side of kube-proxy's
            # DNAT (requests translated, replies not yet), so they never pair up there.
            if flow.verdict == flow_pb2.DROPPED or flow.observation_point in _UNPAIRED:
                continue
            keyed = connection_key(flow)
            if keyed is None:
                continue
            key, src = keyed
            conn = self._conns.get(key)
            if conn is None:
                conn = _Conn(proto=key[1], opened_ns=now)
                self._conns[key] = conn
                self._deadlines.append((now + self.syn_timeout_ns, key, conn))
                self._evict_over_limit()
            else:
                self._conns.move_to_end(key)
            self._learn(conn, flow, src)
            conn.touched_ns = now
            conn.last_record = flow
            conn.closed = conn.closed or flow.flow_end
            touched.append((flow, conn))
        for flow, conn in touched:
            conn.outcome = self._judge(conn, now)
            flow.outcome = conn.outcome
            if conn.outcome not in (_IN_PROGRESS, _OUTCOME_UNKNOWN):
                conn.final_emitted = True
        return self._expire(now, {id(c) for _, c in touched})

    @staticmethod
    def _learn(conn: _Conn, flow: flow_pb2.Flow, src: tuple) -> None:
        if conn.proto == "tcp":
            bits = _tcp_bits(flow.l4.tcp.flags)
            conn.flags[src] = conn.flags.get(src, 0) | bits
            # The opener sends SYN; the datapath marks the answering side `is_reply`.
            if conn.initiator is None and bits & TCP_SYN and not flow.is_reply:
                conn.initiator = src
        elif conn.initiator is None and not flow.is_reply:
            conn.initiator = src
        if flow.packets:
            conn.packets[src] = conn.packets.get(src, 0) + flow.packets

    def _judge(self, conn: _Conn, now: int) -> int:
        timed_out = now - conn.opened_ns >= self.syn_timeout_ns or conn.closed
        sides = [s for s, n in conn.packets.items() if n > 0]
        if conn.proto == "udp":
            if len(sides) >= 2:
                return _ESTABLISHED
            return _NO_REPLY if timed_out else _IN_PROGRESS
        init = conn.initiator
        if init is None:
            # No SYN seen from anyone (started mid-connection, or only replies seen).
            if any(f & TCP_RST for f in conn.flags.values()):
                return _RESET
            if any(f & TCP_FIN for f in conn.flags.values()):
                return _CLOSED
            return _ESTABLISHED if len(sides) >= 2 else _OUTCOME_UNKNOWN
        mine = conn.flags.get(init, 0)
        theirs = 0
        for side, bits in conn.flags.items():
            if side != init:
                theirs |= bits
        if theirs & TCP_SYN:  # SYN+ACK came back: the handshake completed
            if (mine | theirs) & TCP_RST:
                return _RESET
            if (mine | theirs) & TCP_FIN:
                return _CLOSED
            return _ESTABLISHED
        if theirs & TCP_RST:
            return _REFUSED
        if mine & TCP_SYN:
            return _UNANSWERED if timed_out else _IN_PROGRESS
        return _OUTCOME_UNKNOWN

    def _expire(self, now: int, fresh: set[int]) -> list[flow_pb2.Flow]:
        """Final records of connections whose timeout passed, from a deadline queue (no
        walk over every connection per batch); forget finished and long-idle ones."""
        extra: list[flow_pb2.Flow] = []
        while self._deadlines and self._deadlines[0][0] <= now:
            _deadline, key, conn = self._deadlines.popleft()
            if self._conns.get(key) is not conn or id(conn) in fresh or conn.final_emitted:
                continue
            outcome = self._judge(conn, now)
            if outcome != conn.outcome and outcome != _OUTCOME_UNKNOWN:
                conn.outcome = outcome
                extra.append(self._final_record(conn.last_record, outcome))
            conn.final_emitted = True
        if now - self._cleaned_ns >= 1_000_000_000:
            self._cleaned_ns = now
            self._forget_idle(now)
        return extra

    def _forget_idle(self, now: int) -> None:
        # _conns is in least-recently-touched order: stop at the first recent one.
        stale: list[ConnKey] = []
        for key, conn in self._conns.items():
            idle_ns = now - conn.touched_ns
            if idle_ns < self.linger_ns:
                break
            if conn.closed or idle_ns >= 10 * self.linger_ns:
                stale.append(key)
        for key in stale:
            del self._conns[key]

    @staticmethod
    def _final_record(last: flow_pb2.Flow, outcome: int) -> flow_pb2.Flow:
        record = flow_pb2.Flow()
        record.CopyFrom(last)
        # `last` went through the whole pipeline; this copy goes through it again, and
        # enrichment merges what it knows into a record: drop what it filled, or its
        # repeated fields (labels, policies) would be doubled.
        for name in _ENRICHED:
            record.ClearField(name)
        record.packets = 0
        record.bytes = 0
        record.outcome = outcome
        record.time.GetCurrentTime()
        return record

    def _evict_over_limit(self) -> None:
        while len(self._conns) > self.max_connections:
            self._conns.popitem(last=False)
            self.evicted += 1
