"""Drops reported by bpf/drop.h (skb:kfree_skb) -> podflow.v1.Flow records with verdict DROPPED.

The kernel aggregates drops per (5-tuple, device, reason) in the `drops` map exactly like
flows, so the same interval bookkeeping applies: agent/datapath/tracker.py turns cumulative
counters into interval records whose sums are exact; this module adds what is specific to
drops (the C mirrors, the kernel's reason names from BTF, the error counters that mean
"lost" and the record's shape). Plain Python: agent/datapath/loader.py feeds it the ring-buffer
events and the map entries; the tests feed it bytes.

A drop record: verdict DROPPED, drop_reason (e.g. NETFILTER_DROP) and drop_reason_code,
observation_point HOST_STACK (the packet died inside the host's stack), interface = the
skb's device when it had one. Direction and the "is this pod traffic" decision are made by
the annotate stage, which knows the pods' addresses (agent/annotate/stage.py).
"""

from __future__ import annotations

import ctypes
import ipaddress
import logging
import os
import socket
import time
from collections import OrderedDict

from pyroute2.netlink.exceptions import NetlinkError

from agent.datapath.btf import KernelLayout
from agent.datapath.abi import EVENT_DROP, FlowKey
from agent.datapath.decode import KtimeClock, decode_record
from agent.datapath.extension import DatapathExtension
from agent.datapath.tracker import FlowRecord, FlowTracker
from agent.stats import AgentStats
from agent.wire import flowtext
from podflow_api.v1 import flow_pb2, observer_pb2

log = logging.getLogger("podflow.drops")

# pf_drop_event.flags (bpf/drop.h)
DROP_EV_NEW = 0x01
DROP_EV_MAP_FULL = 0x02

# enum pf_error values owned by drop.h / dns.h -> names in ServerStatus.datapath_errors
ERR_DROP_MAP_FULL = 16
ERR_DROP_LOST = 17
ERR_DROP_EVENT_LOST = 18
ERR_DROP_NO_HEADER = 19
ERR_DROP_UPDATE = 20
ERR_DNS_LOST = 24
ERROR_NAMES = {
    ERR_DROP_MAP_FULL: "drop_map_full",
    ERR_DROP_LOST: "drop_lost",
    ERR_DROP_EVENT_LOST: "ringbuf_full_drop",
    ERR_DROP_NO_HEADER: "drop_no_header",
    ERR_DROP_UPDATE: "drop_map_update",
    ERR_DNS_LOST: "ringbuf_full_dns",
}


class DropKey(ctypes.Structure):
    """struct pf_drop_key (bpf/drop.h)."""

    _fields_ = [("flow", FlowKey), ("reason", ctypes.c_uint32)]


class DropValue(ctypes.Structure):
    """struct pf_drop_value (bpf/drop.h)."""

    _fields_ = [
        ("packets", ctypes.c_uint64),
        ("bytes", ctypes.c_uint64),
        ("first_seen_ns", ctypes.c_uint64),
        ("last_seen_ns", ctypes.c_uint64),
    ]


