"""Enrichment of a batch of records (agent/datapath/batch.py): names once per identity, not
once per record.

Records of one address pair at one interface share their names unless a Service is
involved, so the batch's groups (interface, hook, protocol, addresses) are named once, from
a cache of identities that outlives the batch. Ports matter only where a Service could be
involved: an address and port that is a Service's front (ClusterIP, external or load
balancer address, a NodePort on a node), a headless Service's endpoint, or a Service's
backend endpoint (where a DNATed connection arrives). Only those records are looked at one
by one, and only they are looked up in conntrack (which backend answered); their identity
keeps just the Service-side port and the conntrack answer, so the connections of many
clients to one backend still share one identity.

The naming itself is agent.enrich.names (FlowEnricher), run once per new identity on a Flow
holding the identity's fields.
"""

from __future__ import annotations

import itertools

import numpy as np

from agent.datapath.batch import FlowBatch, Ident
from agent.enrich.conntrack import Match, Tuple5
from agent.enrich.k8s.state import ClusterState
from agent.enrich.names import FlowEnricher, _translate
from podflow_api.v1 import flow_pb2

_PROTO_NAMES = {6: "TCP", 17: "UDP", 132: "SCTP"}
ALL_PORTS = None  # a headless endpoint whose slice lists no ports: every port


class ServicePorts:
    """address -> protocol -> the ports where a Service is involved (ALL_PORTS: any port),
    built from the cluster state once per generation."""

    def __init__(self, state: ClusterState):
        self.generation = state.generation
        index: dict[str, dict[str, set | None]] = {}

        def add(ip: str, proto: str, port: int | None) -> None:
            by_proto = index.setdefault(ip, {})
            if port is None:
                by_proto[proto] = ALL_PORTS
            elif by_proto.get(proto, ()) is not ALL_PORTS:
                by_proto.setdefault(proto, set()).add(port)

        for ip, port, proto in list(state.vip):
            add(ip, proto, port)
        for node_port, proto in list(state.node_port):
            for ip in list(state.node_by_ip):
                add(ip, proto, node_port)
        for ip, entry in list(state.headless.items()):
            for _svc, ports in list(entry.values()):
                if not ports:
                    for proto in _PROTO_NAMES.values():
                        add(ip, proto, None)
                for _name, port, proto in ports:
                    add(ip, proto, port)
        for slices in list(state._slices_by_service.values()):  # backends, after DNAT
            for sl in list(slices.values()):
                for ep in sl.endpoints:
                    for ip in ep.addresses:
                        for _name, port, proto in sl.ports:
                            add(ip, proto, port)
        self._index = {ip: {p: (ALL_PORTS if ports is ALL_PORTS
                                else np.array(sorted(ports), np.uint16))
                            for p, ports in by_proto.items()}
                       for ip, by_proto in index.items()}

    def at(self, ip: str, proto: str):
        """False (no Service port here), ALL_PORTS, or an array of ports."""
        by_proto = self._index.get(ip)
        if by_proto is None or proto not in by_proto:
            return False
        return by_proto[proto]


def _service_ports(ports: np.ndarray, allowed) -> np.ndarray:
    """`ports` where they are Service ports at that address, else 0."""
    if allowed is False:
        return np.zeros(len(ports), np.uint16)
    if allowed is ALL_PORTS:
        return ports
    return np.where(np.isin(ports, allowed), ports, 0).astype(np.uint16)


