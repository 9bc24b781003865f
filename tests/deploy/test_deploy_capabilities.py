"""The capabilities the DaemonSet grants are enough for the real agent, and each one of BPF,
PERFMON and NET_ADMIN is needed by the kernel: processes run here as uid 0 with their capability
bounding set cut to what the rendered DaemonSet adds (what a container runtime does with
`drop: [ALL]` + `add: [...]`), in their own network namespace with a veth pair to trace.

Two witnesses: the real `podflow agent`, and cap_probe.py, which takes the datapath's bcc
steps one by one so a failure names the step the kernel refused (the agent itself checks its
capabilities up front, which alone would prove nothing about the kernel)."""

from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from deploy_helpers import agent_container, render

pytestmark = pytest.mark.root

PODFLOW = str(Path(sys.executable).parent / "podflow")


def daemonset_capabilities() -> list[str]:
    return agent_container(render())["securityContext"]["capabilities"]["add"]


def kernel_at_least(major: int, minor: int) -> bool:
    release = platform.release().split("-")[0].split(".")
    return (int(release[0]), int(release[1])) >= (major, minor)


def _in_netns_with(caps: list[str], command: str) -> str:
    """A shell script for `ip netns exec`: a veth pair, the node's kernel filesystems (the
    netns gets a fresh /sys), then `command` with only `caps`."""
    bounding = ",".join(["-all"] + [f"+{c.lower()}" for c in caps])
    return ("ip link set lo up && ip link add pfcap0 type veth peer name pfcap1 && "
            "ip link set pfcap0 up && ip link set pfcap1 up && "
            "mount -t tracefs nodev /sys/kernel/tracing && mount -t bpf bpf /sys/fs/bpf && "
            f"exec setpriv --bounding-set={bounding} --inh-caps=-all {command}")


def _netns_name() -> str:
    return f"pfdcap{os.getpid() % 100000}"


def run_probe_with(caps: list[str]) -> str:
    ns = _netns_name()
    script = _in_netns_with(caps, f"{sys.executable} {Path(__file__).parent / 'cap_probe.py'} pfcap0")
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        done = subprocess.run(["ip", "netns", "exec", ns, "sh", "-c", script],
                              capture_output=True, text=True, timeout=120)
        return done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr[-500:]
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


def run_agent_with(caps: list[str], tmp_path: Path) -> tuple[int | None, dict | None, str]:
    """Start `podflow agent` with exactly `caps`; return (exit status or None if it ran,
    its ready-file contents, stderr)."""
    ns = _netns_name()
    ready = tmp_path / "ready.json"
    script = _in_netns_with(caps, (
        f"{PODFLOW} agent --listen unix:{tmp_path}/agent.sock --metadata none "
        f"--ready-file {ready} --interfaces 'pfcap*'"))
    subprocess.run(["ip", "netns", "add", ns], check=True)
    proc = None
    try:
        proc = subprocess.Popen(["ip", "netns", "exec", ns, "sh", "-c", script],
                                stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not ready.exists() and proc.poll() is None:
            time.sleep(0.2)
        info = json.loads(ready.read_text()) if ready.exists() else None
        status = proc.poll()
        if status is None:
            proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
        return status, info, stderr
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        subprocess.run(["ip", "netns", "del", ns], check=False)


def test_documented_set_is_exactly_what_the_daemonset_adds():
    assert sorted(daemonset_capabilities()) == ["BPF", "NET_ADMIN", "PERFMON", "SYS_RESOURCE"]


def test_agent_runs_with_the_daemonset_capabilities(tmp_path, ebpf_ready):
    status, info, stderr = run_agent_with(daemonset_capabilities(), tmp_path)
    assert status is None, f"agent exited {status}: {stderr[-2000:]}"
    assert info is not None and set(info["interfaces"]) == {"pfcap0", "pfcap1"}, stderr[-2000:]
    assert info.get("attach_errors", {}) == {}


def test_bcc_steps_work_with_the_daemonset_capabilities(ebpf_ready):
    assert run_probe_with(daemonset_capabilities()) == "OK"


# What the kernel refuses without each capability (the step cap_probe.py was taking).
NEEDED_FOR = [
    ("BPF", "FAIL create maps and compile"),                 # bpf(BPF_MAP_CREATE)
    ("PERFMON", "FAIL attach the skb:kfree_skb tracepoint"),  # tracing prog + perf_event_open
    ("NET_ADMIN", "FAIL load a sched_cls program"),           # networking program types
]


@pytest.mark.parametrize("missing,refused", NEEDED_FOR, ids=[n[0] for n in NEEDED_FOR])
def test_each_capability_is_needed_by_the_kernel(ebpf_ready, missing, refused):
    caps = [c for c in daemonset_capabilities() if c != missing]
    assert run_probe_with(caps).startswith(refused)


@pytest.mark.parametrize("missing", ["BPF", "PERFMON", "NET_ADMIN"])
def test_agent_does_not_start_without_each(tmp_path, ebpf_ready, missing):
    caps = [c for c in daemonset_capabilities() if c != missing]
    status, info, stderr = run_agent_with(caps, tmp_path)
    assert info is None and status not in (None, 0), (
        f"the agent started without CAP_{missing}: then the DaemonSet should not add it")
    assert f"CAP_{missing}" in stderr or "not permitted" in stderr, stderr[-2000:]


@pytest.mark.skipif(not kernel_at_least(5, 11), reason="before 5.11 BPF memory is charged to "
                    "RLIMIT_MEMLOCK, and bcc raises that limit with CAP_SYS_RESOURCE")
def test_sys_resource_only_matters_on_kernels_before_5_11(tmp_path, ebpf_ready):
    """Since 5.11 BPF memory is charged to the cgroup, not RLIMIT_MEMLOCK: the agent starts
    without SYS_RESOURCE here. The DaemonSet keeps it for older kernels (documented)."""
    caps = [c for c in daemonset_capabilities() if c != "SYS_RESOURCE"]
    status, info, stderr = run_agent_with(caps, tmp_path)
    assert status is None and info is not None, stderr[-2000:]
    assert run_probe_with(caps) == "OK"
