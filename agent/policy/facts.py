"""Connection facts: what advise and what-if need to know about an observed connection,
as plain frozen values (no protobuf), so both tools are pure functions of a list of them.

A fact is one connection shape, in its original orientation: who opened it (src), what
answered (dst: the backend pod after DNAT when it went through a Service), the destination
port after DNAT (the target port), the protocol, the Service dialled (with all its backends
when the caller knows them), how many connections had that shape and when the last was seen.
Both ends carry the identity recorded at the time (namespace, pod, workload, labels, node),
so recorded flows are judged as they were, even after the pods are gone.

`facts_from_flows` builds them from podflow.v1.Flow records (live streams or flow logs).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from agent.enrich.names import guess_reply
from agent.policy.flows import connection_of
from agent.policy.verdict import Connection
from agent.policy.view import ContainerPort, PodInfo, StaticCluster
from podflow_api.v1 import flow_pb2

POD, NODE, WORLD = "pod", "node", "world"


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One end of a connection as it was when seen."""

    ip: str
    kind: str = WORLD                       # pod, node, world
    namespace: str = ""
    pod: str = ""
    workload_kind: str = ""                 # Deployment, StatefulSet, DaemonSet, CronJob, Pod ...
    workload: str = ""
    labels: tuple[tuple[str, str], ...] = ()   # sorted (key, value)
    node: str = ""
    host_network: bool = False
    names: tuple[str, ...] = ()             # DNS names the address was looked up as
    container_ports: tuple[ContainerPort, ...] | None = None

    @property
    def is_pod(self) -> bool:
        """A pod on the pod network: the only kind of end NetworkPolicy applies at."""
        return self.kind == POD and not self.host_network

    @property
    def label_map(self) -> dict[str, str]:
        return dict(self.labels)

    @property
    def workload_key(self) -> tuple[str, str, str]:
        """(namespace, kind, name) of the workload; a bare pod is its own workload."""
        if self.workload:
            return (self.namespace, self.workload_kind or "Pod", self.workload)
        return (self.namespace, "Pod", self.pod)

    def display(self) -> str:
        if self.kind == POD:
            ns, kind, name = self.workload_key
            return f"{ns}/{name}" if kind != "Pod" else f"{ns}/{self.pod}"
        if self.kind == NODE:
            return f"node {self.node or self.ip}"
        return self.names[0] if self.names else self.ip


def pod_endpoint(ip: str, namespace: str, pod: str, labels: Mapping[str, str] | None = None,
                 workload: tuple[str, str] | None = None, node: str = "",
                 container_ports: Iterable[ContainerPort] | None = None,
                 host_network: bool = False) -> Endpoint:
    """A pod end (convenience for callers and tests)."""
    kind, name = workload if workload else ("", "")
    return Endpoint(ip=ip, kind=POD, namespace=namespace, pod=pod, workload_kind=kind,
                    workload=name, labels=tuple(sorted((labels or {}).items())), node=node,
                    host_network=host_network,
                    container_ports=None if container_ports is None else tuple(container_ports))


@dataclass(frozen=True, slots=True)
class ServiceRef:
    """The Service a connection dialled. `backends`: all its backend pods when the caller
    knows them (from the cluster's EndpointSlices), else empty (advise then uses the backends
    seen answering)."""

    namespace: str
    name: str
    port: int = 0                              # the port dialled
    backends: tuple[Endpoint, ...] = ()

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class ConnectionFact:
    src: Endpoint                 # opened the connection
    dst: Endpoint                 # answered it: after DNAT, the backend pod
    dst_port: int                 # after DNAT: the target port; 0 without ports (ICMP)
    protocol: str                 # TCP, UDP, SCTP, ICMP, ICMPv6
    service: ServiceRef | None = None
    count: int = 1                # connections of this shape
    last_seen_s: float = 0.0      # unix time of the latest one

    @property
    def connection(self) -> Connection:
        return Connection(self.src.ip, self.dst.ip, self.dst_port, self.protocol)

    @property
    def shape(self) -> tuple:
        """Everything but the counters: facts with one shape merge."""
        return (self.src, self.dst, self.dst_port, self.protocol, self.service)


def merge_facts(facts: Iterable[ConnectionFact]) -> list[ConnectionFact]:
    """One fact per shape, counts summed, latest last_seen kept; first-seen order."""
    out: dict[tuple, ConnectionFact] = {}
    for fact in facts:
        have = out.get(fact.shape)
        if have is None:
            out[fact.shape] = fact
        else:
            out[fact.shape] = replace(have, count=have.count + fact.count,
                                      last_seen_s=max(have.last_seen_s, fact.last_seen_s))
    return list(out.values())


