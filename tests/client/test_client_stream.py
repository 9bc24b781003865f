"""ONE resumable stream of one agent (agent.client.stream.AgentStream), against real Observer
servers on unix sockets: exponential backoff with jitter, resume after the last flow
received, node-status notices in-band and state changes to a callback."""

from __future__ import annotations

import os
import random
import tempfile
import threading

import pytest

from agent.client.stream import AgentStream, Backoff
from agent.errors import RequestRejected
from agent.config import ObserverSection
from agent.observer.server import ObserverServer
from podflow_api.v1 import observer_pb2
from tests.observer.conftest import InProcessAgent
from tests.observer.observer_flows import make_flow
from tests.waiting import wait_until

Req = observer_pb2.GetFlowsRequest


def test_backoff_doubles_to_its_ceiling_within_the_jitter():
    backoff = Backoff(start_s=0.5, max_s=10.0, jitter=0.2, rng=random.Random(7))
    nominal = [0.5, 1, 2, 4, 8, 10, 10, 10]
    delays = [backoff.next_s() for _ in nominal]
    for got, want in zip(delays, nominal):
        assert want * 0.8 <= got <= want * 1.2
    assert len({round(d / n, 6) for d, n in zip(delays, nominal)}) > 1, "jitter varies"
    backoff.reset()
    assert 0.4 <= backoff.next_s() <= 0.6


def test_agents_lost_together_are_not_retried_in_lockstep():
    a, b = Backoff(rng=random.Random(1)), Backoff(rng=random.Random(2))
    assert [a.next_s() for _ in range(5)] != [b.next_s() for _ in range(5)]


@pytest.fixture
def sockdir():
    with tempfile.TemporaryDirectory(prefix="pf-stream-") as d:
        yield d



def test_follow_survives_the_agent_going_away_and_resumes(sockdir):
    path = os.path.join(sockdir, "a.sock")
    agent = InProcessAgent("node-a", listen=f"unix:{path}").start()
    agent.store.extend([make_flow(i) for i in range(5)])
    states, connects, ends = [], [], []

    def on_connect(_channel):
        connects.append(1)
        return lambda: ends.append(1)

    stream = AgentStream(f"unix:{path}", Req(follow=True, number=2),
                         backoff=Backoff(start_s=0.05, max_s=0.2),
                         on_state=states.append, on_connect=on_connect)
    got: list = []
    reader = threading.Thread(target=lambda: got.extend(r for b in stream for r in b),
                              daemon=True)
    reader.start()
    try:
        assert wait_until(lambda: len(got) == 2, timeout_s=15)
        agent.stop()  # the agent goes away ...
        assert wait_until(lambda: any(s.state == "reconnecting" for s in states), timeout_s=15)
        lost = next(s for s in states if s.state == "lost")
        assert 0.04 <= lost.retry_in_s <= 0.06 and lost.message  # the first delay, +-20%
        # ... and comes back with its store, and a new flow
        agent.server = ObserverServer(ObserverSection(listen=f"unix:{path}"), agent.store,
                                      agent.stats)
        agent.server.start()
        agent.store.extend([make_flow(9)])
        assert wait_until(lambda: sum(r.HasField("flow") for r in got) == 3, timeout_s=15)
    finally:
        stream.close()
        agent.stop()
    reader.join(5)
    assert not reader.is_alive()
    # the history asked for once, then only what came after the last flow received
    assert [r.flow.bytes for r in got if r.HasField("flow")] == [103, 104, 109]
    notices = [r.node_status for r in got if r.HasField("node_status")]
    assert [n.state for n in notices] == [observer_pb2.NODE_UNAVAILABLE,
                                          observer_pb2.NODE_CONNECTED]
    assert list(notices[0].node_names) == ["node-a"], "named by its node once known"
    kinds = [s.state for s in states]
    assert kinds[0] == "connected" and kinds[-1] == "connected"
    attempts = [s.attempt for s in states if s.state == "reconnecting"]
    assert attempts == list(range(2, 2 + len(attempts)))
    assert len(connects) == len(ends) >= 2, "each connection's end is told"


def test_an_agent_unreachable_at_first_still_gives_the_history_asked_for(sockdir):
    """Nothing received yet, nothing to resume after: the retry asks for the history again
    (a TUI whose port-forward starts working late still shows the agent's recent flows)."""
    path = os.path.join(sockdir, "late.sock")
    stream = AgentStream(f"unix:{path}", Req(follow=True, number=2), notices=False,
                         backoff=Backoff(start_s=0.05, max_s=0.1))
    got: list = []
    reader = threading.Thread(target=lambda: got.extend(r for b in stream for r in b),
                              daemon=True)
    reader.start()
    agent = InProcessAgent("node-a", listen=f"unix:{path}")
    agent.store.extend([make_flow(i) for i in range(5)])
    try:
        assert not wait_until(lambda: got, timeout_s=0.3)  # nobody there yet
        agent.start()
        assert wait_until(lambda: len(got) == 2, timeout_s=15)
    finally:
        stream.close()
        agent.stop()
    reader.join(5)
    assert [r.flow.bytes for r in got] == [103, 104]


def test_without_reconnect_an_unreachable_agent_is_one_notice(sockdir):
    address = f"unix:{os.path.join(sockdir, 'nobody.sock')}"
    states = []
    stream = AgentStream(address, Req(number=5), on_state=states.append)
    got = [r for batch in stream for r in batch]
    assert len(got) == 1 and got[0].node_status.state == observer_pb2.NODE_UNAVAILABLE
    assert got[0].node_status.message.startswith(f"{address}: UNAVAILABLE")
    assert [(s.state, s.retry_in_s) for s in states] == [("lost", 0.0)]


def test_state_only_for_readers_that_want_no_notices(sockdir):
    address = f"unix:{os.path.join(sockdir, 'nobody.sock')}"
    states = []
    stream = AgentStream(address, Req(follow=True), notices=False, on_state=states.append,
                         backoff=Backoff(start_s=0.02, max_s=0.02))
    got: list = []
    reader = threading.Thread(target=lambda: got.extend(stream), daemon=True)
    reader.start()
    assert wait_until(lambda: sum(s.state == "lost" for s in states) >= 3, timeout_s=15)
    stream.close()
    reader.join(5)
    assert got == [] and not reader.is_alive()


def test_a_rejected_request_is_raised_not_retried():
    agent = InProcessAgent().start()
    try:
        stream = AgentStream(agent.address, Req(follow=True, allowlist=[
            observer_pb2.FlowFilter(source_ip=["not-an-ip"])]))
        with pytest.raises(RequestRejected, match="allowlist"):
            list(stream)
    finally:
        agent.stop()
