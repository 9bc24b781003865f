"""The few facts of a flow record that the TUI filters, pivots and counts on.

Flow messages are big; the views only need a dozen of their fields. Extracting them once
into a small hashable tuple (FlowKey) lets the aggregator count traffic per key, lets a
filter be evaluated once per distinct key instead of once per record, and keeps the
per-second buckets small: the key leaves out everything with a high cardinality (IPs of
pods, ephemeral ports, timestamps).
"""

from __future__ import annotations

from typing import NamedTuple

from agent.wire.flowtext import (denying_policies, pod_name, policy_finding_word, policy_names,
                                 policy_rules, policy_verdict_word)
from podflow_api.v1 import flow_pb2

PIVOTS = ("namespace", "workload", "pod", "service", "port", "verdict", "node")
_VERDICTS = {flow_pb2.FORWARDED: "forwarded", flow_pb2.DROPPED: "dropped"}
_KINDS = {flow_pb2.NODE: "(node)", flow_pb2.WORLD: "(world)", flow_pb2.SERVICE_IP: "(service-ip)"}
_OUTCOMES = {v.number: v.name.lower() for v in flow_pb2.ConnectionOutcome.DESCRIPTOR.values}


class FlowKey(NamedTuple):
    """What a record is about, at the grain the views aggregate on."""

    node: str
    src_ns: str
    src_pod: str
    src_workload: str   # workload name (the pod's name when it has none), "" for non-pods
    dst_ns: str
    dst_pod: str
    dst_workload: str
    service: str        # "namespace/name" of the Service the flow went to, or ""
    backend: str        # "namespace/pod" (or "ip:port") of the backend that answered, or ""
    port: int           # the server port: destination port of a request, source port of a reply
    proto: str          # tcp, udp, sctp, icmpv4, icmpv6, or "" (not IP / fragment)
    verdict: str        # forwarded, dropped, unknown
    outcome: str        # established, refused, unanswered ... ("outcome_unknown" when unknown)
    no_endpoints: bool  # the Service had no ready backend
    local_is_src: bool  # the pod at the observation point is the source (else the destination)
    # NetworkPolicy (agent.wire.flowtext's words): the verdict, what was seen of it, the
    # policies it names ("ns/name"), those that deny it, and the rules that allowed it
    # ("ns/name egress[0]").
    policy: str = "unknown"
    policy_finding: str = ""
    policies: tuple[str, ...] = ()
    policies_denying: tuple[str, ...] = ()
    policy_rules: tuple[str, ...] = ()


def endpoint_label(ns: str, pod: str, kind_label: str = "") -> str:
    """How an endpoint is named in pivots: "ns/pod", or "(world)" and friends."""
    if pod:
        return pod_name(ns, pod)
    return kind_label or "(unknown)"


def _is_pod(ep: flow_pb2.Endpoint) -> bool:
    return ep.kind == flow_pb2.POD or bool(ep.pod_name)


def flow_key(flow: flow_pb2.Flow) -> FlowKey:
    """Extract the FlowKey of one record (pure; safe in any thread). This runs for every
    record (20,000/s), so it reads each sub-message once and skips HasField: an unset
    sub-message reads as empty strings and zeros, which is what the key wants anyway."""
    src, dst = flow.source, flow.destination
    l4 = flow.l4
    proto = l4.WhichOneof("protocol") or ""
    port = 0
    if proto == "tcp" or proto == "udp" or proto == "sctp":
        ports = getattr(l4, proto)
        port = ports.source_port if flow.is_reply else ports.destination_port
    service = flow.service
    svc_name = service.name
    svc = ""
    no_endpoints = False
    if svc_name:
        svc_ns = service.namespace
        svc = f"{svc_ns}/{svc_name}" if svc_ns else svc_name
        no_endpoints = service.no_endpoints
    b = flow.backend
    backend = b.pod_name
    if backend:
        b_ns = b.namespace
        if b_ns:
            backend = f"{b_ns}/{backend}"
    else:
        b_ip = b.ip
        if b_ip:
            b_port = b.port
            backend = f"{b_ip}:{b_port}" if b_port else b_ip
    src_name, dst_name = src.pod_name, dst.pod_name
    src_pod = src_name or _KINDS.get(src.kind, "")
    dst_pod = dst_name or _KINDS.get(dst.kind, "")
    src_wl = (src.workload.name or src_name) if src_name else ""
    dst_wl = (dst.workload.name or dst_name) if dst_name else ""
    direction = flow.traffic_direction
    if direction == flow_pb2.TO_POD:
        local_is_src = False
    elif direction == flow_pb2.FROM_POD:
        local_is_src = True
    else:
        local_is_src = _is_pod(src) or not _is_pod(dst)
    key = FlowKey(flow.node_name, src.namespace, src_pod, src_wl, dst.namespace, dst_pod,
                  dst_wl, svc, backend, port, proto, _VERDICTS.get(flow.verdict, "unknown"),
                  _OUTCOMES.get(flow.outcome, "outcome_unknown"), no_endpoints, local_is_src)
    if flow.HasField("policy"):
        key = key._replace(policy=policy_verdict_word(flow),
                           policy_finding=policy_finding_word(flow),
                           policies=policy_names(flow), policies_denying=denying_policies(flow),
                           policy_rules=policy_rules(flow))
    return key


def pivot_label(key: FlowKey, pivot: str) -> str:
    """The row a key is counted in, for one pivot of the Top view."""
    local_src = key.local_is_src
    if pivot == "namespace":
        ns = key.src_ns if local_src else key.dst_ns
        return ns or (key.src_pod if local_src else key.dst_pod) or "(none)"
    if pivot == "workload":
        ns, wl = (key.src_ns, key.src_workload) if local_src else (key.dst_ns, key.dst_workload)
        pod = key.src_pod if local_src else key.dst_pod
        return endpoint_label(ns, wl, pod)
    if pivot == "pod":
        return endpoint_label(key.src_ns if local_src else key.dst_ns,
                              key.src_pod if local_src else key.dst_pod)
    if pivot == "service":
        return key.service or "(no service)"
    if pivot == "port":
        return f"{key.proto or 'ip'}/{key.port}" if key.port else (key.proto or "(no port)")
    if pivot == "verdict":
        return key.verdict
    if pivot == "node":
        return key.node or "(unknown)"
    raise ValueError(f"pivot {pivot!r}: use one of {', '.join(PIVOTS)}")