class DropEvent(ctypes.Structure):
    """struct pf_drop_event (bpf/drop.h): PF_EVENT_DROP."""

    _fields_ = [
        ("kind", ctypes.c_uint8),
        ("_pad", ctypes.c_uint8 * 7),
        ("key", DropKey),
        ("pkt_len", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("ts_ns", ctypes.c_uint64),
    ]


def netns_inode(path: str = "/proc/self/ns/net") -> int:
    """The inode identifying the agent's network namespace (drop.h keeps only its drops)."""
    return os.stat(path).st_ino


def drop_cflags(layout: KernelLayout, map_size: int, netns_ino: int | None) -> list[str]:
    """-D flags compiling drop.h for the running kernel."""
    flags = ["-DPODFLOW_DROPS", f"-DPODFLOW_DROP_MAP_SIZE={map_size}", *layout.cflags()]
    if netns_ino is not None:
        flags.append(f"-DPF_DROP_NETNS_INO={netns_ino}")
    return flags


def ensure_tracefs(root: str = "/sys/kernel/tracing") -> None:
    """`ip netns exec` gives a fresh /sys without tracefs; the tracepoint attach needs it."""
    if os.path.isdir(os.path.join(root, "events")):
        return
    import subprocess  # noqa: PLC0415  (only on this rare path)

    subprocess.run(["mount", "-t", "tracefs", "nodev", root], check=True, capture_output=True)


def _ifname(index: int) -> str | None:
    try:
        return socket.if_indextoname(index)
    except OSError:
        return None


class DropReporter:
    """Drop events and `drops` map sweeps -> DROPPED Flow records; lost drops -> stats."""

    def __init__(self, layout: KernelLayout, node_name: str, stats: AgentStats,
                 clock: KtimeClock, active_timeout_s: float = 5.0, idle_timeout_s: float = 15.0,
                 interface_name=_ifname):
        self.layout = layout
        self.node_name = node_name
        self.stats = stats
        self.clock = clock
        self.interface_name = interface_name
        self.tracker = FlowTracker(active_timeout_ns=int(active_timeout_s * 1e9),
                                   idle_timeout_ns=int(idle_timeout_s * 1e9))
        self._lost_seen = 0
        self._names: dict[int, str | None] = {}

    def on_event(self, data: bytes) -> list[flow_pb2.Flow]:
        """One PF_EVENT_DROP record from the ring buffer."""
        if len(data) < ctypes.sizeof(DropEvent):
            return []
        ev = DropEvent.from_buffer_copy(data)
        if ev.kind != EVENT_DROP:
            return []
        key = bytes(ev.key)
        if ev.flags & DROP_EV_MAP_FULL:
            self.tracker.on_map_full(key, ev.pkt_len, ev.ts_ns, 0)
            return []
        record = self.tracker.on_new(key, ev.pkt_len, ev.ts_ns, 0)
        return [self.to_flow(record)] if record is not None else []

    def sweep(self, entries, now_ns: int) -> tuple[list[flow_pb2.Flow], list[bytes]]:
        """entries: (key bytes, DropValue) read from the `drops` map. Returns the records
        due and the keys to delete (idle); pass their final values to `end`."""
        self._names.clear()  # interface indexes are reused when pods come and go
        result = self.tracker.sweep(
            ((k, v.packets, v.bytes, v.first_seen_ns, v.last_seen_ns, 0) for k, v in entries),
            now_ns)
        return [self.to_flow(r) for r in result.records], result.idle_keys

    def end(self, key: bytes, value: DropValue | None, now_ns: int) -> list[flow_pb2.Flow]:
        """Close an idle entry with the value its delete returned (None: already gone)."""
        vals = None if value is None else (value.packets, value.bytes, value.first_seen_ns,
                                           value.last_seen_ns, 0)
        record = self.tracker.end(key, vals, now_ns)
        return [self.to_flow(record)] if record is not None and record.packets else []

    def account_errors(self, per_reason: dict[int, int]) -> None:
        """Report drops the kernel could neither count nor send (cumulative counter) as lost
        events at stage KERNEL_DROP_MAP."""
        lost = int(per_reason.get(ERR_DROP_LOST, 0))
        if lost > self._lost_seen:
            self.stats.add_lost(observer_pb2.KERNEL_DROP_MAP, lost - self._lost_seen)
        self._lost_seen = max(self._lost_seen, lost)

    def to_flow(self, record: FlowRecord) -> flow_pb2.Flow:
        key = DropKey.from_buffer_copy(record.key)
        flow = decode_record(record, None, self.node_name, self.clock, time.time_ns())
        flow.verdict = flow_pb2.DROPPED
        flow.observation_point = flow_pb2.HOST_STACK
        flow.drop_reason_code = key.reason
        flow.drop_reason = self.layout.reason_name(key.reason)
        if key.flow.ifindex:
            if key.flow.ifindex not in self._names:
                self._names[key.flow.ifindex] = self.interface_name(key.flow.ifindex)
            flow.interface.name = self._names[key.flow.ifindex] or ""
        flow.summary = f"{flowtext.verdict_text(flow)} {flow.summary}"
        return flow


class DropScope:
    """Which drops are pod traffic, and their direction from the pod's point of view.

    The tracepoint sees every drop of the node's namespace (host traffic too). A drop is
    kept when its device is a traced interface (a pod veth or a CNI bridge), or when one of
    its addresses is a pod's: learned from the forwarded records at pod veths (the source
    of FROM_POD traffic, the destination of TO_POD traffic), routed by the node to a traced
    interface (a /32 to a pod's veth, the pod CIDR on cni0: so a policy drop of the first
    packet to a pod that never spoke yet counts), or inside a --drop-cidr range.
    """

    def __init__(self, cidrs=(), max_addresses: int = 65536):
        self.cidrs = [ipaddress.ip_network(c, strict=False) for c in cidrs]
        self.routed: list = []  # pod prefixes from the node's routes (set_pod_routes)
        self.max_addresses = max_addresses
        self._pods: OrderedDict[str, int] = OrderedDict()  # pod IP -> its veth's ifindex

    def set_pod_routes(self, prefixes: list) -> None:
        self.routed = list(prefixes)

    def learn(self, flow: flow_pb2.Flow) -> None:
        if flow.verdict == flow_pb2.DROPPED or flow.observation_point != flow_pb2.POD_VETH:
            return
        if flow.traffic_direction == flow_pb2.FROM_POD:
            self.learn_address(flow.ip.source, flow.interface.index)
        elif flow.traffic_direction == flow_pb2.TO_POD:
            self.learn_address(flow.ip.destination, flow.interface.index)

    def learn_address(self, address: str, ifindex: int) -> None:
        """A pod's address, seen at its veth."""
        pods = self._pods
        if pods.get(address) == ifindex:
            pods.move_to_end(address)
            return
        pods[address] = ifindex
        pods.move_to_end(address)
        if len(pods) > self.max_addresses:
            pods.popitem(last=False)

    def is_pod(self, address: str) -> bool:
        if address in self._pods:
            return True
        if not (self.cidrs or self.routed) or not address:
            return False
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in net for net in self.cidrs) or any(ip in net for net in self.routed)

    def judge(self, flow: flow_pb2.Flow, traced: set[int]) -> bool:
        """Keep this DROPPED record? Sets its direction when it is pod traffic."""
        src_pod, dst_pod = self.is_pod(flow.ip.source), self.is_pod(flow.ip.destination)
        if not (src_pod or dst_pod or flow.interface.index in traced):
            return False
        if self._pods.get(flow.ip.destination) == flow.interface.index and flow.interface.index:
            flow.traffic_direction = flow_pb2.TO_POD  # died on its way out of the pod's veth
        elif src_pod:
            flow.traffic_direction = flow_pb2.FROM_POD
        elif dst_pod:
            flow.traffic_direction = flow_pb2.TO_POD
        return True


