"""Drop events and drop-map sweeps -> DROPPED records; which drops are pod traffic (no root)."""

from __future__ import annotations

import ctypes
import ipaddress

import pytest

from agent.datapath.btf import KernelLayout
from agent.datapath.abi import EVENT_DROP
from agent.datapath.decode import KtimeClock
from agent.annotate.drops import (DROP_EV_MAP_FULL, DROP_EV_NEW, ERR_DROP_LOST, DropEvent, DropKey,
                         DropReporter, DropScope, DropValue)
from agent.stats import AgentStats
from podflow_api.v1 import flow_pb2, observer_pb2

LAYOUT = KernelLayout(offsets={}, drop_reasons={2: "NOT_SPECIFIED", 12: "NETFILTER_DROP",
                                                3: "NO_SOCKET"})
S = 1_000_000_000


def key(src="10.244.1.2", dst="10.244.2.2", sport=40000, dport=8080, proto=6, reason=12,
        ifindex=3) -> DropKey:
    k = DropKey(reason=reason)
    k.flow.ifindex, k.flow.family, k.flow.proto = ifindex, 4, proto
    k.flow.src_addr[:4] = list(ipaddress.IPv4Address(src).packed)
    k.flow.dst_addr[:4] = list(ipaddress.IPv4Address(dst).packed)
    k.flow.src_port, k.flow.dst_port = sport, dport
    return k


def event(k: DropKey, flags=DROP_EV_NEW, length=60, ts=10 * S) -> bytes:
    ev = DropEvent(kind=EVENT_DROP, key=k, pkt_len=length, flags=flags, ts_ns=ts)
    return bytes(ev)


def reporter(stats=None) -> DropReporter:
    return DropReporter(LAYOUT, "node-a", stats or AgentStats("node-a", "v"), KtimeClock(0),
                        active_timeout_s=1, idle_timeout_s=5,
                        interface_name=lambda i: {3: "cni0"}.get(i))


def test_new_drop_is_reported_at_once():
    (flow,) = reporter().on_event(event(key()))
    assert (flow.verdict, flow.drop_reason, flow.drop_reason_code, flow.observation_point) == \
        (flow_pb2.DROPPED, "NETFILTER_DROP", 12, flow_pb2.HOST_STACK)
    assert (flow.ip.source, flow.ip.destination, flow.l4.tcp.destination_port) == \
        ("10.244.1.2", "10.244.2.2", 8080)
    assert (flow.packets, flow.bytes, flow.interface.name, flow.node_name) == (1, 60, "cni0", "node-a")
    assert flow.summary.startswith("DROPPED (NETFILTER_DROP) TCP 10.244.1.2:40000 -> 10.244.2.2:8080")


def test_sweeps_report_exact_deltas_then_close_idle_entries():
    rep = reporter()
    k = bytes(key())
    rep.on_event(event(key()))
    value = DropValue(packets=5, bytes=300, first_seen_ns=10 * S, last_seen_ns=11 * S)
    flows, idle = rep.sweep([(k, value)], now_ns=12 * S)
    assert [(f.packets, f.bytes) for f in flows] == [(4, 240)] and idle == []
    flows, idle = rep.sweep([(k, value)], now_ns=17 * S)
    assert flows == [] and idle == [k]
    final = DropValue(packets=6, bytes=360, first_seen_ns=10 * S, last_seen_ns=11 * S)
    assert [(f.packets, f.flow_end) for f in rep.end(k, final, 17 * S)] == [(1, True)]


def test_map_full_drops_are_accumulated_and_lost_ones_counted():
    stats = AgentStats("node-a", "v")
    rep = reporter(stats)
    for _ in range(3):
        assert rep.on_event(event(key(reason=3), flags=DROP_EV_MAP_FULL)) == []
    flows, _ = rep.sweep([], now_ns=20 * S)
    assert [(f.packets, f.drop_reason) for f in flows] == [(3, "NO_SOCKET")]
    rep.account_errors({ERR_DROP_LOST: 4})
    rep.account_errors({ERR_DROP_LOST: 6})
    assert stats.snapshot_lost()[observer_pb2.KERNEL_DROP_MAP].count == 6


@pytest.mark.parametrize("raw", [b"", b"\x03" * 10, bytes(72)], ids=["empty", "short", "wrong-kind"])
def test_bad_events_are_ignored(raw):
    assert reporter().on_event(raw) == []


def dropped(src, dst, ifindex=0):
    f = flow_pb2.Flow(verdict=flow_pb2.DROPPED)
    f.ip.source, f.ip.destination, f.interface.index = src, dst, ifindex
    return f


def seen(src, dst, direction, ifindex):
    f = flow_pb2.Flow(verdict=flow_pb2.FORWARDED, observation_point=flow_pb2.POD_VETH,
                      traffic_direction=direction)
    f.ip.source, f.ip.destination, f.interface.index = src, dst, ifindex
    return f


SCOPE = [
    # id, drop record, traced ifindexes, expected (kept, direction)
    ("host-traffic", dropped("172.18.0.2", "172.18.0.1"), set(), (False, 0)),
    ("on-traced-interface", dropped("172.18.0.2", "8.8.8.8", ifindex=3), {3}, (True, 0)),
    ("from-known-pod", dropped("10.244.1.2", "8.8.8.8", ifindex=2), set(), (True, flow_pb2.FROM_POD)),
    ("to-known-pod-on-its-veth", dropped("10.244.2.2", "10.244.1.2", ifindex=7), set(),
     (True, flow_pb2.TO_POD)),
    ("to-pod-cidr", dropped("172.18.0.9", "10.244.2.5", ifindex=2), set(), (True, flow_pb2.TO_POD)),
]


@pytest.mark.parametrize("flow,traced,expected", [s[1:] for s in SCOPE], ids=[s[0] for s in SCOPE])
def test_scope(flow, traced, expected):
    scope = DropScope(cidrs=["10.244.2.0/24"])
    scope.learn(seen("10.244.1.2", "10.244.2.2", flow_pb2.FROM_POD, 7))
    scope.learn(seen("10.96.0.10", "10.244.1.2", flow_pb2.TO_POD, 7))
    assert (scope.judge(flow, traced), flow.traffic_direction) == expected


def test_mirror_sizes():
    assert (ctypes.sizeof(DropKey), ctypes.sizeof(DropValue), ctypes.sizeof(DropEvent)) == (48, 32, 72)
