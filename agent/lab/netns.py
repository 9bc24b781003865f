"""Commands, network namespaces and the processes inside them: the lab's lowest layer.

Every other lab module builds on these few calls: a set-up command whose failure names the
command and its stderr (and the Debian package when the tool is missing), and the removal
of a namespace that first stops every process in it, because a namespace with a process
inside outlives `ip netns delete`, and so do its links.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import time
from typing import Sequence

from agent.errors import LabError

log = logging.getLogger("podflow.lab")

NETNS_DIR = "/run/netns"

DEBIAN_PACKAGE = {"ip": "iproute2", "ss": "iproute2", "iptables": "iptables",
                  "iptables-restore": "iptables", "dnsmasq": "dnsmasq-base",
                  "sysctl": "procps", "ping": "iputils-ping", "conntrack": "conntrack",
                  "tcpdump": "tcpdump", "iperf3": "iperf3", "tmux": "tmux"}


def run_tool(cmd: Sequence[str], *, check: bool = True, input_text: str | None = None,
             quiet: bool = False) -> subprocess.CompletedProcess:
    """Run a set-up command; failures become LabError naming the command and its stderr."""
    try:
        res = subprocess.run(list(cmd), input=input_text, capture_output=True, text=True,
                             check=False)
    except FileNotFoundError as exc:
        raise LabError(f"{cmd[0]} is not installed (Debian package: "
                       f"{DEBIAN_PACKAGE.get(cmd[0], cmd[0])})") from exc
    if check and res.returncode != 0:
        raise LabError(f"`{' '.join(cmd)}` failed ({res.returncode}): {res.stderr.strip()}")
    if not quiet and res.returncode != 0:
        log.debug("`%s` -> %d: %s", " ".join(cmd), res.returncode, res.stderr.strip())
    return res


def missing_tools(tools: Sequence[str] = ("ip", "ss", "iptables", "iptables-restore", "sysctl")
                  ) -> list[str]:
    """Names of required tools not on PATH, each with the Debian package that provides it."""
    return [f"{t} (Debian package {DEBIAN_PACKAGE.get(t, t)})" for t in tools
            if shutil.which(t) is None]


def netns_exists(name: str) -> bool:
    return os.path.exists(os.path.join(NETNS_DIR, name))


def list_netns() -> list[str]:
    try:
        return sorted(os.listdir(NETNS_DIR))
    except FileNotFoundError:
        return []


def pid_start_time(pid: int) -> str | None:
    """The process's start time in clock ticks, so a reused pid is not taken for the owner."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            stat = fh.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def netns_pids(netns: str) -> list[int]:
    res = run_tool(["ip", "netns", "pids", netns], check=False, quiet=True)
    return [int(p) for p in res.stdout.split() if p.isdigit()]


def kill_netns_processes(netns: str, grace_s: float = 3.0) -> None:
    """Stop every process living in one of our namespaces (SIGTERM, then SIGKILL): a namespace
    with processes in it outlives `ip netns delete`, with its links."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = [p for p in netns_pids(netns) if p != os.getpid()]
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace_s
        while (time.monotonic() < deadline
               and any(p != os.getpid() for p in netns_pids(netns))):
            time.sleep(0.05)


def delete_netns(netns: str) -> None:
    """Stop the namespace's processes, then delete it (its links, qdiscs, filters and
    iptables rules go with it). Nothing to do when it is gone already."""
    if not netns_exists(netns):
        return
    kill_netns_processes(netns)
    run_tool(["ip", "netns", "delete", netns], check=False)
