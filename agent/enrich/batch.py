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
from agent.datapath.shedding import NO_DETAIL
from agent.enrich.conntrack import Match, Tuple5
from agent.enrich.k8s.state import ClusterState
from agent.enrich.names import (_NO_PORTS, ConnectionJudge, FlowEnricher, _translate,
                                guess_replies)
from podflow_api.v1 import flow_pb2

_PROTO_NAMES = {6: "TCP", 17: "UDP", 132: "SCTP"}
_WHICH = {6: "tcp", 17: "udp", 132: "sctp", 1: "icmpv4", 58: "icmpv6"}  # Layer4 oneof names
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
        self._index = {ip: {p: (ALL_PORTS if ports is ALL_PORTS else frozenset(ports))
                            for p, ports in by_proto.items()}
                       for ip, by_proto in index.items()}

    def at(self, ip: str, proto: str):
        """False (no Service port here), ALL_PORTS, or a set of ports."""
        by_proto = self._index.get(ip)
        if by_proto is None or proto not in by_proto:
            return False
        return by_proto[proto]


def _service_port(port: int, allowed) -> int:
    """`port` where it is a Service port at that address (ServicePorts.at), else 0."""
    if allowed is False:
        return 0
    return port if allowed is ALL_PORTS or port in allowed else 0


# A group (records of one interface, direction, address pair and protocol) with at most this
# many records is named record by record in Python: numpy's per-call cost exceeds the work
# when most groups hold a record or two (many clients, each its own address pair).
SMALL_GROUP = 16


