"""`podflow demo` in a real terminal (tmux): the TUI opens on both agents, its Services view
shows the cart Service spread over both backends, quitting it ends the demo, and the host is
clean afterwards. Also: Ctrl-C (SIGINT) ends a headless demo just as cleanly."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import time

import pytest

from agent.demo.cluster import pod_name
from tests.demo.conftest import PODFLOW, REPO, SUFFIX, host_state

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


@pytest.mark.parametrize("quit_key", ["q", "C-c"], ids=["q", "ctrl-c"])
def test_tui_services_view_then_quit(ebpf_ready, clean_host, quit_key):
    lab = f"demotui{SUFFIX}"
    clean_host(lab)
    session = f"pfdemo{os.getpid()}"
    cmd = (f"cd {shlex.quote(REPO)} && {shlex.join(PODFLOW)} demo --lab-id {lab}; "
           "echo DEMO-EXIT=$?; sleep 600")
    subprocess.run([*TMUX, "new-session", "-d", "-s", session, "-x", "200", "-y", "50", cmd],
                   check=True)
    try:
        _wait_for(session, lambda s: "nodes 2/2 connected" in s, 180, "the TUI on both agents")
        subprocess.run([*TMUX, "send-keys", "-t", session, "3"], check=True)
        expected = ["shop/cart", *(f"shop/{pod_name('cart', i)}" for i in range(2)),
                    "web/storefront", "kube-system/kube-dns", "data/db"]
        _wait_for(session, lambda s: all(e in s for e in expected), 60,
                  "every Service, and both cart backends, in the Services view")
        subprocess.run([*TMUX, "send-keys", "-t", session, quit_key], check=True)
        screen = _wait_for(session, lambda s: "DEMO-EXIT=" in s, 90, "the demo to end")
        assert "DEMO-EXIT=0" in screen and "cleaned up" in screen, screen
    finally:
        if "DEMO-EXIT=" not in _screen(session):  # a failed check: end the demo cleanly
            subprocess.run([*TMUX, "send-keys", "-t", session, "q"], capture_output=True)
            deadline = time.monotonic() + 90
            while "DEMO-EXIT=" not in _screen(session) and time.monotonic() < deadline:
                time.sleep(0.5)
        subprocess.run([*TMUX, "kill-session", "-t", session], capture_output=True)


def test_ctrl_c_stops_a_running_demo_cleanly(ebpf_ready, clean_host):
    lab = f"demosigint{SUFFIX}"
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


def test_closing_the_terminal_cleans_up(ebpf_ready, clean_host):
    """The window is closed under a running demo (SIGHUP): it still removes everything."""
    lab = f"demohup{SUFFIX}"
    clean_host(lab)
    session = f"pfhup{os.getpid()}"
    cmd = f"cd {shlex.quote(REPO)} && {shlex.join(PODFLOW)} demo --lab-id {lab}"
    subprocess.run([*TMUX, "new-session", "-d", "-s", session, "-x", "160", "-y", "40", cmd],
                   check=True)
    try:
        _wait_for(session, lambda s: "nodes 2/2 connected" in s, 180, "the TUI on both agents")
    finally:
        subprocess.run([*TMUX, "kill-session", "-t", session], capture_output=True)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if not host_state(lab)["netns"] and not os.path.exists(f"/run/podflow-lab/{lab}"):
            break
        time.sleep(0.5)
    # clean_host then checks namespaces, processes, run directory, links and rules
