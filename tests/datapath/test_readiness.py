"""Readiness means "tracing": gRPC health (service "", what the DaemonSet's probes ask) says
SERVING only once the programs are attached and the reader runs, NOT_SERVING while the agent
starts, when the datapath cannot start (a compile failure) and again when it dies (the reader
thread ends). Real agents and real datapaths, each inside a lab node's network namespace."""

from __future__ import annotations

import json
import os
import shutil
import sys
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from agent.lab.agents import spawn_agent
from tests.datapath.conftest import server_status

pytestmark = pytest.mark.root

BPF_DIR = __import__("agent.datapath.loader", fromlist=["BPF_DIR"]).BPF_DIR
NAMES = {health_pb2.HealthCheckResponse.SERVING: "SERVING",
         health_pb2.HealthCheckResponse.NOT_SERVING: "NOT_SERVING"}


def _health(address: str) -> str | None:
    """The server's health (service ""), or None while nothing answers."""
    try:
        with grpc.insecure_channel(address) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=1)
    except grpc.RpcError:
        return None
    return NAMES.get(reply.status, str(reply.status))


def _broken_bpf_dir(tmp_path):
    """bpf/ with a podflow.c that does not compile."""
    target = tmp_path / "bpf"
    shutil.copytree(BPF_DIR, target)
    source = target / "podflow.c"
    source.write_text(source.read_text() + "\n#error broken on purpose by the readiness test\n")
    return target


def _node(lab_factory, lab_id: str):
    lab = lab_factory(f"{lab_id}{os.getpid() % 10000}")  # unique to this test process
    node = lab.add_node("node-a", kind="bridge", pod_cidr="10.244.1.0/24")
    node.add_pod("shop", "client-1")
    return lab, node


def test_not_serving_until_the_programs_are_attached(ebpf_ready, lab_factory, tmp_path):
    lab, node = _node(lab_factory, "rdstart")
    agent = spawn_agent(str(tmp_path / "agent"), node_name=node.name, netns=node.netns,
                        node=node)
    seen: list[str] = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert agent.process.poll() is None, agent.stderr_text()
            state = _health(agent.address)
            if state is not None and (not seen or seen[-1] != state):
                seen.append(state)
            if state == "SERVING":
                status = server_status(agent.address)
                break
            time.sleep(0.02)
        else:
            raise AssertionError(f"never SERVING: {seen}\n{agent.stderr_text()}")
        # NOT_SERVING from the first answer until SERVING, which came only once tracing
        assert seen == ["NOT_SERVING", "SERVING"], seen
        assert status.datapath_state == "tracing"
        assert "cni0" in [i.name for i in status.interfaces]
        stderr = agent.stderr_text()
        assert stderr.index("datapath tracing") < stderr.index("gRPC health: SERVING")
    finally:
        assert agent.stop() == 0, agent.stderr_text()


def test_a_datapath_that_cannot_start_is_never_serving(ebpf_ready, lab_factory, tmp_path):
    lab, node = _node(lab_factory, "rdfail")
    agent = spawn_agent(str(tmp_path / "agent"), node_name=node.name, netns=node.netns,
                        node=node, env={"PODFLOW_BPF_DIR": str(_broken_bpf_dir(tmp_path))})
    seen: set[str | None] = set()
    try:
        deadline = time.monotonic() + 120
        while agent.process.poll() is None and time.monotonic() < deadline:
            seen.add(_health(agent.address))
            time.sleep(0.02)
        assert agent.wait(10) == 2
    finally:
        agent.kill()
    assert "SERVING" not in seen, seen
    assert "NOT_SERVING" in seen, seen  # it answered, and said so, while compiling
    stderr = agent.stderr_text()
    assert "cannot compile or load bpf/podflow.c" in stderr
    assert "broken on purpose" in stderr and "Traceback" not in stderr


# In-process, inside the node's namespace: the agent's own stages, with the datapath made to
# fail in two ways, and what health and ServerStatus say each time (JSON lines on stdout).
_SCRIPT = r"""
import json, sys, time
from pathlib import Path
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from agent.config import AgentConfig
from agent.datapath import loader
from agent.datapath.extension import DatapathExtension
from agent.errors import DatapathError
from agent.flowstore import FlowStore
from agent.observer.server import ObserverServer
from agent.stats import AgentStats
from podflow_api.v1 import observer_pb2, observer_pb2_grpc

case = sys.argv[1]
config = AgentConfig.from_flags(["--node-name", "node-a", "--listen", "127.0.0.1:0",
                                 "--metadata", "none", "--sweep-interval", "0.2"])
stats = AgentStats(node_name="node-a", version="test")
observer = ObserverServer(config.observer, FlowStore(config.store, stats), stats)
observer.start()
channel = grpc.insecure_channel(observer.address)

def say(event, **extra):
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                       timeout=5).status
    st = observer_pb2_grpc.ObserverStub(channel).ServerStatus(
        observer_pb2.ServerStatusRequest(), timeout=5)
    print(json.dumps({"event": event, "health": health_pb2.HealthCheckResponse.ServingStatus.Name(
        health), "state": st.datapath_state, "error": st.datapath_error, **extra}), flush=True)

class BuggySweep(DatapathExtension):
    # An extension whose map sweep raises: a bug that ends the reader thread.
    name = "buggy"
    def __init__(self):
        self.calls = 0
    def sweep(self, datapath, now_ns, final):
        self.calls += 1
        if self.calls >= 3:
            raise RuntimeError("a bug in an extension's sweep")
        return []

if case == "compile":
    loader.BPF_DIR = Path(sys.argv[2])
    datapath = loader.Datapath(config.datapath, stats, lambda flows: None)
    say("before start")
    try:
        datapath.start()
    except DatapathError as exc:
        say("start raised", message=str(exc))
else:
    datapath = loader.Datapath(config.datapath, stats, lambda flows: None, [BuggySweep()])
    say("before start")
    datapath.start()
    say("started")
    deadline = time.monotonic() + 10
    while stats.datapath_state == "tracing" and time.monotonic() < deadline:
        time.sleep(0.05)
    say("reader ended")
    datapath.stop()
observer.stop()
"""


def _run_script(node, *args: str) -> list[dict]:
    done = node.run([sys.executable, "-c", _SCRIPT, *args], check=False, capture_output=True,
                    text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-4000:]
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_compile_failure_leaves_health_not_serving_and_says_why(ebpf_ready, lab_factory,
                                                                tmp_path):
    _lab, node = _node(lab_factory, "rdcomp")
    before, raised = _run_script(node, "compile", str(_broken_bpf_dir(tmp_path)))
    assert (before["health"], before["state"]) == ("NOT_SERVING", "starting")
    assert (raised["health"], raised["state"]) == ("NOT_SERVING", "failed")
    assert "cannot compile or load bpf/podflow.c" in raised["error"]
    assert raised["error"] == raised["message"]


def test_a_reader_that_dies_turns_health_not_serving(ebpf_ready, lab_factory):
    _lab, node = _node(lab_factory, "rdread")
    before, started, ended = _run_script(node, "reader")
    assert (before["health"], started["health"], ended["health"]) == (
        "NOT_SERVING", "SERVING", "NOT_SERVING")
    assert started["state"] == "tracing"
    assert ended["state"] == "failed"
    assert ended["error"] == ("the reader stopped: RuntimeError(\"a bug in an extension's "
                              "sweep\")")
