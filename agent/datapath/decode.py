"""Turn the datapath's raw kernel structs into podflow.v1.Flow records.

The kernel keeps cumulative counters per flow entry (bpf/podflow.c); users want records that
each cover one interval of one flow at one observation point, whose sums are exact. This
module does both halves in plain Python, without bcc, so it is tested without root:

- the ctypes mirrors of bpf/types.h (FlowKey, FlowValue, EventHeader, FlowEvent) and the
  names of the kernel's per-reason counters;
- FlowTracker: cumulative kernel counters -> interval records (active / idle timeouts,
  deltas against what was already emitted, MAP_FULL packets accumulated in user space);
- decode_record: one interval of one flow -> flow_pb2.Flow (addresses, ports, flags,
  direction from the pod's point of view, summary line).

C side: bpf/types.h. tests/datapath/test_layout.py checks that sizes and offsets agree.
"""

from __future__ import annotations

import ctypes
import enum
import functools
import socket
import time
from dataclasses import dataclass, field

from agent.wire import flowtext
from podflow_api.v1 import flow_pb2

# ---------------------------------------------------------------------------------------
# Mirrors of bpf/types.h (keep in the same order; the layout test compares them with gcc).

PF_DIR_INGRESS = 0
PF_DIR_EGRESS = 1
PF_KEY_FRAGMENT = 0x01
PF_FAMILY_IPV4 = 4
PF_FAMILY_IPV6 = 6

EVENT_FLOW_NEW = 1
EVENT_FLOW_MAP_FULL = 2
EVENT_DROP = 3  # bpf/drop.h
EVENT_DNS = 4  # bpf/dns.h
EVENT_EXT_FIRST = 5

IPPROTO_ICMP = 1
IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_ICMPV6 = 58
IPPROTO_SCTP = 132


class FlowKey(ctypes.Structure):
    """struct pf_flow_key (bpf/types.h)."""

    _fields_ = [
        ("ifindex", ctypes.c_uint32),
        ("direction", ctypes.c_uint8),
        ("family", ctypes.c_uint8),
        ("proto", ctypes.c_uint8),
        ("flags", ctypes.c_uint8),
        ("src_addr", ctypes.c_uint8 * 16),
        ("dst_addr", ctypes.c_uint8 * 16),
        ("src_port", ctypes.c_uint16),
        ("dst_port", ctypes.c_uint16),
    ]


class FlowValue(ctypes.Structure):
    """struct pf_flow_value (bpf/types.h)."""

    _fields_ = [
        ("packets", ctypes.c_uint64),
        ("bytes", ctypes.c_uint64),
        ("first_seen_ns", ctypes.c_uint64),
        ("last_seen_ns", ctypes.c_uint64),
        ("tcp_flags", ctypes.c_uint64),
    ]


class EventHeader(ctypes.Structure):
    """struct pf_event_hdr (bpf/types.h): the first bytes of every ring-buffer event."""

    _fields_ = [("kind", ctypes.c_uint8), ("_pad", ctypes.c_uint8 * 7)]


class FlowEvent(ctypes.Structure):
    """struct pf_flow_event (bpf/types.h): FLOW_NEW and FLOW_MAP_FULL."""

    _fields_ = [
        ("hdr", EventHeader),
        ("key", FlowKey),
        ("pkt_len", ctypes.c_uint32),
        ("ts_ns", ctypes.c_uint64),
        ("tcp_flags", ctypes.c_uint32),
        ("_pad", ctypes.c_uint32),
    ]


# enum pf_error (bpf/types.h) -> the name user space reports (ServerStatus.datapath_errors).
ERROR_NAMES: dict[int, str] = {
    0: "truncated_ethernet",
    1: "truncated_vlan",
    2: "vlan_too_deep",
    3: "truncated_ipv4",
    4: "bad_ipv4_ihl",
    5: "bad_ip_version",
    6: "truncated_ipv6",
    7: "truncated_ipv6_ext",
    8: "ipv6_ext_chain_too_long",
    9: "truncated_l4",
    10: "bad_tcp_data_offset",
    11: "flow_map_full",
    12: "flow_map_update",
    13: "ringbuf_full_new_flow",
    14: "ringbuf_full_map_full",
    15: "other_ethertype",
}
ERR_MAP_FULL = 11
ERR_RINGBUF_FULL_NEW = 13
ERR_RINGBUF_FULL_MAP_FULL = 14
ERR_EXT_FIRST = 16  # 16..31 belong to drop.h / dns.h
ERR_MAX = 32

