"""Policy verdicts joined with what was seen, and flow records read for policy: the
connection a record belongs to, what it proves, and connection facts from records."""

from __future__ import annotations

import pytest

from agent.policy.verdict import Connection, ConnectionVerdict, DirectionVerdict, Verdict
from agent.policy.facts import NODE, POD, WORLD, facts_from_flows
from agent.policy.finding import Enforcement, Seen, join
from agent.policy.flows import connection_of, seen_of
from podflow_api.v1 import flow_pb2

DENIED = ConnectionVerdict(DirectionVerdict(Verdict.NOT_ISOLATED),
                           DirectionVerdict(Verdict.DENIED, ("data/db-in",)))
ALLOWED = ConnectionVerdict(DirectionVerdict(Verdict.ALLOWED, ("shop/out",)),
                            DirectionVerdict(Verdict.NOT_ISOLATED))


@pytest.mark.parametrize("verdict, seen, reason, want, policies", [
    pytest.param(DENIED, Seen.DROPPED, "NETFILTER_DROP", Enforcement.ENFORCED, ("data/db-in",),
                 id="denied-and-dropped-is-enforced"),
    pytest.param(DENIED, Seen.DROPPED, "TC_INGRESS", Enforcement.ENFORCED, ("data/db-in",),
                 id="denied-dropped-by-ebpf-cni"),
    pytest.param(DENIED, Seen.DROPPED, "", Enforcement.ENFORCED, ("data/db-in",),
                 id="denied-dropped-no-reason"),
    pytest.param(DENIED, Seen.DELIVERED, "", Enforcement.NOT_ENFORCED, ("data/db-in",),
                 id="denied-but-delivered-is-not-enforced"),
    pytest.param(DENIED, Seen.DROPPED, "NO_SOCKET", Enforcement.DROPPED_OTHERWISE, (),
                 id="denied-but-dropped-for-another-reason"),
    pytest.param(ALLOWED, Seen.DROPPED, "QDISC_DROP", Enforcement.DROPPED_OTHERWISE, (),
                 id="allowed-but-dropped"),
    pytest.param(ALLOWED, Seen.DELIVERED, "", Enforcement.ALLOWED_DELIVERED, (),
                 id="allowed-and-delivered"),
    pytest.param(DENIED, Seen.IN_FLIGHT, "", Enforcement.UNDECIDED, (), id="in-flight"),
])
def test_join(verdict, seen, reason, want, policies):
    finding = join(verdict, seen, reason)
    assert finding.enforcement == want and finding.policies == policies
    if seen == Seen.DROPPED:
        assert finding.drop_reason == reason


def test_denied_icmp_delivered_is_no_finding():
    """NetworkPolicy leaves ICMP undefined: a denied ping that got through proves nothing."""
    assert join(DENIED, Seen.DELIVERED, defined=False).enforcement == Enforcement.UNDECIDED
    assert join(DENIED, Seen.DROPPED, "NETFILTER_DROP", defined=False).enforcement == \
        Enforcement.ENFORCED
    assert join(ALLOWED, Seen.DELIVERED, defined=False).enforcement == \
        Enforcement.ALLOWED_DELIVERED


def test_judge_a_record():
    from agent.policy.evaluate import PolicyEvaluator
    from agent.policy.flows import judge
    from agent.policy.load import load_policies
    from agent.policy.view import PodInfo, StaticCluster
    cluster = StaticCluster(pods={"10.0.1.3": PodInfo("web", "sf", {"app": "sf"}),
                                  "10.0.2.1": PodInfo("shop", "cart", {"app": "cart"})})
    policies = load_policies([{"kind": "NetworkPolicy", "metadata": {"name": "deny",
                                                                     "namespace": "shop"},
                               "spec": {"podSelector": {}}}]).policies
    evaluator = PolicyEvaluator(cluster, policies)
    entering = record("10.0.1.3", 40000, "10.96.0.10", 80, backend=("10.0.2.1", 8080),
                      direction=flow_pb2.TO_POD)
    verdict, finding = judge(evaluator, entering)
    assert verdict.ingress.policies == ("shop/deny",)
    assert finding.enforcement == Enforcement.NOT_ENFORCED
    ping = record("10.0.1.3", 0, "10.0.2.1", 0, "icmpv4", direction=flow_pb2.TO_POD)
    verdict, finding = judge(evaluator, ping)
    assert verdict.denied and finding.enforcement == Enforcement.UNDECIDED
    assert judge(evaluator, flow_pb2.Flow()) is None


