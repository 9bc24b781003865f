"""Shared pieces of the lab tests: a snapshot of what the root namespace looks like, so a
test can prove the lab left nothing behind."""

from __future__ import annotations

import subprocess

import pytest


def root_snapshot(prefix: str) -> dict:
    """What a lab could leave behind: its namespaces, root links, root iptables rules."""
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    rules = subprocess.run(["iptables-save"], capture_output=True, text=True).stdout
    return {
        "netns": sorted(line.split()[0] for line in netns.splitlines()
                        if line.startswith(prefix + "-")),
        "links": sorted(line.split(":")[1].strip().split("@")[0] for line in links.splitlines()),
        "iptables": [line for line in rules.splitlines() if not line.startswith("#")
                     and not line.startswith(":")],
    }


@pytest.fixture
def snapshot():
    return root_snapshot
