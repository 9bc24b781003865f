"""`podflow policy advise` and `podflow policy what-if` as a user runs them, on flow logs
written the way the agent writes them (records enriched and judged by the agent's own
enrichment and policy stage) and a metadata file as `kubectl get ... -o json` prints it.
The lab-recorded round trip (real traffic, real enforcement) is tests/policy/test_lab.py."""

from __future__ import annotations

import json

import pytest
import yaml

from agent import cli
from agent.config import PolicySection
from agent.enrich.conntrack import Conntrack, Entry, Tuple5
from agent.enrich.k8s.filesource import FileSource
from agent.enrich.k8s.state import ClusterState
from agent.enrich.names import FlowEnricher
from agent.policy.load import load_policies
from agent.policy.stage import PolicyStage
from agent.stats import AgentStats
from agent.wire import logformat
from agent.wire.timefmt import set_ts
from podflow_api.v1 import flow_pb2 as F
from tests.enrich import objs

FRONTEND, CART, DB, VIP, WORLD = "10.244.1.2", "10.244.2.2", "10.244.2.5", "10.96.0.12", \
    "93.184.216.34"
T0 = 1_800_000_000 * 10**9


def deployment_pod(name, ip, namespace, app, node, ports=()):
    pod = objs.pod(f"{app}-5f4d8c9b7-{name}", ip, namespace=namespace, node=node,
                   labels={"app": app, "pod-template-hash": "5f4d8c9b7"},
                   owner=("ReplicaSet", f"{app}-5f4d8c9b7"))
    pod["spec"]["containers"] = [{"name": app, "ports": [
        {"name": n, "containerPort": p} for n, p in ports]}]
    return pod


def metadata(tmp_path, policies=()) -> str:
    items = [
        objs.node("node-a", "172.18.0.2", "10.244.1.0/24"),
        objs.node("node-b", "172.18.0.3", "10.244.2.0/24"),
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}},
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "data"}},
        deployment_pod("a", FRONTEND, "shop", "frontend", "node-a"),
        deployment_pod("b", CART, "shop", "cart", "node-b", [("http", 8080)]),
        deployment_pod("c", DB, "data", "db", "node-b", [("pg", 5432)]),
        objs.service("cart", VIP),
        objs.endpointslice("cart", [(CART, "cart-5f4d8c9b7-b", True)], node="node-b"),
        *policies,
    ]
    path = tmp_path / "cluster.json"
    path.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))
    return str(path)


def record(src, sport, dst, dport, t_s, direction=F.FROM_POD, outcome=F.ESTABLISHED):
    f = F.Flow(node_name="node-a", traffic_direction=direction, observation_point=F.POD_VETH,
               verdict=F.FORWARDED, outcome=outcome, packets=3, bytes=300)
    set_ts(f.time, T0 + t_s * 10**9)
    set_ts(f.last_seen, T0 + t_s * 10**9)
    f.ip.source, f.ip.destination = src, dst
    f.l4.tcp.source_port, f.l4.tcp.destination_port = sport, dport
    return f


def flow_log(tmp_path, meta: str) -> str:
    """Three connections, as the agents record them: frontend -> Service cart (DNAT to the
    cart pod, conntrack knows), cart -> db, frontend -> the world; requests and replies."""
    state = ClusterState()
    FileSource(meta, state, AgentStats("node-a", "test")).load()
    stage = PolicyStage.from_config(PolicySection(), state, AgentStats("node-a", "test"))
    stage.start()
    ct = Conntrack()
    ct._remember(Entry(Tuple5(6, FRONTEND, 40000, VIP, 80), Tuple5(6, CART, 8080, FRONTEND, 40000)), 0)
    ct._remember(Entry(Tuple5(6, FRONTEND, 40001, VIP, 80), Tuple5(6, CART, 8080, FRONTEND, 40001)), 0)
    flows = [record(FRONTEND, 40000, VIP, 80, 1), record(VIP, 80, FRONTEND, 40000, 1, F.TO_POD),
             record(FRONTEND, 40001, VIP, 80, 2), record(CART, 45000, DB, 5432, 3),
             record(DB, 5432, CART, 45000, 3, F.TO_POD), record(FRONTEND, 50000, WORLD, 443, 4)]
    FlowEnricher(state, ct, judge=stage.judge).enrich(flows)
    assert all(f.HasField("policy") for f in flows)
    path = tmp_path / "flows.jsonl"
    with open(path, "wb") as fh:
        fh.write(logformat.header_line(logformat.header_fields(node_name="node-a")))
        for f in flows:
            fh.write(logformat.flow_line(f))
    return str(path)


def podflow(capsys, *argv) -> tuple[int, str, str]:
    status = cli.main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


@pytest.fixture
def recorded(tmp_path):
    meta = metadata(tmp_path)
    return tmp_path, meta, flow_log(tmp_path, meta)


