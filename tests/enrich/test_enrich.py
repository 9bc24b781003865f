"""Enrichment of flow records: endpoints, category, Service, backend and translation.

The conntrack side is the real Conntrack class fed with entries the way its event listener
records them (the netlink path itself is tested against the kernel in test_conntrack.py).
"""

from __future__ import annotations

import pytest

from agent.enrich.conntrack import Conntrack, Entry, Tuple5
from agent.enrich.names import FlowEnricher
from agent.enrich.k8s.state import ClusterState
from tests.enrich import objs
from podflow_api.v1 import flow_pb2

NODE_A, NODE_B, OUTSIDE = "172.18.0.2", "172.18.0.3", "172.18.0.100"
FRONTEND, CART1, CART2, DB0 = "10.244.1.2", "10.244.2.2", "10.244.1.3", "10.244.2.5"
CART_VIP, EMPTY_VIP, WEB_VIP = "10.96.0.12", "10.96.0.20", "10.96.0.30"
LB_IP, INTERNET = "203.0.113.7", "198.51.100.9"


def cluster() -> ClusterState:
    state = ClusterState()
    for item in (
        objs.node("node-a", NODE_A), objs.node("node-b", NODE_B),
        objs.pod("frontend-1", FRONTEND, labels={"app": "frontend"}, node="node-a"),
        objs.pod("cart-1", CART1, labels={"app": "cart"}, node="node-b"),
        objs.pod("cart-2", CART2, labels={"app": "cart"}, node="node-a"),
        objs.pod("db-0", DB0, labels={"app": "db"}, node="node-b", owner=("StatefulSet", "db")),
        objs.service("cart", CART_VIP),
        objs.endpointslice("cart", [(CART1, "cart-1", True), (CART2, "cart-2", True)]),
        objs.service("web", WEB_VIP, type_="NodePort", node_ports=[30080]),
        objs.endpointslice("web", [(FRONTEND, "frontend-1", True)]),
        objs.service("empty", EMPTY_VIP),
        objs.service("shop-lb", "10.96.0.40", [(443, 8443)], type_="LoadBalancer",
                     node_ports=[31443], external_ips=[LB_IP]),
        objs.endpointslice("shop-lb", [(CART2, "cart-2", True)], ports=[8443]),
        objs.service("db", None, [(5432, 5432)]),
        objs.endpointslice("db", [(DB0, "db-0", True)], ports=[5432]),
    ):
        state.apply(item["kind"], "ADDED", item)
    return state


def conntrack() -> Conntrack:
    ct = Conntrack()
    # frontend -> ClusterIP cart, DNATed to cart-1
    ct._remember(Entry(Tuple5(6, FRONTEND, 40000, CART_VIP, 80), Tuple5(6, CART1, 8080, FRONTEND, 40000)), 0)
    # outside -> node-a:30080, DNATed to frontend and masqueraded to node-a
    ct._remember(Entry(Tuple5(6, OUTSIDE, 50000, NODE_A, 30080), Tuple5(6, FRONTEND, 8080, NODE_A, 61000)), 0)
    # an internet client -> the LoadBalancer IP, DNATed to cart-2 (no SNAT: externalTrafficPolicy Local)
    ct._remember(Entry(Tuple5(6, INTERNET, 50001, LB_IP, 443), Tuple5(6, CART2, 8443, INTERNET, 50001)), 0)
    return ct


def flow(src, sport, dst, dport, proto="tcp") -> flow_pb2.Flow:
    f = flow_pb2.Flow()
    f.ip.source, f.ip.destination = src, dst
    if proto == "icmp":
        f.l4.icmpv4.type = 8
    else:
        l4 = getattr(f.l4, proto)
        l4.source_port, l4.destination_port = sport, dport
    return f


