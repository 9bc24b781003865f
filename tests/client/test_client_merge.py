"""ONE time-ordered merge of several agents (agent.client.merge): the reorder rules on a
hand-driven clock, then MergedFlows over real Observer servers with a dead agent and a slow
one."""

from __future__ import annotations

import os
import tempfile
import threading
import time

from agent.client.merge import MergedFlows, TimeMerge, response_time_ns
from podflow_api.v1 import observer_pb2
from tests.observer.conftest import InProcessAgent
from tests.observer.observer_flows import make_flow
from tests.waiting import wait_until


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _merge(clock, **kw) -> TimeMerge:
    kw.setdefault("quiet_s", 0.5)
    kw.setdefault("max_held", 1000)
    return TimeMerge(time_of=lambda item: item[1], clock=clock, **kw)


def test_a_dead_source_holds_back_for_the_quiet_window_only():
    clock = Clock()
    m = _merge(clock)
    m.add_source("a")
    m.add_source("dead")
    m.add("a", [("a", 1), ("a", 2), ("a", 3)])
    assert m.release() == [], "the other source may still send older items"
    clock.now += 0.6
    m.add("a", [("a", 4)])
    assert [t for _, t in m.release()] == [1, 2, 3, 4]


def test_a_slow_source_that_keeps_talking_keeps_the_order():
    clock = Clock()
    m = _merge(clock)
    m.add_source("fast")
    m.add_source("slow")
    m.add("fast", [("fast", t) for t in (10, 20, 30, 40)])
    out = []
    for t in (5, 15, 25, 35):
        clock.now += 0.3  # within the quiet window each time
        m.add("slow", [("slow", t)])
        out += m.release()
    assert out == [("slow", 5), ("fast", 10), ("slow", 15), ("fast", 20), ("slow", 25),
                   ("fast", 30), ("slow", 35)]
    m.source_done("slow")
    assert m.release() == [("fast", 40)]


def test_max_lag_lets_the_newest_out_of_a_source_whose_clock_runs_behind():
    clock = Clock()
    m = _merge(clock, max_lag_ns=100)
    m.add_source("behind")
    m.add_source("a")
    m.add("behind", [("behind", 0)])
    m.add("a", [("a", 50), ("a", 150), ("a", 250)])
    assert m.release() == [("behind", 0), ("a", 50), ("a", 150)]  # 250 - 100 and older


def test_at_most_max_held_items_are_held():
    clock = Clock()
    m = _merge(clock, max_held=3)
    m.add_source("a")
    m.add_source("b")
    m.add("a", [("a", t) for t in range(1, 6)])
    assert m.release() == [("a", 1), ("a", 2)] and len(m) == 3


def test_a_replayed_file_holds_nothing_back_and_ties_keep_their_order():
    clock = Clock()
    m = _merge(clock)
    m.add_source("file", holds=False)
    m.add("file", [("x", 7), ("y", 7), ("z", 3)])
    assert m.release() == [("z", 3), ("x", 7), ("y", 7)]
    assert m.drain() == []


def test_a_notice_counts_as_talking():
    clock = Clock()
    m = _merge(clock)
    m.add_source("a")
    m.add_source("b")
    m.add("b", [("b", 1)])
    clock.now += 0.4
    m.heard("b")
    m.add("a", [("a", 9)])
    clock.now += 0.4  # b sent no item for 0.8 s, but a notice 0.4 s ago
    assert m.release() == [("b", 1)]


# -- over real agents ---------------------------------------------------------------------------

def _collect(merged: MergedFlows, got: list) -> threading.Thread:
    t = threading.Thread(target=lambda: got.extend(merged), daemon=True)
    t.start()
    return t



def test_following_a_live_agent_a_slow_one_and_a_dead_one():
    """The dead agent is one notice and delays nobody; the slow agent, sending older flows
    a little at a time, is merged in order with the fast one."""
    fast, slow = InProcessAgent("node-a").start(), InProcessAgent("node-b").start()
    with tempfile.TemporaryDirectory(prefix="pf-merge-") as d:
        dead = f"unix:{os.path.join(d, 'dead.sock')}"
        merged = MergedFlows([fast.address, slow.address, dead],
                             observer_pb2.GetFlowsRequest(follow=True), window_s=0.5)
        got: list = []
        reader = _collect(merged, got)
        try:
            assert wait_until(lambda: fast.store.num_subscribers and slow.store.num_subscribers,
                              timeout_s=15)
            t0 = time.time_ns()
            fast.store.extend([make_flow(i, node="node-a", time_ns=t0 + i * 10_000_000)
                               for i in range(0, 20, 2)])
            for i in range(1, 20, 2):  # the slow agent's flows are older, and trickle in
                time.sleep(0.1)
                slow.store.extend([make_flow(i, node="node-b",
                                             time_ns=t0 + i * 10_000_000 - 20_000_000)])
            assert wait_until(lambda: sum(r.HasField("flow") for r in got) == 20,
                              timeout_s=15)
        finally:
            merged.close()
            fast.stop()
            slow.stop()
        reader.join(5)
    flows = [r for r in got if r.HasField("flow")]
    times = [response_time_ns(r) for r in flows]
    assert times == sorted(times)
    assert {r.node_name for r in flows} == {"node-a", "node-b"}
    notices = [r.node_status for r in got if r.HasField("node_status")]
    assert [(n.state, list(n.node_names)) for n in notices] == [
        (observer_pb2.NODE_UNAVAILABLE, [dead])], "said once per outage"
