"""The cluster cache and its address indexes: what an IP, a ClusterIP:port or a NodePort is."""

from __future__ import annotations

import pytest

from agent.enrich.k8s.state import ClusterState
from tests.enrich import objs
from podflow_api.v1 import flow_pb2


def build(*items: dict) -> ClusterState:
    state = ClusterState()
    for item in items:
        state.apply(item["kind"], "ADDED", item)
    return state


WORKLOADS = [
    pytest.param([objs.pod("web-7d9f-x", "10.0.0.1", labels={"pod-template-hash": "7d9f"},
                           owner=("ReplicaSet", "web-7d9f")),
                  objs.replicaset("web-7d9f", "web")], ("Deployment", "web"), id="replicaset-to-deployment"),
    pytest.param([objs.pod("web-7d9f-x", "10.0.0.1", labels={"pod-template-hash": "7d9f"},
                           owner=("ReplicaSet", "web-7d9f"))], ("Deployment", "web"),
                 id="deployment-from-template-hash-without-replicaset"),
    pytest.param([objs.pod("rs-x", "10.0.0.1", owner=("ReplicaSet", "rs")), objs.replicaset("rs", None)],
                 ("ReplicaSet", "rs"), id="bare-replicaset"),
    pytest.param([objs.pod("db-0", "10.0.0.1", owner=("StatefulSet", "db"))], ("StatefulSet", "db"), id="statefulset"),
    pytest.param([objs.pod("agent-x", "10.0.0.1", owner=("DaemonSet", "agent"))], ("DaemonSet", "agent"), id="daemonset"),
    pytest.param([objs.pod("backup-123-x", "10.0.0.1", owner=("Job", "backup-123")), objs.job("backup-123", "backup")],
                 ("CronJob", "backup"), id="job-to-cronjob"),
    pytest.param([objs.pod("once-x", "10.0.0.1", owner=("Job", "once"))], ("Job", "once"), id="job-without-object"),
    pytest.param([objs.pod("lonely", "10.0.0.1")], ("Pod", "lonely"), id="bare-pod"),
]


@pytest.mark.parametrize("items,expected", WORKLOADS)
def test_workload(items, expected):
    peer = build(*items).peer("10.0.0.1")
    assert (peer.endpoint.workload.kind, peer.endpoint.workload.name) == expected


def test_owner_arriving_later_renames_the_workload():
    state = build(objs.pod("x", "10.0.0.1", owner=("Job", "backup-1")))
    assert state.peer("10.0.0.1").endpoint.workload.kind == "Job"
    state.apply("Job", "ADDED", objs.job("backup-1", "backup"))
    assert state.peer("10.0.0.1").endpoint.workload.kind == "CronJob"


def test_pod_endpoint_fields():
    state = build(objs.pod("cart-1", "10.0.0.2", labels={"tier": "be", "app": "cart"}, node="node-b"))
    ep = state.peer("10.0.0.2").endpoint
    assert ep.kind == flow_pb2.POD
    assert (ep.namespace, ep.pod_name, ep.node_name, ep.host_network) == ("shop", "cart-1", "node-b", False)
    assert list(ep.labels) == ["app=cart", "tier=be"]


IP_REUSE = [
    pytest.param([objs.pod("old", "10.0.0.5", phase="Succeeded", created="2026-11-21T08:00:00Z"),
                  objs.pod("new", "10.0.0.5", created="2026-11-21T09:00:00Z")], "new", id="finished-pod-loses-its-ip"),
    pytest.param([objs.pod("new", "10.0.0.5", created="2026-11-21T09:00:00Z"),
                  objs.pod("old", "10.0.0.5", phase="Failed", created="2026-11-21T08:00:00Z")], "new",
                 id="failed-pod-arriving-late-does-not-win"),
    pytest.param([objs.pod("a", "10.0.0.5", created="2026-11-21T08:00:00Z"),
                  objs.pod("b", "10.0.0.5", created="2026-11-21T09:00:00Z")], "b", id="latest-live-pod-wins"),
    pytest.param([objs.pod("b", "10.0.0.5", created="2026-11-21T09:00:00Z"),
                  objs.pod("a", "10.0.0.5", created="2026-11-21T08:00:00Z")], "b", id="order-of-events-does-not-matter"),
    pytest.param([objs.pod("done", "10.0.0.5", phase="Succeeded")], None, id="only-finished-pod-is-world"),
]


@pytest.mark.parametrize("items,expected", IP_REUSE)
def test_reused_ip(items, expected):
    peer = build(*items).peer("10.0.0.5")
    assert (peer.endpoint.pod_name or None) == expected


def test_deleting_the_winner_promotes_the_other_claim():
    state = build(objs.pod("a", "10.0.0.5", created="2026-11-21T08:00:00Z"),
                  objs.pod("b", "10.0.0.5", created="2026-11-21T09:00:00Z"))
    state.apply("Pod", "DELETED", objs.pod("b", "10.0.0.5"))
    assert state.peer("10.0.0.5").endpoint.pod_name == "a"
    state.apply("Pod", "DELETED", objs.pod("a", "10.0.0.5"))
    assert state.peer("10.0.0.5").kind == flow_pb2.WORLD


