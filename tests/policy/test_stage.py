"""The policy stage in the agent's pipeline: verdicts judged inside enrichment, per record.

A ClusterState fed the way the watch or the metadata file feeds it (NetworkPolicy and
Namespace objects included), the enricher with the stage's judge, and flow records as the
datapath and the annotator hand them over; conntrack is the real Conntrack class fed with
entries as its event listener records them (tests/enrich/test_enrich.py does the same)."""

from __future__ import annotations

import logging

import pytest

from agent.config import PolicySection
from agent.enrich.conntrack import Conntrack, Entry, Tuple5
from agent.enrich.k8s.state import ClusterState
from agent.enrich.names import FlowEnricher
from agent.policy.stage import PolicyStage
from agent.stats import AgentStats
from podflow_api.v1 import flow_pb2 as F
from tests.enrich import objs

NODE_A, NODE_B = "172.18.0.2", "172.18.0.3"
FRONTEND, CART1, DB0, PROBER = "10.244.1.2", "10.244.2.2", "10.244.2.5", "10.244.1.7"
CART_VIP, WORLD = "10.96.0.12", "93.184.216.34"


def policy(name: str, namespace: str, spec: dict) -> dict:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": namespace, "resourceVersion": "7",
                         "managedFields": [{"manager": "kubectl"}]}, "spec": spec}


DB_FROM_BACKEND = policy("db-from-backend", "data", {
    "podSelector": {"matchLabels": {"app": "db"}}, "policyTypes": ["Ingress"],
    "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "shop"}},
                           "podSelector": {"matchLabels": {"tier": "backend"}}}],
                 "ports": [{"port": "pg"}]}]})
CART_FROM_SHOP = policy("cart-from-shop", "shop", {
    "podSelector": {"matchLabels": {"app": "cart"}},
    "ingress": [{"from": [{"podSelector": {}}], "ports": [{"port": 8080}]}]})
MALFORMED = policy("broken", "shop", {
    "podSelector": {"matchLabels": {"app": "cart"}},
    "ingress": [{"ports": [{"port": 8080, "endPort": 80}]}]})


def cluster(policies=(DB_FROM_BACKEND, CART_FROM_SHOP)) -> ClusterState:
    state = ClusterState()
    db = objs.pod("db-0", DB0, namespace="data", labels={"app": "db"}, node="node-b",
                  owner=("StatefulSet", "db"))
    db["spec"]["containers"] = [{"name": "pg", "ports": [{"name": "pg", "containerPort": 5432}]}]
    for item in (
        objs.node("node-a", NODE_A), objs.node("node-b", NODE_B),
        {"kind": "Namespace", "metadata": {"name": "shop", "labels": {"team": "shop"}}},
        {"kind": "Namespace", "metadata": {"name": "data", "labels": {}}},
        objs.pod("frontend-1", FRONTEND, labels={"app": "frontend", "tier": "web"}),
        objs.pod("cart-1", CART1, labels={"app": "cart", "tier": "backend"}, node="node-b"),
        objs.pod("prober-1", PROBER, namespace="monitoring", labels={"app": "prober"}),
        db,
        objs.service("cart", CART_VIP),
        objs.endpointslice("cart", [(CART1, "cart-1", True)]),
    ):
        state.apply(item["kind"], "ADDED", item)
    state.replace("NetworkPolicy", list(policies))
    return state


def conntrack() -> Conntrack:
    ct = Conntrack()
    ct._remember(Entry(Tuple5(6, FRONTEND, 40000, CART_VIP, 80),
                       Tuple5(6, CART1, 8080, FRONTEND, 40000)), 0)
    return ct


def record(src, sport, dst, dport, proto="tcp", *, direction=F.FROM_POD, point=F.POD_VETH,
           verdict=F.FORWARDED, drop_reason="", outcome=F.OUTCOME_UNKNOWN, syn=False):
    f = F.Flow(traffic_direction=direction, observation_point=point, verdict=verdict,
               drop_reason=drop_reason, outcome=outcome)
    f.ip.source, f.ip.destination = src, dst
    l4 = getattr(f.l4, proto)
    l4.source_port, l4.destination_port = sport, dport
    if syn:
        l4.flags.SYN = True
    return f


def pipeline(state: ClusterState, ct=None) -> tuple[FlowEnricher, PolicyStage]:
    stage = PolicyStage.from_config(PolicySection(), state, AgentStats("node-a", "test"))
    stage.start()
    return FlowEnricher(state, ct, judge=stage.judge), stage


