"""Shared pieces of the lab tests: a snapshot of what the root namespace looks like, so a
test can prove the lab left nothing behind."""

from __future__ import annotations

import re
import subprocess

import pytest

# Link names the lab uses (pod veths, bridges, uplinks): none may ever appear in the root
# namespace.
LAB_LINK = re.compile(r"^(veth[0-9a-f]{8}|cni0|br0|n\d+|o\d+)$")


def root_snapshot(prefix: str) -> dict:
    """What a lab could leave behind: its namespaces, root links, root iptables rules."""
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    rules = subprocess.run(["iptables-save"], capture_output=True, text=True).stdout
    return {
        "netns": sorted(line.split()[0] for line in netns.splitlines()
                        if line.startswith(prefix + "-")),
        # Only what a lab could create: other suites share this host and may add their own.
        "links": sorted(name for name in (line.split(":")[1].strip().split("@")[0]
                                          for line in links.splitlines())
                        if LAB_LINK.match(name)),
        "iptables": [line for line in rules.splitlines()
                     if "KUBE-" in line or "podflow-lab" in line],
    }


@pytest.fixture
def snapshot():
    return root_snapshot
