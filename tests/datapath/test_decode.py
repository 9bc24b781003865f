"""decode_record: raw flow keys -> Flow messages (addresses, ports, flags, direction,
observation point, summary), table-driven, no root needed."""

from __future__ import annotations

import ctypes
import ipaddress

import pytest

from agent.datapath import abi, decode
from agent.datapath.decode import InterfaceInfo, InterfaceKind
from agent.datapath.tracker import FlowRecord
from podflow_api.v1 import flow_pb2

VETH = InterfaceInfo(7, "veth0a1b2c3d", InterfaceKind.POD_VETH)
BRIDGE = InterfaceInfo(3, "cni0", InterfaceKind.BRIDGE)
CLOCK = decode.KtimeClock(offset_ns=1_700_000_000_000_000_000)


def key(src: str, dst: str, proto: int, sport: int = 0, dport: int = 0, *, ifindex: int = 7,
        direction: int = abi.PF_DIR_INGRESS, flags: int = 0) -> bytes:
    k = abi.FlowKey()
    k.ifindex = ifindex
    k.direction = direction
    a, b = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    k.family = abi.PF_FAMILY_IPV4 if a.version == 4 else abi.PF_FAMILY_IPV6
    k.proto = proto
    k.flags = flags
    ctypes.memmove(k.src_addr, a.packed, len(a.packed))
    ctypes.memmove(k.dst_addr, b.packed, len(b.packed))
    k.src_port, k.dst_port = sport, dport
    return bytes(k)


CASES = [
    pytest.param(key("10.244.1.2", "10.96.0.10", 6, 43210, 80), 0x12, VETH,
                 {"l4": "tcp", "ports": (43210, 80), "flags": ["SYN", "ACK"],
                  "summary": "TCP 10.244.1.2:43210 -> 10.96.0.10:80 SYN,ACK",
                  "direction": flow_pb2.FROM_POD, "point": flow_pb2.POD_VETH},
                 id="tcp-v4-syn-ack-from-pod"),
    pytest.param(key("10.244.1.3", "10.244.2.9", 17, 5353, 53, direction=abi.PF_DIR_EGRESS),
                 0, VETH,
                 {"l4": "udp", "ports": (5353, 53), "summary": "UDP 10.244.1.3:5353 -> 10.244.2.9:53",
                  "direction": flow_pb2.TO_POD, "point": flow_pb2.POD_VETH},
                 id="udp-v4-to-pod"),
    pytest.param(key("fd00::1", "fd00::2", 132, 3868, 3868, ifindex=3), 0, BRIDGE,
                 {"l4": "sctp", "ports": (3868, 3868), "version": flow_pb2.IPV6,
                  "summary": "SCTP [fd00::1]:3868 -> [fd00::2]:3868",
                  "direction": flow_pb2.FROM_POD, "point": flow_pb2.BRIDGE},
                 id="sctp-v6-bridge-ingress"),
    pytest.param(key("10.0.0.1", "10.0.0.2", 1, 8, 0), 0, VETH,
                 {"l4": "icmpv4", "icmp": (8, 0), "summary": "ICMPv4 10.0.0.1 -> 10.0.0.2 type 8 code 0"},
                 id="icmpv4-echo"),
    pytest.param(key("fe80::1", "ff02::2", 58, 133, 0, ifindex=3, direction=abi.PF_DIR_EGRESS),
                 0, BRIDGE,
                 {"l4": "icmpv6", "icmp": (133, 0), "direction": flow_pb2.TO_POD,
                  "point": flow_pb2.BRIDGE, "version": flow_pb2.IPV6},
                 id="icmpv6-router-solicitation-bridge-egress"),
    pytest.param(key("10.0.0.1", "10.0.0.2", 17, flags=abi.PF_KEY_FRAGMENT), 0, VETH,
                 {"l4": "udp", "ports": (0, 0), "fragment": True,
                  "summary": "UDP 10.0.0.1 -> 10.0.0.2 fragment"},
                 id="udp-non-first-fragment-no-ports"),
    pytest.param(key("10.0.0.1", "10.0.0.2", 47), 0, VETH,
                 {"l4": None, "summary": "IP proto 47 10.0.0.1 -> 10.0.0.2"}, id="gre-no-ports"),
    pytest.param(key("10.0.0.1", "10.0.0.2", 6, 1, 2, ifindex=99), 0x01, None,
                 {"l4": "tcp", "ports": (1, 2), "flags": ["FIN"], "direction": 0, "point": 0,
                  "ifname": ""}, id="unknown-interface-keeps-index"),
]


@pytest.mark.parametrize("raw_key,tcp_flags,iface,want", CASES)
def test_decode_record(raw_key, tcp_flags, iface, want):
    record = FlowRecord(raw_key, packets=3, bytes=294, first_seen_ns=1000,
                        last_seen_ns=5000, tcp_flags=tcp_flags, flow_end=True)
    flow = decode.decode_record(record, iface, "node-a", CLOCK, now_wall_ns=42)
    k = abi.FlowKey.from_buffer_copy(raw_key)
    assert flow.node_name == "node-a"
    assert (flow.packets, flow.bytes, flow.flow_end) == (3, 294, True)
    assert flow.first_seen.ToNanoseconds() == CLOCK.offset_ns + 1000
    assert flow.last_seen.ToNanoseconds() == CLOCK.offset_ns + 5000
    assert flow.time.ToNanoseconds() == 42
    assert flow.interface.index == k.ifindex
    assert flow.interface.name == want.get("ifname", iface.name if iface else "")
    assert flow.ip.ip_version == want.get("version", flow_pb2.IPV4)
    assert flow.ip.fragment == want.get("fragment", False)
    assert flow.l4.WhichOneof("protocol") == want["l4"]
    if "ports" in want:
        l4 = getattr(flow.l4, want["l4"])
        assert (l4.source_port, l4.destination_port) == want["ports"]
    if "icmp" in want:
        l4 = getattr(flow.l4, want["l4"])
        assert (l4.type, l4.code) == want["icmp"]
    if "flags" in want:
        flags = flow.l4.tcp.flags
        assert [n for n in abi.TCP_FLAG_NAMES if getattr(flags, n)] == want["flags"]
    if "summary" in want:
        assert flow.summary == want["summary"]
    if "direction" in want:
        assert flow.traffic_direction == want["direction"]
    if "point" in want:
        assert flow.observation_point == want["point"]


@pytest.mark.parametrize("kind,hook,want", [
    (InterfaceKind.POD_VETH, abi.PF_DIR_INGRESS, flow_pb2.FROM_POD),
    (InterfaceKind.POD_VETH, abi.PF_DIR_EGRESS, flow_pb2.TO_POD),
    (InterfaceKind.BRIDGE, abi.PF_DIR_INGRESS, flow_pb2.FROM_POD),
    (InterfaceKind.BRIDGE, abi.PF_DIR_EGRESS, flow_pb2.TO_POD),
], ids=["veth-ingress", "veth-egress", "bridge-ingress", "bridge-egress"])
def test_pod_direction(kind, hook, want):
    assert decode.pod_direction(kind, hook) == want


def test_error_counts_names_known_and_extension_reasons():
    counts = [0] * abi.ERR_MAX
    counts[4], counts[11], counts[16], counts[20] = 2, 5, 7, 1
    assert abi.error_counts(counts, {16: "drop_map_full"}) == {
        "bad_ipv4_ihl": 2, "flow_map_full": 5, "drop_map_full": 7, "reason_20": 1}
