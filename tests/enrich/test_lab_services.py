"""Services on lab nodes, end to end: real `podflow agent` processes (eBPF on the pods'
veths, --metadata FILE from the lab, conntrack in the node) and real connections through
kube-proxy-shaped DNAT. Each connection must be attributed to the right Service and to the
backend that really served it, which the server itself says (it answers with its pod name).
"""

from __future__ import annotations

import json
import os
import time

import pytest

from agent.lab import Lab

pytestmark = pytest.mark.root

CART_VIP, EMPTY_VIP = "10.96.0.12", "10.96.0.20"
NODE_PORT = 30080
# --flow-log-every-point: these tests hold each veth's records against what it carried
AGENT_ARGS = ("--active-timeout", "1", "--idle-timeout", "2", "--sweep-interval", "0.2",
              "--flow-log-every-point")

def request(host, ip: str, port: int, timeout_s: float = 3.0) -> tuple[int, str]:
    """(client port, name of the pod that answered or "-")."""
    reply = host.request(ip, port, payload="hello", timeout_s=timeout_s)
    return reply.local_port, reply.name or "-"


@pytest.fixture(scope="module")
def cluster(ebpf_ready, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("k8slab")
    with Lab(f"k8ssv{os.getpid() % 10000}") as lab:
        a = lab.add_node("node-a", kind="bridge", pod_cidr="10.244.1.0/24")
        b = lab.add_node("node-b", kind="routed", pod_cidr="10.244.2.0/24")
        frontend = a.add_pod("shop", "frontend-1", labels={"app": "frontend"},
                             owner=("Deployment", "frontend"))
        cart1 = a.add_pod("shop", "cart-1", labels={"app": "cart"}, owner=("Deployment", "cart"))
        cart2 = b.add_pod("shop", "cart-2", labels={"app": "cart"}, owner=("Deployment", "cart"))
        db0 = b.add_pod("shop", "db-0", labels={"app": "db"}, owner=("StatefulSet", "db"))
        web1 = a.add_pod("shop", "web-1", labels={"app": "web"})
        for pod in (cart1, cart2, web1):
            pod.serve(8080)
        db0.serve(5432)
        lab.add_service("shop", "cart", cluster_ip=CART_VIP, port=80,
                        backends=[(cart1, 8080), (cart2, 8080)])
        lab.add_service("shop", "db", headless=True, port=5432, backends=[(db0, 5432)])
        lab.add_service("shop", "web", cluster_ip="10.96.0.30", port=80,
                        backends=[(web1, 8080)], node_port=NODE_PORT)
        lab.add_service("shop", "empty", cluster_ip=EMPTY_VIP, port=80, backends=[])
        outside = lab.add_outside_host("client")
        meta = str(tmp / "metadata.json")
        lab.write_metadata(meta)
        logs = {}
        for node in (a, b):
            logs[node.name] = str(tmp / f"{node.name}.flows.jsonl")
            node.start_agent("--flow-log", logs[node.name], *AGENT_ARGS, metadata_file=meta)
        lab.metadata_path = meta  # for tests that change the cluster
        yield lab, outside, logs


def read_flows(path: str) -> list[dict]:
    flows = []
    try:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                if line.endswith("\n"):
                    obj = json.loads(line)
                    if "flow" in obj:
                        flows.append(obj["flow"])
    except FileNotFoundError:
        pass
    return flows


def wait_for_flows(path: str, predicate, count: int = 1, timeout_s: float = 20.0) -> list[dict]:
    deadline = time.monotonic() + timeout_s
    while True:
        found = [f for f in read_flows(path) if predicate(f)]
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.3)


def ports(flow: dict) -> tuple[int, int]:
    l4 = flow.get("l4", {})
    inner = l4.get("tcp") or l4.get("udp") or {}
    return inner.get("source_port", 0), inner.get("destination_port", 0)


def involves(flow: dict, ip: str, port: int) -> bool:
    """The record belongs to the connection from ip:port (either direction)."""
    sport, dport = ports(flow)
    return (flow["ip"]["source"], sport) == (ip, port) or (flow["ip"]["destination"], dport) == (ip, port)


def test_every_clusterip_connection_names_service_and_the_backend_that_served_it(cluster):
    lab, _outside, logs = cluster
    frontend = lab.pod("shop", "frontend-1")
    served = [request(frontend, CART_VIP, 80) for _ in range(6)]
    while {name for _, name in served} != {"cart-1", "cart-2"} and len(served) < 30:
        served.append(request(frontend, CART_VIP, 80))  # kube-proxy picks at random
    assert {name for _, name in served} == {"cart-1", "cart-2"}, "both backends must serve"
    for client_port, name in served:
        backend = lab.pod("shop", name)
        # node-a: the client's veth sees client->VIP and VIP->client, and when cart-1 (also on
        # node-a) served, its veth sees the translated packets: all of them are one hop.
        expected_a = 4 if backend.node.name == "node-a" else 2
        flows = wait_for_flows(logs["node-a"], lambda f, p=client_port: involves(f, frontend.ip, p)
                               and f.get("observation_point") == "POD_VETH", count=expected_a)
        assert len(flows) >= expected_a, f"connection {client_port} -> {name}: {flows}"
        for f in flows:
            assert f.get("service", {}).get("name") == "cart", f
            assert f["service"]["namespace"] == "shop" and f["service"]["ip"] == CART_VIP
            assert f["service"]["port"] == 80
            assert f.get("backend", {}).get("pod_name") == name, f
            assert f["backend"]["node_name"] == backend.node.name
            assert f["backend"]["ip"] == backend.ip and f["backend"]["port"] == 8080
            assert f["category"] == "POD_TO_SERVICE"
            assert f["translation"]["original_ip"] == CART_VIP
            assert f["translation"]["translated_ip"] == backend.ip
            assert {f["source"].get("pod_name"), f["destination"].get("pod_name")} == {"frontend-1", name}
        if backend.node.name == "node-b":
            # Across nodes: node-b saw plain pod-to-pod traffic at cart-2's veth (the DNAT
            # happened on node-a), named on both ends.
            remote = wait_for_flows(logs["node-b"], lambda f, p=client_port: involves(f, frontend.ip, p)
                                    and f["interface"]["name"] == backend.host_ifname)
            assert remote and remote[0]["category"] == "POD_TO_POD_CROSS_NODE"
            assert remote[0]["source"].get("pod_name") in ("frontend-1", "cart-2")


