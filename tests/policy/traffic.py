"""Observed connections of a small shop, as connection facts (what advise and what-if read)."""

from __future__ import annotations

from agent.policy.facts import NODE, ConnectionFact, Endpoint, ServiceRef, pod_endpoint
from agent.policy.view import ContainerPort

T0 = 1_800_000_000.0


def _deploy(ip, ns, name, app, node, hash_="5f4d8c9b7", extra=None, ports=None):
    labels = {"app": app, "pod-template-hash": hash_, **(extra or {})}
    return pod_endpoint(ip, ns, f"{app}-{hash_}-{name}", labels, ("Deployment", app), node,
                        container_ports=ports)


STOREFRONT_A = _deploy("10.0.1.3", "web", "a1", "storefront", "node-a",
                       extra={"tier": "frontend", "helm.sh/chart": "shop-1.2.3"},
                       ports=[ContainerPort("http", 8080)])
STOREFRONT_B = _deploy("10.0.2.3", "web", "b1", "storefront", "node-b",
                       extra={"tier": "frontend", "helm.sh/chart": "shop-1.2.3"},
                       ports=[ContainerPort("http", 8080)])
CART_A = _deploy("10.0.1.1", "shop", "a1", "cart", "node-a", extra={"tier": "backend"})
CART_B = _deploy("10.0.2.1", "shop", "b1", "cart", "node-b", extra={"tier": "backend"})
DB_0 = pod_endpoint("10.0.2.2", "data", "db-0", {
    "app": "db", "controller-revision-hash": "db-6c8f", "statefulset.kubernetes.io/pod-name": "db-0",
    "apps.kubernetes.io/pod-index": "0"}, ("StatefulSet", "db"), "node-b")
COREDNS = _deploy("10.0.1.4", "kube-system", "a1", "coredns", "node-a", extra={"k8s-app": "kube-dns"})
PROMETHEUS = _deploy("10.0.2.9", "monitoring", "b1", "prometheus", "node-b")
REPORT = pod_endpoint("10.0.2.7", "batch", "report-28391-x", {
    "app": "report", "job-name": "report-28391", "controller-uid": "1f2e",
    "batch.kubernetes.io/job-name": "report-28391"}, ("CronJob", "report"), "node-b")
API = Endpoint(ip="93.184.216.34", names=("api.example.com", "api-eu.example.com"))
MIRROR = Endpoint(ip="2606:4700::6810:84e5", names=("mirror.example.org",))
LAPTOP = Endpoint(ip="198.51.100.20")
NODE_A = Endpoint(ip="192.168.0.1", kind=NODE, node="node-a")
NODE_B = Endpoint(ip="192.168.0.2", kind=NODE, node="node-b")
# A host-network pod: to policy, its node's address.
NODE_EXPORTER = pod_endpoint("192.168.0.2", "kube-system", "node-exporter-abcde",
                             {"app": "node-exporter"}, ("DaemonSet", "node-exporter"), "node-b",
                             host_network=True)
# Only an unstable label: advise cannot select it and says so.
ODD = pod_endpoint("10.0.1.8", "shop", "odd-7c9-x", {"pod-template-hash": "7c9"},
                   ("Deployment", "odd"), "node-a")

CART_SVC = ServiceRef("shop", "cart", 80, (CART_A, CART_B))
DNS_SVC = ServiceRef("kube-system", "kube-dns", 53, (COREDNS,))


def fact(src, dst, port, proto="TCP", service=None, count=1, age_s=0.0) -> ConnectionFact:
    return ConnectionFact(src, dst, port, proto, service, count, T0 - age_s)


FACTS = [
    fact(STOREFRONT_A, CART_A, 8080, service=CART_SVC, count=40),
    fact(STOREFRONT_B, CART_B, 8080, service=CART_SVC, count=35, age_s=5),
    fact(STOREFRONT_A, COREDNS, 53, "UDP", DNS_SVC, count=20),
    fact(CART_A, COREDNS, 53, "UDP", DNS_SVC, count=12, age_s=3),
    fact(CART_A, DB_0, 5432, count=30),
    fact(CART_B, DB_0, 5432, count=25),
    fact(CART_A, API, 443, count=4, age_s=60),
    fact(CART_B, MIRROR, 443, count=2, age_s=90),
    fact(LAPTOP, STOREFRONT_A, 8080, count=9),
    fact(NODE_A, STOREFRONT_A, 8080, count=100),   # kubelet probes from the own node
    fact(NODE_B, STOREFRONT_A, 8080, count=3),     # NodePort traffic SNATed by node-b
    fact(PROMETHEUS, CART_A, 9090, count=6),
    fact(PROMETHEUS, STOREFRONT_B, 8080, count=6),
    fact(REPORT, DB_0, 5432, count=1, age_s=3600),
    fact(STOREFRONT_A, API, 0, "ICMP", count=2),
    fact(ODD, CART_A, 8080, count=1),
    fact(CART_A, NODE_A, 10250, count=2),          # a pod calling its node's kubelet
    fact(PROMETHEUS, NODE_EXPORTER, 9100, count=6),
]
