"""A batch of flow records as columns: what the datapath hands the pipeline on each step, and
what the flow store holds, so no stage makes an object per record.

Per record: the kernel key (interface, hook, addresses, ports), packets, bytes, first and
last seen, TCP flags, flow_end, whether it is an end notice (`update`), the connection's
two sides for the outcome judge, and the columns later stages fill: `outcome` (annotate),
`ident` and `enforcement` (enrich). What records share is held once: an Ident per identity (interface,
direction, addresses and the names enrichment finds for them) with its renderings made once
(agent/wire/recordcols.py), and `groups`: the identities the datapath knows before
enrichment, one per (interface, hook, protocol, addresses).

A Flow object for one record is made only when a reader asks (`flow(i)`: a filter, a
history read that wants objects, tests). Time: wall clock (ns) everywhere here; the batch's
`time_ns` is every record's `time`.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

import numpy as np

from agent.datapath import abi
from agent.datapath.decode import OBSERVATION_POINT as _OBSERVATION_POINT
from agent.datapath.decode import InterfaceInfo, KtimeClock, pod_direction
from agent.datapath.flowtable import key_hash, row_hash, unique_rows
from agent.wire import recordcols
from podflow_api.v1 import flow_pb2

_GROUP_BYTES = 40  # the key without its ports: interface, hook, family, protocol, flags, addresses


class Ident(recordcols.IdentRender):
    """What the records of one identity share: a Flow holding only those fields (interface,
    observation point, direction, verdict, ip, and what enrichment adds), rendered once."""

    __slots__ = ()


@dataclass(frozen=True)
class Group:
    """One identity as the datapath sees it: interface, hook and the address pair."""

    ifindex: int
    hook: int
    family: int
    proto: int
    fragment: bool
    source: str
    destination: str
    iface: InterfaceInfo | None

    @property
    def observation_point(self) -> int:
        return _OBSERVATION_POINT[self.iface.kind] if self.iface else 0

    @property
    def traffic_direction(self) -> int:
        return pod_direction(self.iface.kind, self.hook) if self.iface else 0

    def base_flow(self, node_name: str) -> flow_pb2.Flow:
        """The Flow fields this group determines."""
        flow = flow_pb2.Flow(node_name=node_name, verdict=flow_pb2.FORWARDED)
        flow.interface.index = self.ifindex
        if self.iface is not None:
            flow.interface.name = self.iface.name
            flow.observation_point = self.observation_point
            flow.traffic_direction = self.traffic_direction
        flow.ip.source = self.source
        flow.ip.destination = self.destination
        flow.ip.ip_version = flow_pb2.IPV4 if self.family == abi.PF_FAMILY_IPV4 else flow_pb2.IPV6
        flow.ip.fragment = self.fragment
        return flow


def _address(family: int, raw: bytes) -> str:
    if family == abi.PF_FAMILY_IPV4:
        return socket.inet_ntop(socket.AF_INET, raw[:4])
    return socket.inet_ntop(socket.AF_INET6, raw[:16])


class FlowBatch:
    """Columns of n records (see the module docstring). Built by the datapath from the flow
    table's output (`from_emitted`); later stages fill `outcome`, `ident`/`idents` and
    `extras`; the store sets `seq`."""

    def __init__(self, keys: np.ndarray, packets: np.ndarray, nbytes: np.ndarray,
                 first_ns: np.ndarray, last_ns: np.ndarray, tcp_flags: np.ndarray,
                 flow_end: np.ndarray, update: np.ndarray, time_ns: int, node_name: str,
                 interfaces: dict[int, InterfaceInfo], own_packets=None, rev_packets=None,
                 rev_flags=None, rev_first_ns=None):
        n = len(packets)
        self.keys = keys
        self.packets = packets
        self.bytes = nbytes
        self.first_ns = first_ns
        self.last_ns = last_ns
        self.tcp_flags = tcp_flags
        self.flow_end = flow_end
        self.update = update
        self.time_ns = time_ns
        self.node_name = node_name
        zeros = np.zeros(n, np.uint64)
        self.own_packets = packets if own_packets is None else own_packets
        self.rev_packets = zeros if rev_packets is None else rev_packets
        self.rev_flags = np.zeros(n, np.uint8) if rev_flags is None else rev_flags
        self.rev_first_ns = zeros if rev_first_ns is None else rev_first_ns
        self.proto = keys[:, 6].copy() if n else np.zeros(0, np.uint8)
        self.sport = keys[:, 40:42].copy().view("<u2").ravel() if n else np.zeros(0, np.uint16)
        self.dport = keys[:, 42:44].copy().view("<u2").ravel() if n else np.zeros(0, np.uint16)
        self.outcome = np.zeros(n, np.uint8)
        # what each record shows of its connection's NetworkPolicy verdict (enrich: the
        # policy judge's finding), Policy.enforcement; 0: unset
        self.enforcement = np.zeros(n, np.uint8)
        self.extras: dict[int, bytes] = {}  # record -> serialized Flow fields (e.g. dns)
        # group -> (names of the source, names of the destination): DNS names a pod looked
        # its peer up by (annotate), for enrichment to put on the endpoints
        self.group_names: dict[int, tuple[tuple[str, ...], tuple[str, ...]]] = {}
        self.seq = -1
        self._group_of(interfaces)
        self.idents: list[Ident] = [Ident(g.base_flow(node_name)) for g in self.groups]
        self.ident = self.group.copy()
        self._cache: dict = {}  # renderings (agent/wire/recordcols.py)

    def _group_of(self, interfaces: dict[int, InterfaceInfo]) -> None:
        n = len(self.packets)
        if not n:
            self.group = np.zeros(0, np.int32)
            self.groups: list[Group] = []
            self.obs = np.zeros(0, np.uint8)
            self.direction = np.zeros(0, np.uint8)
            return
        first, inverse = unique_rows(self.keys[:, :_GROUP_BYTES])
        self.group = inverse.astype(np.int32)
        groups = []
        for value in first.tolist():
            k = abi.FlowKey.from_buffer_copy(self.keys[value].tobytes())
            family = k.family
            groups.append(Group(k.ifindex, k.direction, family, k.proto,
                                bool(k.flags & abi.PF_KEY_FRAGMENT),
                                _address(family, bytes(k.src_addr)),
                                _address(family, bytes(k.dst_addr)),
                                interfaces.get(k.ifindex)))
        self.groups = groups
        self.obs = np.array([g.observation_point for g in groups], np.uint8)[self.group]
        self.direction = np.array([g.traffic_direction for g in groups], np.uint8)[self.group]

    @classmethod
    def from_emitted(cls, emitted, clock: KtimeClock, time_ns: int, node_name: str,
                     interfaces: dict[int, InterfaceInfo]) -> FlowBatch:
        """The flow table's output (agent/datapath/flowtable.py Emitted, kernel times) as a
        batch (wall-clock times)."""
        offset = clock.offset_ns

        def wall(ktime: np.ndarray) -> np.ndarray:
            out = ktime.astype(np.int64) + offset
            return np.where(ktime == 0, 0, out)

        return cls(emitted.keys, emitted.packets, emitted.bytes, wall(emitted.first_ns),
                   wall(emitted.last_ns), emitted.tcp_flags, emitted.flow_end, emitted.update,
                   time_ns, node_name, interfaces, emitted.own_packets, emitted.rev_packets,
                   emitted.rev_flags, wall(emitted.rev_first_ns))

    def __len__(self) -> int:
        return len(self.packets)

    # -- what later stages set ----------------------------------------------------------

    def set_idents(self, ident: np.ndarray, idents: list[Ident]) -> None:
        """Enrichment's identities (replacing the groups' bare ones)."""
        self.ident = ident.astype(np.int32)
        self.idents = idents
        self._drop_renderings()

    def patch_end(self, rows: np.ndarray, outcomes: np.ndarray) -> None:
        """An end that came after these records went out (the store applies it)."""
        self.flow_end = self.flow_end.copy()  # a reader may hold the old column
        self.outcome = self.outcome.copy()
        self.flow_end[rows] = True
        self.outcome[rows] = outcomes
        self._drop_renderings()

    def _drop_renderings(self) -> None:
        for key in [k for k in self._cache if k != "flow_ids"]:
            del self._cache[key]

    # -- readers ------------------------------------------------------------------------

    def record_bytes(self, i: int, enforcement: int | None = None) -> bytes:
        """Record i as a serialized Flow (`enforcement`: its policy finding instead of the
        batch's, see receiver_repeats)."""
        return recordcols.record_proto(self, i, enforcement)

    def flow(self, i: int, enforcement: int | None = None) -> flow_pb2.Flow:
        """Record i as a Flow object (made now: for filters, objects-wanting readers, tests)."""
        return flow_pb2.Flow.FromString(self.record_bytes(i, enforcement))

    def stored_items(self, prefix: bytes) -> list[tuple[int, bytes, int, int]]:
        """Every record framed for the wire (made once, on the first reader's request)."""
        return recordcols.framed(self, prefix)

    def receiver_repeats(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Which of `rows` repeat, at the receiving pod's veth (POD_VETH, TO_POD), a FROM_POD
        record among `rows` of the same connection with the same counts: the same packets of
        a pod-to-pod flow on this node, seen leaving one pod and entering the other. The
        FROM_POD record is the one that counts them (agent/wire/counting.py); a flow log that
        keeps one record per flow and interval leaves the repeat out.

        Returns (repeat: bool per row, enforcement: uint8 per row). What only the receiver's
        record shows of the NetworkPolicy verdict (its finding: the packets were delivered)
        moves to the sender's record in `enforcement`. Records that differ in packets,
        bytes, end, outcome or finding are never repeats: the difference is news (a packet
        lost between the two veths)."""
        rows = np.asarray(rows, np.int64)
        repeat = np.zeros(len(rows), bool)
        enforcement = self.enforcement[rows]
        if len(rows) < 2:
            return repeat, enforcement
        obs, direction = self.obs[rows], self.direction[rows]
        veth = obs == flow_pb2.POD_VETH
        sender = np.flatnonzero(veth & (direction == flow_pb2.FROM_POD))
        receiver = veth & (direction == flow_pb2.TO_POD)
        if self.extras:  # records with a payload of their own (DNS) are kept
            receiver &= ~np.isin(rows, np.fromiter(self.extras, np.int64))
        receiver = np.flatnonzero(receiver)
        if not len(sender) or not len(receiver):
            return repeat, enforcement
        # family, protocol, key flags, addresses, ports (the connection at either veth),
        # packets, bytes, end, update, outcome: 58 bytes, padded to eight 64-bit words
        signature = np.zeros((len(rows), 64), np.uint8)
        signature[:, :39] = self.keys[rows, 5:44]
        signature[:, 39:47] = self.packets[rows].astype("<u8").view(np.uint8).reshape(-1, 8)
        signature[:, 47:55] = self.bytes[rows].astype("<u8").view(np.uint8).reshape(-1, 8)
        signature[:, 55] = self.flow_end[rows]
        signature[:, 56] = self.update[rows]
        signature[:, 57] = self.outcome[rows]
        words = signature.view("<u8")
        digest = row_hash(signature)
        order = sender[np.argsort(digest[sender], kind="stable")]
        known = digest[order]
        at = np.searchsorted(known, digest[receiver]).clip(0, len(known) - 1)
        pair = order[at]  # the sender's row of each receiver's connection (by digest)
        mine, theirs = enforcement[receiver], enforcement[pair]
        hit = ((words[receiver] == words[pair]).all(axis=1)
               & ((mine == theirs) | (mine == 0) | (theirs == 0)))
        repeat[receiver[hit]] = True
        enforcement[pair[hit]] = np.maximum(mine[hit], theirs[hit])  # equal, or one unset
        return repeat, enforcement

    def flow_ids(self) -> np.ndarray:
        """A 64-bit id of each record's flow (its key and first packet): the records of one
        flow at one observation point share it, and its end notice too."""
        ids = self._cache.get("flow_ids")
        if ids is None:
            mix = self.first_ns.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
            ids = self._cache["flow_ids"] = key_hash(self.keys) ^ mix
        return ids
