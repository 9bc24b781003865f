"""DNS state across packets: latency, flow.dns on port-53 flows, looked-up names on later
flows, malformed messages counted (no root needed)."""

from __future__ import annotations

from agent.annotate.dnstrack import DnsPacket
from agent.annotate.stage import Annotator
from agent.config import AnnotateSection
from agent.stats import AgentStats
from podflow_api.v1 import flow_pb2
from tests import batches
from tests.annotate.dnswire import a, answer, header, name, query, question, rr

POD, DNS_SERVER, CLUSTER_IP = "10.244.1.2", "10.96.0.10", "10.96.0.12"


def pkt(src, dst, sport, dport, payload, ts_ns, proto="udp"):
    return DnsPacket(ifindex=5, proto=proto, src_ip=src, dst_ip=dst, src_port=sport, dst_port=dport,
                     payload=payload, payload_len=len(payload), ts_ns=ts_ns)


def flow(src, dst, sport, dport, proto="udp"):
    f = flow_pb2.Flow(packets=1, bytes=80)
    f.interface.index = 5
    f.ip.source, f.ip.destination = src, dst
    l4 = getattr(f.l4, proto)
    l4.source_port, l4.destination_port = sport, dport
    return f


def test_query_answer_latency_and_names():
    ann = Annotator(AnnotateSection(), AgentStats("n", "v"))
    ann.dns_packet(pkt(POD, DNS_SERVER, 40000, 53, query("cart.shop.svc.cluster.local", msg_id=9), 1_000))
    ann.dns_packet(pkt(DNS_SERVER, POD, 53, 40000,
                       answer("cart.shop.svc.cluster.local", [CLUSTER_IP], msg_id=9, ttl=5), 251_000))
    q, r = flow(POD, DNS_SERVER, 40000, 53), flow(DNS_SERVER, POD, 53, 40000)
    later, back = flow(POD, CLUSTER_IP, 41000, 80, "tcp"), flow(CLUSTER_IP, POD, 80, 41000, "tcp")
    batch = [q, r, later, back]
    ann.annotate(batch)
    assert (q.dns.query, list(q.dns.qtypes), q.dns.response, q.dns.id) == \
        ("cart.shop.svc.cluster.local", ["A"], False, 9)
    assert (r.dns.rcode, list(r.dns.ips), r.dns.ttl, r.dns.latency_ns, r.dns.response) == \
        ("NOERROR", [CLUSTER_IP], 5, 250_000, True)
    assert list(later.destination.names) == ["cart.shop.svc.cluster.local"]
    assert list(back.source.names) == ["cart.shop.svc.cluster.local"]


def test_a_batch_gets_dns_names_and_outcomes():
    """The same through a batch of records, as the datapath hands them over: DNS on the
    port-53 records, names per address pair (for enrichment to place), both sides paired."""
    ann = Annotator(AnnotateSection(), AgentStats("n", "v"))
    ann.dns_packet(pkt(POD, DNS_SERVER, 40000, 53, query("cart.shop.svc.cluster.local", msg_id=9), 1_000))
    ann.dns_packet(pkt(DNS_SERVER, POD, 53, 40000,
                       answer("cart.shop.svc.cluster.local", [CLUSTER_IP], msg_id=9, ttl=5), 251_000))
    b = batches.batch(batches.rec(POD, DNS_SERVER, 40000, 53, rev_packets=1, rev_first_ns=batches.T0 + 9),
                      batches.rec(DNS_SERVER, POD, 53, 40000, hook=1, rev_packets=1),
                      batches.rec(POD, CLUSTER_IP, 41000, 80, "tcp", flags="SYN,ACK"))
    ann.annotate_batch(b)
    q, r, later = (b.flow(i) for i in range(3))
    assert (q.dns.query, q.dns.id, r.dns.rcode, list(r.dns.ips)) == \
        ("cart.shop.svc.cluster.local", 9, "NOERROR", [CLUSTER_IP])
    assert not later.HasField("dns")
    assert b.group_names[b.group[2]] == ((), ("cart.shop.svc.cluster.local",))
    assert list(b.outcome) == [flow_pb2.ESTABLISHED, flow_pb2.ESTABLISHED, flow_pb2.IN_PROGRESS]


def test_external_name_cname_chain_names_world_flow():
    ann = Annotator(AnnotateSection(), AgentStats("n", "v"))
    wire = (header(3, True, an=2) + question("ext.shop.svc.cluster.local")
            + rr(b"\xc0\x0c", 5, 60, name("api.example.com"))
            + a(name("api.example.com"), "203.0.113.7"))
    ann.dns_packet(pkt(DNS_SERVER, POD, 53, 40001, wire, 5))
    world = flow(POD, "203.0.113.7", 41001, 443, "tcp")
    ann.annotate([world])
    assert list(world.destination.names) == ["ext.shop.svc.cluster.local", "api.example.com"]


def test_nxdomain_and_other_pods_do_not_share_names():
    ann = Annotator(AnnotateSection(), AgentStats("n", "v"))
    ann.dns_packet(pkt(DNS_SERVER, POD, 53, 40002, answer("nope.shop", rcode=3, msg_id=4), 5))
    ann.dns_packet(pkt(DNS_SERVER, POD, 53, 40003, answer("cart.shop", [CLUSTER_IP], msg_id=5), 6))
    r = flow(DNS_SERVER, POD, 53, 40002)
    other_pod = flow("10.244.1.99", CLUSTER_IP, 41002, 80, "tcp")
    ann.annotate([r, other_pod])
    assert (r.dns.query, r.dns.rcode, list(r.dns.ips)) == ("nope.shop", "NXDOMAIN", [])
    assert list(other_pod.destination.names) == []


def test_malformed_counted_in_datapath_errors():
    stats = AgentStats("n", "v")
    ann = Annotator(AnnotateSection(), stats)
    for payload in (b"", b"\xff" * 5, header() + b"\xc0\x0c\x00\x01\x00\x01"):
        ann.dns_packet(pkt(POD, DNS_SERVER, 40000, 53, payload, 1))
    stats.set_datapath_errors({"trunc_eth": 1})  # kernel counters replace only their own
    assert stats.snapshot_datapath_errors() == {"trunc_eth": 1, "dns_malformed": 3}
    assert ann.dns.messages == 0


def test_a_and_aaaa_from_one_socket_merge_into_one_record():
    ann = Annotator(AnnotateSection(), AgentStats("n", "v"))
    ann.dns_packet(pkt(POD, DNS_SERVER, 40010, 53, query("web.shop", qtype=1, msg_id=1), 10))
    ann.dns_packet(pkt(POD, DNS_SERVER, 40010, 53, query("web.shop", qtype=28, msg_id=2), 11))
    ann.dns_packet(pkt(DNS_SERVER, POD, 53, 40010, answer("web.shop", ["10.96.0.30"], msg_id=1, ttl=30), 20))
    ann.dns_packet(pkt(DNS_SERVER, POD, 53, 40010,
                       answer("web.shop", ["fd00::30"], qtype=28, msg_id=2, ttl=10), 30))
    q, r = flow(POD, DNS_SERVER, 40010, 53), flow(DNS_SERVER, POD, 53, 40010)
    ann.annotate([q, r])
    assert list(q.dns.qtypes) == ["A", "AAAA"]
    assert (list(r.dns.qtypes), list(r.dns.ips), r.dns.ttl, r.dns.rcode) == \
        (["A", "AAAA"], ["10.96.0.30", "fd00::30"], 10, "NOERROR")
    assert r.dns.latency_ns == 19  # of the last answer, to its own query
