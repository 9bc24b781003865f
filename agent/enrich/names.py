"""Names for a flow: its endpoints, its category, the Service it went to and the backend that
answered, from the cluster state and the kernel's conntrack.

Pure Python over two small interfaces (a ClusterState-like `peer`/`service_at`/... and a
Conntrack-like `lookup`), so it is tested and benchmarked without a cluster or a kernel.

One hop per Service connection: the record seen at the client's veth (client -> ClusterIP)
and the one seen at the backend's veth (client -> backend, after DNAT) both carry the same
`service`, `backend` and `translation`, and so do their replies; the side of a record that
is the Service address is described as the backend pod that really answered.

Which side opened a connection (`is_reply`) is read from conntrack or the Service side when
there is one, else guessed (see `guess_reply`); records that are replies say so.

NetworkPolicy verdicts are judged here, by a ConnectionJudge the policy stage hands over,
because only here are the connection's orientation, its backend after DNAT and the 5-tuple
cache all at hand: a verdict costs one evaluation per new 5-tuple, and a record of a known
one gets it with the names it already merges (bench/enrich.py measures the cost).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Protocol

from agent.enrich.conntrack import Match, Tuple5
from agent.enrich.k8s.state import ClusterState, Peer
from podflow_api.v1 import flow_pb2

_L4 = {"tcp": (6, "TCP"), "udp": (17, "UDP"), "sctp": (132, "SCTP")}
_NO_PORTS = {"icmpv4": "ICMP", "icmpv6": "ICMPv6"}
# ICMP messages that answer another: echo replies and errors (unreachable, time exceeded,
# parameter problem), so a record of them belongs to the connection of what they answer.
_ICMP_ANSWERS = {"icmpv4": frozenset((0, 3, 11, 12, 14, 16, 18)),
                 "icmpv6": frozenset((1, 2, 3, 4, 129))}
EPHEMERAL_PORT_FIRST = 32768   # Linux's default ip_local_port_range starts here
WELL_KNOWN_PORT_END = 1024     # below: ports of services, never picked for a client


class ConnectionJudge(Protocol):
    """What the policy stage gives enrichment (agent/policy/judge.py): the NetworkPolicy
    verdict of a connection and, per record, what the record shows of it."""

    def judge(self, client_ip: str, server_ip: str, server_port: int, protocol: str,
              reply: bool) -> tuple[bytes, Callable[[flow_pb2.Flow], None]] | None:
        """A serialized Flow holding the verdict (merged into every record of the 5-tuple)
        and the finder each of those records is passed to (it sets what the record shows
        of the verdict); None when there is no verdict to give."""

    def port_free(self, client_ip: str, server_ip: str) -> bool:
        """Whether judge() gives client -> server one answer whatever the server port."""


def guess_reply(which: str, l4, sport: int, dport: int) -> bool:
    """Whether a record without conntrack or Service knowledge is a reply: ICMP answers are;
    a TCP record of only the opening SYN is not; otherwise the server is the side whose port
    is not ephemeral when the other's is, or a well-known port (< 1024) facing another one;
    anything else is taken for a request. A guess: a client bound to a low port fools it."""
    if which in _ICMP_ANSWERS:
        return l4.type in _ICMP_ANSWERS[which]
    if which == "tcp" and l4.flags.SYN and not l4.flags.ACK:
        return False
    src_ephemeral, dst_ephemeral = sport >= EPHEMERAL_PORT_FIRST, dport >= EPHEMERAL_PORT_FIRST
    if src_ephemeral != dst_ephemeral:
        return dst_ephemeral
    return sport < WELL_KNOWN_PORT_END <= dport


def guess_replies(proto, sport, dport, tcp_flags):
    """guess_reply for arrays of records (numpy): protocol numbers, ports (ICMP: type and
    code), TCP flags (the union of the flow's)."""
    import numpy as np  # noqa: PLC0415  (numpy only where records come as columns)

    sport = sport.astype(np.int64)
    dport = dport.astype(np.int64)
    src_ephemeral, dst_ephemeral = sport >= EPHEMERAL_PORT_FIRST, dport >= EPHEMERAL_PORT_FIRST
    by_ports = np.where(src_ephemeral != dst_ephemeral, dst_ephemeral,
                        (sport < WELL_KNOWN_PORT_END) & (dport >= WELL_KNOWN_PORT_END))
    syn_only = (proto == 6) & ((tcp_flags & 0x02) != 0) & ((tcp_flags & 0x10) == 0)
    icmp4 = np.isin(sport, list(_ICMP_ANSWERS["icmpv4"]))
    icmp6 = np.isin(sport, list(_ICMP_ANSWERS["icmpv6"]))
    return np.select([proto == 1, proto == 58, syn_only], [icmp4, icmp6, False], by_ports)


def _is_host(peer: Peer) -> bool:
    return peer.kind == flow_pb2.NODE or (peer.pod is not None and peer.pod.host_network)


def _translate(flow: flow_pb2.Flow, match: Match) -> None:
    orig, reply = match.entry.orig, match.entry.reply
    tr = flow.translation
    tr.original_ip, tr.original_port = orig.dst, orig.dport
    tr.translated_ip, tr.translated_port = reply.src, reply.sport


def category_of(src: Peer, dst: Peer) -> int:
    """The category of a flow between two peers that involves no Service."""
    src_pod = src.kind == flow_pb2.POD and not _is_host(src)
    dst_pod = dst.kind == flow_pb2.POD and not _is_host(dst)
    if src_pod and dst_pod:
        return (flow_pb2.POD_TO_POD_SAME_NODE if src.node_name == dst.node_name
                else flow_pb2.POD_TO_POD_CROSS_NODE)
    if src_pod or dst_pod:
        other = dst if src_pod else src
        if _is_host(other):
            return flow_pb2.HOST_TO_POD
        if other.kind == flow_pb2.WORLD:
            return flow_pb2.POD_TO_WORLD
    return flow_pb2.OTHER


class FlowEnricher:
    """Fills endpoints, category, service, backend, translation and is_reply (known for
    Service connections: from conntrack, or which side is the Service) of flows in place.

    `state` None (--metadata none): only the translation read from conntrack is filled.
    `conntrack` None (no CAP_NET_ADMIN, --no-conntrack): Services are still named from
    the address dialed, without the backend."""

    def __init__(self, state: ClusterState | None, conntrack=None,
                 max_results: int = 16384, judge: ConnectionJudge | None = None) -> None:
        self._state = state
        self._conntrack = conntrack
        self._judge = judge if state is not None else None
        self._service_ip_peers: dict[str, Peer] = {}
        # 5-tuple -> (state generation, conntrack Match or None, the names and the policy
        # verdict as a serialized Flow, the judge's finder or None): a few hundred bytes
        # each, so 16,384 of them stay around 6 MiB.
        self._results: dict[tuple, tuple[int, Match | None, bytes, object]] = {}
        self._max_results = max_results

    def enrich(self, flows: list) -> None:
        if self._conntrack is not None:
            self._conntrack.drain()
        for flow in flows:
            self.enrich_one(flow)

    def enrich_one(self, flow: flow_pb2.Flow) -> None:
        ip = flow.ip
        src = ip.source
        state = self._state
        if not src:
            if state is not None:
                flow.category = flow_pb2.OTHER
            return
        dst = ip.destination
        l4_msg = flow.l4
        which = l4_msg.WhichOneof("protocol")
        proto_num, proto = _L4.get(which, (0, ""))
        sport = dport = 0
        if proto_num:
            l4 = getattr(l4_msg, which)
            sport, dport = l4.source_port, l4.destination_port
        match: Match | None = None
        if proto_num and self._conntrack is not None:
            opening = proto_num == 6 and l4.flags.SYN
            match = self._conntrack.lookup(Tuple5(proto_num, src, sport, dst, dport),
                                           flow.first_seen, opening)
        if state is None:
            if match is not None:
                _translate(flow, match)
                flow.is_reply = match.is_reply
            return
        # The same 5-tuple comes back in every interval and at every observation point:
        # reuse its names (and policy verdict) while the cluster state (policies included)
        # and the conntrack answer are unchanged.
        key = (proto_num or which, src, sport, dst, dport)
        generation = state.generation
        cached = self._results.get(key)
        if cached is not None and cached[0] == generation and cached[1] is match:
            flow.MergeFromString(cached[2])
            finder = cached[3]
            if finder is not None:
                finder(flow)
            return
        names = flow_pb2.Flow()
        if match is not None:
            _translate(names, match)
        reply, server_ip, server_port = self._name(names, state, match, proto_num, proto, src,
                                                   sport, dst, dport)
        if reply is None:
            reply = guess_reply(which, l4 if proto_num else getattr(l4_msg, which, None),
                                 sport, dport) if which else False
        if reply:
            names.is_reply = True
        blob = names.SerializeToString()
        finder = None
        if self._judge is not None and which and not ip.fragment:
            client_ip = dst if reply else src
            if not server_ip:
                server_ip, server_port = (src, sport) if reply else (dst, dport)
            judged = self._judge.judge(client_ip, server_ip, server_port,
                                       proto or _NO_PORTS.get(which, which), reply)
            if judged is not None:
                blob += judged[0]
                finder = judged[1]
        flow.MergeFromString(blob)
        if finder is not None:
            finder(flow)
        results = self._results
        if len(results) >= self._max_results:
            # Forget the oldest quarter (dicts keep insertion order).
            for old in list(itertools.islice(results, self._max_results // 4)):
                del results[old]
        results[key] = (generation, match, blob, finder)

    def _name(self, flow: flow_pb2.Flow, state: ClusterState, match: Match | None,
              proto_num: int, proto: str, src: str, sport: int, dst: str, dport: int
              ) -> tuple[bool | None, str, int]:
        """Fill endpoints, category, service and backend into an empty Flow. Returns what
        it learnt of the connection: whether the record is a reply (None: nothing says),
        and the server after DNAT, the backend that answered ("" when no Service did)."""
        src_peer, dst_peer = state.peer(src), state.peer(dst)
        if not proto_num:
            flow.source.CopyFrom(src_peer.endpoint)
            flow.destination.CopyFrom(dst_peer.endpoint)
            flow.category = category_of(src_peer, dst_peer)
            return None, "", 0

        # Which Service (if any), dialed at which address, answered by which backend.
        svc = None
        svc_ip, svc_port, backend_ip, backend_port = "", 0, "", 0
        client_ip, is_reply = src, False
        if match is not None:
            orig, reply = match.entry.orig, match.entry.reply
            hit = state.service_at(orig.dst, orig.dport, proto)
            if hit is not None:
                svc = hit[0]
            svc_ip, svc_port = orig.dst, orig.dport
            backend_ip, backend_port = reply.src, reply.sport
            client_ip, is_reply = orig.src, match.is_reply
        else:
            hit = state.service_at(dst, dport, proto)
            if hit is not None:
                svc = hit[0]
                svc_ip, svc_port = dst, dport
            else:
                hit = state.service_at(src, sport, proto)
                if hit is not None:
                    svc = hit[0]
                    svc_ip, svc_port, client_ip, is_reply = src, sport, dst, True
                else:
                    headless = state.headless_at(dst, dport, proto)
                    if headless is not None:
                        svc, svc_ip, svc_port = headless, dst, dport
                        backend_ip, backend_port = dst, dport
                    else:
                        headless = state.headless_at(src, sport, proto)
                        if headless is not None:
                            svc, svc_ip, svc_port = headless, src, sport
                            backend_ip, backend_port = src, sport
                            client_ip, is_reply = dst, True

        flow.is_reply = is_reply
        backend_peer = state.peer(backend_ip) if backend_ip else None
        if match is not None or svc is not None:
            # The Service address side of the record is described as what answered.
            vip_is_dst = (dst, dport) == (svc_ip, svc_port)
            vip_is_src = (src, sport) == (svc_ip, svc_port)
            if backend_peer is not None and (vip_is_dst or vip_is_src):
                if vip_is_dst:
                    dst_peer = backend_peer
                else:
                    src_peer = backend_peer
            elif svc is not None and backend_peer is None and (vip_is_dst or vip_is_src):
                vip_peer = self._service_ip_peers.get(svc.namespace)
                if vip_peer is None:
                    vip_peer = Peer(kind=flow_pb2.SERVICE_IP, node_name="",
                                    endpoint=flow_pb2.Endpoint(kind=flow_pb2.SERVICE_IP,
                                                               namespace=svc.namespace))
                    self._service_ip_peers[svc.namespace] = vip_peer
                if vip_is_dst:
                    dst_peer = vip_peer
                else:
                    src_peer = vip_peer

        flow.source.CopyFrom(src_peer.endpoint)
        flow.destination.CopyFrom(dst_peer.endpoint)
        known_reply = is_reply if (match is not None or svc is not None) else None

        if svc is None:
            flow.category = category_of(src_peer, dst_peer)
            return known_reply, backend_ip, backend_port
        out = flow.service
        out.namespace, out.name, out.type = svc.namespace, svc.name, svc.display_type
        out.ip, out.port = svc_ip, svc_port
        if not svc.headless and not state.has_endpoints(svc):
            out.no_endpoints = True
        if backend_peer is not None:
            backend = flow.backend
            backend.ip, backend.port = backend_ip, backend_port
            if backend_peer.pod is not None:
                backend.namespace = backend_peer.pod.namespace
                backend.pod_name = backend_peer.pod.name
            backend.node_name = backend_peer.node_name
        client = (src_peer if client_ip == src and src != svc_ip else
                  dst_peer if client_ip == dst and dst != svc_ip else state.peer(client_ip))
        if client.kind == flow_pb2.POD and not _is_host(client):
            flow.category = flow_pb2.POD_TO_SERVICE
        elif svc.headless:
            server = src_peer if is_reply else dst_peer
            flow.category = category_of(client, server)
        elif svc_ip in svc.cluster_ips and client.kind != flow_pb2.WORLD:
            flow.category = flow_pb2.HOST_TO_POD  # the node itself dialed a ClusterIP
        else:
            flow.category = flow_pb2.OUTSIDE_TO_SERVICE
        return known_reply, backend_ip, backend_port
