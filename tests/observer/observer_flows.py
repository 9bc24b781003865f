"""Generated flows that look like what an enriched agent produces (pods with labels and
workloads, a Service and its backend, TCP flags), for the Observer tests and bench/observer.py."""

from __future__ import annotations

import time

from podflow_api.v1 import flow_pb2


def make_flow(i: int = 0, node: str = "node-a", time_ns: int | None = None, **fields,
              ) -> flow_pb2.Flow:
    """Flow number `i`; keyword fields override parts of it (see `customize`)."""
    now = time.time_ns() if time_ns is None else time_ns
    f = flow_pb2.Flow(node_name=node, packets=1 + i % 7, bytes=100 + i, verdict=flow_pb2.FORWARDED,
                      observation_point=flow_pb2.POD_VETH, traffic_direction=flow_pb2.FROM_POD,
                      category=flow_pb2.POD_TO_SERVICE, outcome=flow_pb2.ESTABLISHED)
    f.time.FromNanoseconds(now)
    f.first_seen.FromNanoseconds(now - 1_000_000)
    f.last_seen.FromNanoseconds(now)
    f.interface.name = "veth1a2b3c4d"
    f.interface.index = 12
    f.ip.source = f"10.244.1.{i % 250 + 1}"
    f.ip.destination = "10.244.2.17"
    f.ip.ip_version = flow_pb2.IPV4
    f.l4.tcp.source_port = 40000 + i % 20000
    f.l4.tcp.destination_port = 8080
    f.l4.tcp.flags.SYN = True
    f.l4.tcp.flags.ACK = True
    for ep, pod, app in ((f.source, "frontend-7d9f8c6b5-x2x4z", "frontend"),
                         (f.destination, "cart-5c7b9d8f4-abcde", "cart")):
        ep.kind = flow_pb2.POD
        ep.namespace = "shop"
        ep.pod_name = pod
        ep.labels.extend([f"app={app}", "pod-template-hash=5c7b9d8f4", "tier=web"])
        ep.workload.kind = "Deployment"
        ep.workload.name = app
        ep.node_name = node
    f.service.namespace = "shop"
    f.service.name = "cart"
    f.service.type = "ClusterIP"
    f.service.ip = "10.96.0.20"
    f.service.port = 80
    f.backend.ip = "10.244.2.17"
    f.backend.port = 8080
    f.backend.namespace = "shop"
    f.backend.pod_name = "cart-5c7b9d8f4-abcde"
    f.backend.node_name = node
    f.summary = f"TCP {f.ip.source}:{f.l4.tcp.source_port} -> 10.96.0.20:80 SYN,ACK"
    customize(f, **fields)
    return f


def customize(f: flow_pb2.Flow, **fields) -> flow_pb2.Flow:
    """Apply overrides given as dotted paths with '__' (source__namespace="db") or a few
    shorthands: proto="udp"|"icmpv4"|..., sport/dport, src/dst (IPs)."""
    for key, value in fields.items():
        if key == "proto":
            ports = (f.l4.tcp.source_port, f.l4.tcp.destination_port)
            if value in ("udp", "sctp"):
                getattr(f.l4, value).source_port, getattr(f.l4, value).destination_port = ports
            elif value in ("icmpv4", "icmpv6"):
                getattr(f.l4, value).type = 8
            continue
        if key in ("sport", "dport"):
            which = f.l4.WhichOneof("protocol")
            setattr(getattr(f.l4, which), "source_port" if key == "sport" else
                    "destination_port", value)
            continue
        if key in ("src", "dst"):
            setattr(f.ip, "source" if key == "src" else "destination", value)
            continue
        path = key.split("__")
        target = f
        for part in path[:-1]:
            target = getattr(target, part)
        attr = getattr(target, path[-1])
        if hasattr(attr, "extend") and isinstance(value, (list, tuple)):
            del attr[:]
            attr.extend(value)
        elif hasattr(attr, "CopyFrom") and not isinstance(value, (str, int, bool)):
            attr.CopyFrom(value)
        else:
            setattr(target, path[-1], value)
    return f