KEY_SIZE = ctypes.sizeof(FlowKey)
VALUE_SIZE = ctypes.sizeof(FlowValue)

TCP_FLAG_NAMES = ("FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR")


def error_counts(per_reason: list[int] | dict[int, int],
                 extra_names: dict[int, str] | None = None) -> dict[str, int]:
    """Name the kernel's per-reason counters (already summed over CPUs); unnamed reasons
    (an extension without names) are reported as `reason_<n>`."""
    names = dict(ERROR_NAMES)
    names.update(extra_names or {})
    items = per_reason.items() if isinstance(per_reason, dict) else enumerate(per_reason)
    return {names.get(i, f"reason_{i}"): int(n) for i, n in items if n}


# ---------------------------------------------------------------------------------------
# Interfaces and direction


class InterfaceKind(enum.Enum):
    POD_VETH = "pod_veth"
    BRIDGE = "bridge"


@dataclass(frozen=True)
class InterfaceInfo:
    """What decode needs to know about a traced interface."""

    index: int
    name: str
    kind: InterfaceKind


def pod_direction(kind: InterfaceKind, hook_direction: int) -> int:
    """Direction from the pod's point of view.

    Pod veth (host side): TC ingress = the packet left the pod (FROM_POD), egress = TO_POD.
    Bridge: the bridge device's TC hooks see only what crosses between the pods' L2 segment
    and the host stack (frames bridged from pod to pod never pass them). Ingress on the
    bridge = a pod's packet going up to the host (FROM_POD); egress = the host sending to a
    pod (TO_POD).
    """
    del kind  # both kinds map the same way; kept so a new kind must decide explicitly
    if hook_direction == PF_DIR_INGRESS:
        return flow_pb2.FROM_POD
    if hook_direction == PF_DIR_EGRESS:
        return flow_pb2.TO_POD
    return flow_pb2.TRAFFIC_DIRECTION_UNKNOWN


_OBSERVATION_POINT = {
    InterfaceKind.POD_VETH: flow_pb2.POD_VETH,
    InterfaceKind.BRIDGE: flow_pb2.BRIDGE,
}

# ---------------------------------------------------------------------------------------
# Clock


@dataclass(frozen=True)
class KtimeClock:
    """bpf_ktime_get_ns (CLOCK_MONOTONIC) -> wall clock, with an offset taken once at start
    so records of one run are consistent with each other."""

    offset_ns: int

    @classmethod
    def now(cls) -> "KtimeClock":
        return cls(offset_ns=time.time_ns() - time.monotonic_ns())

    def wall_ns(self, ktime_ns: int) -> int:
        return ktime_ns + self.offset_ns


# ---------------------------------------------------------------------------------------
# Records


@dataclass
class FlowRecord:
    """One interval of one flow at one observation point (before protobuf)."""

    key: bytes  # struct pf_flow_key, as bytes
    packets: int
    bytes: int
    first_seen_ns: int  # ktime of the flow entry's first packet
    last_seen_ns: int  # ktime of the latest packet in this record
    tcp_flags: int  # union of TCP flags seen so far
    flow_end: bool = False


@dataclass
class _Tracked:
    """What was already emitted for one kernel flow entry."""

    first_seen_ns: int
    emitted_packets: int = 0
    emitted_bytes: int = 0
    last_emit_ns: int = 0  # ktime of the last record


@dataclass
class _Overflow:
    """Packets of one key that found the flow map full, accumulated from MAP_FULL events."""

    first_seen_ns: int
    last_seen_ns: int
    last_emit_ns: int
    packets: int = 0  # since the last record
    bytes: int = 0
    tcp_flags: int = 0


@dataclass
class SweepResult:
    records: list[FlowRecord] = field(default_factory=list)
    idle_keys: list[bytes] = field(default_factory=list)  # delete these, then call end()


