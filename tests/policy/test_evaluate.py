"""The evaluator against Kubernetes' documented examples and edge cases (concepts page
"Network Policies", the NetworkPolicy API reference, the netpol e2e suite), table-driven.

Each case: policies, one connection (source IP, destination IP after DNAT, port, protocol)
and the expected egress verdict at the source and ingress verdict at the destination, each
as (verdict, policies named) or (verdict, policies, reason)."""

from __future__ import annotations

import pytest

from agent.policy.evaluate import PolicyEvaluator
from agent.policy.load import load_policies
from agent.policy.verdict import Connection, Reason, Verdict
from policy.cluster import (CART1, CART2, CART_COPY, CART_IN_DATA, CHECKOUT, CLIENT, COREDNS,
                            DB, GATEWAY_A, LEGACY, NODE_A, NODE_B, STOREFRONT, TESTER, WORLD,
                            cluster, labels, np)

NI, AL, DE, NA = "NOT_ISOLATED", "ALLOWED", "DENIED", "NOT_APPLICABLE"

DENY_INGRESS = lambda ns: np("default-deny-ingress", ns, podSelector={},  # noqa: E731
                             policyTypes=["Ingress"])
DENY_EGRESS = lambda ns: np("default-deny-egress", ns, podSelector={},  # noqa: E731
                            policyTypes=["Egress"])
DENY_ALL = lambda ns: np("default-deny-all", ns, podSelector={},  # noqa: E731
                         policyTypes=["Ingress", "Egress"])


def db_from(*peers, ports=None, name="db-in") -> dict:
    """An ingress policy on data/db (app=db) with one rule."""
    rule: dict = {}
    if peers:
        rule["from"] = list(peers)
    if ports is not None:
        rule["ports"] = ports
    return np(name, "data", podSelector=labels(app="db"), policyTypes=["Ingress"], ingress=[rule])


def cart_to(*peers, ports=None, name="cart-out") -> dict:
    """An egress policy on shop/cart (app=cart) with one rule."""
    rule: dict = {}
    if peers:
        rule["to"] = list(peers)
    if ports is not None:
        rule["ports"] = ports
    return np(name, "shop", podSelector=labels(app="cart"), policyTypes=["Egress"], egress=[rule])


def c(src, dst, port=8080, proto="TCP"):
    return (src, dst, port, proto)


