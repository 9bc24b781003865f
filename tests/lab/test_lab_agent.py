"""`Node.start_agent`: the agent runs inside the node's namespace, is ready when the lab says
so, answers on its unix socket from the root namespace, and its failures reach the caller."""

from __future__ import annotations

import os

import grpc
import pytest

from agent.lab import Lab, LabError
from podflow_api.v1 import observer_pb2, observer_pb2_grpc

pytestmark = pytest.mark.root

LAB_ID = f"labagent{os.getpid() % 10000}"  # unique: other runs on this host build labs too


@pytest.fixture(scope="module")
def lab():
    with Lab(LAB_ID) as lab:
        a = lab.add_node("node-a", kind="bridge")
        a.add_pod("shop", "fe-1", labels={"app": "fe"})
        yield lab


def test_agent_starts_in_the_node_and_answers_from_the_root_namespace(lab, ebpf_ready, tmp_path):
    node = lab.node("node-a")
    meta = lab.write_metadata(str(tmp_path / "meta.json"))
    agent = node.start_agent("--flow-log", str(tmp_path / "flows.jsonl"), metadata_file=meta)
    try:
        assert agent.address == f"unix:/run/podflow-lab/{LAB_ID}/node-a.sock"
        assert agent.ready["pid"] > 0
        with grpc.insecure_channel(agent.address) as channel:
            status = observer_pb2_grpc.ObserverStub(channel).ServerStatus(
                observer_pb2.ServerStatusRequest(), timeout=10)
        assert status.node_name == "node-a"
        assert {i.name for i in status.interfaces} >= {"cni0", lab.pod("shop", "fe-1").host_ifname}
    finally:
        assert agent.stop() == 0


def test_agent_failure_is_reported_with_its_message(lab):
    with pytest.raises(LabError, match="unrecognized arguments: --no-such-flag"):
        lab.node("node-a").start_agent("--no-such-flag", timeout_s=60)
