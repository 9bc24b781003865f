"""The words of a flow (agent.wire.flowtext), the same in `observe`, the TUI, the demo and
the agent's summaries: one case per kind of end, Service, protocol and verdict."""

from __future__ import annotations

import pytest

from agent.wire import flowtext
from podflow_api.v1 import flow_pb2

F = flow_pb2


def ep(kind=F.POD, ns="shop", pod="cart-1", node=""):
    return F.Endpoint(kind=kind, namespace=ns, pod_name=pod, node_name=node)


ENDPOINTS = [
    ("pod with port", ep(), "10.0.0.1", 80, "shop/cart-1:80"),
    ("pod without namespace", ep(ns=""), "10.0.0.1", None, "cart-1"),
    ("world", ep(F.WORLD, "", ""), "1.2.3.4", 443, "1.2.3.4:443 (world)"),
    ("world v6", ep(F.WORLD, "", ""), "2001:db8::1", 443, "[2001:db8::1]:443 (world)"),
    ("node", ep(F.NODE, "", "", "node-a"), "10.1.0.1", None, "10.1.0.1 (node node-a)"),
    ("unknown", F.Endpoint(), "", None, "?"),
]


@pytest.mark.parametrize("endpoint,ip,port,text", [c[1:] for c in ENDPOINTS],
                         ids=[c[0] for c in ENDPOINTS])
def test_endpoint_text(endpoint, ip, port, text):
    assert flowtext.endpoint_text(endpoint, ip, port) == text


def svc_flow(backend=None, no_endpoints=False, name="cart"):
    f = F.Flow()
    f.service.namespace, f.service.name, f.service.port = "shop", name, 80
    f.service.no_endpoints = no_endpoints
    if backend is not None:
        f.backend.CopyFrom(backend)
    return f


SERVICES = [
    ("backend pod", svc_flow(F.Backend(namespace="shop", pod_name="cart-1", port=8080)),
     "shop/cart:80 -> shop/cart-1:8080", "shop/cart -> shop/cart-1"),
    ("backend address", svc_flow(F.Backend(ip="10.0.0.5", port=8080)),
     "shop/cart:80 -> 10.0.0.5:8080", "shop/cart -> 10.0.0.5"),
    ("no endpoints", svc_flow(no_endpoints=True), "shop/cart:80 -> (no endpoints)",
     "shop/cart -> (no endpoints)"),
    ("not resolved yet", svc_flow(), "shop/cart:80", "shop/cart"),
    ("no service", F.Flow(), "", ""),
]


@pytest.mark.parametrize("flow,wide,narrow", [c[1:] for c in SERVICES],
                         ids=[c[0] for c in SERVICES])
def test_service_text(flow, wide, narrow):
    assert flowtext.service_text(flow) == wide
    assert flowtext.service_text(flow, with_ports=False) == narrow


def l4_flow(proto, a=0, b=0, flags=(), src="10.0.0.1", dst="10.0.0.2", fragment=False):
    f = F.Flow()
    f.ip.source, f.ip.destination, f.ip.fragment = src, dst, fragment
    if proto in ("tcp", "udp", "sctp"):
        m = getattr(f.l4, proto)
        m.source_port, m.destination_port = a, b
    elif proto:
        m = getattr(f.l4, proto)
        m.type, m.code = a, b
    for name in flags:
        setattr(f.l4.tcp.flags, name, True)
    return f


PROTOCOLS = [
    # (id, flow, ports_text, flags_text, summary)
    ("tcp", l4_flow("tcp", 40000, 80, ("SYN", "ACK")), "TCP 40000 -> 80", "SYN,ACK",
     "TCP 10.0.0.1:40000 -> 10.0.0.2:80 SYN,ACK"),
    ("udp v6", l4_flow("udp", 5353, 53, src="fd00::1", dst="fd00::2"), "UDP 5353 -> 53", "",
     "UDP [fd00::1]:5353 -> [fd00::2]:53"),
    ("udp fragment", l4_flow("udp", fragment=True), "UDP 0 -> 0", "",
     "UDP 10.0.0.1 -> 10.0.0.2 fragment"),
    ("icmp", l4_flow("icmpv4", 8, 0), "ICMPv4 type 8 code 0", "type 8 code 0",
     "ICMPv4 10.0.0.1 -> 10.0.0.2 type 8 code 0"),
    ("other", l4_flow(None), "IP", "", "IP 10.0.0.1 -> 10.0.0.2"),
]


@pytest.mark.parametrize("flow,ports,flags,summary", [c[1:] for c in PROTOCOLS],
                         ids=[c[0] for c in PROTOCOLS])
def test_protocol_texts_and_summary(flow, ports, flags, summary):
    assert flowtext.ports_text(flow) == ports
    assert flowtext.flags_text(flow) == flags
    assert flowtext.summary(flow) == summary


def test_summary_names_a_protocol_without_a_field():
    assert flowtext.summary(l4_flow(None), "IP proto 47") == "IP proto 47 10.0.0.1 -> 10.0.0.2"


VERDICTS = [
    ("forwarded", F.FORWARDED, "", "FORWARDED"),
    ("dropped with reason", F.DROPPED, "NETFILTER_DROP", "DROPPED (NETFILTER_DROP)"),
    ("dropped", F.DROPPED, "", "DROPPED"),
    ("unknown", F.VERDICT_UNKNOWN, "", ""),
]


@pytest.mark.parametrize("verdict,reason,text", [c[1:] for c in VERDICTS],
                         ids=[c[0] for c in VERDICTS])
def test_verdict_text(verdict, reason, text):
    assert flowtext.verdict_text(F.Flow(verdict=verdict, drop_reason=reason)) == text


@pytest.mark.parametrize("direction,text", [(F.FROM_POD, "from-pod"), (F.TO_POD, "to-pod"),
                                            (F.TRAFFIC_DIRECTION_UNKNOWN, "")])
def test_direction_text(direction, text):
    assert flowtext.direction_text(F.Flow(traffic_direction=direction)) == text


def test_dns_text():
    f = F.Flow()
    assert flowtext.dns_text(f) == ""
    f.dns.query = "api.example.com"
    assert flowtext.dns_text(f) == "DNS api.example.com"
    f.dns.rcode = "NXDOMAIN"
    assert flowtext.dns_text(f) == "DNS api.example.com NXDOMAIN"
