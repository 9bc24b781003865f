"""Who owns a lab, and what crashed labs left behind.

Several labs run on one host at once (tests, benchmarks, a demo, other developers'), so a
lab is known by its id alone: every namespace it makes is named `pf<id>-...`, and its run
directory /run/podflow-lab/<id>/lab.json records the owner process (pid and start time, so
a reused pid is not taken for the owner) and its namespaces. A lab whose owner is gone is a
leftover; removing leftovers by id never touches a lab whose owner still runs.
"""

from __future__ import annotations

import json
import os
import re
import shutil

from agent.errors import LabError
from agent.lab.netns import delete_netns, list_netns, pid_start_time

RUN_ROOT = "/run/podflow-lab"

_LIVE_LABS: set[str] = set()  # ids of the labs this process owns now


def sanitize_id(lab_id: str) -> str:
    """The id as it appears in names: lower-case letters and digits, at most 16."""
    clean = re.sub(r"[^a-z0-9]", "", lab_id.lower())
    if not clean:
        raise LabError(f"lab id {lab_id!r} has no letters or digits")
    return clean[:16]


def run_dir(lab_id: str) -> str:
    return os.path.join(RUN_ROOT, lab_id)


def claim(lab_id: str) -> None:
    """This process owns the lab from now on (its state file follows with `save`)."""
    os.makedirs(run_dir(lab_id), exist_ok=True)
    _LIVE_LABS.add(lab_id)


def release(lab_id: str) -> None:
    """The lab is gone: its run directory too."""
    shutil.rmtree(run_dir(lab_id), ignore_errors=True)
    _LIVE_LABS.discard(lab_id)


def save(lab_id: str, netns: list[str]) -> None:
    """Record this process as the owner of the lab and its namespaces (atomically)."""
    state = {"id": lab_id, "owner_pid": os.getpid(),
             "owner_start": pid_start_time(os.getpid()), "netns": netns}
    os.makedirs(run_dir(lab_id), exist_ok=True)  # a concurrent leftover sweep may race us
    path = os.path.join(run_dir(lab_id), "lab.json")
    with open(path + ".tmp", "w", encoding="utf-8") as fh:
        json.dump(state, fh)
    os.replace(path + ".tmp", path)


def owner_alive(lab_id: str) -> int | None:
    """The pid of the live process owning this lab, or None."""
    try:
        with open(os.path.join(run_dir(lab_id), "lab.json"), encoding="utf-8") as fh:
            state = json.load(fh)
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    pid = int(state.get("owner_pid", 0))
    if pid == os.getpid():
        return pid if lab_id in _LIVE_LABS else None
    if pid <= 0:
        return None
    start = pid_start_time(pid)
    if start is not None and start == state.get("owner_start"):
        return pid
    return None


def lab_ids_on_host() -> set[str]:
    ids = set()
    for netns in list_netns():
        m = re.match(r"^pf([a-z0-9]+)-", netns)
        if m:
            ids.add(m.group(1))
    if os.path.isdir(RUN_ROOT):
        ids.update(os.listdir(RUN_ROOT))
    return ids


def leftovers(lab_id: str | None = None) -> dict[str, list[str]]:
    """Labs left by processes that are gone: {lab id: [its namespaces]}. Labs owned by
    a live process (another test, a running demo) are not leftovers."""
    ids = {sanitize_id(lab_id)} if lab_id else lab_ids_on_host()
    out = {}
    for lid in sorted(ids):
        if owner_alive(lid):
            continue
        names = [n for n in list_netns() if n.startswith(f"pf{lid}-")]
        if names or os.path.isdir(run_dir(lid)):
            out[lid] = names
    return out


def cleanup_leftovers(lab_id: str | None = None, force: bool = False) -> list[str]:
    """Remove what crashed labs left (every lab whose owner is gone, or only `lab_id`).
    With force, also a lab whose owner still runs (its owner then loses its lab).
    Returns the lab ids removed."""
    if force and lab_id:
        targets: dict[str, list[str] | None] = {sanitize_id(lab_id): None}
    else:
        targets = dict(leftovers(lab_id))
    removed = []
    for lid in targets:
        # Pods first, then nodes, then the underlay: each deletion takes its veth peers along.
        for netns in sorted(list_netns(), key=lambda n: ("-underlay" in n, "-n" in n)):
            if netns.startswith(f"pf{lid}-"):
                delete_netns(netns)
        shutil.rmtree(run_dir(lid), ignore_errors=True)
        removed.append(lid)
    return removed