class BatchEnricher:
    """Sets `ident`/`idents` (and `enforcement`) of each batch. Not thread-safe: the
    datapath's thread calls it."""

    def __init__(self, state: ClusterState | None, conntrack=None, max_idents: int = 16384,
                 judge: ConnectionJudge | None = None, stats=None):
        self._stats = stats  # its shed_level: agent/datapath/shedding.py
        self._state = state
        self._conntrack = conntrack
        self._names = FlowEnricher(state, None)
        self._judge = judge if state is not None else None
        self._ports: ServicePorts | None = None
        self._idents: dict[tuple, tuple[Ident, object]] = {}  # key -> (Ident, finder)
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
        # Under overload (shed level 2) new identities get no per-connection detail.
        detail = self._stats is None or self._stats.shed_level < NO_DETAIL
        idents: list[Ident] = []
        finders: list = []
        positions: dict[int, int] = {}   # id(Ident) -> its index in `idents`
        ident = np.zeros(len(batch), np.int32)

        def index_of(found: tuple) -> int:
            pos = positions.get(id(found[0]))
            if pos is None:
                pos = positions[id(found[0])] = len(idents)
                idents.append(found[0])
                finders.append(found[1])
            return pos

        # Which side opened the connection, where nothing better says (the policy verdict
        # and is_reply depend on it), and the server's port the verdict is judged for.
        replies = guess_replies(batch.proto, batch.sport, batch.dport, batch.tcp_flags)
        with_ports = np.isin(batch.proto, list(_PROTO_NAMES))  # ICMP: no server port
        server_ports = (np.where(replies & with_ports, batch.sport,
                                 np.where(with_ports, batch.dport, 0)).astype(np.int64)
                        if self._judge is not None else np.zeros(len(batch), np.int64))
        by_group = np.argsort(batch.group, kind="stable")
        bounds = np.searchsorted(batch.group[by_group], np.arange(len(batch.groups) + 1))
        for g, group in enumerate(batch.groups):
            rows = by_group[bounds[g]:bounds[g + 1]]
            if not len(rows):
                continue
            if self._judge is not None:
                # A pair no policy isolates has one verdict for every port: one identity,
                # not one per server port (churn over many ports).
                for reply, client, server in ((False, group.source, group.destination),
                                              (True, group.destination, group.source)):
                    if self._judge.port_free(client, server):
                        server_ports[rows[replies[rows] == reply]] = 0
            names = batch.group_names.get(g)
            base = (group, node, names, generation, detail)
            proto = _PROTO_NAMES.get(group.proto)
            if proto is None or self._involved(group, proto) is False:
                # Names depend on the addresses only; the side and the server port remain.
                if len(rows) <= SMALL_GROUP:
                    for row in rows.tolist():
                        ident[row] = index_of(self._ident(
                            base, group, node, names, 0, 0, None, bool(replies[row]),
                            int(server_ports[row])))
                    continue
                sides = replies[rows].astype(np.int64) * 65536 + server_ports[rows]
                kinds, inverse = np.unique(sides, return_inverse=True)
                picks = [index_of(self._ident(base, group, node, names, 0, 0, None,
                                              bool(k >> 16), k & 0xFFFF))
                         for k in kinds.tolist()]
                ident[rows] = np.array(picks, np.int32)[inverse.ravel()]
                continue
            at_source, at_destination = self._at(group.source, proto), self._at(
                group.destination, proto)
            for row, sport, dport, reply, server_port in zip(
                    rows.tolist(), batch.sport[rows].tolist(), batch.dport[rows].tolist(),
                    replies[rows].tolist(), server_ports[rows].tolist()):
                sp, dp = _service_port(sport, at_source), _service_port(dport, at_destination)
                match = None
                if (sp or dp) and detail and self._conntrack is not None:
                    opening = group.proto == 6 and bool(batch.tcp_flags[row] & 0x02)
                    # Without metadata every record may be DNATed: only the events tell
                    # (no netlink query per 5-tuple).
                    match = self._conntrack.lookup(
                        Tuple5(group.proto, group.source, sport, group.destination, dport),
                        int(batch.first_ns[row]), opening, query=state is not None)
                if match is None and state is None:
                    sp = dp = 0  # nothing else depends on the ports
                ident[row] = index_of(self._ident(base, group, node, names, sp, dp, match,
                                                  reply, server_port))
        batch.set_idents(ident, idents)
        if self._judge is not None:
            self._enforcement(batch, finders)
        if not detail:  # every record of the batch named without per-connection detail
            self._stats.add_error("enrichment_detail_shed", len(batch))

    @staticmethod
    def _enforcement(batch: FlowBatch, finders: list) -> None:
        """What each record shows of its connection's verdict (the judge's finder), per
        identity and outcome: the only per-record inputs of a forwarded record."""
        if not any(finders):
            return
        pairs = batch.ident.astype(np.int64) * 256 + batch.outcome
        kinds, inverse = np.unique(pairs, return_inverse=True)
        values = np.zeros(len(kinds), np.uint8)
        for j, kind in enumerate(kinds.tolist()):
            number, outcome = divmod(kind, 256)
            finder = finders[number]
            if finder is None:
                continue
            rep = flow_pb2.Flow()
            rep.CopyFrom(batch.idents[number].flow)
            rep.outcome = outcome
            finder(rep)
            values[j] = rep.policy.enforcement
        batch.enforcement = values[inverse.ravel()]

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
               match: Match | None, reply_guess: bool, server_port: int) -> tuple:
        """(Ident, the judge's finder or None) of one identity; as FlowEnricher.enrich_one
        names a record, with `sport`/`dport` the Service-side ports only."""
        # What of a conntrack answer the names depend on: the client, the address dialed, the
        # backend that answered, the side (not the client's port: one identity per backend).
        answer = None if match is None else (
            match.entry.orig.src, match.entry.orig.dst, match.entry.orig.dport,
            match.entry.reply.src, match.entry.reply.sport, match.is_reply)
        key = (base, sport, dport, answer, reply_guess, server_port)
        found = self._idents.get(key)
        if found is not None:
            return found
        flow = group.base_flow(node)
        finder = None
        state = self._state
        if state is None:
            if match is not None:
                _translate(flow, match)
                flow.is_reply = match.is_reply
        else:
            proto_num = group.proto if group.proto in _PROTO_NAMES else 0
            enriched = flow_pb2.Flow()
            if match is not None:
                _translate(enriched, match)
            reply, server_ip, judged_port = self._names._name(
                enriched, state, match, proto_num, _PROTO_NAMES.get(group.proto, ""),
                group.source, sport, group.destination, dport)
            if reply is None:
                reply = reply_guess
            if reply:
                enriched.is_reply = True
            which = _WHICH.get(group.proto)
            if self._judge is not None and which and not group.fragment and base[-1]:
                client_ip = group.destination if reply else group.source
                if not server_ip:
                    server_ip = group.source if reply else group.destination
                    judged_port = server_port
                judged = self._judge.judge(client_ip, server_ip, judged_port,
                                           _PROTO_NAMES.get(group.proto)
                                           or _NO_PORTS.get(which, which), reply)
                if judged is not None:
                    enriched.MergeFromString(judged[0])
                    finder = judged[1]
            flow.MergeFrom(enriched)
        if names is not None:
            src_names, dst_names = names
            if src_names:
                flow.source.names[:] = src_names
            if dst_names:
                flow.destination.names[:] = dst_names
        found = (Ident(flow), finder)
        cache = self._idents
        if len(cache) >= self._max_idents:
            for old in list(itertools.islice(cache, self._max_idents // 4)):
                del cache[old]
        cache[key] = found
        return found