def pod_routes(ipr, traced: set[int]) -> list:
    """Prefixes the node routes to traced interfaces (main table, no default route): the
    pods' addresses as the CNI set them up. `ipr`: a pyroute2 IPRoute."""
    prefixes = []
    for family in (socket.AF_INET, socket.AF_INET6):
        for route in ipr.get_routes(family=family, table=254):
            dst, oif = route.get_attr("RTA_DST"), route.get_attr("RTA_OIF")
            if dst and route["dst_len"] and oif in traced:
                try:
                    prefixes.append(ipaddress.ip_network(f"{dst}/{route['dst_len']}", strict=False))
                except ValueError:
                    continue
    return prefixes


class DropExtension(DatapathExtension):
    """The datapath extension (agent/datapath/extension.py) for drops: compiles drop.h into
    the program, attaches it to skb:kfree_skb, decodes its events and sweeps its map."""

    TRACEPOINT = b"skb:kfree_skb"
    name = "drops"
    optional = True  # flows are traced without drop reasons when the tracepoint is refused

    ROUTES_EVERY_NS = 5_000_000_000

    def __init__(self, reporter: DropReporter, map_size: int = 16384,
                 netns_ino: int | None = None, scope: DropScope | None = None):
        self.reporter = reporter
        self.map_size = map_size
        self.netns_ino = netns_ino
        self.scope = scope
        self._table = None
        self._ipr = None
        self._routes_at_ns = 0

    def cflags(self) -> list[str]:
        return drop_cflags(self.reporter.layout, self.map_size, self.netns_ino)

    def error_names(self) -> dict[int, str]:
        return {k: v for k, v in ERROR_NAMES.items() if k != ERR_DNS_LOST}

    def event_handlers(self) -> dict:
        return {EVENT_DROP: self._on_event}

    def _on_event(self, _datapath, raw: bytes) -> list[flow_pb2.Flow]:
        return self.reporter.on_event(raw)

    def attach(self, bpf) -> None:
        ensure_tracefs()
        bpf.attach_tracepoint(tp=self.TRACEPOINT, fn_name=b"pf_kfree_skb")
        self._table = bpf["drops"]
        if self.scope is not None:
            from pyroute2 import IPRoute  # noqa: PLC0415

            self._ipr = IPRoute()

    def detach(self, bpf) -> None:
        self._table = None
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None
        bpf.detach_tracepoint(self.TRACEPOINT)

    def _refresh_routes(self, datapath, now_ns: int) -> None:
        if self._ipr is None or now_ns - self._routes_at_ns < self.ROUTES_EVERY_NS:
            return
        self._routes_at_ns = now_ns
        traced = {i.index for i in datapath.stats.snapshot_interfaces()}
        try:
            self.scope.set_pod_routes(pod_routes(self._ipr, traced))
        except (OSError, NetlinkError) as exc:  # netlink trouble: keep the last known routes
            datapath.stats.add_error("drop_routes_unreadable")
            log.warning("cannot read routes for the drop scope: %s", exc)

    def sweep(self, datapath, now_ns: int, final: bool = False) -> list[flow_pb2.Flow]:
        """Called on the reader thread with each flow-map sweep: records due, idle entries
        closed (all of them when `final`), lost drops accounted."""
        table = self._table
        if table is None:
            return []
        self._refresh_routes(datapath, now_ns)
        entries = [(bytes(k), v) for k, v in table.items()]
        flows, idle = self.reporter.sweep(entries, now_ns)
        if final:
            idle = [k for k, _ in entries]
        for key in idle:
            ckey = table.Key.from_buffer_copy(key)
            try:
                value = DropValue.from_buffer_copy(bytes(table[ckey]))
                del table[ckey]
            except KeyError:
                value = None
            flows.extend(self.reporter.end(key, value, now_ns))
        self.reporter.account_errors(dict(enumerate(datapath.kernel_errors())))
        return flows