def test_summaries():
    assert join(DENIED, Seen.DELIVERED).summary == \
        "denied but delivered: the CNI does not enforce data/db-in"
    assert join(ALLOWED, Seen.DROPPED, "QDISC_DROP").summary == "allowed but dropped (QDISC_DROP)"


def record(src, sport, dst, dport, proto="tcp", *, reply=False, point=flow_pb2.POD_VETH,
           direction=flow_pb2.FROM_POD, verdict=flow_pb2.FORWARDED, reason="", outcome=0,
           backend=None, service=None, ends=None, last_s=1_800_000_000) -> flow_pb2.Flow:
    flow = flow_pb2.Flow(observation_point=point, traffic_direction=direction, verdict=verdict,
                         drop_reason=reason, is_reply=reply, outcome=outcome)
    flow.ip.source, flow.ip.destination = src, dst
    if proto in ("tcp", "udp", "sctp"):
        l4 = getattr(flow.l4, proto)
        l4.source_port, l4.destination_port = sport, dport
    elif proto == "icmpv4":
        flow.l4.icmpv4.type = 8
    if backend:
        flow.backend.ip, flow.backend.port = backend
    if service:
        flow.service.namespace, flow.service.name, flow.service.port = service
    if ends:
        flow.source.CopyFrom(ends[0])
        flow.destination.CopyFrom(ends[1])
    flow.last_seen.seconds = last_s
    return flow


CLIENT_EP = flow_pb2.Endpoint(kind=flow_pb2.POD, namespace="web", pod_name="sf-1",
                              labels=["app=storefront", "pod-template-hash=abc"],
                              workload=flow_pb2.Workload(kind="Deployment", name="storefront"),
                              node_name="node-a")
BACKEND_EP = flow_pb2.Endpoint(kind=flow_pb2.POD, namespace="shop", pod_name="cart-1",
                               labels=["app=cart"], node_name="node-b",
                               workload=flow_pb2.Workload(kind="Deployment", name="cart"))


@pytest.mark.parametrize("flow, want", [
    pytest.param(record("10.0.1.3", 40000, "10.0.2.1", 8080), Connection("10.0.1.3", "10.0.2.1", 8080, "TCP"),
                 id="request"),
    pytest.param(record("10.0.2.1", 8080, "10.0.1.3", 40000, reply=True),
                 Connection("10.0.1.3", "10.0.2.1", 8080, "TCP"), id="reply-turned-around"),
    pytest.param(record("10.0.1.3", 40000, "10.96.0.10", 80, backend=("10.0.2.1", 8080)),
                 Connection("10.0.1.3", "10.0.2.1", 8080, "TCP"), id="service-request-at-client"),
    pytest.param(record("10.96.0.10", 80, "10.0.1.3", 40000, reply=True, backend=("10.0.2.1", 8080)),
                 Connection("10.0.1.3", "10.0.2.1", 8080, "TCP"), id="service-reply-at-client"),
    pytest.param(record("10.0.1.3", 0, "8.8.8.8", 0, "icmpv4"), Connection("10.0.1.3", "8.8.8.8", 0, "ICMP"),
                 id="icmp"),
    pytest.param(record("10.0.1.3", 5000, "10.0.2.1", 53, "udp"),
                 Connection("10.0.1.3", "10.0.2.1", 53, "UDP"), id="udp"),
])
def test_connection_of(flow, want):
    assert connection_of(flow) == want


def test_connection_of_skips_what_has_no_connection():
    assert connection_of(flow_pb2.Flow()) is None
    fragment = record("10.0.1.3", 0, "10.0.2.1", 0)
    fragment.ip.fragment = True
    assert connection_of(fragment) is None