def cluster_of_facts(facts: Iterable[ConnectionFact]) -> StaticCluster:
    """A PolicyCluster that knows every address of the facts as it was recorded: pods (with
    their labels and container ports), nodes and host-network pods (as their node), the
    world. Namespaces are left to a fallback cluster (LayeredCluster) or to the implied
    kubernetes.io/metadata.name label."""
    pods: dict[str, PodInfo] = {}
    nodes: dict[str, str] = {}
    external: set[str] = set()

    def add(end: Endpoint) -> None:
        if end.is_pod:
            pods[end.ip] = PodInfo(end.namespace, end.pod, end.label_map, end.node,
                                   end.container_ports, False)
        elif end.kind == NODE or (end.kind == POD and end.host_network):
            nodes[end.ip] = end.node or end.ip
        else:
            external.add(end.ip)

    for fact in facts:
        add(fact.src)
        add(fact.dst)
        if fact.service is not None:
            for backend in fact.service.backends:
                add(backend)
    return StaticCluster(pods=pods, nodes=nodes, external=external)


# ---- from flow records ---------------------------------------------------------------------

def endpoint_of(ip: str, ep: flow_pb2.Endpoint) -> Endpoint:
    """An Endpoint from a record's (or the cache's) flow_pb2.Endpoint for address `ip`."""
    labels = tuple(sorted(tuple(pair.split("=", 1)) if "=" in pair else (pair, "")
                          for pair in ep.labels))
    if ep.kind == flow_pb2.POD:
        kind = POD
    elif ep.kind == flow_pb2.NODE:
        kind = NODE
    else:
        kind = WORLD
    return Endpoint(ip=ip, kind=kind, namespace=ep.namespace, pod=ep.pod_name,
                    workload_kind=ep.workload.kind, workload=ep.workload.name, labels=labels,
                    node=ep.node_name, host_network=ep.host_network, names=tuple(ep.names))


def _seconds(ts) -> float:
    return ts.seconds + ts.nanos / 1e9


def facts_from_flows(flows: Iterable[flow_pb2.Flow]) -> list[ConnectionFact]:
    """Connection facts from enriched flow records. Each connection (protocol, client
    address and port, server address and port after DNAT) counts once however many records
    (intervals, observation points, nodes, replies) it has, in one shape: a record that
    names the Service it went through wins over one that does not (the server's node sees
    the connection after the client's node translated it, without the Service). Drop
    records count too (a denied connection is one a policy must account for)."""
    conns: dict[tuple, list] = {}    # connection -> [fact without counts, last seen]
    for flow in flows:
        which = flow.l4.WhichOneof("protocol")
        ports = getattr(flow.l4, which) if which in ("tcp", "udp", "sctp") else None
        reply = flow.is_reply
        if not reply and which and not flow.HasField("policy"):
            # Recorded by an agent that did not orient its records (older, or without
            # policy): the same guess enrichment makes when nothing else says.
            reply = guess_reply(which, getattr(flow.l4, which),
                                ports.source_port if ports else 0,
                                ports.destination_port if ports else 0)
        conn = connection_of(flow, reply)
        if conn is None:
            continue
        ip = flow.ip
        if reply:
            client_ip, client_port = ip.destination, ports.destination_port if ports else 0
            client_ep, server_ep = flow.destination, flow.source
        else:
            client_ip, client_port = ip.source, ports.source_port if ports else 0
            client_ep, server_ep = flow.source, flow.destination
        key = (conn.protocol, client_ip, client_port, conn.dst_ip, conn.dst_port)
        seen = _seconds(flow.last_seen) or _seconds(flow.time)
        entry = conns.get(key)
        has_service = flow.HasField("service") and bool(flow.service.name)
        if entry is not None and (entry[0].service is not None or not has_service):
            entry[1] = max(entry[1], seen)
            continue
        src = endpoint_of(client_ip, client_ep)
        dst = endpoint_of(conn.dst_ip, server_ep)
        if server_ep.kind == flow_pb2.SERVICE_IP:
            dst = Endpoint(ip=conn.dst_ip)
        service = None
        if has_service:
            service = ServiceRef(flow.service.namespace, flow.service.name, flow.service.port)
        fact = ConnectionFact(src=src, dst=dst, dst_port=conn.dst_port, protocol=conn.protocol,
                              service=service, count=0)
        conns[key] = [fact, max(seen, entry[1]) if entry is not None else seen]
    shapes: dict[tuple, list] = {}   # shape -> [fact, connections, last seen]
    for fact, last in conns.values():
        entry = shapes.get(fact.shape)
        if entry is None:
            shapes[fact.shape] = [fact, 1, last]
        else:
            entry[1] += 1
            entry[2] = max(entry[2], last)
    return [replace(fact, count=count, last_seen_s=last) for fact, count, last in shapes.values()]


def host_prefix(ip: str) -> str:
    """The /32 (IPv4) or /128 (IPv6) CIDR of one address."""
    addr = ipaddress.ip_address(ip)
    return f"{addr}/{addr.max_prefixlen}"