class BatchEnricher:
    """Sets `ident`/`idents` of each batch. Not thread-safe: the datapath's thread calls it."""

    def __init__(self, state: ClusterState | None, conntrack=None, max_idents: int = 16384):
        self._state = state
        self._conntrack = conntrack
        self._names = FlowEnricher(state, None)
        self._ports: ServicePorts | None = None
        self._idents: dict[tuple, Ident] = {}
        self._max_idents = max_idents

    def enrich(self, batch: FlowBatch) -> None:
        if not len(batch):
            return
        if self._conntrack is not None:
            self._conntrack.drain()
        state = self._state
        generation = state.generation if state is not None else 0
        if state is not None and (self._ports is None or self._ports.generation != generation):
            self._ports = ServicePorts(state)
        node = batch.node_name
        idents: list[Ident] = []
        positions: dict[int, int] = {}   # id(Ident) -> its index in `idents`
        ident = np.zeros(len(batch), np.int32)

        def index_of(found: Ident) -> int:
            pos = positions.get(id(found))
            if pos is None:
                pos = positions[id(found)] = len(idents)
                idents.append(found)
            return pos

        by_group = np.argsort(batch.group, kind="stable")
        bounds = np.searchsorted(batch.group[by_group], np.arange(len(batch.groups) + 1))
        for g, group in enumerate(batch.groups):
            rows = by_group[bounds[g]:bounds[g + 1]]
            if not len(rows):
                continue
            names = batch.group_names.get(g)
            base = (group, node, names, generation)
            proto = _PROTO_NAMES.get(group.proto)
            if proto is None or self._involved(group, proto) is False:
                ident[rows] = index_of(self._ident(base, group, node, names, 0, 0, None))
                continue
            svc_sport = _service_ports(batch.sport[rows], self._at(group.source, proto))
            svc_dport = _service_ports(batch.dport[rows], self._at(group.destination, proto))
            for row, sp, dp, sport, dport in zip(rows.tolist(), svc_sport.tolist(),
                                                 svc_dport.tolist(), batch.sport[rows].tolist(),
                                                 batch.dport[rows].tolist()):
                match = None
                if (sp or dp) and self._conntrack is not None:
                    opening = group.proto == 6 and bool(batch.tcp_flags[row] & 0x02)
                    # Without metadata every record may be DNATed: only the events tell
                    # (no netlink query per 5-tuple).
                    match = self._conntrack.lookup(
                        Tuple5(group.proto, group.source, sport, group.destination, dport),
                        int(batch.first_ns[row]), opening, query=state is not None)
                if match is None and state is None:
                    sp = dp = 0  # nothing else depends on the ports
                ident[row] = index_of(self._ident(base, group, node, names, sp, dp, match))
        batch.set_idents(ident, idents)

    def _involved(self, group, proto: str):
        """Whether a Service could be involved in this group's records (None: no metadata,
        only conntrack can tell)."""
        if self._state is None:
            return None
        return bool(self._at(group.source, proto) is not False
                    or self._at(group.destination, proto) is not False)

    def _at(self, ip: str, proto: str):
        return self._ports.at(ip, proto) if self._ports is not None else ALL_PORTS

    def _ident(self, base: tuple, group, node: str, names, sport: int, dport: int,
               match: Match | None) -> Ident:
        # What of a conntrack answer the names depend on: the client, the address dialed, the
        # backend that answered, the side (not the client's port: one identity per backend).
        answer = None if match is None else (
            match.entry.orig.src, match.entry.orig.dst, match.entry.orig.dport,
            match.entry.reply.src, match.entry.reply.sport, match.is_reply)
        key = (base, sport, dport, answer)
        found = self._idents.get(key)
        if found is not None:
            return found
        flow = group.base_flow(node)
        proto_num = group.proto
        if match is not None:
            _translate(flow, match)
            flow.is_reply = match.is_reply
        state = self._state
        if state is not None:
            enriched = flow_pb2.Flow()
            if match is not None:
                _translate(enriched, match)
            self._names._name(enriched, state, match, proto_num if proto_num in _PROTO_NAMES
                              else 0, _PROTO_NAMES.get(proto_num, ""), group.source, sport,
                              group.destination, dport)
            flow.MergeFrom(enriched)
        if names is not None:
            src_names, dst_names = names
            if src_names:
                flow.source.names[:] = src_names
            if dst_names:
                flow.destination.names[:] = dst_names
        found = Ident(flow)
        cache = self._idents
        if len(cache) >= self._max_idents:
            for old in list(itertools.islice(cache, self._max_idents // 4)):
                del cache[old]
        cache[key] = found
        return found