CASES = [
    # ---- defaults (concepts page "Default policies") ----
    pytest.param([], c(CART1, DB, 5432), (NI, ()), (NI, ()), id="no-policy-nothing-isolated"),
    pytest.param([DENY_INGRESS("data")], c(CART1, DB, 5432), (NI, ()),
                 (DE, ("data/default-deny-ingress",)), id="default-deny-ingress"),
    pytest.param([DENY_INGRESS("data")], c(DB, CART1), (NI, ()), (NI, ()),
                 id="default-deny-ingress-leaves-egress-alone"),
    pytest.param([DENY_INGRESS("data"),
                  np("allow-all-ingress", "data", podSelector={}, ingress=[{}],
                     policyTypes=["Ingress"])],
                 c(TESTER, DB, 5432), (NI, ()), (AL, ("data/allow-all-ingress",)),
                 id="default-allow-all-ingress-beats-deny"),
    pytest.param([DENY_EGRESS("shop")], c(CART1, DB, 5432), (DE, ("shop/default-deny-egress",)),
                 (NI, ()), id="default-deny-egress"),
    pytest.param([DENY_EGRESS("shop")], c(STOREFRONT, CART1), (NI, ()), (NI, ()),
                 id="default-deny-egress-leaves-ingress-alone"),
    pytest.param([DENY_EGRESS("shop"),
                  np("allow-all-egress", "shop", podSelector={}, egress=[{}],
                     policyTypes=["Egress"])],
                 c(CART1, WORLD, 443), (AL, ("shop/allow-all-egress",)), (NA, ()),
                 id="default-allow-all-egress"),
    pytest.param([DENY_ALL("shop")], c(CART1, CHECKOUT),
                 (DE, ("shop/default-deny-all",)), (DE, ("shop/default-deny-all",)),
                 id="default-deny-all-both-directions"),
    pytest.param([DENY_ALL("shop")], c(CART1, WORLD, 443), (DE, ("shop/default-deny-all",)),
                 (NA, ()), id="deny-all-egress-to-world"),
    # ---- policyTypes defaults (SetDefaults_NetworkPolicy) ----
    pytest.param([np("no-types", "shop", podSelector={})], c(CART1, CHECKOUT),
                 (NI, ()), (DE, ("shop/no-types",)), id="policytypes-omitted-no-egress-is-ingress-only"),
    pytest.param([np("cart-out", "shop", podSelector=labels(app="cart"),
                     egress=[{"to": [{"podSelector": labels(app="checkout")}]}])],
                 c(CART1, CHECKOUT), (AL, ("shop/cart-out",)), (NI, ()),
                 id="policytypes-omitted-with-egress-rules-adds-egress"),
    pytest.param([np("cart-out", "shop", podSelector=labels(app="cart"),
                     egress=[{"to": [{"podSelector": labels(app="checkout")}]}])],
                 c(CHECKOUT, CART1), (NI, ()), (DE, ("shop/cart-out",)),
                 id="policytypes-omitted-always-implies-ingress"),
    pytest.param([np("cart-empty-egress", "shop", podSelector=labels(app="cart"), egress=[])],
                 c(CART1, DB, 5432), (NI, ()), (NI, ()),
                 id="policytypes-omitted-empty-egress-list-adds-no-egress"),
    pytest.param([np("db-egress-only", "data", podSelector=labels(app="db"),
                     policyTypes=["Egress"], ingress=[{}])],
                 c(CART1, DB, 5432), (NI, ()), (NI, ()),
                 id="policytypes-egress-only-ignores-ingress-rules"),
    # ---- pod selectors, namespace selectors (concepts page "Behavior of to and from") ----
    pytest.param([np("shop-in", "shop", podSelector={}, policyTypes=["Ingress"],
                     ingress=[{"from": [{"podSelector": labels(app="checkout")}]}])],
                 c(CHECKOUT, CART2), (NI, ()), (AL, ("shop/shop-in",)),
                 id="empty-podselector-selects-every-pod-of-namespace"),
    pytest.param([db_from({"podSelector": labels(app="cart")})], c(CART1, DB, 5432),
                 (NI, ()), (DE, ("data/db-in",)), id="podselector-peer-only-in-policy-namespace"),
    pytest.param([db_from({"namespaceSelector": labels(team="shop"),
                           "podSelector": labels(app="cart")})],
                 c(CART1, DB, 5432), (NI, ()), (AL, ("data/db-in",)),
                 id="namespace-and-pod-selector-one-peer-AND-match"),
    pytest.param([db_from({"namespaceSelector": labels(team="shop"),
                           "podSelector": labels(app="cart")})],
                 c(CHECKOUT, DB, 5432), (NI, ()), (DE, ("data/db-in",)),
                 id="AND-peer-other-pod-of-namespace-denied"),
    pytest.param([db_from({"namespaceSelector": labels(team="shop"),
                           "podSelector": labels(app="cart")})],
                 c(CART_COPY, DB, 5432), (NI, ()), (DE, ("data/db-in",)),
                 id="AND-peer-same-labels-other-namespace-denied"),
    pytest.param([db_from({"namespaceSelector": labels(team="shop")},
                          {"podSelector": labels(app="cart")})],
                 c(CHECKOUT, DB, 5432), (NI, ()), (AL, ("data/db-in",)),
                 id="two-peers-OR-any-pod-of-namespace"),
    pytest.param([db_from({"namespaceSelector": labels(team="shop")},
                          {"podSelector": labels(app="cart")})],
                 c(CART_IN_DATA, DB, 5432), (NI, ()), (AL, ("data/db-in",)),
                 id="two-peers-OR-pod-in-policy-namespace"),
    pytest.param([db_from({"namespaceSelector": labels(team="shop")},
                          {"podSelector": labels(app="cart")})],
                 c(CART_COPY, DB, 5432), (NI, ()), (DE, ("data/db-in",)),
                 id="two-peers-OR-neither-matches"),
    pytest.param([db_from({"namespaceSelector": labels(**{"kubernetes.io/metadata.name": "web"})})],
                 c(STOREFRONT, DB, 5432), (NI, ()), (AL, ("data/db-in",)),
                 id="namespace-selector-by-metadata-name"),
    pytest.param([db_from({"namespaceSelector": labels(**{"kubernetes.io/metadata.name": "default"})})],
                 c(CLIENT, DB, 5432), (NI, ()), (AL, ("data/db-in",)),
                 id="metadata-name-implied-for-unlabelled-namespace"),
    pytest.param([db_from({"namespaceSelector": {}})], c(TESTER, DB, 5432), (NI, ()),
                 (AL, ("data/db-in",)), id="empty-namespace-selector-all-namespaces"),
    pytest.param([db_from({"namespaceSelector": {}})], c(WORLD, DB, 5432), (NA, ()),
                 (DE, ("data/db-in",)), id="empty-namespace-selector-not-the-world"),
    pytest.param([db_from({"namespaceSelector": {}, "podSelector": {
        "matchExpressions": [{"key": "app", "operator": "In", "values": ["cart", "checkout"]}]}})],
                 c(CHECKOUT, DB, 5432), (NI, ()), (AL, ("data/db-in",)), id="match-expressions-In"),
    pytest.param([np("cart-in", "shop", podSelector=labels(app="cart"), policyTypes=["Ingress"],
                     ingress=[{"from": [{"podSelector": {"matchExpressions": [
                         {"key": "role", "operator": "NotIn", "values": ["frontend"]}]}}]}])],
                 c(CHECKOUT, CART1), (NI, ()), (AL, ("shop/cart-in",)),
                 id="match-expressions-NotIn-matches-missing-key"),
    pytest.param([db_from({"namespaceSelector": {"matchExpressions": [
        {"key": "team", "operator": "Exists"}]}})],
                 c(TESTER, DB, 5432), (NI, ()), (DE, ("data/db-in",)),
                 id="match-expressions-Exists-missing-key-denied"),
    pytest.param([db_from({"namespaceSelector": {"matchExpressions": [
        {"key": "team", "operator": "Exists"}]}})],
                 c(STOREFRONT, DB, 5432), (NI, ()), (AL, ("data/db-in",)),
                 id="match-expressions-Exists"),
    pytest.param([db_from({"namespaceSelector": {"matchExpressions": [
        {"key": "team", "operator": "DoesNotExist"}]}})],
                 c(TESTER, DB, 5432), (NI, ()), (AL, ("data/db-in",)),
                 id="match-expressions-DoesNotExist"),
    pytest.param([np("backend-not-cart", "shop", policyTypes=["Ingress"], podSelector={
        "matchLabels": {"tier": "backend"},
        "matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["cart"]}]})],
                 c(STOREFRONT, CART1), (NI, ()), (NI, ()),
                 id="matchLabels-AND-expressions-cart-not-selected"),
    pytest.param([np("backend-not-cart", "shop", policyTypes=["Ingress"], podSelector={
        "matchLabels": {"tier": "backend"},
        "matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["cart"]}]})],
                 c(STOREFRONT, CHECKOUT), (NI, ()), (DE, ("shop/backend-not-cart",)),
                 id="matchLabels-AND-expressions-checkout-selected"),
    # ---- ports (NetworkPolicyPort) ----
    pytest.param([db_from(ports=[{"port": 5432}])], c(CART1, DB, 5432), (NI, ()),
                 (AL, ("data/db-in",)), id="port-number"),
    pytest.param([db_from(ports=[{"port": 5432}])], c(CART1, DB, 5433), (NI, ()),
                 (DE, ("data/db-in",)), id="port-number-other-port-denied"),
    pytest.param([db_from(ports=[{"port": 5432}])], c(CART1, DB, 5432, "UDP"), (NI, ()),
                 (DE, ("data/db-in",)), id="protocol-defaults-to-TCP"),
    pytest.param([np("dns-in", "kube-system", podSelector={}, policyTypes=["Ingress"],
                     ingress=[{"ports": [{"protocol": "UDP", "port": 53}]}])],
                 c(CLIENT, COREDNS, 53, "UDP"), (NI, ()), (AL, ("kube-system/dns-in",)),
                 id="protocol-UDP"),
    pytest.param([np("dns-in", "kube-system", podSelector={}, policyTypes=["Ingress"],
                     ingress=[{"ports": [{"protocol": "UDP", "port": 53}]}])],
                 c(CLIENT, COREDNS, 53, "TCP"), (NI, ()), (DE, ("kube-system/dns-in",)),
                 id="protocol-UDP-rule-denies-TCP"),
    pytest.param([db_from(ports=[{"protocol": "SCTP", "port": 9999}])], c(CART1, DB, 9999, "SCTP"),
                 (NI, ()), (AL, ("data/db-in",)), id="protocol-SCTP"),
    pytest.param([db_from(ports=[{"protocol": "UDP"}])], c(CART1, DB, 1234, "UDP"), (NI, ()),
                 (AL, ("data/db-in",)), id="protocol-without-port-every-port"),
    pytest.param([db_from(ports=[{"protocol": "UDP"}])], c(CART1, DB, 1234, "TCP"), (NI, ()),
                 (DE, ("data/db-in",)), id="protocol-without-port-other-protocol-denied"),
    pytest.param([db_from(ports=[{"port": 32000, "endPort": 32768}])], c(CART1, DB, 32768),
                 (NI, ()), (AL, ("data/db-in",)), id="endPort-inclusive"),
    pytest.param([db_from(ports=[{"port": 32000, "endPort": 32768}])], c(CART1, DB, 32000),
                 (NI, ()), (AL, ("data/db-in",)), id="endPort-start-inclusive"),
    pytest.param([db_from(ports=[{"port": 32000, "endPort": 32768}])], c(CART1, DB, 31999),
                 (NI, ()), (DE, ("data/db-in",)), id="endPort-below-range-denied"),
    pytest.param([db_from(ports=[{"port": "pg"}])], c(CART1, DB, 5432), (NI, ()),
                 (AL, ("data/db-in",)), id="named-port-ingress"),
    pytest.param([db_from(ports=[{"port": "pg"}])], c(CART1, DB, 5433), (NI, ()),
                 (DE, ("data/db-in",)), id="named-port-other-number-denied"),
    pytest.param([cart_to({"namespaceSelector": {}}, ports=[{"port": "pg"}])], c(CART1, DB, 5432),
                 (AL, ("shop/cart-out",)), (NI, ()),
                 id="named-port-egress-resolved-on-destination"),
    pytest.param([cart_to({"namespaceSelector": {}}, ports=[{"port": "http"}])], c(CART1, STOREFRONT, 8080),
                 (DE, ("shop/cart-out",)), (NI, ()),
                 id="named-port-egress-not-resolved-on-source"),
    pytest.param([np("dns-in", "kube-system", podSelector={}, policyTypes=["Ingress"],
                     ingress=[{"ports": [{"protocol": "TCP", "port": "dns"}]}])],
                 c(CLIENT, COREDNS, 53, "TCP"), (NI, ()), (DE, ("kube-system/dns-in",)),
                 id="named-port-protocol-must-match-container-port"),
    pytest.param([np("dns-in", "kube-system", podSelector={}, policyTypes=["Ingress"],
                     ingress=[{"ports": [{"protocol": "UDP", "port": "dns"},
                                         {"protocol": "TCP", "port": "dns-tcp"}]}])],
                 c(CLIENT, COREDNS, 53, "TCP"), (NI, ()), (AL, ("kube-system/dns-in",)),
                 id="named-ports-one-per-protocol"),
    pytest.param([cart_to({"ipBlock": {"cidr": "0.0.0.0/0"}}, ports=[{"port": "https"}])],
                 c(CART1, WORLD, 443), (DE, ("shop/cart-out",)), (NA, ()),
                 id="named-port-never-matches-the-world"),
    pytest.param([db_from({"podSelector": {}}, ports=[])], c(CART_IN_DATA, DB, 1), (NI, ()),
                 (AL, ("data/db-in",)), id="empty-ports-list-all-ports"),
    pytest.param([np("db-in", "data", podSelector=labels(app="db"), policyTypes=["Ingress"],
                     ingress=[{"from": [], "ports": [{"port": 5432}]}])],
                 c(WORLD, DB, 5432), (NA, ()), (AL, ("data/db-in",)),
                 id="empty-from-list-all-sources"),
    pytest.param([db_from()], c(WORLD, DB, 0, "ICMP"), (NA, ()), (AL, ("data/db-in",)),
                 id="empty-rule-allows-everything-even-icmp"),
    pytest.param([db_from(ports=[{"port": 80}])], c(CART1, DB, 0, "ICMP"), (NI, ()),
                 (DE, ("data/db-in",)), id="rule-with-ports-never-matches-icmp"),
    # ---- ipBlock ----
    pytest.param([np("test-network-policy", "data", podSelector=labels(role="db"),
                     policyTypes=["Ingress", "Egress"],
                     ingress=[{"from": [{"ipBlock": {"cidr": "172.17.0.0/16",
                                                     "except": ["172.17.1.0/24"]}},
                                        {"namespaceSelector": labels(project="myproject")},
                                        {"podSelector": labels(role="frontend")}],
                               "ports": [{"protocol": "TCP", "port": 6379}]}],
                     egress=[{"to": [{"ipBlock": {"cidr": "10.0.0.0/24"}}],
                              "ports": [{"protocol": "TCP", "port": 5978}]}])],
                 c("172.17.0.5", DB, 6379), (NA, ()), (AL, ("data/test-network-policy",)),
                 id="docs-example-ipblock-allowed"),
    pytest.param([np("test-network-policy", "data", podSelector=labels(role="db"),
                     ingress=[{"from": [{"ipBlock": {"cidr": "172.17.0.0/16",
                                                     "except": ["172.17.1.0/24"]}}],
                               "ports": [{"protocol": "TCP", "port": 6379}]}])],
                 c("172.17.1.5", DB, 6379), (NA, ()), (DE, ("data/test-network-policy",)),
                 id="docs-example-ipblock-except-denied"),
    pytest.param([np("test-network-policy", "data", podSelector=labels(role="db"),
                     policyTypes=["Egress"],
                     egress=[{"to": [{"ipBlock": {"cidr": "10.0.0.0/24"}}],
                              "ports": [{"protocol": "TCP", "port": 5978}]}])],
                 c(DB, "10.0.0.7", 5978), (AL, ("data/test-network-policy",)), (NA, ()),
                 id="docs-example-egress-cidr"),
    pytest.param([cart_to({"ipBlock": {"cidr": f"{DB}/32"}})], c(CART1, DB, 5432),
                 (AL, ("shop/cart-out",)), (NI, ()), id="ipblock-matches-pod-ip"),
    pytest.param([cart_to({"ipBlock": {"cidr": "10.0.0.0/16", "except": [f"{DB}/32"]}})],
                 c(CART1, DB, 5432), (DE, ("shop/cart-out",)), (NI, ()),
                 id="ipblock-except-excludes-pod-ip"),
    pytest.param([cart_to({"ipBlock": {"cidr": "10.0.0.0/16", "except": [f"{DB}/32"]}})],
                 c(CART1, CHECKOUT), (AL, ("shop/cart-out",)), (NI, ()),
                 id="ipblock-except-rest-of-cidr-allowed"),
    pytest.param([db_from({"ipBlock": {"cidr": "2001:db8::/64"}})], c("2001:db8::5", DB, 5432),
                 (NA, ()), (AL, ("data/db-in",)), id="ipblock-ipv6"),
    pytest.param([db_from({"ipBlock": {"cidr": "0.0.0.0/0"}})], c("2001:db8::5", DB, 5432),
                 (NA, ()), (DE, ("data/db-in",)), id="ipblock-ipv4-never-matches-ipv6"),
    # ---- several policies (additive) ----
    pytest.param([db_from({"namespaceSelector": labels(team="shop")}, name="a-from-shop"),
                  db_from({"namespaceSelector": labels(team="web")}, name="b-from-web")],
                 c(STOREFRONT, DB, 5432), (NI, ()), (AL, ("data/b-from-web",)),
                 id="multiple-policies-OR-names-the-allowing-one"),
    pytest.param([db_from({"namespaceSelector": labels(team="shop")}, name="a-from-shop"),
                  db_from({"namespaceSelector": labels(team="web")}, name="b-from-web")],
                 c(TESTER, DB, 5432), (NI, ()), (DE, ("data/a-from-shop", "data/b-from-web")),
                 id="multiple-policies-denied-names-every-isolating-one"),
    pytest.param([db_from({"namespaceSelector": labels(team="shop")}, ports=[{"port": 5432}],
                          name="a-from-shop"),
                  db_from(name="b-allow-all")],
                 c(CART1, DB, 5432), (NI, ()), (AL, ("data/a-from-shop", "data/b-allow-all")),
                 id="multiple-policies-all-allowing-ones-named"),
    # ---- nodes, host network, self, non-pods ----
    pytest.param([DENY_INGRESS("shop")], c(NODE_A, CART1), (NA, ()), (AL, (), Reason.OWN_NODE),
                 id="own-node-ingress-always-allowed"),
    pytest.param([DENY_INGRESS("shop")], c(NODE_B, CART1), (NA, ()),
                 (DE, ("shop/default-deny-ingress",)), id="other-node-ingress-denied"),
    pytest.param([DENY_INGRESS("shop")], c(GATEWAY_A, CART1), (NA, ()), (AL, (), Reason.OWN_NODE),
                 id="cni-gateway-is-the-own-node"),
    pytest.param([db_from({"namespaceSelector": {}})], c(NODE_A, DB, 5432), (NA, ()),
                 (DE, ("data/db-in",)), id="host-network-pod-not-matched-by-selectors"),
    pytest.param([db_from({"ipBlock": {"cidr": f"{NODE_A}/32"}})], c(NODE_A, DB, 5432), (NA, ()),
                 (AL, ("data/db-in",)), id="host-network-pod-matched-by-ipblock"),
    pytest.param([DENY_EGRESS("shop")], c(CART1, NODE_A, 10250), (DE, ("shop/default-deny-egress",)),
                 (NA, ()), id="egress-to-own-node-follows-rules"),
    pytest.param([DENY_ALL("shop")], c(CART1, CART1), (AL, (), Reason.SELF), (AL, (), Reason.SELF),
                 id="pod-cannot-block-itself"),
    pytest.param([DENY_ALL("shop")], c(WORLD, "8.8.8.8", 53, "UDP"), (NA, ()), (NA, ()),
                 id="world-to-world-not-applicable"),
]


@pytest.mark.parametrize("policies, conn, egress, ingress", CASES)
def test_verdict(policies, conn, egress, ingress):
    loaded = load_policies(policies)
    assert not loaded.problems, loaded.problems
    verdict = PolicyEvaluator(cluster(), loaded.policies).evaluate(*conn)
    for side, want in (("egress", egress), ("ingress", ingress)):
        got = getattr(verdict, side)
        assert got.verdict == Verdict[want[0]], f"{side}: {got}"
        assert got.policies == want[1], f"{side}: {got}"
        if len(want) > 2:
            assert got.reason == want[2], f"{side}: {got}"


def test_at_least_forty_cases():
    assert len(CASES) >= 40


# ---- beyond one verdict -------------------------------------------------------------------

def evaluator(*manifests) -> PolicyEvaluator:
    loaded = load_policies(list(manifests))
    assert not loaded.problems
    return PolicyEvaluator(cluster(), loaded.policies)


def test_allowed_names_rules_by_index():
    ev = evaluator(np("db-in", "data", podSelector=labels(app="db"), ingress=[
        {"from": [{"podSelector": labels(app="nothing")}]},
        {"from": [{"namespaceSelector": labels(team="shop")}], "ports": [{"port": 5432}]},
        {"ports": [{"port": 5432}]}]))
    verdict = ev.evaluate(CART1, DB, 5432, "TCP")
    assert [str(r) for r in verdict.ingress.rules] == ["data/db-in ingress[1]", "data/db-in ingress[2]"]


def test_service_connection_judged_on_backend_and_target_port():
    """A client dials ClusterIP 10.96.0.10:80; kube-proxy DNATs to cart-1:8080. Enforcement
    sees the backend and its target port, and so does the evaluator."""
    ev = evaluator(np("storefront-out", "web", podSelector=labels(app="storefront"),
                      policyTypes=["Egress"], egress=[{"to": [{
                          "namespaceSelector": labels(team="shop"),
                          "podSelector": labels(app="cart")}], "ports": [{"port": 8080}]}]))
    conn = Connection.of_record(STOREFRONT, 40000, "10.96.0.10", 80, "tcp", is_reply=False,
                                backend_ip=CART1, backend_port=8080)
    assert conn == Connection(STOREFRONT, CART1, 8080, "TCP")
    assert ev.evaluate_connection(conn).egress.verdict == Verdict.ALLOWED
    ev_service_port = evaluator(np("storefront-out", "web", podSelector=labels(app="storefront"),
                                   policyTypes=["Egress"], egress=[{"ports": [{"port": 80}]}]))
    assert ev_service_port.evaluate_connection(conn).egress.verdict == Verdict.DENIED


def test_reply_judged_as_the_connection_it_answers():
    """cart-1 answers storefront: the reply record (cart -> storefront) gets the verdict of
    storefront -> cart:8080, so web's default-deny-ingress does not deny it."""
    ev = evaluator(DENY_INGRESS("web"))
    reply = Connection.of_record(CART1, 8080, STOREFRONT, 40000, "TCP", is_reply=True)
    assert reply == Connection(STOREFRONT, CART1, 8080, "TCP")
    assert ev.evaluate_connection(reply).allowed
    # The same packets judged as if the cart had opened the connection would be denied.
    assert ev.evaluate(CART1, STOREFRONT, 40000, "TCP").denied


def test_unknown_container_ports_are_said():
    ev = evaluator(np("legacy-in", "shop", podSelector=labels(app="legacy"),
                      ingress=[{"ports": [{"port": "http"}]}]))
    verdict = ev.evaluate(CART1, LEGACY, 8080, "TCP").ingress
    assert verdict.verdict == Verdict.DENIED and verdict.unresolved == ("http",)


def test_cache_per_identity_and_invalidation():
    cl = cluster()
    loaded = load_policies([DENY_INGRESS("shop")])
    ev = PolicyEvaluator(cl, loaded.policies)
    # cart-1 and cart-2 share an identity (namespace, labels, ipBlock signature, ports).
    assert ev.evaluate(STOREFRONT, CART1, 8080, "TCP").denied
    assert ev.evaluate(STOREFRONT, CART2, 8080, "TCP").denied
    assert ev.cache_stats()["verdicts"] == 1
    # A policy change is seen at once.
    ev.upsert(load_policies([np("allow-web", "shop", podSelector={}, ingress=[{"from": [
        {"namespaceSelector": labels(team="web")}]}])]).policies[0])
    assert ev.evaluate(STOREFRONT, CART1, 8080, "TCP").allowed
    # A namespace relabel is seen at once (namespace labels are part of the identity).
    cl.update(namespaces={"web": {"team": "other"}})
    assert ev.evaluate(STOREFRONT, CART1, 8080, "TCP").denied
    # A pod relabel too.
    from agent.policy.view import PodInfo
    cl.update(namespaces={"web": {"team": "web"}},
              pods={CART1: PodInfo("shop", "cart-1", {"app": "cart"}, "node-a", ())})
    assert ev.evaluate(STOREFRONT, CART1, 8080, "TCP").allowed
    ev.delete("shop", "allow-web")
    assert ev.evaluate(STOREFRONT, CART1, 8080, "TCP").denied
    ev.replace([])
    assert ev.evaluate(STOREFRONT, CART1, 8080, "TCP").ingress.verdict == Verdict.NOT_ISOLATED


def test_bounded_caches_stay_correct():
    ev = PolicyEvaluator(cluster(), load_policies([DENY_INGRESS("shop"), db_from(
        {"ipBlock": {"cidr": "10.0.0.0/8"}})]).policies, max_cached=4)
    for i in range(50):
        src = f"10.9.{i // 250}.{i % 250 + 1}"
        assert ev.evaluate(src, DB, 5432, "TCP").ingress.verdict == Verdict.ALLOWED
        assert ev.evaluate(f"11.0.0.{i + 1}", DB, 5432, "TCP").ingress.verdict == Verdict.DENIED
        assert ev.evaluate(src, CART1, 8080, "TCP").ingress.verdict == Verdict.DENIED
    stats = ev.cache_stats()
    assert stats["verdicts"] <= 4 and stats["identities"] <= 4 and stats["addresses"] <= 4


def test_port_free_when_no_policy_isolates_the_pair():
    """port_free: one verdict for every port of a pair (enrichment then judges the pair
    once, not once per server port); any isolation of the client's egress or the server's
    ingress makes ports matter."""
    ev = evaluator(db_from({"podSelector": labels(app="cart")}, ports=[{"port": 5432}]))
    assert ev.port_free(CART1, CHECKOUT) and ev.port_free(WORLD, CART1)
    assert not ev.port_free(CART1, DB)        # db's ingress is isolated
    assert ev.port_free(DB, CART1)            # db's egress is not
    for port in (5432, 5433, 40000):          # and port_free pairs really are port-free
        assert ev.evaluate(CART1, CHECKOUT, port, "TCP") == ev.evaluate(CART1, CHECKOUT, 1, "TCP")
    assert not ev.port_free(CART_IN_DATA, DB)
    assert ev.evaluate(CART_IN_DATA, DB, 5432, "TCP") != ev.evaluate(CART_IN_DATA, DB, 5433, "TCP")
    deny_out = evaluator(DENY_EGRESS("shop"))
    assert not deny_out.port_free(CART1, CHECKOUT)
