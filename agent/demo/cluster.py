"""The demo cluster's shape: which nodes, namespaces, pods, Services, DNS, outside hosts and
NetworkPolicies (one enforced, one not) `podflow demo` builds on the lab, and one agent per
node on it.

Kept in one place with the roles (`Cluster.pods["frontend"]`, ...) so the traffic plan, the
summary's expectations, the tests and the benchmark all name the same pods.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field

from agent.lab import Lab, LabError, replicaset_name

CART_IP, STOREFRONT_IP, DNS_IP = "10.96.0.20", "10.96.0.30", "10.96.0.10"
NODE_PORT = 30080
APP_PORT, DB_PORT, WORLD_PORT = 8080, 5432, 443


def _in(namespace: str, **labels: str) -> dict:
    """A peer: pods with `labels` in the namespace of that name."""
    return {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
            "podSelector": {"matchLabels": labels}}


DB_POLICY = {
    "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
    "metadata": {"name": "db-ingress", "namespace": "data"},
    "spec": {"podSelector": {"matchLabels": {"app": "db"}}, "policyTypes": ["Ingress"],
             "ingress": [{"from": [_in("shop", tier="backend"), _in("batch")],
                          "ports": [{"port": "postgres"}]}]}}
PROBER_POLICY = {
    "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
    "metadata": {"name": "prober-egress", "namespace": "monitoring",
                 "annotations": {"podflow.lab/enforced": "false"}},
    "spec": {"podSelector": {"matchLabels": {"app": "prober"}}, "policyTypes": ["Egress"],
             "egress": [{"to": [_in("web", app="storefront")], "ports": [{"port": APP_PORT}]}]}}


@dataclass
class Cluster:
    """What the demo built, by role, so traffic, the summary and the tests agree."""

    lab: Lab
    pods: dict[str, object] = field(default_factory=dict)         # role -> Pod
    carts: list = field(default_factory=list)                     # cart Service backends
    load_pods: list = field(default_factory=list)
    services: dict[str, object] = field(default_factory=dict)
    outside: object = None
    world: object = None
    agents: list = field(default_factory=list)
    flow_logs: dict[str, str] = field(default_factory=dict)
    traffic: list = field(default_factory=list)                   # (name, Popen)
    metadata_file: str = ""                                       # what the agents read


def pod_name(deployment: str, n: int) -> str:
    """A Deployment's n-th pod named as Kubernetes would (`<replicaset>-<5 chars>`), the same
    every run so tests and screenshots can name it."""
    alphabet = "bcdfghjklmnpqrstvwxz2456789"
    seed = sum(ord(c) for c in deployment) * 31 + n * 7919
    suffix = "".join(alphabet[(seed // (27 ** i)) % 27] for i in range(5))
    return f"{replicaset_name(deployment)}-{suffix}"


def build_cluster(lab: Lab, nodes: int, pods_per_node: int) -> Cluster:
    """Nodes, namespaces, Deployments' pods, the Services, DNS, the outside world, the drop."""
    c = Cluster(lab=lab)
    names = [f"node-{chr(ord('a') + i)}" if i < 26 else f"node-{i}" for i in range(nodes)]
    node_objs = [lab.add_node(name, kind="bridge" if i % 2 == 0 else "routed",
                              pod_cidr=f"10.244.{i + 1}.0/24") for i, name in enumerate(names)]
    a, b = node_objs[0], node_objs[1 % nodes]

    def pod(role, node, ns, deploy, labels, n=0, kind="Deployment", ports=None):
        name = pod_name(deploy, n) if kind == "Deployment" else (
            f"{deploy}-{n}" if kind == "StatefulSet" else f"{deploy}-{pod_name(deploy, n)[-5:]}")
        p = node.add_pod(ns, name, labels={**labels}, owner=(kind, deploy), ports=ports)
        c.pods[role] = p
        return p

    lab.add_dns_server(node=a, cluster_ip=DNS_IP, pod_name=pod_name("coredns", 0))
    c.pods["dns"] = lab.dns.pod
    pod("frontend", a, "shop", "frontend", {"app": "frontend", "tier": "web"})
    pod("checkout", b, "shop", "checkout", {"app": "checkout", "tier": "backend"})
    for i, node in enumerate(node_objs):
        cart = pod(f"cart-{i}", node, "shop", "cart", {"app": "cart", "tier": "backend"}, n=i)
        c.carts.append(cart)
    storefront = pod("storefront", b, "web", "storefront", {"app": "storefront"})
    db = pod("db", b, "data", "db", {"app": "db"}, kind="StatefulSet",
             ports=[("postgres", DB_PORT, "TCP")])
    pod("reporter", a, "batch", "reporter", {"app": "reporter", "job-name": "reporter"},
        kind="Job")
    pod("prober", b, "monitoring", "prober", {"app": "prober"}, kind="DaemonSet")
    for node in node_objs:
        for j in range(pods_per_node):
            p = node.add_pod("load", pod_name(f"loadgen-{node.name}", j),
                             labels={"app": "loadgen"}, owner=("Deployment", "loadgen"))
            c.load_pods.append(p)

    for p in c.carts + [storefront]:
        p.serve(APP_PORT)
    db.serve(DB_PORT)
    c.services["cart"] = lab.add_service("shop", "cart", cluster_ip=CART_IP, port=80,
                                         backends=[(p, APP_PORT) for p in c.carts],
                                         port_name="http")
    c.services["storefront"] = lab.add_service("web", "storefront", cluster_ip=STOREFRONT_IP,
                                               port=80, backends=[(storefront, APP_PORT)],
                                               node_port=NODE_PORT, port_name="http")
    c.services["db"] = lab.add_service("data", "db", headless=True, port=DB_PORT,
                                       backends=[(db, DB_PORT)], port_name="postgres")
    c.services["dns"] = lab.dns.service
    c.outside = lab.add_outside_host("laptop")
    c.world = lab.add_outside_host("internet")
    c.world.serve(WORLD_PORT, name="internet")
    # NetworkPolicies: the database takes connections from the shop's backends and the
    # batch jobs only, so the frontend's are dropped (the lab enforces it as a CNI would);
    # the prober may only check the storefront, but the lab does not enforce that one, so
    # its checks of a cart pod get through: podflow calls it NOT enforced.
    lab.add_network_policy(DB_POLICY)
    lab.add_network_policy(PROBER_POLICY, enforce=False)
    return c


def start_agents(c: Cluster, run_dir: str, flow_log_dir: str | None) -> None:
    """One agent per node, in parallel (each compiles its eBPF programs)."""
    meta = c.metadata_file = c.lab.write_metadata(os.path.join(run_dir, "metadata.json"))
    log_dir = flow_log_dir or run_dir
    errors: list[LabError] = []
    # Each agent's Hubble API on a socket, and the others' as its Hubble peers, so one Hubble
    # Relay pointed at any agent reads them all (README, "Use the Hubble tools").
    hubble = {n.name: os.path.join(run_dir, f"{n.name}.hubble.sock") for n in c.lab.nodes}

    def start(node):
        path = os.path.join(log_dir, f"{node.name}.jsonl")
        c.flow_logs[node.name] = path
        peers = [f"--hubble-peer={name}=unix:{sock}" for name, sock in hubble.items()
                 if name != node.name]
        try:
            c.agents.append(node.start_agent("--flow-log", path, "--drop-cidr",
                                             str(c.lab.cluster_cidr), "--hubble-listen",
                                             f"unix:{hubble[node.name]}", *peers,
                                             metadata_file=meta, timeout_s=180))
        except LabError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(n,)) for n in c.lab.nodes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    c.agents.sort(key=lambda a: a.node.name)
