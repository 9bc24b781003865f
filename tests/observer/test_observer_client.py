"""agent.client (channel, merge): address forms, the time-ordered merge of several agents, node-status notices
for an agent that is down, and reconnection when following."""

from __future__ import annotations

import os
import threading
import time

import pytest
from tests.observer.agents import InProcessAgent
from tests.observer.observer_flows import make_flow

from agent.client.channel import normalize_address, open_channel
from agent.client.merge import MergedFlows, response_time_ns
from agent.errors import ConfigError, RequestRejected
from agent.config import ObserverSection
from agent.observer.server import ObserverServer
from podflow_api.v1 import observer_pb2

Req = observer_pb2.GetFlowsRequest
T0 = 1_800_000_000 * 10**9

ADDRESSES = [("localhost:4245", "localhost:4245"), ("node-a", "node-a:4245"),
             (":5000", "localhost:5000"), ("unix:/run/a.sock", "unix:/run/a.sock"),
             ("[::1]:7", "[::1]:7"), ("::1", "[::1]:4245"), ("[fd00::1]", "[fd00::1]:4245")]


@pytest.mark.parametrize("given,target", ADDRESSES, ids=[a for a, _ in ADDRESSES])
def test_normalize_address(given, target):
    assert normalize_address(given) == target


@pytest.mark.parametrize("bad", ["", "host:http", "host:0", "unix:"])
def test_bad_address_names_the_flag(bad):
    with pytest.raises(ConfigError, match="--server"):
        normalize_address(bad)


def test_merge_orders_by_time_across_agents():
    a, b = InProcessAgent("node-a").start(), InProcessAgent("node-b").start()
    try:
        a.store.extend([make_flow(i, node="node-a", time_ns=T0 + i * 2000) for i in range(500)])
        b.store.extend([make_flow(i, node="node-b", time_ns=T0 + i * 2000 + 1000)
                        for i in range(500)])
        got = list(MergedFlows([a.address, b.address], Req()))
        times = [response_time_ns(r) for r in got]
        assert len(got) == 1000 and times == sorted(times)
        assert {r.node_name for r in got} == {"node-a", "node-b"}
    finally:
        a.stop()
        b.stop()


def test_unreachable_agent_is_a_notice_and_the_other_streams(sockdir):
    a = InProcessAgent("node-a").start()
    down = f"unix:{os.path.join(sockdir, 'down.sock')}"
    try:
        a.feed(20)
        got = list(MergedFlows([a.address, down], Req()))
        flows = [r for r in got if r.HasField("flow")]
        notices = [r for r in got if r.HasField("node_status")]
        assert len(flows) == 20
        assert len(notices) == 1
        ns = notices[0].node_status
        assert ns.state == observer_pb2.NODE_UNAVAILABLE and list(ns.node_names) == [down]
        assert down in ns.message
    finally:
        a.stop()


def test_follow_reconnects_and_resumes(sockdir):
    path = os.path.join(sockdir, "a.sock")
    a = InProcessAgent("node-a", listen=f"unix:{path}").start()
    merged = MergedFlows([f"unix:{path}"], Req(follow=True), max_backoff_s=0.5)
    got: list = []
    done = threading.Event()

    def consume():
        for r in merged:
            got.append(r)
        done.set()

    threading.Thread(target=consume, daemon=True).start()
    try:
        deadline = time.monotonic() + 5
        while a.store.num_subscribers == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        a.store.extend([make_flow(1)])
        _wait(lambda: any(r.HasField("flow") for r in got))
        a.stop()  # the agent goes away ...
        _wait(lambda: any(r.node_status.state == observer_pb2.NODE_UNAVAILABLE for r in got))
        # ... and comes back on the same address with the same store
        a.server = ObserverServer(ObserverSection(listen=f"unix:{path}"), a.store, a.stats)
        a.server.start()
        # the agent says it is back as soon as the stream starts, before any new flow
        _wait(lambda: got[-1].node_status.state == observer_pb2.NODE_CONNECTED, timeout=10)
        a.store.extend([make_flow(2)])
        _wait(lambda: sum(r.HasField("flow") for r in got) == 2, timeout=10)
        states = [r.node_status.state for r in got if r.HasField("node_status")]
        assert states[0] == observer_pb2.NODE_UNAVAILABLE
        assert states[-1] == observer_pb2.NODE_CONNECTED
        # resumed after the last flow seen: flow 1 is not sent twice
        assert [r.flow.bytes for r in got if r.HasField("flow")] == [101, 102]
    finally:
        merged.close()
        a.stop()
    assert done.wait(5)


def _wait(cond, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_invalid_request_is_raised_not_retried():
    a = InProcessAgent().start()
    try:
        req = Req(follow=True, allowlist=[observer_pb2.FlowFilter(source_ip=["x"])])
        with pytest.raises(RequestRejected, match="allowlist"):
            list(MergedFlows([a.address], req))
    finally:
        a.stop()


async def test_aio_channel(agent):
    from podflow_api.v1 import observer_pb2_grpc
    agent.feed(2)
    async with open_channel(agent.address, aio=True) as ch:
        stub = observer_pb2_grpc.ObserverStub(ch)
        st = await stub.ServerStatus(observer_pb2.ServerStatusRequest(), timeout=5)
        got = [r async for b in stub.GetFlowsBatched(Req()) for r in b.responses]
    assert st.num_flows == 2 and len(got) == 2
