"""advise -> YAML -> what-if against the connections it came from: nothing is denied; and
removing any one of its rules makes what-if name exactly the connections that rule allowed."""

from __future__ import annotations

import random

import pytest
import yaml

from agent.policy.advise import KUBE_DNS_PEER, advise, stable_labels
from agent.policy.evaluate import PolicyEvaluator
from agent.policy.facts import Endpoint, cluster_of_facts
from agent.policy.load import load_policies
from agent.policy.model import EGRESS, INGRESS, NetworkPolicy
from agent.policy.verdict import RuleRef, Verdict
from agent.policy.whatif import what_if
from policy.cluster import labels, np
from policy.traffic import API, CART_A, DB_0, FACTS, LAPTOP, REPORT, STOREFRONT_A, fact


@pytest.fixture(scope="module")
def advice():
    return advise(FACTS)


@pytest.fixture(scope="module")
def applied(advice):
    """The advice as kubectl would read it: parsed back from the YAML text."""
    result = load_policies(advice.yaml())
    assert not result.problems, result.problems
    return result.policies


def test_yaml_is_valid_for_kubectl_apply(advice, applied):
    docs = [d for d in yaml.safe_load_all(advice.yaml()) if d is not None]
    assert len(docs) == len(advice.policies) == 6
    for doc in docs:
        assert doc["apiVersion"] == "networking.k8s.io/v1" and doc["kind"] == "NetworkPolicy"
        assert doc["metadata"]["name"].startswith("podflow-") and doc["metadata"]["namespace"]
    assert applied == advice.policies


def test_output_is_deterministic(advice):
    shuffled = list(FACTS)
    random.Random(4).shuffle(shuffled)
    assert advise(shuffled).yaml() == advice.yaml()


def test_advice_denies_none_of_the_connections_it_came_from(applied):
    result = what_if([], applied, FACTS)
    assert not result.any_newly_denied, result.report()
    assert result.exit_status == 0
    # Every connection is now judged by the advice (not merely not isolated) where a pod is.
    evaluator = PolicyEvaluator(cluster_of_facts(FACTS), applied)
    for f in FACTS:
        verdict = evaluator.evaluate_connection(f.connection)
        assert verdict.allowed
        if f.src.is_pod and f.src.workload != "odd":
            assert verdict.egress.verdict == Verdict.ALLOWED, f


def _without_rule(policy: NetworkPolicy, direction: str, index: int) -> NetworkPolicy:
    rules = list(policy.rules(direction))
    del rules[index]
    if direction == INGRESS:
        return NetworkPolicy(policy.namespace, policy.name, policy.pod_selector,
                             policy.policy_types, tuple(rules), policy.egress)
    return NetworkPolicy(policy.namespace, policy.name, policy.pod_selector,
                         policy.policy_types, policy.ingress, tuple(rules))


def _rule_keys(advice):
    return sorted(advice.rules, key=lambda k: (k[0], k[1], k[2]))


def test_removing_one_rule_denies_exactly_what_it_allowed(advice, applied):
    by_key = {p.key: p for p in applied}
    evaluator = PolicyEvaluator(cluster_of_facts(FACTS), applied)
    checked = 0
    for key in _rule_keys(advice):
        policy_key, direction, index = key
        rule_ref = RuleRef(f"{policy_key[0]}/{policy_key[1]}", direction, index)
        allowed_by_rule = {f for f in FACTS
                           if rule_ref in evaluator.evaluate_connection(f.connection).allowing_rules}
        candidate = _without_rule(by_key[policy_key], direction, index)
        result = what_if(applied, [candidate], FACTS)
        denied = {change.fact for change in result.newly_denied}
        assert denied == allowed_by_rule, (key, result.report())
        assert denied == set(advice.rules[key].facts), key
        assert result.replaced == (candidate.ref,) and not result.added
        assert result.any_newly_denied == bool(denied)
        checked += 1
    assert checked == len(advice.rules) >= 15


def test_selectors_use_stable_labels_only(advice):
    selectors = {p.name: dict(p.pod_selector.match_labels) for p in advice.policies}
    assert selectors["podflow-deployment-storefront"] == {"app": "storefront", "tier": "frontend"}
    assert selectors["podflow-statefulset-db"] == {"app": "db"}
    assert selectors["podflow-cronjob-report"] == {"app": "report"}
    assert "podflow-deployment-odd" not in selectors
    assert any("shop/odd" in note for note in advice.notes)
    assert "not covered: shop/odd (Deployment)" in advice.yaml()
    assert stable_labels([("pod-template-hash", "x"), ("app", "a")]) == {"app": "a"}


