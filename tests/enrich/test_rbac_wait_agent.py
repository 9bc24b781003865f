"""A real `podflow agent --metadata kubernetes` on a lab node whose API server (the fake, inside
the node's namespace) refuses the agent's list of pods, as a kube-apiserver that is still
starting does before its RBAC is loaded: the agent does not exit at once. It traces, says
"waiting for RBAC" (log and ServerStatus.metadata_error) and goes on once the permission
arrives; when the refusal persists past --rbac-wait it exits 2 naming the permission."""

from __future__ import annotations

import itertools
import os
import time

import pytest

from agent.lab import Lab

from tests.datapath.conftest import server_status
from tests.enrich.fakeapi import FakeAPIServer
from tests.in_netns import call_in_netns
from tests.waiting import wait_until

pytestmark = pytest.mark.root

WAITING = "waiting for RBAC: missing RBAC permission: list pods (at cluster scope)"


_LABS = itertools.count()


@pytest.fixture
def node_with_api(tmp_path):
    """A lab node, and the fake API server listening on the node's address inside it."""
    with Lab(f"rb{os.getpid() % 10000}{next(_LABS)}") as lab:
        node = lab.add_node("node-a", kind="bridge", pod_cidr="10.244.1.0/24")
        node.add_pod("shop", "client-1")
        api = FakeAPIServer(bookmark_interval_s=0.5, host=node.ip)
        call_in_netns(node.netns, api.start)
        api.forbid("pods", "list")
        try:
            yield node, api, api.write_kubeconfig(str(tmp_path / "kubeconfig"))
        finally:
            api.stop()


def _agent(node, kubeconfig: str, wait_s: float):
    return node.start_agent("--metadata", "kubernetes", "--kubeconfig", kubeconfig,
                            "--rbac-wait", str(wait_s))


def test_the_agent_waits_for_rbac_then_names_pods(ebpf_ready, node_with_api):
    node, api, kubeconfig = node_with_api
    agent = _agent(node, kubeconfig, 60)
    try:
        status = server_status(agent.address)
        assert status.metadata_error == WAITING
        assert status.datapath_state == "tracing"
        api.allow("pods", "list")  # the API server has loaded its RBAC
        assert wait_until(lambda: server_status(agent.address).metadata_error == "", 20)
        assert agent.process.poll() is None
    finally:
        assert agent.stop() == 0, agent.stderr_text()
    stderr = agent.stderr_text()
    assert f"{WAITING}; an API server that is still starting" in stderr
    assert "RBAC granted" in stderr


def test_the_agent_exits_2_when_rbac_never_comes(ebpf_ready, node_with_api):
    node, _api, kubeconfig = node_with_api
    started = time.monotonic()
    agent = _agent(node, kubeconfig, 3)
    try:
        assert server_status(agent.address).metadata_error == WAITING
        assert agent.wait(30) == 2
    finally:
        agent.kill()
    assert time.monotonic() - started >= 3
    stderr = agent.stderr_text()
    assert ("podflow agent: missing RBAC permission: list pods (at cluster scope), still after "
            "waiting 3 s (--rbac-wait) for the API server's RBAC: grant it in the agent's "
            "ClusterRole") in stderr
    assert "Traceback" not in stderr
