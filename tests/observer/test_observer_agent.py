"""End to end as root: a real `podflow agent` (eBPF datapath) in a network namespace serves the
Observer on a unix socket; `podflow observe` and `podflow status` in the root namespace read it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from google.protobuf import json_format

from agent.lab import spawn_agent
from podflow_api.v1 import observer_pb2

pytestmark = pytest.mark.root

PODFLOW = [sys.executable, "-m", "agent.cli"]


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True)


@pytest.fixture
def node_with_pod(tmp_path):
    """Namespace `node` holds the host side of a veth; namespace `pod` the other end."""
    tag = os.getpid() % 100000
    node, pod = f"pfobs{tag}", f"pfobs{tag}p"
    host_if, pod_if = f"pfo{tag}h", f"pfo{tag}p"
    try:
        sh("ip", "netns", "add", node)
        sh("ip", "netns", "add", pod)
        sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", pod_if)
        sh("ip", "link", "set", host_if, "netns", node)
        sh("ip", "link", "set", pod_if, "netns", pod)
        sh("ip", "-n", node, "addr", "add", "10.78.0.1/24", "dev", host_if)
        sh("ip", "-n", node, "link", "set", host_if, "up")
        sh("ip", "-n", pod, "addr", "add", "10.78.0.2/24", "dev", pod_if)
        sh("ip", "-n", pod, "link", "set", pod_if, "up")
        yield node, pod, host_if
    finally:
        for ns in (node, pod):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        subprocess.run(["ip", "link", "del", host_if], capture_output=True)


def test_observe_a_real_agent(ebpf_ready, node_with_pod, tmp_path):
    node, pod, host_if = node_with_pod
    with spawn_agent(str(tmp_path / "agent"), "--interfaces", host_if, node_name="obs-node",
                     netns=node) as agent:
        info = agent.wait_ready(90)
        assert info["listen"] == agent.address == f"unix:{tmp_path}/agent.sock"
        subprocess.run(["ip", "netns", "exec", pod, "ping", "-c", "2", "-i", "0.2", "10.78.0.1"],
                       check=True, capture_output=True)
        server = agent.address
        deadline = time.monotonic() + 20
        flows = []
        while time.monotonic() < deadline:
            r = subprocess.run([*PODFLOW, "observe", "--server", server, "--all", "-o", "jsonl",
                                "--protocol", "icmpv4", "--ip", "10.78.0.2"],
                               capture_output=True, text=True, timeout=30)
            assert r.returncode == 0, r.stderr
            flows = [json_format.Parse(line, observer_pb2.GetFlowsResponse())
                     for line in r.stdout.splitlines()]
            if {f.flow.ip.source for f in flows} >= {"10.78.0.1", "10.78.0.2"}:
                break
            time.sleep(0.5)
        assert {f.flow.ip.source for f in flows} >= {"10.78.0.1", "10.78.0.2"}, flows
        assert all(f.node_name == "obs-node" for f in flows)
        r = subprocess.run([*PODFLOW, "status", "--server", server, "-o", "json"],
                           capture_output=True, text=True, timeout=30)
        status = json.loads(r.stdout)["status"]
        assert status["node_name"] == "obs-node" and int(status["seen_flows"]) >= 2
        assert [i["name"] for i in status["interfaces"]] == [host_if]
