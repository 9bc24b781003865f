"""What the agent says when the kernel refuses it: a missing capability is named exactly
("missing CAP_BPF"); bpf() refused by a seccomp filter despite CAP_BPF names seccomp and its
mode, not kernel headers; perf_event_open() refused (the drop tracer's tracepoint) leaves the
agent tracing flows without drops, saying why and counting `drops_disabled`, never ending in
a traceback. Real agents in a lab node, under a real seccomp filter (seccomp_wrapper.py, the
shape of a container runtime's default profile) or a cut capability set (setpriv); the
container tests (tests/deploy/test_deploy_container.py) do the same under podman's own
profiles."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.lab.agents import AgentHandle
from tests.datapath.conftest import AGENT_ARGS, read_flow_log, record_totals, server_status

pytestmark = pytest.mark.root

WRAPPER = str(Path(__file__).with_name("seccomp_wrapper.py"))


def _launch(node, tmp_path, prefix: list[str], *args: str) -> AgentHandle:
    """`podflow agent` in the node, behind `prefix` (a seccomp wrapper or setpriv), started
    like agent.lab.agents.spawn_agent does (unix socket, ready file, output in files)."""
    base = str(tmp_path / "agent")
    sock, ready = f"{base}.sock", f"{base}.ready.json"
    cmd = [*prefix, sys.executable, "-m", "agent.cli", "agent", "--node-name", node.name,
           "--listen", f"unix:{sock}", "--ready-file", ready, *args]
    with open(f"{base}.stderr", "wb") as err, open(f"{base}.stdout", "wb") as out:
        proc = node.popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                          start_new_session=True)
    return AgentHandle(node.name, proc, f"unix:{sock}", ready, f"{base}.stderr",
                       f"{base}.stdout", node)


def _node(lab_factory, lab_id: str):
    lab = lab_factory(f"{lab_id}{os.getpid() % 10000}")  # unique to this test process
    node = lab.add_node("node-a", kind="bridge", pod_cidr="10.244.1.0/24")
    return node, node.add_pod("shop", "client-1"), node.add_pod("shop", "server-1")


def test_bpf_refused_by_seccomp_names_seccomp_not_headers(ebpf_ready, lab_factory, tmp_path):
    node, _client, _server = _node(lab_factory, "scbpf")
    agent = _launch(node, tmp_path, [sys.executable, WRAPPER, "bpf", "--"])
    assert agent.wait(120) == 2
    stderr = agent.stderr_text()
    assert ("podflow agent: bpf() was refused (EPERM) although the agent holds CAP_BPF: a "
            "seccomp filter is in force (/proc/self/status Seccomp: 2, filter mode, 1 filter)"
            ) in stderr, stderr
    assert "seccompProfile Unconfined" in stderr
    assert "headers" not in stderr and "Traceback" not in stderr, stderr


def test_perf_event_open_refused_runs_without_drops_and_says_so(ebpf_ready, lab_factory,
                                                                 tmp_path):
    node, client, server = _node(lab_factory, "scperf")
    log = tmp_path / "flows.jsonl"
    agent = _launch(node, tmp_path, [sys.executable, WRAPPER, "perf_event_open", "--"],
                    "--flow-log", str(log), *AGENT_ARGS)
    try:
        agent.wait_ready(120)
        status = server_status(agent.address)
        assert status.datapath_state == "tracing"
        assert status.datapath_errors["drops_disabled"] == 1
        client.run(["ping", "-q", "-c", "3", "-i", "0.05", server.ip], stdout=subprocess.DEVNULL)
        time.sleep(0.3)
    finally:
        assert agent.stop() == 0, agent.stderr_text()
    sent = record_totals(read_flow_log(log), client.host_ifname, "FROM_POD")
    assert sent[("icmpv4", client.ip, server.ip, 8, 0, False)][0] == 3
    stderr = agent.stderr_text()
    assert "drops are off, flows are traced without them:" in stderr
    assert ("perf_event_open() was refused (EPERM) although the agent holds CAP_PERFMON: a "
            "seccomp filter is in force") in stderr
    assert "Traceback" not in stderr and "ERROR" not in stderr, stderr


@pytest.mark.parametrize("missing", ["bpf", "perfmon", "net_admin"])
def test_a_missing_capability_is_named(ebpf_ready, lab_factory, tmp_path, missing):
    node, _client, _server = _node(lab_factory, f"sccap{missing[:3]}")
    keep = [c for c in ("bpf", "perfmon", "net_admin", "sys_resource") if c != missing]
    bounding = ",".join(["-all"] + [f"+{c}" for c in keep])
    agent = _launch(node, tmp_path, ["setpriv", f"--bounding-set={bounding}", "--inh-caps=-all",
                                     "--"])
    assert agent.wait(120) == 2
    stderr = agent.stderr_text()
    assert f"podflow agent: missing CAP_{missing.upper()}: the datapath needs root, or " \
           "CAP_BPF + CAP_NET_ADMIN + CAP_PERFMON" in stderr, stderr
    others = {"bpf", "perfmon", "net_admin"} - {missing}
    assert not any(f"missing CAP_{c.upper()}" in stderr for c in others)
    assert "Traceback" not in stderr


def test_no_bpffs_mount_is_attempted(ebpf_ready, lab_factory, tmp_path):
    """Nothing is pinned: the agent neither needs nor mounts bpffs (`ip netns exec` gives it
    a fresh /sys without one; it used to mount one there, and warn in a pod)."""
    node, _client, _server = _node(lab_factory, "scnofs")
    agent = node.start_agent()
    try:
        with open(f"/proc/{agent.pid}/mountinfo", encoding="utf-8") as fh:
            fstypes = [line.split(" - ", 1)[1].split()[0] for line in fh if " - " in line]
    finally:
        assert agent.stop() == 0
    assert "bpf" not in fstypes and "tracefs" in fstypes
    assert "bpf is not mounted" not in agent.stderr_text()
