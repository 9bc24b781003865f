"""End to end in a real terminal: `podflow tui` in tmux against a real agent server, keys
typed with send-keys, the screen read with capture-pane."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid

import pytest

from tests.tui.conftest import Agent
from tui.synthetic import Cluster

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")

PODFLOW = os.path.join(os.path.dirname(sys.executable), "podflow")
SPARK_GLYPHS = set("▁▂▃▄▅▆▇")  # the Top view's sparklines' (and Textual's thumb ends')


def _tmux(*args: str) -> str:
    return subprocess.run(["tmux", *args], check=True, capture_output=True, text=True,
                          timeout=10).stdout


def _screen(session: str) -> str:
    return _tmux("capture-pane", "-p", "-t", session)


def _wait_screen(session: str, *needles: str, timeout_s: float = 15.0) -> str:
    deadline = time.monotonic() + timeout_s
    screen = ""
    while time.monotonic() < deadline:
        screen = _screen(session)
        if all(n in screen for n in needles):
            return screen
        time.sleep(0.2)
    raise AssertionError(f"{needles} not on screen after {timeout_s}s:\n{screen}")


def test_tui_in_tmux(tmp_path):
    agent = Agent("node-a", f"unix:{tmp_path}/a.sock", Cluster(["node-a"], seed=11))
    agent.start()
    agent.send(400)
    session = f"pftui-{uuid.uuid4().hex[:8]}"
    export_dir = tmp_path / "exports"
    # COLUMNS/LINES inherited from the test runner would override the pane's real size
    cmd = (f"env -u COLUMNS -u LINES {PODFLOW} tui --server {agent.address} "
           f"--export-dir {export_dir}")
    _tmux("new-session", "-d", "-x", "200", "-y", "50", "-s", session, cmd)
    try:
        # the footer shows the keys
        screen = _wait_screen(session, "nodes 1/1 connected", "400 flows seen", "LIVE",
                              "1 Flows", "2 Top", "3 Services", "4 Nodes", "/ Filter",
                              "e Export")
        assert "node-a" in screen and "shop/" in screen

        # Top, then back to Flows and its detail pane: no sparkline-like mark stays at their
        # right edge (issue 13; the scrollbars' thumbs are whole cells, tui/scrollbars.py)
        _tmux("send-keys", "-t", session, "2")
        _wait_screen(session, "Top by namespace")
        _tmux("send-keys", "-t", session, "1")
        screen = _wait_screen(session, "Flows │", "proto/ports")
        assert not SPARK_GLYPHS & set(screen), screen
        _tmux("send-keys", "-t", session, "d")
        screen = _wait_screen(session, "node_name: node-a", "l4.")
        assert not SPARK_GLYPHS & set(screen), screen
        _tmux("send-keys", "-t", session, "d")
        deadline = time.monotonic() + 10
        while "node_name: node-a" in _screen(session):
            assert time.monotonic() < deadline, "d did not close the detail pane"
            time.sleep(0.1)

        _tmux("send-keys", "-t", session, "2")
        _wait_screen(session, "Top by namespace")
        _tmux("send-keys", "-t", session, "p")
        _wait_screen(session, "Top by workload", "shop/frontend")

        _tmux("send-keys", "-t", session, "/")
        # typed before the line is open, the letters would be keys ("q" quits)
        _wait_screen(session, "(! negates; Enter applies")
        _tmux("send-keys", "-t", session, "-l", "proto=quic")
        _tmux("send-keys", "-t", session, "Enter")
        _wait_screen(session, "filter not applied", "'quic' is not one of")
        _tmux("send-keys", "-t", session, "C-u")
        # Textual runs ctrl+u (a binding) after printable keys already queued: type only
        # once the line is empty (its placeholder shows), or the new text is erased too
        _wait_screen(session, "(! negates; Enter applies")
        _tmux("send-keys", "-t", session, "-l", "proto=udp")
        _tmux("send-keys", "-t", session, "Enter")
        _wait_screen(session, "filter: proto=udp")

        _tmux("send-keys", "-t", session, "3")
        screen = _wait_screen(session, "Services: 1 ", "kube-system/kube-dns")
        assert "shop/redis" not in screen  # the filter applies to every view

        _tmux("send-keys", "-t", session, "4")
        _wait_screen(session, "connected", agent.address)

        _tmux("send-keys", "-t", session, "e")
        _wait_screen(session, "exported", str(export_dir))
        assert list(export_dir.glob("podflow-export-*.jsonl"))

        _tmux("send-keys", "-t", session, "q")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            alive = subprocess.run(["tmux", "has-session", "-t", session],
                                   capture_output=True).returncode == 0
            if not alive:
                break
            time.sleep(0.2)
        assert not alive, "q did not quit the app"
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
        agent.stop()
