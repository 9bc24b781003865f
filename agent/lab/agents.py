"""`podflow agent` as a child process: started on a lab node (inside its namespace) or alone.

Tests, benchmarks and the demo all start agents the same way: a unix socket, a ready file
the agent writes once it serves, stdout and stderr in files beside them, and its own
session so a Ctrl-C meant for the caller's terminal does not reach it (its owner stops it
in order). A failure to start comes back as a LabError carrying the agent's stderr.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING

from agent.errors import LabError

if TYPE_CHECKING:
    from agent.lab.nodes import Node

log = logging.getLogger("podflow.lab")


class AgentHandle:
    """A `podflow agent` process from `spawn_agent`: on a lab node (`node`), or alone for a
    test that needs one agent and no lab (`node` None). As a context manager it stops the
    agent on the way out."""

    def __init__(self, node_name: str, proc: subprocess.Popen, address: str, ready_file: str,
                 stderr_path: str, stdout_path: str, node: "Node | None" = None):
        self.node_name = node_name
        self.node = node
        self.process = proc
        self.address = address
        self.ready_file = ready_file
        self.stderr_path = stderr_path
        self.stdout_path = stdout_path
        self.ready: dict = {}

    def __enter__(self) -> "AgentHandle":
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    @property
    def pid(self) -> int:
        return self.process.pid

    def stderr_text(self) -> str:
        try:
            with open(self.stderr_path, encoding="utf-8", errors="replace") as fh:
                return fh.read()
        except FileNotFoundError:
            return ""

    def wait_ready(self, timeout_s: float) -> dict:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if os.path.exists(self.ready_file):
                try:
                    with open(self.ready_file, encoding="utf-8") as fh:
                        self.ready = json.load(fh)
                    return self.ready
                except (json.JSONDecodeError, FileNotFoundError):
                    pass  # written atomically by the agent; retry on the odd race
            code = self.process.poll()
            if code is not None:
                raise LabError(f"podflow agent on {self.node_name} exited with {code} before "
                               f"it was ready:\n{self.stderr_text().strip()[-4000:]}")
            time.sleep(0.1)
        self.kill()
        raise LabError(f"podflow agent on {self.node_name} not ready after {timeout_s:.0f}s:\n"
                       f"{self.stderr_text().strip()[-4000:]}")

    def stop(self, timeout_s: float = 20.0) -> int:
        """SIGTERM, wait, return the exit code (SIGKILL after the timeout)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("agent on %s ignored SIGTERM for %.0fs; killing", self.node_name,
                            timeout_s)
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def wait(self, timeout_s: float) -> int:
        """The exit code once the agent exits by itself (subprocess.TimeoutExpired if not)."""
        return self.process.wait(timeout_s)

    def kill(self) -> int:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        return self.process.returncode


def spawn_agent(base: str, *args: str, node_name: str, netns: str | None = None,
                env: dict[str, str] | None = None, node: "Node | None" = None) -> AgentHandle:
    """Start `podflow agent --node-name NODE_NAME --listen unix:BASE.sock --ready-file
    BASE.ready.json ARGS` (inside `netns` when given), its output in BASE.stdout and
    BASE.stderr. Returns at once: `wait_ready` waits, `stop` ends it."""
    sock = f"{base}.sock"
    ready = f"{base}.ready.json"
    for stale in (sock, ready):
        if os.path.exists(stale):
            os.unlink(stale)
    cmd = [sys.executable, "-m", "agent.cli", "agent", "--node-name", node_name,
           "--listen", f"unix:{sock}", "--ready-file", ready, *args]
    if netns is not None:
        cmd = ["ip", "netns", "exec", netns, *cmd]
    stderr_path, stdout_path = f"{base}.stderr", f"{base}.stdout"
    with open(stderr_path, "wb") as err, open(stdout_path, "wb") as out:
        # Own session: a Ctrl-C meant for the caller's terminal does not reach the agent;
        # its owner stops it in order.
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                start_new_session=True, env={**os.environ, **(env or {})})
    return AgentHandle(node_name, proc, f"unix:{sock}", ready, stderr_path, stdout_path, node)