class FlowTracker:
    """Cumulative kernel counters -> interval records whose sums are exact.

    The kernel's counters are never reset: the tracker remembers what it already emitted per
    entry and emits deltas. An entry idle for `idle_timeout_ns` is deleted by the caller with
    an atomic lookup-and-delete, whose value closes the flow (`end`). A packet landing after
    the delete re-creates the entry and is a new flow, counted from its first packet.
    """

    def __init__(self, active_timeout_ns: int, idle_timeout_ns: int):
        self.active_timeout_ns = active_timeout_ns
        self.idle_timeout_ns = idle_timeout_ns
        self._tracked: dict[bytes, _Tracked] = {}
        self._overflow: dict[bytes, _Overflow] = {}

    def __len__(self) -> int:
        return len(self._tracked) + len(self._overflow)

    def on_new(self, key: bytes, pkt_len: int, ts_ns: int, tcp_flags: int) -> FlowRecord | None:
        """A FLOW_NEW event: emit the first packet at once (unless a sweep already did)."""
        tracked = self._tracked.get(key)
        if tracked is not None and tracked.first_seen_ns == ts_ns and tracked.emitted_packets:
            return None
        if tracked is None or tracked.first_seen_ns != ts_ns:
            tracked = self._tracked[key] = _Tracked(first_seen_ns=ts_ns)
        tracked.emitted_packets = 1
        tracked.emitted_bytes = pkt_len
        tracked.last_emit_ns = ts_ns
        return FlowRecord(key, 1, pkt_len, ts_ns, ts_ns, tcp_flags)

    def on_map_full(self, key: bytes, pkt_len: int, ts_ns: int, tcp_flags: int) -> None:
        """A FLOW_MAP_FULL event: the packet is real, account it in user space."""
        acc = self._overflow.get(key)
        if acc is None:
            acc = self._overflow[key] = _Overflow(ts_ns, ts_ns, ts_ns)
        acc.packets += 1
        acc.bytes += pkt_len
        acc.last_seen_ns = max(acc.last_seen_ns, ts_ns)
        acc.tcp_flags |= tcp_flags

    def sweep(self, entries, now_ns: int) -> SweepResult:
        """entries: iterable of (key bytes, packets, bytes, first_seen_ns, last_seen_ns,
        tcp_flags) read from the kernel map. Returns the records due and the idle keys."""
        result = SweepResult()
        seen: set[bytes] = set()
        for key, packets, nbytes, first_ns, last_ns, flags in entries:
            seen.add(key)
            tracked = self._tracked.get(key)
            if tracked is None or tracked.first_seen_ns != first_ns:
                tracked = self._tracked[key] = _Tracked(first_seen_ns=first_ns,
                                                        last_emit_ns=first_ns)
            if now_ns - last_ns >= self.idle_timeout_ns:
                result.idle_keys.append(key)
            elif (now_ns - tracked.last_emit_ns >= self.active_timeout_ns
                  and packets > tracked.emitted_packets):
                result.records.append(self._delta(key, tracked, packets, nbytes, first_ns,
                                                  last_ns, flags, now_ns, flow_end=False))
        for key in [k for k in self._tracked if k not in seen]:
            # Gone from the map without our delete (map cleared by someone else): nothing
            # more can be known about it.
            del self._tracked[key]
        result.records.extend(self._sweep_overflow(now_ns))
        return result

    def end(self, key: bytes, value, now_ns: int) -> FlowRecord | None:
        """Close a flow with the value its lookup-and-delete returned (None: already gone).
        value: (packets, bytes, first_seen_ns, last_seen_ns, tcp_flags)."""
        tracked = self._tracked.pop(key, None)
        if value is None:
            return None
        packets, nbytes, first_ns, last_ns, flags = value
        if tracked is None or tracked.first_seen_ns != first_ns:
            tracked = _Tracked(first_seen_ns=first_ns)
        return self._delta(key, tracked, packets, nbytes, first_ns, last_ns, flags, now_ns,
                           flow_end=True)

    def flush(self, entries, now_ns: int) -> list[FlowRecord]:
        """At stop: final records for every entry still in the map and every overflow."""
        records = []
        for key, packets, nbytes, first_ns, last_ns, flags in entries:
            records.append(self.end(key, (packets, nbytes, first_ns, last_ns, flags), now_ns))
        self._tracked.clear()
        for key, acc in self._overflow.items():
            records.append(FlowRecord(key, acc.packets, acc.bytes, acc.first_seen_ns,
                                      acc.last_seen_ns, acc.tcp_flags, flow_end=True))
        self._overflow.clear()
        return [r for r in records if r is not None]

    def _delta(self, key, tracked: _Tracked, packets, nbytes, first_ns, last_ns, flags,
               now_ns, flow_end: bool) -> FlowRecord:
        record = FlowRecord(key, packets - tracked.emitted_packets,
                            nbytes - tracked.emitted_bytes, first_ns, last_ns, flags, flow_end)
        tracked.emitted_packets = packets
        tracked.emitted_bytes = nbytes
        tracked.last_emit_ns = now_ns
        return record

    def _sweep_overflow(self, now_ns: int) -> list[FlowRecord]:
        records = []
        for key, acc in list(self._overflow.items()):
            idle = now_ns - acc.last_seen_ns >= self.idle_timeout_ns
            due = now_ns - acc.last_emit_ns >= self.active_timeout_ns and acc.packets
            if idle or due:
                records.append(FlowRecord(key, acc.packets, acc.bytes, acc.first_seen_ns,
                                          acc.last_seen_ns, acc.tcp_flags, flow_end=idle))
                acc.packets = acc.bytes = 0
                acc.last_emit_ns = now_ns
            if idle:
                del self._overflow[key]
        return records


