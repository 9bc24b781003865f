"""Helpers of the demo tests: run `podflow demo` as a user would, and check the host is as
clean afterwards as before."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PODFLOW = [sys.executable, "-m", "agent.cli"]
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
        "links": sorted(line.split(":")[1].strip().split("@")[0] for line in links.splitlines()),
        "iptables": [line for line in rules.splitlines()
                     if not line.startswith(("#", ":"))],
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