CART_TRANSLATION = (CART_VIP, 80, CART1, 8080)
CASES = [
    # id, record, category, (service, type, ip, port), backend pod, (src pod, dst pod), translation
    ("client-veth-to-clusterip", flow(FRONTEND, 40000, CART_VIP, 80), flow_pb2.POD_TO_SERVICE,
     ("cart", "ClusterIP", CART_VIP, 80), "cart-1", ("frontend-1", "cart-1"), CART_TRANSLATION),
    ("backend-veth-after-dnat", flow(FRONTEND, 40000, CART1, 8080), flow_pb2.POD_TO_SERVICE,
     ("cart", "ClusterIP", CART_VIP, 80), "cart-1", ("frontend-1", "cart-1"), CART_TRANSLATION),
    ("backend-veth-reply", flow(CART1, 8080, FRONTEND, 40000), flow_pb2.POD_TO_SERVICE,
     ("cart", "ClusterIP", CART_VIP, 80), "cart-1", ("cart-1", "frontend-1"), CART_TRANSLATION),
    ("client-veth-reply-from-clusterip", flow(CART_VIP, 80, FRONTEND, 40000), flow_pb2.POD_TO_SERVICE,
     ("cart", "ClusterIP", CART_VIP, 80), "cart-1", ("cart-1", "frontend-1"), CART_TRANSLATION),
    ("nodeport-from-outside-at-backend", flow(NODE_A, 61000, FRONTEND, 8080), flow_pb2.OUTSIDE_TO_SERVICE,
     ("web", "NodePort", NODE_A, 30080), "frontend-1", ("", "frontend-1"), (NODE_A, 30080, FRONTEND, 8080)),
    ("nodeport-reply", flow(FRONTEND, 8080, NODE_A, 61000), flow_pb2.OUTSIDE_TO_SERVICE,
     ("web", "NodePort", NODE_A, 30080), "frontend-1", ("frontend-1", ""), (NODE_A, 30080, FRONTEND, 8080)),
    ("loadbalancer-from-internet", flow(INTERNET, 50001, CART2, 8443), flow_pb2.OUTSIDE_TO_SERVICE,
     ("shop-lb", "LoadBalancer", LB_IP, 443), "cart-2", ("", "cart-2"), (LB_IP, 443, CART2, 8443)),
    ("service-without-endpoints", flow(FRONTEND, 40001, EMPTY_VIP, 80), flow_pb2.POD_TO_SERVICE,
     ("empty", "ClusterIP", EMPTY_VIP, 80), "", ("frontend-1", ""), None),
    ("clusterip-without-conntrack-entry", flow(FRONTEND, 40009, CART_VIP, 80), flow_pb2.POD_TO_SERVICE,
     ("cart", "ClusterIP", CART_VIP, 80), "", ("frontend-1", ""), None),
    ("headless", flow(FRONTEND, 40002, DB0, 5432), flow_pb2.POD_TO_SERVICE,
     ("db", "Headless", DB0, 5432), "db-0", ("frontend-1", "db-0"), None),
    ("headless-reply", flow(DB0, 5432, FRONTEND, 40002), flow_pb2.POD_TO_SERVICE,
     ("db", "Headless", DB0, 5432), "db-0", ("db-0", "frontend-1"), None),
    ("pod-to-pod-same-node", flow(FRONTEND, 40003, CART2, 9000), flow_pb2.POD_TO_POD_SAME_NODE,
     None, "", ("frontend-1", "cart-2"), None),
    ("pod-to-pod-cross-node", flow(FRONTEND, 40004, CART1, 9000), flow_pb2.POD_TO_POD_CROSS_NODE,
     None, "", ("frontend-1", "cart-1"), None),
    ("icmp-cross-node", flow(FRONTEND, 0, CART1, 0, "icmp"), flow_pb2.POD_TO_POD_CROSS_NODE,
     None, "", ("frontend-1", "cart-1"), None),
    ("pod-to-world", flow(FRONTEND, 40005, "1.1.1.1", 443), flow_pb2.POD_TO_WORLD,
     None, "", ("frontend-1", ""), None),
    ("world-reply-to-pod", flow("1.1.1.1", 443, FRONTEND, 40005), flow_pb2.POD_TO_WORLD,
     None, "", ("", "frontend-1"), None),
    ("host-to-pod", flow(NODE_A, 33333, FRONTEND, 8080), flow_pb2.HOST_TO_POD,
     None, "", ("", "frontend-1"), None),
    ("node-to-world", flow(NODE_A, 33333, "1.1.1.1", 53, "udp"), flow_pb2.OTHER,
     None, "", ("", ""), None),
]


