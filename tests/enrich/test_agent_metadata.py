"""The metadata stage inside a real `podflow agent` process: `--metadata kubernetes` against
the fake API server (ServerStatus says stale while it is away, fresh once it is back; missing
RBAC stops the agent with a message naming verb and resource), bad flags, and
`--metadata none` still reporting Service translations from conntrack."""

from __future__ import annotations

import json
import os

import pytest

from agent.client.channel import server_status
from agent.lab import AgentHandle, Lab, spawn_agent
from tests.enrich import objs
from tests.enrich.fakeapi import FakeAPIServer
from tests.waiting import wait_until

pytestmark = pytest.mark.root


def run_agent(tmp_path, *args: str) -> AgentHandle:
    """An agent on no interface with these flags; the caller waits (ready, or an exit)."""
    return spawn_agent(str(tmp_path / "agent"), "--interfaces", "pfnomatch*", *args,
                       node_name="node-a")


@pytest.fixture
def api():
    server = FakeAPIServer(bookmark_interval_s=0.5).start()
    yield server
    server.stop()


def test_kubernetes_source_stale_then_fresh_in_server_status(ebpf_ready, api, tmp_path):
    api.create(objs.pod("cart-1", "10.0.0.2"))
    kubeconfig = api.write_kubeconfig(str(tmp_path / "kubeconfig"))
    with run_agent(tmp_path, "--metadata", "kubernetes", "--kubeconfig", kubeconfig) as agent:
        assert agent.wait_ready(60)["metadata"] == "kubernetes"
        address = agent.address
        status = server_status(address)
        assert (status.metadata_source, status.metadata_stale, status.metadata_error) == ("kubernetes", False, "")
        api.stop()
        assert wait_until(lambda: server_status(address).metadata_stale, 10, interval_s=0.1)
        assert "API server unreachable" in server_status(address).metadata_error
        api.start()
        assert wait_until(lambda: not server_status(address).metadata_stale, 15, interval_s=0.1)
        assert server_status(address).metadata_error == ""
    log = agent.stderr_text()
    assert "serving the last known state" in log and "fresh again" in log


def test_missing_rbac_stops_the_agent_with_a_clear_message(ebpf_ready, api, tmp_path):
    """With --rbac-wait 0 a 403 at start is fatal at once (the default waits for an API
    server still loading its RBAC: tests/enrich/test_rbac_wait_agent.py)."""
    api.forbid("pods", "list")
    kubeconfig = api.write_kubeconfig(str(tmp_path / "kubeconfig"))
    with run_agent(tmp_path, "--metadata", "kubernetes", "--kubeconfig", kubeconfig,
                   "--rbac-wait", "0") as agent:
        assert agent.wait(timeout_s=60) == 2
    assert "missing RBAC permission: list pods (at cluster scope)" in agent.stderr_text()


@pytest.mark.parametrize("args,message", [
    pytest.param(["--metadata", "/nonexistent/meta.json"], "--metadata /nonexistent/meta.json", id="missing-file"),
    pytest.param(["--metadata", "kubernetes", "--kubeconfig", "/nonexistent/kubeconfig"], "--kubeconfig", id="bad-kubeconfig"),
])
def test_bad_metadata_flags_are_named(ebpf_ready, tmp_path, args, message):
    with run_agent(tmp_path, *args) as agent:
        assert agent.wait(timeout_s=60) == 2
    assert message in agent.stderr_text()


def test_without_metadata_translation_is_still_reported(ebpf_ready, tmp_path):
    with Lab(f"k8snm{os.getpid() % 10000}") as lab:
        node = lab.add_node("node-a", kind="bridge", pod_cidr="10.244.1.0/24")
        client = node.add_pod("shop", "client-1")
        server = node.add_pod("shop", "cart-1")
        server.serve(8080)
        lab.add_service("shop", "cart", cluster_ip="10.96.0.12", port=80, backends=[(server, 8080)])
        log_path = tmp_path / "flows.jsonl"
        node.start_agent("--flow-log", str(log_path), "--active-timeout", "1", "--idle-timeout", "2",
                         "--sweep-interval", "0.2", metadata_file="none")
        assert client.reply_name(client.fetch("10.96.0.12", 80)) == "cart-1"

        def records():
            out = []
            if log_path.exists():
                for line in log_path.read_text().splitlines():
                    flow = json.loads(line).get("flow")
                    if (flow and flow["interface"]["name"] == client.host_ifname
                            and "tcp" in flow.get("l4", {})):
                        out.append(flow)
            return out

        assert wait_until(lambda: len(records()) >= 2, 20, interval_s=0.1)
        for flow in records():
            assert flow["translation"] == {"original_ip": "10.96.0.12", "original_port": 80,
                                           "translated_ip": server.ip, "translated_port": 8080}
            assert "service" not in flow and "source" not in flow