# ---------------------------------------------------------------------------------------
# Protobuf


def _address(family: int, raw) -> str:
    data = bytes(raw)
    if family == PF_FAMILY_IPV4:
        return socket.inet_ntop(socket.AF_INET, data[:4])
    return socket.inet_ntop(socket.AF_INET6, data[:16])


def tcp_flag_names(flags: int) -> list[str]:
    return [name for bit, name in enumerate(TCP_FLAG_NAMES) if flags & (1 << bit)]


def _set_ts(ts, wall_ns: int) -> None:
    ts.seconds, ts.nanos = divmod(wall_ns, 1_000_000_000)


def decode_record(record: FlowRecord, iface: InterfaceInfo | None, node_name: str,
                  clock: KtimeClock, now_wall_ns: int | None = None) -> flow_pb2.Flow:
    """One interval of one flow -> flow_pb2.Flow. The parts that depend only on the key
    (addresses, ports, summary ...) come from a cached template: an active flow is decoded
    again every active-timeout."""
    flow = flow_pb2.Flow.FromString(_template(record.key, record.tcp_flags, iface, node_name))
    flow.packets = record.packets
    flow.bytes = record.bytes
    if record.flow_end:
        flow.flow_end = True
    _set_ts(flow.time, now_wall_ns if now_wall_ns is not None else time.time_ns())
    _set_ts(flow.first_seen, clock.wall_ns(record.first_seen_ns))
    _set_ts(flow.last_seen, clock.wall_ns(record.last_seen_ns))
    return flow


@functools.lru_cache(maxsize=65536)
def _template(raw_key: bytes, tcp_flags: int, iface: InterfaceInfo | None,
              node_name: str) -> bytes:
    """The serialized Flow fields a key (and its TCP flags and interface) determine."""
    key = FlowKey.from_buffer_copy(raw_key)
    flow = flow_pb2.Flow(node_name=node_name, verdict=flow_pb2.FORWARDED)
    flow.interface.index = key.ifindex
    if iface is not None:
        flow.interface.name = iface.name
        flow.observation_point = _OBSERVATION_POINT[iface.kind]
        flow.traffic_direction = pod_direction(iface.kind, key.direction)

    src = _address(key.family, key.src_addr)
    dst = _address(key.family, key.dst_addr)
    flow.ip.source = src
    flow.ip.destination = dst
    flow.ip.ip_version = flow_pb2.IPV4 if key.family == PF_FAMILY_IPV4 else flow_pb2.IPV6
    fragment = bool(key.flags & PF_KEY_FRAGMENT)
    flow.ip.fragment = fragment

    proto = key.proto
    sport, dport = key.src_port, key.dst_port
    if proto == IPPROTO_TCP:
        flow.l4.tcp.source_port = sport
        flow.l4.tcp.destination_port = dport
        for name in tcp_flag_names(tcp_flags):
            setattr(flow.l4.tcp.flags, name, True)
        name = "TCP"
    elif proto == IPPROTO_UDP:
        flow.l4.udp.source_port = sport
        flow.l4.udp.destination_port = dport
        name = "UDP"
    elif proto == IPPROTO_SCTP:
        flow.l4.sctp.source_port = sport
        flow.l4.sctp.destination_port = dport
        name = "SCTP"
    elif proto == IPPROTO_ICMP:
        flow.l4.icmpv4.type = sport
        flow.l4.icmpv4.code = dport
        name = "ICMPv4"
    elif proto == IPPROTO_ICMPV6:
        flow.l4.icmpv6.type = sport
        flow.l4.icmpv6.code = dport
        name = "ICMPv6"
    else:
        name = f"IP proto {proto}"
    flow.summary = flowtext.summary(flow, name)
    return flow.SerializeToString()
