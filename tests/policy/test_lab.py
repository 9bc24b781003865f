"""NetworkPolicy end to end on the lab: the lab enforces policies in iptables the way a CNI
does (agent/lab/policies.py), one it is told not to enforce; real agents on both nodes judge
every connection and say which policy allowed or denied it and whether the kernel enforced
it; then `podflow policy advise` and `what-if` run over the flow logs those agents wrote.

    node-a (bridge)  shop/frontend-1  monitoring/prober-1
    node-b (routed)  shop/cart-1 (http 8080, behind Service shop/cart 10.96.0.20:80)
                     data/db-0 (pg 5432)
    data/db-from-backend    ingress to app=db only from tier=backend pods of team=shop
                            namespaces, on the named port pg             (enforced)
    monitoring/no-egress    the prober may reach nothing                 (NOT enforced)
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import yaml

from agent.demo.summary import read_flows
from agent.lab import Lab
from agent.policy.load import load_policies
from podflow_api.v1 import flow_pb2 as F
from tests.waiting import wait_until

pytestmark = pytest.mark.root

LAB_ID = f"pol{os.getpid() % 10000}"   # unique: other runs on this host build labs too
CART_VIP = "10.96.0.20"
DB_FROM_BACKEND = {
    "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
    "metadata": {"name": "db-from-backend", "namespace": "data"},
    "spec": {"podSelector": {"matchLabels": {"app": "db"}}, "policyTypes": ["Ingress"],
             "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "shop"}},
                                    "podSelector": {"matchLabels": {"tier": "backend"}}}],
                          "ports": [{"port": "pg"}]}]}}
NO_EGRESS = {
    "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
    "metadata": {"name": "no-egress", "namespace": "monitoring"},
    "spec": {"podSelector": {}, "policyTypes": ["Egress"]}}


@pytest.fixture(scope="module")
def lab():
    with Lab(LAB_ID) as lab:
        a = lab.add_node("node-a", kind="bridge")
        b = lab.add_node("node-b", kind="routed")
        lab.label_namespace("shop", team="shop")
        a.add_pod("shop", "frontend-1", labels={"app": "frontend", "tier": "web"},
                  owner=("Deployment", "frontend"))
        a.add_pod("monitoring", "prober-1", labels={"app": "prober"},
                  owner=("DaemonSet", "prober"))
        cart = b.add_pod("shop", "cart-1", labels={"app": "cart", "tier": "backend"},
                         owner=("Deployment", "cart"), ports=[("http", 8080, "TCP")])
        db = b.add_pod("data", "db-0", labels={"app": "db"}, owner=("StatefulSet", "db"),
                       ports=[("pg", 5432, "TCP")])
        cart.serve(8080)
        db.serve(5432)
        lab.add_service("shop", "cart", cluster_ip=CART_VIP, port=80, backends=[(cart, 8080)])
        lab.add_network_policy(DB_FROM_BACKEND)
        lab.add_network_policy(NO_EGRESS, enforce=False)
        yield lab


def test_the_lab_enforces_what_it_is_told_and_nothing_else(lab):
    frontend, prober = lab.pod("shop", "frontend-1"), lab.pod("monitoring", "prober-1")
    cart, db = lab.pod("shop", "cart-1"), lab.pod("data", "db-0")
    assert cart.request(db.ip, 5432).name == "db-0"
    assert frontend.request(db.ip, 5432, timeout_s=1).error          # dropped
    assert frontend.request(CART_VIP, 80).name == "cart-1"
    assert prober.request(CART_VIP, 80).name == "cart-1"             # denied, not enforced
    rules = lab.node("node-b").run(["iptables-save", "-t", "filter"], capture_output=True,
                                   text=True).stdout
    assert "-A FORWARD -j PFLAB-POLICY" in rules and "--dport 5432 -j RETURN" in rules


@pytest.fixture(scope="module")
def recorded(lab, ebpf_ready, tmp_path_factory):
    """Both agents, a few rounds of every connection, their flow records and logs."""
    tmp = tmp_path_factory.mktemp("policy-lab")
    meta = lab.write_metadata(str(tmp / "metadata.json"))
    agents, logs = [], []
    try:
        for node in lab.nodes:
            log = str(tmp / f"{node.name}.jsonl")
            logs.append(log)
            agents.append(node.start_agent("--flow-log", log, "--active-timeout", "1",
                                           "--idle-timeout", "2", "--drop-cidr",
                                           str(lab.cluster_cidr), metadata_file=meta,
                                           timeout_s=300))
        frontend, prober = lab.pod("shop", "frontend-1"), lab.pod("monitoring", "prober-1")
        cart, db = lab.pod("shop", "cart-1"), lab.pod("data", "db-0")
        for _ in range(3):
            assert cart.request(db.ip, 5432).name == "db-0"
            assert frontend.request(db.ip, 5432, timeout_s=1).error
            assert frontend.request(CART_VIP, 80).name == "cart-1"
            assert prober.request(CART_VIP, 80).name == "cart-1"
        flows: dict[str, list] = {}

        def complete() -> bool:
            flows.update({a.node_name: read_flows(a.address) for a in agents})
            every = [f for fs in flows.values() for f in fs]
            return (any(f.policy.enforcement == F.POLICY_ENFORCED for f in every)
                    and any(f.policy.enforcement == F.POLICY_NOT_ENFORCED for f in every)
                    and sum(1 for f in every if f.flow_end) >= 8)

        assert wait_until(complete, 40, 0.5), {n: len(f) for n, f in flows.items()}
        time.sleep(1.5)   # the flow logs' writers flush
    finally:
        for agent in agents:
            agent.stop()
    return meta, logs, flows


def _between(flows, src, dst):
    return [f for fs in flows.values() for f in fs
            if {f.ip.source, f.ip.destination} == {src, dst}
            or (f.backend.ip == dst and src in (f.ip.source, f.ip.destination))]


def test_denied_and_dropped_is_enforced_and_names_the_policy(lab, recorded):
    _meta, _logs, flows = recorded
    frontend, db = lab.pod("shop", "frontend-1"), lab.pod("data", "db-0")
    records = _between(flows, frontend.ip, db.ip)
    assert records
    for f in records:
        assert f.policy.ingress.verdict == F.POLICY_DENIED
        assert list(f.policy.ingress.policies) == ["data/db-from-backend"]
        assert f.policy.egress.verdict == F.POLICY_NOT_ISOLATED
    drops = [f for f in records if f.verdict == F.DROPPED]
    assert drops and all(f.drop_reason == "NETFILTER_DROP" for f in drops)
    assert all(f.policy.enforcement == F.POLICY_ENFORCED for f in drops)
    assert not any(f.policy.enforcement == F.POLICY_NOT_ENFORCED for f in records)


def test_denied_but_delivered_says_the_cni_does_not_enforce_it(lab, recorded):
    _meta, _logs, flows = recorded
    prober, cart = lab.pod("monitoring", "prober-1"), lab.pod("shop", "cart-1")
    records = _between(flows, prober.ip, cart.ip) + _between(flows, prober.ip, CART_VIP)
    assert records
    assert all(f.policy.egress.verdict == F.POLICY_DENIED
               and list(f.policy.egress.policies) == ["monitoring/no-egress"] for f in records)
    assert any(f.policy.enforcement == F.POLICY_NOT_ENFORCED for f in records)
    assert not any(f.verdict == F.DROPPED for f in records)


def test_allowed_names_the_rule_that_allowed_it(lab, recorded):
    _meta, _logs, flows = recorded
    cart, db = lab.pod("shop", "cart-1"), lab.pod("data", "db-0")
    records = _between(flows, cart.ip, db.ip)
    assert records
    for f in records:
        assert f.policy.ingress.verdict == F.POLICY_ALLOWED
        assert [(r.policy, r.index) for r in f.policy.ingress.rules] == [("data/db-from-backend", 0)]
    assert any(f.policy.enforcement == F.POLICY_ALLOWED_DELIVERED for f in records)
    assert {F.POLICY_ENFORCED, F.POLICY_NOT_ENFORCED}.isdisjoint(
        f.policy.enforcement for f in records)


def _podflow(*argv) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agent.cli", *argv], capture_output=True,
                          text=True, timeout=120)


def test_advise_then_what_if_over_the_recorded_flows(recorded, tmp_path):
    meta, logs, _flows = recorded
    files = [arg for log in logs for arg in ("--file", log)]
    advised = _podflow("policy", "advise", *files, "--metadata", meta)
    assert advised.returncode == 0, advised.stderr
    loaded = load_policies(advised.stdout)
    assert not loaded.problems
    assert {p.ref for p in loaded.policies} == {
        "shop/podflow-deployment-frontend", "shop/podflow-deployment-cart",
        "data/podflow-statefulset-db", "monitoring/podflow-daemonset-prober"}
    advice = tmp_path / "advice.yaml"
    advice.write_text(advised.stdout)
    checked = _podflow("policy", "what-if", str(advice), *files, "--metadata", meta)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "newly DENIED: 0 shapes, 0 connections" in checked.stdout

    # Without the rule that let the frontend reach the cart Service, what-if names exactly
    # the connections that rule allowed (no current policy isolates the frontend).
    docs = [d for d in yaml.safe_load_all(advised.stdout) if d]
    frontend = next(d for d in docs if d["metadata"]["name"] == "podflow-deployment-frontend")
    kept = [r for r in frontend["spec"]["egress"]
            if r["to"][0].get("podSelector") != {"matchLabels": {"app": "cart",
                                                                 "tier": "backend"}}]
    assert len(kept) == len(frontend["spec"]["egress"]) - 1
    frontend["spec"]["egress"] = kept
    candidate = tmp_path / "candidate.yaml"
    candidate.write_text(yaml.safe_dump_all(docs))
    checked = _podflow("policy", "what-if", str(candidate), *files, "--metadata", meta)
    assert checked.returncode == 1, checked.stdout + checked.stderr
    denied = checked.stdout.split("newly DENIED: ", 1)[1].split("newly allowed", 1)[0]
    assert denied.startswith("1 shapes, 3 connections"), denied
    assert ("shop/frontend -> shop/cart TCP/8080 via Service shop/cart: 3 connections"
            in denied)
    assert "egress denied by shop/podflow-deployment-frontend" in denied
