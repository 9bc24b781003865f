"""Fixtures of the TUI tests: real Observer servers (agent.observer.server over agent.flowstore, as
the agent runs them) on unix sockets or port 0, fed with synthetic cluster traffic."""

from __future__ import annotations

import io
import time

import pytest
from rich.console import Console

from agent.config import ObserverSection, StoreSection
from agent.flowstore import FlowStore
from agent.observer.server import ObserverServer
from agent.stats import AgentStats
from tui.synthetic import Cluster

NODES = ["node-a", "node-b"]


class Agent:
    """One node's agent as the TUI sees it: a real gRPC Observer over a real flow store.
    `stop()` then `start()` again serves on the same address (the agent came back)."""

    def __init__(self, node: str, listen: str, cluster: Cluster):
        self.node = node
        self.listen = listen
        self.cluster = cluster
        self.stats = AgentStats(node_name=node, version="test")
        self.store = FlowStore(StoreSection(capacity=50_000), self.stats)
        self.server: ObserverServer | None = None
        self.address = ""

    def start(self) -> None:
        self.server = ObserverServer(ObserverSection(listen=self.listen), self.store, self.stats)
        self.server.start()
        self.address = self.server.address

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop(grace_s=0)
            self.server = None

    def send(self, n: int, now_ns: int | None = None, **kw) -> list:
        flows = self.cluster.flows(n, now_ns=now_ns, node=self.node, **kw)
        self.store.extend(flows)
        return flows


@pytest.fixture
def cluster():
    return Cluster(NODES, seed=7)


@pytest.fixture
def agents(tmp_path, cluster):
    """Two agents (node-a, node-b) on unix sockets, started, with some history each."""
    made = []
    for node in NODES:
        agent = Agent(node, f"unix:{tmp_path}/{node}.sock", cluster)
        agent.start()
        made.append(agent)
    yield made
    for agent in made:
        agent.stop()


async def wait_for(pilot, predicate, timeout_s: float = 10.0, what: str = "condition"):
    """Let the app run until `predicate()` holds (the app redraws a few times a second)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        await pilot.pause(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def screen_lines(app) -> list[str]:
    """The app's screen as plain text, one string per terminal line (every widget, the
    scrollbars too, as the compositor would send them to a terminal)."""
    console = Console(width=app.size.width, height=app.size.height, file=io.StringIO(),
                      force_terminal=True, record=True, legacy_windows=False, safe_box=False)
    console.print(app.screen._compositor.render_update(full=True))
    return console.export_text().splitlines()
