"""`podflow demo --no-tui`: a whole small cluster, both agents report, every kind of traffic
shows up with the right Kubernetes names, and the host is clean afterwards."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from tests.demo.conftest import PODFLOW, REPO, SUFFIX, host_state, run_demo

pytestmark = pytest.mark.root

LAB = f"demotest{SUFFIX}"


@pytest.fixture(scope="module")
def headless(tmp_path_factory, ebpf_ready):
    """One headless run shared by the assertions below."""
    before = host_state(LAB)
    path = tmp_path_factory.mktemp("demo") / "summary.json"
    res = run_demo("--no-tui", "--duration", "15", "--lab-id", LAB, "--summary-json", str(path))
    after = host_state(LAB)
    summary = json.loads(path.read_text()) if path.exists() else {}
    return {"res": res, "summary": summary, "before": before, "after": after}


def test_runs_and_prints_a_summary(headless):
    res = headless["res"]
    assert res.returncode == 0, res.stderr
    for heading in ("Connections per category:", "Services (connections, per backend):",
                    "Drops (packets):", "DNS (records):",
                    "NetworkPolicy verdicts (connections):"):
        assert heading in res.stdout
    assert "cleaned up" in res.stderr


def test_both_agents_report(headless):
    nodes = headless["summary"]["nodes"]
    assert set(nodes) == {"node-a", "node-b"}
    assert all(n > 0 for n in nodes.values()), nodes


@pytest.mark.parametrize("category", [
    "POD_TO_POD_SAME_NODE", "POD_TO_POD_CROSS_NODE", "POD_TO_SERVICE", "OUTSIDE_TO_SERVICE",
    "POD_TO_WORLD",
])
def test_every_category_appears(headless, category):
    assert headless["summary"]["categories"].get(category, 0) > 0, headless["summary"]["categories"]


def test_cluster_ip_service_resolves_to_both_backends(headless):
    summary = headless["summary"]
    cart = summary["services"]["shop/cart"]
    assert cart["type"] == "ClusterIP" and cart["ip"] == "10.96.0.20" and cart["port"] == 80
    assert sorted(cart["backends"]) == summary["expected"]["cart_backends"]
    assert {b["node"] for b in cart["backends"].values()} == {"node-a", "node-b"}
    assert all(b["connections"] > 0 for b in cart["backends"].values())


def test_node_port_service_from_outside(headless):
    summary = headless["summary"]
    sf = summary["services"]["web/storefront"]
    assert sf["type"] == "NodePort" and sf["port"] == 30080
    assert sorted(sf["backends"]) == summary["expected"]["storefront_backends"]


def test_headless_service_and_dns(headless):
    summary = headless["summary"]
    assert summary["services"]["data/db"]["type"] == "Headless"
    assert "kube-system/kube-dns" in summary["services"]
    answers = {(d["query"], d["rcode"]) for d in summary["dns"]}
    assert ("cart.shop.svc.cluster.local", "NOERROR") in answers
    assert ("db.data.svc.cluster.local", "NOERROR") in answers
    assert ("payments.shop.svc.cluster.local", "NXDOMAIN") in answers


def test_blocked_pair_shows_as_drops(headless):
    summary = headless["summary"]
    src, dst = summary["expected"]["blocked"]
    drops = [d for d in summary["drops"] if d["source"] == src and d["destination"] == dst]
    assert drops and drops[0]["reason"] == "NETFILTER_DROP" and drops[0]["port"] == "tcp/5432"
    assert summary["traffic"]["connect"]["ok"] == 0  # the generator saw them fail too


def test_policy_verdicts_enforced_and_not(headless):
    """The database's policy is enforced by the lab (the frontend's attempts are dropped);
    the prober's is not (its checks of a cart pod get through): podflow tells them apart."""
    summary = headless["summary"]
    assert summary["expected"]["policies"] == {"data/db-ingress": "enforced",
                                               "monitoring/prober-egress": "not enforced"}
    db, prober = summary["policies"]["data/db-ingress"], summary["policies"]["monitoring/prober-egress"]
    assert db["allowed"] > 0 and db["denied_dropped"] > 0 and db["denied_delivered"] == 0
    assert prober["allowed"] > 0 and prober["denied_delivered"] > 0 and prober["denied_dropped"] == 0
    assert "(NOT ENFORCED: the CNI lets this policy's denied traffic through)" in \
        headless["res"].stdout


def test_the_host_is_clean_afterwards(headless):
    before, after = headless["before"], headless["after"]
    assert after == {**before, "netns": [], "run_dir": False, "processes": []}


def test_running_it_again_works(headless, clean_host):
    clean_host(LAB)
    res = run_demo("--no-tui", "--duration", "3", "--lab-id", LAB)
    assert res.returncode == 0, res.stderr
    assert "node-a" in res.stdout and "node-b" in res.stdout


@pytest.mark.parametrize("recovery", ["down", "rerun"])
def test_recovering_from_a_crash(ebpf_ready, clean_host, recovery):
    lab = f"democrash{SUFFIX}"
    clean_host(lab)
    proc = subprocess.Popen([*PODFLOW, "demo", "--no-tui", "--duration", "300", "--lab-id", lab],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if os.path.exists(f"/run/podflow-lab/{lab}/node-b.ready.json"):
                break
            assert proc.poll() is None, proc.stderr.read()
            time.sleep(0.5)
        else:
            pytest.fail("the demo did not get its agents up")
        time.sleep(2)  # traffic running
    finally:
        proc.send_signal(signal.SIGKILL)  # a crash: no cleanup
        proc.wait()
        proc.stderr.close()
    left = host_state(lab)
    assert left["netns"] and left["processes"], "the crash should have left the cluster running"
    if recovery == "down":
        res = run_demo("--down", "--lab-id", lab, timeout_s=120)
        assert res.returncode == 0 and "removed" in res.stdout, res.stdout + res.stderr
        assert host_state(lab)["netns"] == []
    else:  # a new run names the leftover, says how to remove it, removes it and runs
        res = run_demo("--no-tui", "--duration", "2", "--lab-id", lab)
        assert res.returncode == 0, res.stderr
        assert "did not end cleanly" in res.stderr and "podflow demo --down" in res.stderr


@pytest.mark.parametrize("env,args,message", [
    ({"PATH": "/nonexistent"}, [], "dnsmasq (Debian package dnsmasq-base)"),
    ({}, ["--nodes", "0"], "--nodes must be between 1 and 200"),
    ({"BCC_KERNEL_SOURCE": "/nonexistent"}, [], "an agent could not start"),
], ids=["missing-tool", "bad-flag", "no-ebpf"])
def test_clear_messages_when_it_cannot_run(env, args, message, clean_host):
    lab = f"demomsg{SUFFIX}"
    clean_host(lab)
    res = run_demo("--no-tui", "--duration", "2", "--lab-id", lab, *args, env=env)
    assert res.returncode in (1, 2)
    assert message in res.stderr, res.stderr


def test_not_root_is_named():
    res = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                          *PODFLOW, "demo", "--no-tui"], capture_output=True, text=True,
                         cwd=REPO, timeout=60)
    assert res.returncode == 2
    assert "needs root" in res.stderr, res.stderr


def test_a_running_demo_is_named_not_trampled(clean_host):
    from agent.lab import Lab

    lab_id = f"demobusy{SUFFIX}"
    clean_host(lab_id)
    with Lab(lab_id):  # stands for a demo running in another terminal
        res = run_demo("--no-tui", "--duration", "2", "--lab-id", lab_id)
    assert res.returncode == 2
    assert f"another demo is running (process {os.getpid()})" in res.stderr, res.stderr
