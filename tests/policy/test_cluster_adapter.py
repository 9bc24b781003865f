"""The enrich stage's ClusterState seen through ClusterStatePolicyView: what the evaluator
asks of the agent's Kubernetes cache, answered from the same indexes enrichment reads."""

from __future__ import annotations

from agent.enrich.k8s.state import ClusterState
from agent.policy.cluster import ClusterStatePolicyView
from agent.policy.evaluate import PolicyEvaluator
from agent.policy.load import load_policies
from agent.policy.verdict import Reason, Verdict
from agent.policy.view import PolicyCluster
from enrich import objs
from policy.cluster import labels, np


def namespace(name: str, **labels_) -> dict:
    return {"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "labels": {"kubernetes.io/metadata.name": name, **labels_}}}


def build() -> ClusterState:
    state = ClusterState()
    for item in [
        objs.node("node-a", "192.168.0.1", pod_cidr="10.0.1.0/24"),
        objs.node("node-b", "192.168.0.2", pod_cidr="10.0.2.0/24"),
        namespace("shop", team="shop"), namespace("web", team="web"),
        objs.pod("cart-1", "10.0.1.5", labels={"app": "cart"}, node="node-a"),
        objs.pod("storefront-1", "10.0.2.5", namespace="web", labels={"app": "storefront"},
                 node="node-b"),
        objs.pod("exporter", "192.168.0.2", namespace="kube-system", node="node-b",
                 host_network=True),
        objs.pod("old", "10.0.1.9", labels={"app": "old"}, phase="Succeeded"),
    ]:
        state.apply(item["kind"], "ADDED", item)
    return state


def test_answers_from_the_cache():
    state = build()
    view = ClusterStatePolicyView(state)
    assert isinstance(view, PolicyCluster)
    pod = view.pod_at("10.0.1.5")
    assert (pod.namespace, pod.name, dict(pod.labels), pod.node_name) == ("shop", "cart-1",
                                                                          {"app": "cart"}, "node-a")
    assert pod.container_ports is None     # the cache does not keep container ports (yet)
    assert view.pod_at("10.0.1.5") is pod  # reused while the record is the same
    assert view.pod_at("192.168.0.2") is None and view.node_at("192.168.0.2") == "node-b"
    assert view.node_at("10.0.1.1") == "node-a"         # the CNI gateway of node-a's pod CIDR
    assert view.node_at("10.0.1.5") is None
    assert view.pod_at("10.0.1.9") is None              # a finished pod owns no IP
    assert view.namespace_labels("shop") == {"kubernetes.io/metadata.name": "shop", "team": "shop"}
    assert view.namespace_labels("nowhere") is None
    generation = view.generation
    state.apply("Pod", "DELETED", objs.pod("cart-1", "10.0.1.5"))
    assert view.generation != generation and view.pod_at("10.0.1.5") is None


def test_evaluator_on_the_cache_follows_changes():
    state = build()
    policies = load_policies([
        np("cart-in", "shop", podSelector=labels(app="cart"), ingress=[
            {"from": [{"namespaceSelector": labels(team="web")}], "ports": [{"port": 8080}]}]),
        np("named", "shop", podSelector=labels(app="cart"), ingress=[{"ports": [{"port": "http"}]}]),
    ]).policies
    ev = PolicyEvaluator(ClusterStatePolicyView(state), policies)
    assert ev.evaluate("10.0.2.5", "10.0.1.5", 8080, "TCP").ingress.policies == ("shop/cart-in",)
    denied = ev.evaluate("10.0.2.5", "10.0.1.5", 9000, "TCP").ingress
    assert denied.verdict == Verdict.DENIED and denied.unresolved == ("http",)
    own_node = ev.evaluate("192.168.0.1", "10.0.1.5", 9000, "TCP").ingress
    assert own_node.verdict == Verdict.ALLOWED and own_node.reason == Reason.OWN_NODE
    gateway = ev.evaluate("10.0.1.1", "10.0.1.5", 9000, "TCP").ingress
    assert gateway.reason == Reason.OWN_NODE
    # A host-network pod on another node is that node: not the own node, no selector matches.
    assert ev.evaluate("192.168.0.2", "10.0.1.5", 8080, "TCP").ingress.verdict == Verdict.DENIED
    # The web namespace is relabelled: the watch event reaches the verdict.
    state.apply("Namespace", "MODIFIED", namespace("web", team="other"))
    assert ev.evaluate("10.0.2.5", "10.0.1.5", 8080, "TCP").ingress.verdict == Verdict.DENIED