@pytest.mark.parametrize("record,category,service,backend,pods,translation",
                         [pytest.param(*c[1:], id=c[0]) for c in CASES])
def test_enrich(record, category, service, backend, pods, translation):
    FlowEnricher(cluster(), conntrack()).enrich([record])
    assert record.category == category
    if service is None:
        assert not record.HasField("service")
    else:
        s = record.service
        assert (s.name, s.type, s.ip, s.port) == service
        assert s.namespace == "shop"
    assert record.backend.pod_name == backend
    if backend:
        assert record.backend.namespace == "shop"
        assert record.backend.node_name
    assert (record.source.pod_name, record.destination.pod_name) == pods
    if translation is None:
        assert not record.HasField("translation")
    else:
        t = record.translation
        assert (t.original_ip, t.original_port, t.translated_ip, t.translated_port) == translation


# Records whose packets answer the connection: the Service (conntrack or the Service address)
# says which side the server is; for other connections it is guessed from the ports (a
# well-known or non-ephemeral port answering an ephemeral one: names.guess_reply).
REPLIES = {"backend-veth-reply", "client-veth-reply-from-clusterip", "nodeport-reply",
           "headless-reply", "world-reply-to-pod"}


@pytest.mark.parametrize("record,name", [pytest.param(c[1], c[0], id=c[0]) for c in CASES])
def test_is_reply_is_set_where_known_or_guessed(record, name):
    record = flow_pb2.Flow.FromString(record.SerializeToString())
    enricher = FlowEnricher(cluster(), conntrack())
    enricher.enrich([record])
    assert record.is_reply == (name in REPLIES)
    again = flow_pb2.Flow.FromString(record.SerializeToString())
    again.ClearField("is_reply")
    enricher.enrich([again])  # the cached names carry it too
    assert again.is_reply == record.is_reply


def test_without_metadata_is_reply_comes_from_conntrack():
    reply, request = flow(CART1, 8080, FRONTEND, 40000), flow(FRONTEND, 40000, CART_VIP, 80)
    FlowEnricher(None, conntrack()).enrich([reply, request])
    assert reply.is_reply and not request.is_reply


def test_no_endpoints_is_flagged_and_names_the_service_address():
    record = flow(FRONTEND, 40001, EMPTY_VIP, 80)
    FlowEnricher(cluster(), conntrack()).enrich([record])
    assert record.service.no_endpoints
    assert record.destination.kind == flow_pb2.SERVICE_IP
    assert record.destination.namespace == "shop"


def test_backend_names_its_node():
    record = flow(FRONTEND, 40000, CART_VIP, 80)
    FlowEnricher(cluster(), conntrack()).enrich([record])
    assert (record.backend.ip, record.backend.port, record.backend.node_name) == (CART1, 8080, "node-b")


def test_nodeport_source_is_the_node_and_client_category():
    record = flow(NODE_A, 61000, FRONTEND, 8080)
    FlowEnricher(cluster(), conntrack()).enrich([record])
    assert record.source.kind == flow_pb2.NODE and record.source.node_name == "node-a"


def test_without_metadata_only_translation_is_filled():
    record = flow(FRONTEND, 40000, CART1, 8080)
    FlowEnricher(None, conntrack()).enrich([record])
    assert record.translation.original_ip == CART_VIP
    assert record.translation.translated_port == 8080
    assert not record.HasField("service") and not record.HasField("source")
    assert record.category == flow_pb2.CATEGORY_UNKNOWN


