"""Helpers of the demo tests: run `podflow demo` as a user would, and check the host is as
clean afterwards as before."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

# Link names the lab uses (pod veths, bridges, uplinks): none may ever appear in the root
# namespace.
LAB_LINK = re.compile(r"^(veth[0-9a-f]{8}|cni0|br0|n\d+|o\d+)$")

PODFLOW = [sys.executable, "-m", "agent.cli"]
# Lab ids end in this process's number: other test runs on this host run demos at once.
SUFFIX = os.getpid() % 10000
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def host_state(lab_id: str) -> dict:
    """Everything a demo could leave: its namespaces, run directory and processes, and the
    root namespace's links and iptables rules."""
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    rules = subprocess.run(["iptables-save"], capture_output=True, text=True).stdout
    procs = subprocess.run(["ps", "-ww", "-eo", "args"], capture_output=True, text=True).stdout
    return {
        "netns": sorted(line.split()[0] for line in netns.splitlines()
                        if line.startswith(f"pf{lab_id}-")),
        "run_dir": os.path.exists(f"/run/podflow-lab/{lab_id}"),
        "processes": [p for p in procs.splitlines() if f"/run/podflow-lab/{lab_id}/" in p],
        # Only what a lab could create: other suites share this host and may add their own.
        "links": sorted(name for name in (line.split(":")[1].strip().split("@")[0]
                                          for line in links.splitlines())
                        if LAB_LINK.match(name)),
        "iptables": [line for line in rules.splitlines()
                     if "KUBE-" in line or "podflow-lab" in line],
    }


def run_demo(*args: str, timeout_s: float = 240, env: dict | None = None,
             **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([*PODFLOW, "demo", *args], capture_output=True, text=True,
                          timeout=timeout_s, cwd=REPO, env={**os.environ, **(env or {})},
                          **kwargs)


@pytest.fixture
def clean_host():
    """Asserts, after the test, that the lab ids it names left nothing behind."""
    ids: list[str] = []
    before: dict[str, dict] = {}

    def watch(lab_id: str) -> None:
        ids.append(lab_id)
        before[lab_id] = host_state(lab_id)

    yield watch
    for lab_id in ids:
        after = host_state(lab_id)
        if after["netns"] or after["run_dir"] or after["processes"]:
            run_demo("--down", "--lab-id", lab_id, timeout_s=60)
        assert after == {**before[lab_id], "netns": [], "run_dir": False, "processes": []}