def test_advise_writes_policies_kubectl_takes(recorded, capsys):
    tmp_path, meta, flows = recorded
    status, out, err = podflow(capsys, "policy", "advise", "--file", flows, "--metadata", meta)
    assert status == 0, err
    loaded = load_policies(out)
    assert not loaded.problems
    assert [p.ref for p in loaded.policies] == ["data/podflow-deployment-db",
                                                "shop/podflow-deployment-cart",
                                                "shop/podflow-deployment-frontend"]
    docs = [d for d in yaml.safe_load_all(out) if d]
    frontend = next(d for d in docs if d["metadata"]["name"] == "podflow-deployment-frontend")
    assert frontend["spec"]["podSelector"] == {"matchLabels": {"app": "frontend"}}
    assert {"to": [{"podSelector": {"matchLabels": {"app": "cart"}}}],
            "ports": [{"protocol": "TCP", "port": 8080}]} in frontend["spec"]["egress"]
    assert "# Service shop/cart" in out and "3 policies from 3 connection shapes" in err


def test_advise_only_one_namespace(recorded, capsys):
    _tmp, meta, flows = recorded
    status, out, _err = podflow(capsys, "policy", "advise", "-n", "data", "--file", flows,
                                "--metadata", meta)
    assert status == 0
    assert [p.ref for p in load_policies(out).policies] == ["data/podflow-deployment-db"]


def test_the_advice_applied_through_what_if_denies_nothing(recorded, capsys):
    tmp_path, meta, flows = recorded
    _status, advice, _err = podflow(capsys, "policy", "advise", "--file", flows, "--metadata", meta)
    path = tmp_path / "advice.yaml"
    path.write_text(advice)
    status, out, err = podflow(capsys, "policy", "what-if", str(path), "--file", flows,
                               "--metadata", meta)
    assert status == 0, out + err
    assert "3 policies added, 0 replaced; 3 recorded connection shapes" in out
    assert "newly DENIED: 0 shapes, 0 connections" in out


def test_without_one_rule_what_if_names_the_connections_it_allowed(recorded, capsys):
    tmp_path, meta, flows = recorded
    _status, advice, _err = podflow(capsys, "policy", "advise", "--file", flows, "--metadata", meta)
    docs = [d for d in yaml.safe_load_all(advice) if d]
    cart = next(d for d in docs if d["metadata"]["name"] == "podflow-deployment-cart")
    cart["spec"]["ingress"] = []    # the rule that let the frontend in
    path = tmp_path / "candidate.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    status, out, _err = podflow(capsys, "policy", "what-if", str(path), "--file", flows,
                                "--metadata", meta)
    assert status == 1
    denied = out.split("newly DENIED: ", 1)[1].split("newly allowed", 1)[0]
    assert denied.startswith("1 shapes, 2 connections")
    assert ("shop/frontend -> shop/cart TCP/8080 via Service shop/cart: 2 connections, last seen "
            "2027-01-15T08:00:02Z; ingress denied by shop/podflow-deployment-cart") in denied


def test_what_if_judges_against_the_current_policies(tmp_path, capsys):
    current = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
               "metadata": {"name": "db-deny", "namespace": "data"},
               "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}}
    meta = metadata(tmp_path, [current])
    flows = flow_log(tmp_path, meta)
    allow = dict(current, spec={"podSelector": {}, "ingress": [{}]})
    path = tmp_path / "allow.yaml"
    path.write_text(yaml.safe_dump(allow))
    status, out, _err = podflow(capsys, "policy", "what-if", str(path), "--file", flows,
                                "--metadata", meta)
    assert status == 0
    assert "0 policies added, 1 replaced" in out
    assert "newly allowed: 1 shapes, 1 connections" in out
    assert "shop/cart -> data/db TCP/5432" in out


def test_a_malformed_candidate_is_named_with_its_field_and_the_rest_evaluated(recorded, capsys):
    tmp_path, meta, flows = recorded
    path = tmp_path / "candidates.yaml"
    path.write_text("""
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: bad, namespace: shop}
spec:
  podSelector: {}
  ingress:
  - ports: [{port: HTTP}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db-closed, namespace: data}
spec:
  podSelector: {}
  policyTypes: [Ingress]
""")
    status, out, _err = podflow(capsys, "policy", "what-if", str(path), "--file", flows,
                                "--metadata", meta)
    assert status == 1   # the good one still denies cart -> db
    assert ('ERROR: NetworkPolicy shop/bad: spec.ingress[0].ports[0].port: "HTTP" is not a valid '
            "port name") in out
    assert "shop/cart -> data/db TCP/5432: 1 connection" in out


@pytest.mark.parametrize("argv,message", [
    (["policy", "advise", "--metadata", "none"], "give at least one --server or --file"),
    (["policy", "what-if", "/nonexistent.yaml", "--file", "x", "--metadata", "none"],
     "/nonexistent.yaml: cannot read: No such file or directory"),
    (["policy", "advise", "--file", "/nonexistent.jsonl", "--metadata", "none"],
     "--file /nonexistent.jsonl: cannot read"),
    (["policy", "advise", "--file", "x", "--metadata", "/nonexistent.json"],
     "--metadata /nonexistent.json: cannot read"),
])
def test_bad_input_is_named(argv, message, capsys):
    status, _out, err = podflow(capsys, *argv)
    assert status == 2
    assert message in err