def test_dns_names_set_earlier_are_kept():
    record = flow(FRONTEND, 40000, CART_VIP, 80)
    record.destination.names.append("cart.shop.svc.cluster.local")
    FlowEnricher(cluster(), conntrack()).enrich([record])
    assert list(record.destination.names) == ["cart.shop.svc.cluster.local"]
    assert record.destination.pod_name == "cart-1"


def test_destroyed_connection_is_remembered_for_the_grace_period():
    ct = Conntrack(event_grace_s=30)
    entry = Entry(Tuple5(17, FRONTEND, 5353, CART_VIP, 53), Tuple5(17, CART1, 53, FRONTEND, 5353))
    ct._remember(entry, 0)
    ct._remember(entry, 1)  # DESTROY long ago: expired
    ct._sweep(10)
    assert ct.lookup(Tuple5(17, FRONTEND, 5353, CART_VIP, 53)) is None


def test_non_ip_record_is_other():
    record = flow_pb2.Flow()
    FlowEnricher(cluster(), None).enrich([record])
    assert record.category == flow_pb2.OTHER


def test_repeated_records_follow_cluster_and_conntrack_changes():
    state, ct = cluster(), Conntrack()
    enricher = FlowEnricher(state, ct)
    first = flow(FRONTEND, 41000, CART_VIP, 80)
    enricher.enrich([first])
    assert first.service.name == "cart" and not first.HasField("backend")
    # The conntrack entry shows up (its NEW event): the next record names the backend.
    ct._remember(Entry(Tuple5(6, FRONTEND, 41000, CART_VIP, 80), Tuple5(6, CART2, 8080, FRONTEND, 41000)), 0)
    second = flow(FRONTEND, 41000, CART_VIP, 80)
    enricher.enrich([second])
    assert second.backend.pod_name == "cart-2"
    # The client is relabelled: the next record carries the new labels.
    state.apply("Pod", "MODIFIED", objs.pod("frontend-1", FRONTEND, labels={"app": "frontend", "v": "2"}))
    third = flow(FRONTEND, 41000, CART_VIP, 80)
    enricher.enrich([third])
    assert "v=2" in third.source.labels and third.backend.pod_name == "cart-2"
    # Unchanged: the same names again, nothing appended twice.
    fourth = flow(FRONTEND, 41000, CART_VIP, 80)
    enricher.enrich([fourth])
    assert fourth == third


@pytest.mark.parametrize("orig,reply", [
    pytest.param(Tuple5(6, "10.244.1.2", 40000, "10.96.0.12", 80), Tuple5(6, "10.244.2.2", 8080, "10.244.1.2", 40000), id="ipv4-tcp"),
    pytest.param(Tuple5(17, "fd00::2", 5353, "fd00:96::a", 53), Tuple5(17, "fd00:1::7", 53, "fd00::2", 5353), id="ipv6-udp"),
    pytest.param(Tuple5(132, "10.0.0.1", 1, "10.0.0.2", 2), Tuple5(132, "10.0.0.2", 2, "10.0.0.1", 1), id="sctp-no-nat"),
])
def test_ctnetlink_tuples_round_trip(orig, reply):
    """What the agent sends (CTA_TUPLE_*) is what it parses back from the kernel's answers."""
    import socket

    from agent.enrich.conntrack import CTA_TUPLE_ORIG, CTA_TUPLE_REPLY, _attr, _encode_tuple, decode_entry

    family = socket.AF_INET6 if ":" in orig.src else socket.AF_INET
    data = (_attr(CTA_TUPLE_ORIG, _encode_tuple(orig, family), nested=True)
            + _attr(CTA_TUPLE_REPLY, _encode_tuple(reply, family), nested=True))
    entry = decode_entry(data, 0, len(data))
    assert (entry.orig, entry.reply) == (orig, reply)
    assert entry.dnat == ((reply.src, reply.sport) != (orig.dst, orig.dport))