def judged(enricher: FlowEnricher, f: F.Flow) -> F.Flow:
    enricher.enrich([f])
    return f


def sides(f: F.Flow) -> tuple:
    p = f.policy
    return ((F.PolicyVerdict.Name(p.egress.verdict), tuple(p.egress.policies)),
            (F.PolicyVerdict.Name(p.ingress.verdict), tuple(p.ingress.policies)),
            F.PolicyEnforcement.Name(p.enforcement))


AL, DE, NI, NA = "POLICY_ALLOWED", "POLICY_DENIED", "POLICY_NOT_ISOLATED", "POLICY_NOT_APPLICABLE"
CASES = [
    # id, record, egress, ingress, finding
    ("denied-leaving-the-source-proves-nothing", record(FRONTEND, 41000, DB0, 5432, syn=True),
     (NI, ()), (DE, ("data/db-from-backend",)), "POLICY_ENFORCEMENT_UNDECIDED"),
    ("denied-and-dropped", record(FRONTEND, 41001, DB0, 5432, point=F.HOST_STACK,
                                  verdict=F.DROPPED, drop_reason="NETFILTER_DROP"),
     (NI, ()), (DE, ("data/db-from-backend",)), "POLICY_ENFORCED"),
    ("denied-but-delivered", record(FRONTEND, 41002, DB0, 5432, direction=F.TO_POD),
     (NI, ()), (DE, ("data/db-from-backend",)), "POLICY_NOT_ENFORCED"),
    ("denied-but-answered", record(FRONTEND, 41003, DB0, 5432, outcome=F.ESTABLISHED),
     (NI, ()), (DE, ("data/db-from-backend",)), "POLICY_NOT_ENFORCED"),
    ("named-port-resolved-on-the-backend", record(CART1, 41004, DB0, 5432, outcome=F.ESTABLISHED),
     (NI, ()), (AL, ("data/db-from-backend",)), "POLICY_ALLOWED_DELIVERED"),
    ("reply-carries-the-requests-verdict", record(DB0, 5432, CART1, 41004, direction=F.TO_POD),
     (NI, ()), (AL, ("data/db-from-backend",)), "POLICY_ENFORCEMENT_UNDECIDED"),
    ("denied-reply-reaching-the-client-may-be-a-reject",
     record(DB0, 5432, FRONTEND, 41002, direction=F.TO_POD),
     (NI, ()), (DE, ("data/db-from-backend",)), "POLICY_ENFORCEMENT_UNDECIDED"),
    ("denied-reply-leaving-the-server-means-delivered", record(DB0, 5432, FRONTEND, 41002),
     (NI, ()), (DE, ("data/db-from-backend",)), "POLICY_NOT_ENFORCED"),
    ("allowed-but-dropped", record(CART1, 41005, DB0, 5432, point=F.HOST_STACK,
                                   verdict=F.DROPPED, drop_reason="NO_SOCKET"),
     (NI, ()), (AL, ("data/db-from-backend",)), "POLICY_DROPPED_OTHERWISE"),
    ("service-judged-on-the-backend-and-target-port", record(FRONTEND, 40000, CART_VIP, 80),
     (NI, ()), (AL, ("shop/cart-from-shop",)), "POLICY_ENFORCEMENT_UNDECIDED"),
    ("other-namespace-denied", record(PROBER, 41006, CART1, 8080, direction=F.TO_POD),
     (NI, ()), (DE, ("shop/cart-from-shop",)), "POLICY_NOT_ENFORCED"),
    ("world-end-not-applicable", record(FRONTEND, 41007, WORLD, 443),
     (NI, ()), (NA, ()), "POLICY_ENFORCEMENT_UNDECIDED"),
    ("own-node-always-allowed", record(NODE_B, 41008, DB0, 5432, direction=F.TO_POD),
     (NA, ()), (AL, ()), "POLICY_ALLOWED_DELIVERED"),
]