def test_nodeport_from_outside_names_service_and_backend(cluster):
    lab, outside, logs = cluster
    node_a, web1 = lab.node("node-a"), lab.pod("shop", "web-1")
    _port, name = request(outside, node_a.ip, NODE_PORT)
    assert name == "web-1"
    flows = wait_for_flows(logs["node-a"], lambda f: f.get("service", {}).get("name") == "web"
                           and f["interface"]["name"] == web1.host_ifname, count=2)
    assert flows, "no NodePort records"
    for f in flows:
        assert f["category"] == "OUTSIDE_TO_SERVICE"
        assert (f["service"]["ip"], f["service"]["port"], f["service"]["type"]) == (node_a.ip, NODE_PORT, "NodePort")
        assert f["backend"]["pod_name"] == "web-1"
        assert f["translation"]["translated_port"] == 8080
        # kube-proxy masqueraded the outside client to node-a's address on cni0.
        peer = f["destination"] if f["source"].get("pod_name") == "web-1" else f["source"]
        assert (peer["kind"], peer["node_name"]) == ("NODE", "node-a")


def test_headless_service_is_named_from_its_endpointslices(cluster):
    lab, _outside, logs = cluster
    frontend, db0 = lab.pod("shop", "frontend-1"), lab.pod("shop", "db-0")
    client_port, name = request(frontend, db0.ip, 5432)
    assert name == "db-0"
    flows = wait_for_flows(logs["node-a"], lambda f: involves(f, frontend.ip, client_port)
                           and f["interface"]["name"] == frontend.host_ifname, count=2)
    assert flows
    for f in flows:
        assert (f["service"]["name"], f["service"]["type"]) == ("db", "Headless")
        assert f["backend"]["pod_name"] == "db-0"
        assert f["category"] == "POD_TO_SERVICE"
        assert "translation" not in f


def test_service_without_endpoints_shows_the_failed_attempt(cluster):
    lab, _outside, logs = cluster
    frontend = lab.pod("shop", "frontend-1")
    client_port, name = request(frontend, EMPTY_VIP, 80, timeout_s=1.0)
    assert name == "-"
    flows = wait_for_flows(logs["node-a"], lambda f: involves(f, frontend.ip, client_port))
    assert flows
    f = flows[0]
    assert (f["service"]["name"], f["service"]["no_endpoints"]) == ("empty", True)
    assert f["category"] == "POD_TO_SERVICE"
    assert f["destination"]["kind"] == "SERVICE_IP"
    assert "backend" not in f


def test_pod_to_pod_and_workloads(cluster):
    lab, _outside, logs = cluster
    frontend, cart1 = lab.pod("shop", "frontend-1"), lab.pod("shop", "cart-1")
    client_port, name = request(frontend, cart1.ip, 8080)
    assert name == "cart-1"
    flows = wait_for_flows(logs["node-a"], lambda f: involves(f, frontend.ip, client_port)
                           and f["interface"]["name"] == frontend.host_ifname)
    f = flows[0]
    assert f["category"] == "POD_TO_POD_SAME_NODE"
    assert "service" not in f
    src = f["source"] if f["source"].get("pod_name") == "frontend-1" else f["destination"]
    assert src["workload"] == {"kind": "Deployment", "name": "frontend"}
    assert src["labels"] == ["app=frontend"] and src["node_name"] == "node-a"


def test_pod_added_later_is_named_once_the_metadata_file_says_so(cluster):
    lab, _outside, logs = cluster
    late = lab.node("node-a").add_pod("shop", "late-1", labels={"app": "late"},
                                      owner=("DaemonSet", "late"))
    lab.write_metadata(lab.metadata_path)
    time.sleep(1.5)  # the agent polls the file every 0.5 s
    cart1 = lab.pod("shop", "cart-1")
    client_port, name = request(late, cart1.ip, 8080)
    assert name == "cart-1"
    flows = wait_for_flows(logs["node-a"], lambda f: involves(f, late.ip, client_port)
                           and f["interface"]["name"] == late.host_ifname)
    assert flows
    src = flows[0]["source"] if flows[0]["source"].get("pod_name") == "late-1" else flows[0]["destination"]
    assert (src["pod_name"], src["workload"]["kind"], src["workload"]["name"]) == ("late-1", "DaemonSet", "late")
