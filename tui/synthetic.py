"""Synthetic cluster traffic: realistic Flow records for the TUI's tests and benchmark.

A small shop (frontend -> cart -> redis, checkout -> payments, everyone -> kube-dns) spread
over named nodes, producing the records real agents would: the client's FROM_POD record
with the Service and the backend that answered, the server's TO_POD record, replies, a few
drops and refused connections. Deterministic for a given seed.
"""

from __future__ import annotations

import random
import time

from google.protobuf import timestamp_pb2

from podflow_api.v1 import flow_pb2, observer_pb2

# (namespace, workload, pods, ip prefix)
WORKLOADS = [
    ("shop", "frontend", 3, "10.1.1."),
    ("shop", "cart", 2, "10.1.2."),
    ("shop", "checkout", 2, "10.1.3."),
    ("shop", "redis", 1, "10.1.4."),
    ("pay", "payments", 2, "10.2.1."),
    ("kube-system", "coredns", 2, "10.3.1."),
]
# client workload -> (service ns, service name, service ip, port, proto, backend workload)
CALLS = [
    ("frontend", ("shop", "cart", "10.96.0.11", 8080, "tcp", "cart")),
    ("frontend", ("shop", "checkout", "10.96.0.12", 443, "tcp", "checkout")),
    ("cart", ("shop", "redis", "10.96.0.13", 6379, "tcp", "redis")),
    ("checkout", ("pay", "payments", "10.96.0.14", 443, "tcp", "payments")),
    ("frontend", ("kube-system", "kube-dns", "10.96.0.10", 53, "udp", "coredns")),
    ("cart", ("kube-system", "kube-dns", "10.96.0.10", 53, "udp", "coredns")),
]


def _ts(ns: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=ns // 1_000_000_000, nanos=ns % 1_000_000_000)


class Cluster:
    """Pods placed on nodes; `flows(n)` makes n records stamped around `now_ns`."""

    def __init__(self, nodes: list[str], seed: int = 1):
        self.rng = random.Random(seed)
        self.nodes = nodes
        self.pods: dict[str, list[tuple[str, str, str, str]]] = {}  # wl -> [(ns, pod, ip, node)]
        i = 0
        for ns, wl, count, prefix in WORKLOADS:
            self.pods[wl] = []
            for j in range(count):
                node = nodes[i % len(nodes)]
                i += 1
                self.pods[wl].append((ns, f"{wl}-7d9f{j}-x{j}k{j}", f"{prefix}{10 + j}", node))

    def endpoint(self, wl: str, pod: tuple) -> flow_pb2.Endpoint:
        ns, name, _ip, node = pod
        return flow_pb2.Endpoint(kind=flow_pb2.POD, namespace=ns, pod_name=name,
                                 labels=[f"app={wl}"], node_name=node,
                                 workload=flow_pb2.Workload(kind="Deployment", name=wl))

    def service_flow(self, client_wl: str, call: tuple, time_ns: int, *, node: str | None = None,
                     refused: bool = False, no_endpoints: bool = False,
                     dropped: bool = False) -> flow_pb2.Flow:
        """The client's FROM_POD record of a call through a Service."""
        svc_ns, svc_name, svc_ip, port, proto, backend_wl = call
        rng = self.rng
        client = rng.choice(self.pods[client_wl])
        backend = rng.choice(self.pods[backend_wl])
        sport = rng.randint(32768, 60999)
        packets = rng.randint(1, 40)
        flow = flow_pb2.Flow(
            time=_ts(time_ns), node_name=node or client[3],
            interface=flow_pb2.Interface(index=10, name=f"veth{client[1][:6]}"),
            observation_point=flow_pb2.POD_VETH, traffic_direction=flow_pb2.FROM_POD,
            verdict=flow_pb2.DROPPED if dropped else flow_pb2.FORWARDED,
            ip=flow_pb2.IP(source=client[2], destination=backend[2], ip_version=flow_pb2.IPV4),
            packets=packets, bytes=packets * rng.randint(60, 1500),
            first_seen=_ts(time_ns - 1_000_000), last_seen=_ts(time_ns),
            source=self.endpoint(client_wl, client),
            destination=self.endpoint(backend_wl, backend),
            category=flow_pb2.POD_TO_SERVICE,
            service=flow_pb2.Service(namespace=svc_ns, name=svc_name, type="ClusterIP",
                                     ip=svc_ip, port=port, no_endpoints=no_endpoints),
            translation=flow_pb2.Translation(original_ip=svc_ip, original_port=port,
                                             translated_ip=backend[2], translated_port=port),
            outcome=flow_pb2.REFUSED if refused else flow_pb2.ESTABLISHED,
        )
        if dropped:
            flow.drop_reason = "NETFILTER_DROP"
            flow.drop_reason_code = 6
        if not no_endpoints:
            flow.backend.CopyFrom(flow_pb2.Backend(ip=backend[2], port=port, namespace=backend[0],
                                                   pod_name=backend[1], node_name=backend[3]))
        if proto == "tcp":
            flow.l4.tcp.CopyFrom(flow_pb2.TCP(source_port=sport, destination_port=port,
                                              flags=flow_pb2.TCPFlags(SYN=True, ACK=not refused)))
        else:
            flow.l4.udp.CopyFrom(flow_pb2.UDP(source_port=sport, destination_port=port))
        flow.summary = (f"{proto.upper()} {client[2]}:{sport} -> {svc_ip}:{port}")
        return flow

    def flows(self, n: int, now_ns: int | None = None, node: str | None = None,
              spread_ns: int = 1_000_000_000) -> list[flow_pb2.Flow]:
        """n records, times spread over the last `spread_ns`, in time order. `node` forces
        every record onto that node (one agent's view)."""
        now_ns = now_ns or time.time_ns()
        rng = self.rng
        out = []
        for i in range(n):
            t = now_ns - spread_ns + (spread_ns * (i + 1)) // n
            client_wl, call = rng.choice(CALLS)
            roll = rng.random()
            out.append(self.service_flow(client_wl, call, t, node=node,
                                         refused=roll < 0.02, dropped=0.02 <= roll < 0.03))
        return out


def responses(flows: list[flow_pb2.Flow]) -> list[observer_pb2.GetFlowsResponse]:
    return [observer_pb2.GetFlowsResponse(node_name=f.node_name, time=f.time, flow=f)
            for f in flows]