@pytest.mark.parametrize("f,egress,ingress,finding", [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_records_carry_the_verdict_and_what_they_show(f, egress, ingress, finding):
    enricher, _ = pipeline(cluster(), conntrack())
    assert sides(judged(enricher, f)) == (egress, ingress, finding)


def test_every_record_of_a_connection_gets_the_cached_verdict_and_its_own_finding():
    enricher, _ = pipeline(cluster())
    first = judged(enricher, record(FRONTEND, 42000, DB0, 5432, syn=True))
    again = judged(enricher, record(FRONTEND, 42000, DB0, 5432, direction=F.TO_POD))
    assert sides(first)[:2] == sides(again)[:2]
    assert sides(first)[2] == "POLICY_ENFORCEMENT_UNDECIDED"
    assert sides(again)[2] == "POLICY_NOT_ENFORCED"


def test_a_reply_is_marked_as_one():
    enricher, _ = pipeline(cluster())
    reply = judged(enricher, record(DB0, 5432, CART1, 42001))
    assert reply.is_reply
    assert not judged(enricher, record(CART1, 42001, DB0, 5432)).is_reply


def test_a_policy_change_reaches_a_cached_connection():
    state = cluster()
    enricher, _ = pipeline(state)
    assert sides(judged(enricher, record(FRONTEND, 42002, DB0, 5432)))[1][0] == DE
    allow_all = policy("db-from-backend", "data", {"podSelector": {"matchLabels": {"app": "db"}},
                                                   "ingress": [{}]})
    state.apply("NetworkPolicy", "MODIFIED", allow_all)
    assert sides(judged(enricher, record(FRONTEND, 42002, DB0, 5432)))[1][0] == AL
    state.apply("NetworkPolicy", "DELETED", allow_all)
    state.apply("NetworkPolicy", "DELETED", CART_FROM_SHOP)
    assert sides(judged(enricher, record(FRONTEND, 42002, DB0, 5432)))[1][0] == NI


def test_namespace_labels_changing_reach_the_verdict():
    state = cluster()
    enricher, _ = pipeline(state)
    assert sides(judged(enricher, record(CART1, 42003, DB0, 5432)))[1][0] == AL
    state.apply("Namespace", "MODIFIED", {"kind": "Namespace",
                                          "metadata": {"name": "shop", "labels": {}}})
    assert sides(judged(enricher, record(CART1, 42003, DB0, 5432)))[1][0] == DE


def test_no_verdict_before_policies_are_listed():
    state = cluster()
    fresh = ClusterState()
    for kind in ("Node", "Namespace", "Pod"):
        fresh.replace(kind, [])
    enricher, stage = pipeline(fresh)
    f = judged(enricher, record(FRONTEND, 42004, DB0, 5432))
    assert not f.HasField("policy")
    fresh.replace("NetworkPolicy", [])
    assert sides(judged(enricher, record(FRONTEND, 42004, DB0, 5432)))[:2] == ((NA, ()), (NA, ()))
    del state, stage


def test_a_malformed_policy_is_named_with_its_field_and_the_rest_evaluated(caplog):
    caplog.set_level(logging.WARNING, logger="podflow.policy")
    enricher, stage = pipeline(cluster((DB_FROM_BACKEND, CART_FROM_SHOP, MALFORMED)))
    message = stage.feed.problems[("shop", "broken")]
    assert message.startswith("NetworkPolicy shop/broken: spec.ingress[0].ports[0].endPort: ")
    assert "greater than or equal to port 8080" in message
    assert "shop/broken" in caplog.text and "spec.ingress[0].ports[0].endPort" in caplog.text
    assert stage.ready_info()["policies"] == 2
    assert sides(judged(enricher, record(FRONTEND, 42005, DB0, 5432)))[1][0] == DE
    # Fixed later: evaluated, and no longer a problem.
    fixed = policy("broken", "shop", {"podSelector": {"matchLabels": {"app": "x"}},
                                      "ingress": [{}]})
    enricher._state.apply("NetworkPolicy", "MODIFIED", fixed)
    assert ("shop", "broken") not in stage.feed.problems
    assert stage.ready_info()["policies"] == 3


def test_unknown_fields_from_a_newer_api_server_are_not_fatal():
    newer = policy("newer", "data", {"podSelector": {"matchLabels": {"app": "db"}},
                                     "policyTypes": ["Ingress"], "someFutureField": True})
    enricher, stage = pipeline(cluster((newer,)))
    assert not stage.feed.problems
    assert sides(judged(enricher, record(CART1, 42006, DB0, 5432)))[1] == (DE, ("data/newer",))


def test_off_without_metadata_or_when_asked():
    assert PolicyStage.from_config(PolicySection(), None, AgentStats("n", "t")) is None
    assert PolicyStage.from_config(PolicySection(enabled=False), ClusterState(),
                                   AgentStats("n", "t")) is None


def test_the_judges_specialized_findings_say_what_seen_in_and_enforcement_of_say():
    """agent/policy/judge.py specializes flows.seen_in + finding.enforcement_of per case for
    speed; every case, on records of every kind, must give their answer."""
    from agent.policy.finding import enforcement_of
    from agent.policy.flows import seen_in
    from agent.policy.judge import _FINDERS

    records = []
    for direction in (F.FROM_POD, F.TO_POD):
        for point in (F.POD_VETH, F.BRIDGE, F.HOST_STACK):
            for outcome in (F.OUTCOME_UNKNOWN, F.ESTABLISHED, F.REFUSED, F.RESET, F.UNANSWERED):
                records.append(record("10.0.0.1", 1, "10.0.0.2", 2, direction=direction,
                                      point=point, outcome=outcome))
    for reason in ("NETFILTER_DROP", "NO_SOCKET", "", "OVS_DROP_LAST_ACTION", "TC_INGRESS"):
        records.append(record("10.0.0.1", 1, "10.0.0.2", 2, point=F.HOST_STACK,
                              verdict=F.DROPPED, drop_reason=reason))
    for index, find in enumerate(_FINDERS):
        denied, defined, reply = bool(index & 4), bool(index & 2), bool(index & 1)
        for f in records:
            got = F.Flow()
            got.CopyFrom(f)
            find(got)
            want = enforcement_of(denied, *seen_in(f, reply), defined)
            assert got.policy.enforcement == want, (index, f)


@pytest.mark.parametrize("f,egress,ingress,finding",
                         [c[1:] for c in CASES if c[1].verdict == F.FORWARDED],
                         ids=[c[0] for c in CASES if c[1].verdict == F.FORWARDED])
def test_a_batch_record_gets_what_the_record_alone_gets(f, egress, ingress, finding):
    """The datapath's records come in batches (agent/enrich/batch.py names them once per
    identity): the same verdict, finding and side as the record enriched alone."""
    from agent.enrich.batch import BatchEnricher
    from tests import batches

    state = cluster()
    stage = PolicyStage.from_config(PolicySection(), state, AgentStats("node-a", "t"))
    stage.start()
    l4 = getattr(f.l4, f.l4.WhichOneof("protocol"))
    batch = batches.batch(batches.rec(f.ip.source, f.ip.destination, l4.source_port,
                                      l4.destination_port, f.l4.WhichOneof("protocol"),
                                      hook=0 if f.traffic_direction == F.FROM_POD else 1,
                                      flags="SYN" if l4.flags.SYN else ""))
    batch.outcome[0] = f.outcome
    BatchEnricher(state, conntrack(), judge=stage.judge).enrich(batch)
    got = batch.flow(0)
    assert sides(got) == (egress, ingress, finding)
    alone, _ = pipeline(cluster(), conntrack())
    assert got.is_reply == judged(alone, f).is_reply


def test_a_pair_no_policy_isolates_is_one_identity_whatever_its_ports():
    """Churn over many server ports: a pair whose verdict cannot depend on the port is named
    and judged once (PolicyEvaluator.port_free); a pair toward an isolated pod is judged per
    server port, each record as it would be alone."""
    from agent.enrich.batch import BatchEnricher
    from tests import batches

    state = cluster()
    stage = PolicyStage.from_config(PolicySection(), state, AgentStats("node-a", "t"))
    stage.start()
    free = batches.batch(*[batches.rec(FRONTEND, PROBER, 40000 + i, 9000 + i) for i in range(300)])
    BatchEnricher(state, conntrack(), judge=stage.judge).enrich(free)
    assert len(free.idents) == 1
    assert sides(free.flow(299))[:2] == ((NI, ()), (NI, ()))
    isolated = batches.batch(*[batches.rec(CART1, DB0, 40000 + i, 5430 + i, "tcp") for i in range(4)])
    BatchEnricher(state, conntrack(), judge=stage.judge).enrich(isolated)
    assert len(isolated.idents) == 4
    alone, _ = pipeline(cluster(), conntrack())
    for i in range(4):
        want = sides(judged(alone, record(CART1, 40000 + i, DB0, 5430 + i, "tcp")))[:2]
        assert sides(isolated.flow(i))[:2] == want
