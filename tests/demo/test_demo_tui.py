"""`podflow demo` in a real terminal (tmux): the TUI opens on both agents, its Services view
shows the cart Service spread over both backends, quitting it ends the demo, and the host is
clean afterwards. Also: Ctrl-C (SIGINT) ends a headless demo just as cleanly."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time

import pytest

from agent.demo import _pod_name
from tests.demo.conftest import PODFLOW, REPO

pytestmark = pytest.mark.root

TMUX = ["tmux", "-L", "podflow-demo-test"]


def _screen(session: str) -> str:
    return subprocess.run([*TMUX, "capture-pane", "-p", "-t", session], capture_output=True,
                          text=True).stdout


def _wait_for(session: str, predicate, timeout_s: float, what: str) -> str:
    deadline = time.monotonic() + timeout_s
    screen = ""
    while time.monotonic() < deadline:
        screen = _screen(session)
        if predicate(screen):
            return screen
        time.sleep(0.5)
    pytest.fail(f"timed out waiting for {what}; the screen shows:\n{screen}")


def test_tui_services_view_then_quit(ebpf_ready, clean_host):
    lab = "demotui"
    clean_host(lab)
    session = f"pfdemo{os.getpid()}"
    cmd = (f"cd {shlex.quote(REPO)} && {shlex.join(PODFLOW)} demo --lab-id {lab}; "
           "echo DEMO-EXIT=$?; sleep 600")
    subprocess.run([*TMUX, "new-session", "-d", "-s", session, "-x", "200", "-y", "50", cmd],
                   check=True)
    try:
        _wait_for(session, lambda s: "nodes 2/2 connected" in s, 180, "the TUI on both agents")
        subprocess.run([*TMUX, "send-keys", "-t", session, "3"], check=True)
        backends = [f"shop/{_pod_name('cart', i)}" for i in range(2)]
        screen = _wait_for(session, lambda s: "shop/cart" in s and all(b in s for b in backends),
                           60, "the cart Service and both backends in the Services view")
        for service in ("web/storefront", "kube-system/kube-dns", "data/db"):
            assert service in screen
        subprocess.run([*TMUX, "send-keys", "-t", session, "q"], check=True)
        screen = _wait_for(session, lambda s: "DEMO-EXIT=" in s, 90, "the demo to end")
        assert "DEMO-EXIT=0" in screen and "cleaned up" in screen
    finally:
        subprocess.run([*TMUX, "kill-session", "-t", session], capture_output=True)


def test_ctrl_c_stops_a_running_demo_cleanly(ebpf_ready, clean_host):
    lab = "demosigint"
    clean_host(lab)
    proc = subprocess.Popen([*PODFLOW, "demo", "--no-tui", "--duration", "300", "--lab-id", lab],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.monotonic() + 180
        while not os.path.exists(f"/run/podflow-lab/{lab}/node-b.ready.json"):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
            time.sleep(0.5)
        time.sleep(2)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert "interrupted" in err and "cleaned up" in err
