"""NetworkPolicies reach the policy stage from both metadata sources: the API server's
list+watch (the fake API server, through the real `kubernetes` client) and the metadata file
(`kubectl get pods,services,endpointslices,nodes,namespaces,networkpolicies -A -o json`)."""

from __future__ import annotations

import json

import pytest
import yaml

from agent.config import PolicySection
from agent.enrich.k8s.filesource import FileSource
from agent.enrich.k8s.kubesource import KubeSource
from agent.enrich.k8s.state import ClusterState
from agent.enrich.names import FlowEnricher
from agent.policy.stage import PolicyStage
from agent.stats import AgentStats
from podflow_api.v1 import flow_pb2 as F
from tests.enrich import objs
from tests.enrich.fakeapi import FakeAPIServer
from tests.waiting import wait_until

CART, DB = "10.0.0.2", "10.0.0.5"


def db_policy(port="pg") -> dict:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "db-in", "namespace": "data"},
            "spec": {"podSelector": {"matchLabels": {"app": "db"}},
                     "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "shop"}}}],
                                  "ports": [{"port": port}]}]}}


def objects() -> list[dict]:
    db = objs.pod("db-0", DB, namespace="data", labels={"app": "db"})
    db["spec"]["containers"] = [{"name": "pg", "ports": [{"name": "pg", "containerPort": 5432}]}]
    return [objs.node("node-a", "172.18.0.2"),
            objs.pod("cart-1", CART, labels={"app": "cart"}),
            db,
            {"apiVersion": "v1", "kind": "Namespace",
             "metadata": {"name": "shop", "labels": {"team": "shop"}}}]


def verdict(state: ClusterState, stage: PolicyStage, sport: int) -> str:
    f = F.Flow()
    f.ip.source, f.ip.destination = CART, DB
    f.l4.tcp.source_port, f.l4.tcp.destination_port = sport, 5432
    FlowEnricher(state, None, judge=stage.judge).enrich([f])
    if not f.HasField("policy"):
        return "none"
    return F.PolicyVerdict.Name(f.policy.ingress.verdict)


def started_stage(state: ClusterState) -> PolicyStage:
    stage = PolicyStage.from_config(PolicySection(), state, AgentStats("node-a", "test"))
    stage.start()
    return stage


def test_the_file_source_reads_policies_namespaces_and_container_ports(tmp_path):
    path = tmp_path / "cluster.json"
    items = objects() + [{"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicyList",
                          "items": [{k: v for k, v in db_policy().items() if k != "kind"}]}]
    path.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))
    state = ClusterState()
    source = FileSource(str(path), state, AgentStats("node-a", "test"))
    source.load()
    stage = started_stage(state)
    assert state.pod_by_ip[DB].container_ports == (("pg", 5432, "TCP"),)
    assert verdict(state, stage, 40000) == "POLICY_ALLOWED"
    # The file is rewritten with the named port gone: reloaded, judged again.
    items[-1]["items"][0]["spec"]["ingress"][0]["ports"] = [{"port": "other"}]
    path.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))
    source.load()
    assert verdict(state, stage, 40000) == "POLICY_DENIED"


def test_a_malformed_policy_in_the_file_is_named_and_the_rest_still_loads(tmp_path):
    path = tmp_path / "cluster.yaml"
    bad = db_policy()
    bad["metadata"]["name"] = "bad"
    bad["spec"]["ingress"][0]["from"][0]["ipBlock"] = {"cidr": "10.0.0.0/8"}
    path.write_text(yaml.safe_dump_all(objects() + [db_policy(), bad]))
    state = ClusterState()
    FileSource(str(path), state, AgentStats("node-a", "test")).load()
    stage = started_stage(state)
    assert stage.feed.problems == {("data", "bad"): "NetworkPolicy data/bad: "
                                   "spec.ingress[0].from[0]: may not specify both ipBlock and "
                                   "another peer"}
    assert verdict(state, stage, 40001) == "POLICY_ALLOWED"


@pytest.fixture
def api():
    server = FakeAPIServer(bookmark_interval_s=0.3).start()
    yield server
    server.stop()


def _kube(api, tmp_path) -> tuple[ClusterState, AgentStats, KubeSource]:
    state, stats = ClusterState(), AgentStats("node-a", "test")
    source = KubeSource(state, stats, kubeconfig=api.write_kubeconfig(str(tmp_path / "kc")),
                        context="fake", sync_timeout_s=5.0)
    source.start()
    return state, stats, source


def test_the_watch_delivers_policies_and_their_changes(api, tmp_path):
    for obj in objects():
        api.create(obj)
    api.create(db_policy())
    state, _stats, source = _kube(api, tmp_path)
    try:
        stage = started_stage(state)
        assert verdict(state, stage, 40002) == "POLICY_ALLOWED"
        api.update(db_policy(port=9999))
        assert wait_until(lambda: verdict(state, stage, 40002) == "POLICY_DENIED", 5)
        api.delete("NetworkPolicy", "data", "db-in")
        assert wait_until(lambda: verdict(state, stage, 40002) == "POLICY_NOT_ISOLATED", 5)
    finally:
        source.stop()


def test_without_rbac_for_policies_records_carry_no_verdict(api, tmp_path, caplog):
    for obj in objects():
        api.create(obj)
    api.forbid("networkpolicies", "list")
    state, stats, source = _kube(api, tmp_path)
    try:
        stage = started_stage(state)
        assert verdict(state, stage, 40003) == "none"
        assert not stats.metadata_stale
        assert ("missing RBAC permission: list networkpolicies.networking.k8s.io (at cluster "
                "scope)") in stats.metadata_error
        assert "NetworkPolicy verdicts are not evaluated" in caplog.text
    finally:
        source.stop()