def test_relabel_replaces_the_endpoint():
    state = build(objs.pod("a", "10.0.0.5", labels={"v": "1"}))
    assert list(state.peer("10.0.0.5").endpoint.labels) == ["v=1"]
    state.apply("Pod", "MODIFIED", objs.pod("a", "10.0.0.5", labels={"v": "2"}))
    assert list(state.peer("10.0.0.5").endpoint.labels) == ["v=2"]


def test_nodes_and_host_network_pods():
    state = build(objs.node("node-a", "172.18.0.2"),
                  objs.pod("exporter", "172.18.0.2", host_network=True),
                  objs.pod("hn-elsewhere", "172.18.0.9", host_network=True, node="node-z"))
    node = state.peer("172.18.0.2")
    assert (node.kind, node.endpoint.node_name) == (flow_pb2.NODE, "node-a")
    # A host-network pod on a node without a Node object is still named.
    other = state.peer("172.18.0.9")
    assert (other.endpoint.pod_name, other.endpoint.host_network) == ("hn-elsewhere", True)
    assert state.peer("8.8.8.8").kind == flow_pb2.WORLD


def test_pod_cidr_gateway_is_the_node_unless_a_pod_has_it():
    state = build(objs.node("node-a", "172.18.0.2", pod_cidr="10.244.1.0/24"))
    gateway = state.peer("10.244.1.1")
    assert (gateway.kind, gateway.node_name) == (flow_pb2.NODE, "node-a")
    assert state.peer("10.244.1.9").kind == flow_pb2.WORLD
    state.apply("Pod", "ADDED", objs.pod("odd", "10.244.1.1"))
    assert state.peer("10.244.1.1").kind == flow_pb2.POD


def test_replace_removes_missing_objects():
    state = build(objs.pod("a", "10.0.0.1"), objs.pod("b", "10.0.0.2"))
    state.replace("Pod", [objs.pod("b", "10.0.0.2")])
    assert state.peer("10.0.0.1").kind == flow_pb2.WORLD
    assert state.peer("10.0.0.2").endpoint.pod_name == "b"


SERVICES = [
    pytest.param(("10.96.0.12", 80, "TCP"), "cart", id="clusterip"),
    pytest.param(("10.96.0.12", 81, "TCP"), None, id="clusterip-other-port"),
    pytest.param(("10.96.0.12", 80, "UDP"), None, id="clusterip-other-protocol"),
    pytest.param(("172.18.0.2", 30080, "TCP"), "web", id="nodeport-on-node-ip"),
    pytest.param(("10.0.0.99", 30080, "TCP"), None, id="nodeport-on-non-node-ip"),
    pytest.param(("203.0.113.7", 443, "TCP"), "lb", id="external-ip"),
]


@pytest.mark.parametrize("address,expected", SERVICES)
def test_service_at(address, expected):
    state = build(objs.node("node-a", "172.18.0.2"),
                  objs.service("cart", "10.96.0.12"),
                  objs.service("web", "10.96.0.13", type_="NodePort", node_ports=[30080]),
                  objs.service("lb", "10.96.0.14", [(443, 8443)], type_="LoadBalancer",
                               node_ports=[31443], external_ips=["203.0.113.7"]))
    hit = state.service_at(*address)
    assert (hit[0].name if hit else None) == expected


def test_service_endpoints_follow_slices():
    state = build(objs.service("cart", "10.96.0.12"))
    svc = state.service_at("10.96.0.12", 80, "TCP")[0]
    assert not state.has_endpoints(svc)
    state.apply("EndpointSlice", "ADDED", objs.endpointslice("cart", [("10.0.0.2", "cart-1", False)]))
    assert not state.has_endpoints(svc)  # not ready
    state.apply("EndpointSlice", "MODIFIED", objs.endpointslice("cart", [("10.0.0.2", "cart-1", True)]))
    assert state.has_endpoints(svc)
    state.apply("EndpointSlice", "DELETED", objs.endpointslice("cart", []))
    assert not state.has_endpoints(svc)


def test_service_deleted_leaves_no_index():
    state = build(objs.service("cart", "10.96.0.12"))
    state.apply("Service", "DELETED", objs.service("cart", "10.96.0.12"))
    assert state.service_at("10.96.0.12", 80, "TCP") is None


def test_headless_service_from_slices():
    state = build(objs.service("db", None, [(5432, 5432)]),
                  objs.endpointslice("db", [("10.0.0.7", "db-0", True)], ports=[5432]))
    assert state.headless_at("10.0.0.7", 5432, "TCP").name == "db"
    assert state.headless_at("10.0.0.7", 22, "TCP") is None
    assert state.service_at("10.0.0.7", 5432, "TCP") is None


def test_changes_podflow_does_not_use_keep_the_generation():
    state = build(objs.pod("a", "10.0.0.5"))
    generation = state.generation
    heartbeat = objs.pod("a", "10.0.0.5")
    heartbeat["status"]["conditions"] = [{"type": "Ready", "status": "True"}]
    state.apply("Pod", "MODIFIED", heartbeat)
    assert state.generation == generation  # cached names stay valid
    state.apply("Pod", "MODIFIED", objs.pod("a", "10.0.0.5", labels={"v": "2"}))
    assert state.generation > generation