def test_shapes_of_the_rules(advice):
    by_name = {p.name: p for p in advice.policies}
    storefront = by_name["podflow-deployment-storefront"]
    egress = [r.to_manifest(EGRESS) for r in storefront.egress]
    # The Service resolved to its backends' labels in their namespace, on the target port.
    assert {"to": [{"namespaceSelector": labels(**{"kubernetes.io/metadata.name": "shop"}),
                    "podSelector": labels(app="cart", tier="backend")}],
            "ports": [{"protocol": "TCP", "port": 8080}]} in egress
    # DNS: UDP and TCP 53 to kube-dns's backends.
    assert {"to": [{"namespaceSelector": labels(**{"kubernetes.io/metadata.name": "kube-system"}),
                    "podSelector": labels(app="coredns", **{"k8s-app": "kube-dns"})}],
            "ports": [{"protocol": "TCP", "port": 53}, {"protocol": "UDP", "port": 53}]} in egress
    # ICMP to the world: a rule without ports.
    assert {"to": [{"ipBlock": {"cidr": "93.184.216.34/32"}}]} in egress
    ingress = [r.to_manifest(INGRESS) for r in storefront.ingress]
    peers = [rule["from"][0] for rule in ingress]
    assert {"ipBlock": {"cidr": "198.51.100.20/32"}} in peers           # the laptop
    assert {"ipBlock": {"cidr": "192.168.0.2/32"}} in peers             # node-b (NodePort)
    assert {"ipBlock": {"cidr": "192.168.0.1/32"}} not in peers         # own node: implicit
    cart = by_name["podflow-deployment-cart"]
    cart_egress = [r.to_manifest(EGRESS) for r in cart.egress]
    assert {"to": [{"ipBlock": {"cidr": "2606:4700::6810:84e5/128"}}],
            "ports": [{"protocol": "TCP", "port": 443}]} in cart_egress
    assert {"to": [{"ipBlock": {"cidr": "192.168.0.1/32"}}],
            "ports": [{"protocol": "TCP", "port": 10250}]} in cart_egress
    prometheus = by_name["podflow-deployment-prometheus"]
    assert {"to": [{"ipBlock": {"cidr": "192.168.0.2/32"}}],
            "ports": [{"protocol": "TCP", "port": 9100}]} in [r.to_manifest(EGRESS)
                                                              for r in prometheus.egress]
    assert "podflow-daemonset-node-exporter" not in by_name   # host network: no policy applies
    text = advice.yaml()
    assert ("cidr: 192.168.0.2/32  # node node-b (host-network pod "
            "kube-system/node-exporter-abcde)") in text
    assert "cidr: 93.184.216.34/32  # api-eu.example.com, api.example.com" in text
    assert 'cidr: "2606:4700::6810:84e5/128"  # mirror.example.org' in text
    assert "# seen: 40 connections" not in text   # counts are per rule: 40 + 35
    assert "# seen: 75 connections, last 2027-01-15T08:00:00Z" in text


def test_namespace_filter(advice):
    shop_only = advise(FACTS, namespace="shop")
    assert {p.namespace for p in shop_only.policies} == {"shop"}
    assert shop_only.policies == tuple(p for p in advice.policies if p.namespace == "shop")


def test_dns_names_without_a_recorded_lookup_get_kube_dns():
    advice = advise([fact(CART_A, API, 443)])
    (policy,) = advice.policies
    peers = [rule.peers[0] for rule in policy.egress]
    assert KUBE_DNS_PEER in peers
    dns_rule = policy.egress[peers.index(KUBE_DNS_PEER)]
    assert {(p.protocol, p.port) for p in dns_rule.ports} == {("UDP", 53), ("TCP", 53)}
    assert "names were resolved" in advice.yaml()


def test_what_if_new_denials_with_counts_and_last_seen():
    deny_db = load_policies([np("db-only-cart", "data", podSelector=labels(app="db"),
                                ingress=[{"from": [{"namespaceSelector": {}, "podSelector":
                                                    labels(app="cart")}]}])]).policies
    result = what_if([], deny_db, FACTS)
    assert result.any_newly_denied and result.exit_status == 1
    (change,) = result.newly_denied
    assert change.fact.src == REPORT and change.fact.dst == DB_0 and change.count == 1
    assert change.before.ingress.verdict == Verdict.NOT_ISOLATED
    assert change.after.ingress.policies == ("data/db-only-cart",)
    report = result.report()
    assert "newly DENIED: 1 shapes, 1 connections" in report
    assert ("batch/report -> data/db TCP/5432: 1 connection, last seen 2027-01-15T07:00:00Z; "
            "ingress denied by data/db-only-cart") in report
    # Taking it back: the same change is "newly allowed" from the other side.
    back = what_if(deny_db, [np_replace(deny_db[0])], FACTS)
    assert not back.any_newly_denied and [c.fact for c in back.newly_allowed] == [change.fact]
    assert back.replaced == ("data/db-only-cart",)


def np_replace(policy: NetworkPolicy) -> NetworkPolicy:
    """The same policy allowing every source."""
    return NetworkPolicy(policy.namespace, policy.name, policy.pod_selector, policy.policy_types,
                         ingress=(type(policy.ingress[0])(),), egress=())


def test_what_if_uses_recorded_identities_not_the_live_cluster():
    """A pod that is gone (or whose IP now belongs to another pod) is judged as recorded."""
    from agent.policy.view import PodInfo, StaticCluster
    live = StaticCluster(pods={LAPTOP.ip: PodInfo("shop", "someone-else", {"app": "cart"})})
    policy = load_policies([np("sf", "web", podSelector=labels(app="storefront"), ingress=[
        {"from": [{"namespaceSelector": {}, "podSelector": labels(app="cart")}]}])]).policies
    result = what_if([], policy, [fact(LAPTOP, STOREFRONT_A, 8080)], cluster=live)
    assert result.any_newly_denied   # LAPTOP was the world when seen, not a cart pod


def test_merges_duplicate_shapes():
    twice = [fact(CART_A, DB_0, 5432, count=2, age_s=10), fact(CART_A, DB_0, 5432, count=3)]
    policy = load_policies([np("db", "data", podSelector={}, policyTypes=["Ingress"])]).policies
    (change,) = what_if([], policy, twice).newly_denied
    assert change.count == 5 and change.last_seen_s == twice[1].last_seen_s


def test_endpoint_display():
    assert STOREFRONT_A.display() == "web/storefront"
    assert API.display() == "api.example.com"
    assert Endpoint(ip="1.2.3.4").display() == "1.2.3.4"
