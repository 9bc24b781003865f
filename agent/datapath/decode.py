"""Decoding: one interval record of one flow (agent/datapath/tracker.py) -> podflow.v1.Flow.

The parts a record's key determines (addresses, ports, TCP flags, interface, direction,
summary line) come from a cached template, because an active flow is decoded again every
active timeout; only counters and times are set per record. Direction is the pod's point of
view, derived from the kind of interface that saw the packet (pod_direction). Plain Python
without bcc, tested without root. The struct mirrors it reads are in agent/datapath/abi.py.
"""

from __future__ import annotations

import enum
import functools
import socket
import time
from dataclasses import dataclass

from agent.datapath.abi import (IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_SCTP, IPPROTO_TCP,
                                IPPROTO_UDP, PF_DIR_EGRESS, PF_DIR_INGRESS, PF_FAMILY_IPV4,
                                PF_KEY_FRAGMENT, TCP_FLAG_NAMES, FlowKey)
from agent.datapath.tracker import FlowRecord
from agent.wire import flowtext
from podflow_api.v1 import flow_pb2

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


OBSERVATION_POINT = {
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
        flow.observation_point = OBSERVATION_POINT[iface.kind]
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
