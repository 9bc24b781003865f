"""Service translations read from a real conntrack table over netlink: real connections
through kube-proxy-shaped DNAT rules in a lab node, attributed to the backend that answered
(the server says its name), by lookups and by events, also after the entry is gone."""

from __future__ import annotations

import os
import time

import pytest

from agent.enrich.conntrack import CTA_TUPLE_ORIG, Conntrack, Tuple5
from agent.enrich.names import FlowEnricher
from agent.enrich.k8s.state import ClusterState
from agent.lab import Lab
from podflow_api.v1 import flow_pb2

pytestmark = pytest.mark.root

VIP = "10.96.0.12"


@pytest.fixture(scope="module")
def lab():
    with Lab(f"k8sct{os.getpid() % 10000}") as lab:
        node = lab.add_node("node-a", kind="bridge", pod_cidr="10.244.1.0/24")
        client = node.add_pod("shop", "client-1", labels={"app": "client"})
        servers = [node.add_pod("shop", f"cart-{i}", labels={"app": "cart"}) for i in (1, 2)]
        for server in servers:
            server.serve(8080)
            server.serve(5353, protocol="udp")
        lab.add_service("shop", "cart", cluster_ip=VIP, port=80,
                        backends=[(s, 8080) for s in servers])
        lab.add_service("shop", "cart-udp", cluster_ip="10.96.0.13", port=53, protocol="udp",
                        backends=[(s, 5353) for s in servers])
        yield lab


def connect(pod, ip: str, port: int, proto: str = "tcp", hold_s: float = 0.0):
    """(client port, server name, process holding the connection `hold_s` longer)."""
    reply, proc = pod.request_held(ip, port, proto, payload="hello", hold_s=hold_s)
    assert not reply.error, f"the request failed: {reply.error}"
    return reply.local_port, reply.name, proc


@pytest.fixture
def conntrack(lab):
    ct = Conntrack(netns=f"/run/netns/{lab.node('node-a').netns}")
    ct.start()
    yield ct
    ct.stop()


def test_events_name_the_backend_that_answered(lab, conntrack):
    client = lab.pod("shop", "client-1")
    answered: set[str] = set()
    attempts = 0
    while answered != {"cart-1", "cart-2"} and attempts < 30:  # random choice: P(fail) = 2^-29
        attempts += 1
        port, name, proc = connect(client, VIP, 80)
        proc.wait()
        match = conntrack.lookup(Tuple5(6, client.ip, port, VIP, 80), first_seen=time.time_ns())
        assert match is not None
        assert match.entry.reply.src == lab.pod("shop", name).ip
        assert match.entry.reply.sport == 8080
        answered.add(name)
    assert answered == {"cart-1", "cart-2"}, "30 connections should reach both backends"


def _orientations(client_ip, port, vip, vport, backend_ip, bport, proto=6):
    """The four records of one Service connection, and whether each is a reply."""
    return [
        ("client-veth-request", Tuple5(proto, client_ip, port, vip, vport), False),
        ("backend-veth-request", Tuple5(proto, client_ip, port, backend_ip, bport), False),
        ("backend-veth-reply", Tuple5(proto, backend_ip, bport, client_ip, port), True),
        ("client-veth-reply", Tuple5(proto, vip, vport, client_ip, port), True),
    ]


@pytest.mark.parametrize("proto,vip,vport,bport", [
    pytest.param("tcp", VIP, 80, 8080, id="tcp"),
    pytest.param("udp", "10.96.0.13", 53, 5353, id="udp"),
])
def test_lookups_of_a_connection_opened_before_the_reader(lab, proto, vip, vport, bport):
    client = lab.pod("shop", "client-1")
    port, name, proc = connect(client, vip, vport, proto, hold_s=5)
    try:
        # Started after the connection: no events for it, only netlink lookups can tell.
        ct = Conntrack(netns=f"/run/netns/{lab.node('node-a').netns}")
        ct.start()
        try:
            backend_ip = lab.pod("shop", name).ip
            num = 6 if proto == "tcp" else 17
            # The datapath may first see such a connection long after the agent started:
            # a record without the opening SYN must still be looked up.
            later_ns = time.time_ns() + 5_000_000_000
            for label, t, is_reply in _orientations(client.ip, port, vip, vport, backend_ip, bport, num):
                match = ct.lookup(t, first_seen=later_ns)
                assert match is not None, label
                assert match.is_reply == is_reply, label
                assert (match.entry.orig.dst, match.entry.orig.dport) == (vip, vport), label
                assert (match.entry.reply.src, match.entry.reply.sport) == (backend_ip, bport), label
            assert ct.lookups >= 4
            # A connection that never existed, and one without DNAT, give no translation.
            assert ct.lookup(Tuple5(num, client.ip, 1, vip, vport)) is None
        finally:
            ct.stop()
    finally:
        proc.kill()
        proc.wait()


def test_connection_gone_from_the_kernel_is_still_attributed(lab, conntrack):
    client = lab.pod("shop", "client-1")
    node = lab.node("node-a")
    port, name, proc = connect(client, VIP, 80)
    proc.wait()
    node.run(["conntrack", "-D", "-p", "tcp", "--orig-src", client.ip, "--orig-port-src", str(port)],
             capture_output=True)
    t = Tuple5(6, client.ip, port, VIP, 80)
    assert conntrack.get(CTA_TUPLE_ORIG, t) is None, "entry should be gone from the kernel"
    time.sleep(0.1)
    match = conntrack.lookup(t, first_seen=time.time_ns())
    assert match is not None and match.entry.reply.src == lab.pod("shop", name).ip


def test_enrich_records_of_real_connections(lab, conntrack):
    state = ClusterState()
    for item in lab.metadata()["items"]:
        if item["kind"] in ("Pod", "Service", "EndpointSlice", "Node", "ReplicaSet"):
            state.apply(item["kind"], "ADDED", item)
    enricher = FlowEnricher(state, conntrack)
    client = lab.pod("shop", "client-1")
    port, name, proc = connect(client, VIP, 80, hold_s=3)
    try:
        backend = lab.pod("shop", name)
        records = []
        for _label, t, _is_reply in _orientations(client.ip, port, VIP, 80, backend.ip, 8080):
            f = flow_pb2.Flow()
            f.ip.source, f.ip.destination = t.src, t.dst
            f.l4.tcp.source_port, f.l4.tcp.destination_port = t.sport, t.dport
            records.append(f)
        enricher.enrich(records)
        for f in records:
            assert (f.service.namespace, f.service.name, f.service.ip, f.service.port) == ("shop", "cart", VIP, 80)
            assert (f.backend.pod_name, f.backend.ip, f.backend.port) == (name, backend.ip, 8080)
            assert f.category == flow_pb2.POD_TO_SERVICE
            assert (f.translation.original_ip, f.translation.translated_ip) == (VIP, backend.ip)
            assert {f.source.pod_name, f.destination.pod_name} == {"client-1", name}
    finally:
        proc.kill()
        proc.wait()