@pytest.mark.parametrize("flow, want", [
    pytest.param(record("a", 1, "b", 2), Seen.IN_FLIGHT, id="leaving-source-veth-proves-nothing"),
    pytest.param(record("a", 1, "b", 2, direction=flow_pb2.TO_POD), Seen.DELIVERED,
                 id="entering-destination-veth"),
    pytest.param(record("a", 1, "b", 2, point=flow_pb2.BRIDGE, direction=flow_pb2.TO_POD),
                 Seen.IN_FLIGHT, id="bridge-proves-nothing"),
    pytest.param(record("b", 2, "a", 1, reply=True, direction=flow_pb2.TO_POD), Seen.IN_FLIGHT,
                 id="bare-reply-may-be-a-reject"),
    pytest.param(record("b", 2, "a", 1, reply=True), Seen.DELIVERED,
                 id="reply-leaving-the-server-pod"),
    pytest.param(record("b", 2, "a", 1, reply=True, point=flow_pb2.BRIDGE), Seen.IN_FLIGHT,
                 id="reply-on-a-bridge-proves-nothing"),
    pytest.param(record("a", 1, "b", 2, outcome=flow_pb2.ESTABLISHED), Seen.DELIVERED,
                 id="established"),
    pytest.param(record("a", 1, "b", 2, outcome=flow_pb2.REFUSED), Seen.IN_FLIGHT,
                 id="refused-may-be-a-reject"),
    pytest.param(record("a", 1, "b", 2, point=flow_pb2.HOST_STACK, verdict=flow_pb2.DROPPED,
                        reason="NETFILTER_DROP"), Seen.DROPPED, id="drop-record"),
])
def test_seen_of(flow, want):
    seen, reason = seen_of(flow)
    assert seen == want
    assert reason == ("NETFILTER_DROP" if want == Seen.DROPPED else "")


def test_facts_from_flows_counts_each_connection_once():
    svc = ("shop", "cart", 80)
    backend = ("10.0.2.1", 8080)
    flows = [
        # One connection seen at the client veth (request + reply) and at the backend veth.
        record("10.0.1.3", 40000, "10.96.0.10", 80, backend=backend, service=svc,
               ends=(CLIENT_EP, BACKEND_EP), last_s=100),
        record("10.96.0.10", 80, "10.0.1.3", 40000, reply=True, backend=backend, service=svc,
               ends=(BACKEND_EP, CLIENT_EP), direction=flow_pb2.TO_POD, last_s=101),
        record("10.0.1.3", 40000, "10.0.2.1", 8080, backend=backend, service=svc,
               ends=(CLIENT_EP, BACKEND_EP), direction=flow_pb2.TO_POD, last_s=102),
        # A second connection of the same shape.
        record("10.0.1.3", 40001, "10.96.0.10", 80, backend=backend, service=svc,
               ends=(CLIENT_EP, BACKEND_EP), last_s=150),
        # To the world, with the names the pod looked the address up as; and from a node.
        record("10.0.1.3", 5555, "93.184.216.34", 443, ends=(
            CLIENT_EP, flow_pb2.Endpoint(kind=flow_pb2.WORLD, names=["api.example.com"])), last_s=90),
        record("192.168.0.1", 3333, "10.0.1.3", 8080, direction=flow_pb2.TO_POD, ends=(
            flow_pb2.Endpoint(kind=flow_pb2.NODE, node_name="node-a"), CLIENT_EP), last_s=80),
    ]
    facts = facts_from_flows(flows)
    assert len(facts) == 3
    service_fact, world_fact, node_fact = facts
    assert service_fact.count == 2 and service_fact.last_seen_s == 150
    assert service_fact.src.ip == "10.0.1.3" and service_fact.src.kind == POD
    assert service_fact.src.labels == (("app", "storefront"), ("pod-template-hash", "abc"))
    assert service_fact.src.workload_key == ("web", "Deployment", "storefront")
    assert service_fact.dst.ip == "10.0.2.1" and service_fact.dst_port == 8080
    assert service_fact.service.ref == "shop/cart" and service_fact.service.port == 80
    assert world_fact.dst.kind == WORLD and world_fact.dst.names == ("api.example.com",)
    assert node_fact.src.kind == NODE and node_fact.src.node == "node-a"
