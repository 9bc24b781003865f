"""The gRPC Observer over real sockets: history, follow, bad requests, status, health,
reflection, unix sockets, loss notices, slow and disconnecting clients."""

from __future__ import annotations

import os
import queue
import threading
import time

import grpc
import psutil
import pytest
from tests.observer.agents import InProcessAgent
from google.protobuf import field_mask_pb2, timestamp_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from tests.observer.observer_flows import make_flow

from agent.client import stream as client
from agent.errors import ConfigError
from agent.observer.server import ListenAddress
from agent.observer.servicer import OBSERVER_SERVICE
from agent.stats import DATAPATH_FAILED, DATAPATH_TRACING
from podflow_api.v1 import flow_pb2, observer_pb2
from tests.waiting import wait_until

FF = observer_pb2.FlowFilter
Req = observer_pb2.GetFlowsRequest


def flows_of(responses):
    return [r.flow for r in responses if r.HasField("flow")]


def call(agent, request, rpc="GetFlowsBatched", timeout=10):
    with agent.channel() as ch:
        stub = agent.stub(ch)
        if rpc == "GetFlows":
            return list(stub.GetFlows(request, timeout=timeout))
        return [r for b in stub.GetFlowsBatched(request, timeout=timeout) for r in b.responses]


RPCS = ["GetFlows", "GetFlowsBatched"]


@pytest.mark.parametrize("rpc", RPCS)
def test_history_last_first_and_filters(agent, rpc):
    agent.feed(30)
    agent.store.extend([make_flow(99, proto="udp", verdict=flow_pb2.DROPPED)])
    last = call(agent, Req(number=5), rpc)
    assert [r.flow.bytes for r in last] == [126, 127, 128, 129, 199]
    assert all(r.node_name == "node-a" and r.time == r.flow.time for r in last)
    first = call(agent, Req(number=2, first=True), rpc)
    assert [r.flow.bytes for r in first] == [100, 101]
    everything = call(agent, Req(), rpc)
    assert len(everything) == 31
    udp = call(agent, Req(allowlist=[FF(protocol=["udp"])]), rpc)
    assert [r.flow.bytes for r in udp] == [199]
    not_udp = call(agent, Req(denylist=[FF(protocol=["udp"])]), rpc)
    assert len(not_udp) == 30


def test_since_until(agent):
    base = 1_800_000_000 * 10**9
    agent.store.extend([make_flow(i, time_ns=base + i * 10**9) for i in range(10)])
    req = Req(since=timestamp_pb2.Timestamp(seconds=1_800_000_003),
              until=timestamp_pb2.Timestamp(seconds=1_800_000_005))
    assert [f.bytes for f in flows_of(call(agent, req))] == [103, 104, 105]


def test_field_mask(agent):
    agent.feed(3)
    resp = call(agent, Req(number=1, field_mask=field_mask_pb2.FieldMask(
        paths=["source.pod_name", "l4"])))
    flow = resp[0].flow
    assert flow.source.pod_name and not flow.source.namespace and flow.l4.tcp.destination_port
    assert not flow.ip.source and not flow.service.name
    assert resp[0].time.seconds > 0  # the response keeps its time


def test_batches_hold_many_flows(agent):
    agent.feed(3000)
    with agent.channel() as ch:
        batches = list(agent.stub(ch).GetFlowsBatched(Req(), timeout=10))
    assert sum(len(b.responses) for b in batches) == 3000
    assert len(batches) <= 4


BAD_REQUESTS = [
    ("number-with-since", Req(number=5, since=timestamp_pb2.Timestamp(seconds=1)), "number:"),
    ("first-without-number", Req(first=True), "first:"),
    ("until-before-since", Req(since=timestamp_pb2.Timestamp(seconds=10),
                               until=timestamp_pb2.Timestamp(seconds=5)), "until:"),
    ("bad-cidr", Req(allowlist=[FF(source_ip=["10.0.0.0/33"])]), "allowlist[0].source_ip:"),
    ("bad-deny-label", Req(denylist=[FF(), FF(destination_label=["a in ()"])]),
     "denylist[1].destination_label:"),
    ("bad-field-mask", Req(field_mask=field_mask_pb2.FieldMask(paths=["nope"])), "field_mask:"),
]


@pytest.mark.parametrize("rpc", RPCS)
@pytest.mark.parametrize("request_,field", [b[1:] for b in BAD_REQUESTS],
                         ids=[b[0] for b in BAD_REQUESTS])
def test_bad_request_is_invalid_argument_naming_the_field(agent, request_, field, rpc):
    with pytest.raises(grpc.RpcError) as err:
        call(agent, request_, rpc)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith(field), err.value.details()


def _follow(agent, request, out: queue.Queue, stop: threading.Event | None = None):
    """Read a follow stream into `out` from a thread; returns (thread, call holder)."""
    holder = {}

    def run():
        ch = agent.channel()
        try:
            for batch in client.get_flow_batches(ch, request, on_call=lambda c: holder.setdefault("call", c)):
                for r in batch:
                    out.put(r)
        except grpc.RpcError as exc:
            out.put(exc)
        finally:
            ch.close()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, holder


def drain(q: queue.Queue, n: int, timeout: float = 10.0) -> list:
    got, deadline = [], time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        try:
            got.append(q.get(timeout=0.1))
        except queue.Empty:
            pass
    return got


def test_follow_with_history_then_live(agent):
    agent.feed(10)
    q: queue.Queue = queue.Queue()
    _t, holder = _follow(agent, Req(number=3, follow=True, allowlist=[FF(protocol=["tcp"])]), q)
    assert [r.flow.bytes for r in drain(q, 3)] == [107, 108, 109]
    assert wait_until(lambda: agent.store.num_subscribers == 1)
    agent.store.extend([make_flow(1, proto="udp"), make_flow(50)])
    got = drain(q, 1)
    assert [r.flow.bytes for r in got] == [150]
    holder["call"].cancel()


def test_follow_reports_loss_at_other_stages(agent):
    q: queue.Queue = queue.Queue()
    _t, holder = _follow(agent, Req(follow=True), q)
    assert wait_until(lambda: agent.store.num_subscribers == 1)
    agent.stats.add_lost(observer_pb2.KERNEL_RING_BUFFER, 7)
    agent.stats.add_lost(observer_pb2.EXPORTER_QUEUE, 2)
    got = drain(q, 2, timeout=5)
    by_stage = {r.lost_events.stage: r.lost_events.num_events_lost for r in got}
    assert by_stage == {observer_pb2.KERNEL_RING_BUFFER: 7, observer_pb2.EXPORTER_QUEUE: 2}
    agent.stats.add_lost(observer_pb2.KERNEL_RING_BUFFER, 3)  # only the delta is sent next
    got = drain(q, 1, timeout=5)
    assert got[0].lost_events.num_events_lost == 3
    holder["call"].cancel()


def test_disconnect_frees_the_subscriber_at_once(agent):
    q: queue.Queue = queue.Queue()
    _t, holder = _follow(agent, Req(follow=True), q)
    assert wait_until(lambda: agent.store.num_subscribers == 1)
    t = time.monotonic()
    holder["call"].cancel()
    assert wait_until(lambda: agent.store.num_subscribers == 0, timeout_s=2)
    assert time.monotonic() - t < 1.0
    assert not len(agent.server.servicer.followers)


def test_stop_ends_follow_streams():
    a = InProcessAgent().start()
    q: queue.Queue = queue.Queue()
    t, _ = _follow(a, Req(follow=True), q)
    assert wait_until(lambda: a.store.num_subscribers == 1)
    a.stop()
    t.join(5)
    assert not t.is_alive()
    assert a.store.num_subscribers == 0


def test_slow_client_loses_oldest_exactly_and_fast_client_gets_all():
    """A client that stops reading while another keeps up: the fast one gets every flow, the
    slow one gets flows plus CLIENT_QUEUE notices adding up exactly to what it missed, and
    nothing piles up in the agent for it."""
    a = InProcessAgent(capacity=2048, client_queue_size=1024).start()
    total, batch_size = 120_000, 500
    template = [make_flow(i) for i in range(batch_size)]
    proc = psutil.Process(os.getpid())
    try:
        fast_q: queue.Queue = queue.Queue()
        _f, fast_call = _follow(a, Req(follow=True), fast_q)
        with a.channel() as slow_ch:
            slow = a.stub(slow_ch).GetFlowsBatched(Req(follow=True))
            assert wait_until(lambda: a.store.num_subscribers == 2)
            a.store.extend(template[:1])
            first = next(slow)  # the slow client reads one message, then stops reading
            slow_flows = len(flows_of(first.responses))
            fast_got = drain(fast_q, 1)
            assert len(fast_got) == 1
            rss_before = proc.memory_info().rss
            fed = 1
            fast_count = 1
            while fed < total:
                a.store.extend(template)
                fed += batch_size
                # keep the fast client within its queue: it must receive everything
                while fast_count < fed - 200:
                    fast_count += len(drain(fast_q, fed - fast_count, timeout=5))
                    if fast_count < fed - 200 and fast_q.empty():
                        break
            fast_count += len(drain(fast_q, fed - fast_count, timeout=10))
            rss_growth_mb = (proc.memory_info().rss - rss_before) / 2**20
            assert fast_count == fed, "the fast client must receive every flow"
            # nothing is buffered per client in the agent: the ring is the only copy
            assert len(a.store) == 2048 and a.store.num_subscribers == 2
            assert rss_growth_mb < 40, f"agent grew {rss_growth_mb:.0f} MiB for a stuck client"
            lost = 0
            notices = 0
            deadline = time.monotonic() + 30
            while slow_flows + lost < fed and time.monotonic() < deadline:
                batch = next(slow)
                for r in batch.responses:
                    if r.HasField("flow"):
                        slow_flows += 1
                    elif r.HasField("lost_events"):
                        assert r.lost_events.stage == observer_pb2.CLIENT_QUEUE
                        assert r.node_name == "node-a"
                        lost += r.lost_events.num_events_lost
                        notices += 1
            assert notices >= 1 and lost > 0
            assert slow_flows + lost == fed, (slow_flows, lost, fed)
            slow.cancel()
        lost_stats = {lc.stage: lc.count for lc in a.stats.lost_counts()}
        assert lost_stats[observer_pb2.CLIENT_QUEUE] == lost
        fast_call["call"].cancel()
        assert wait_until(lambda: a.store.num_subscribers == 0, timeout_s=3)
    finally:
        a.stop()


def test_server_status_and_nodes(agent):
    agent.feed(25)
    agent.stats.add_lost(observer_pb2.KERNEL_RING_BUFFER, 4)
    agent.stats.set_interface(7, "veth0abc")
    agent.stats.set_datapath_errors({"map_full": 2})
    with agent.channel() as ch:
        stub = agent.stub(ch)
        st = stub.ServerStatus(observer_pb2.ServerStatusRequest(), timeout=5)
        nodes = stub.GetNodes(observer_pb2.GetNodesRequest(), timeout=5)
    assert (st.num_flows, st.max_flows, st.seen_flows) == (25, 4096, 25)
    assert st.node_name == "node-a" and st.version == "test" and st.uptime_ns > 0
    assert [(lc.stage, lc.count) for lc in st.lost] == [(observer_pb2.KERNEL_RING_BUFFER, 4)]
    assert [i.name for i in st.interfaces] == ["veth0abc"]
    assert dict(st.datapath_errors) == {"map_full": 2}
    assert st.flows_per_second > 0
    (node,) = nodes.nodes
    assert node.name == "node-a" and node.state == observer_pb2.NODE_CONNECTED
    assert node.num_flows == 25 and node.address == agent.server.address


def test_health_follows_the_datapath_and_reflection(agent):
    """Service "" (the kubelet's probes) is SERVING only while the datapath traces; the
    Observer service as soon as the API answers."""
    with agent.channel() as ch:
        health = health_pb2_grpc.HealthStub(ch)

        def status(service: str) -> int:
            return health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status

        NOT_SERVING, SERVING = (health_pb2.HealthCheckResponse.NOT_SERVING,
                                health_pb2.HealthCheckResponse.SERVING)
        assert (status(""), status(OBSERVER_SERVICE)) == (NOT_SERVING, SERVING)
        agent.stats.set_datapath_state(DATAPATH_TRACING)
        assert status("") == SERVING
        agent.stats.set_datapath_state(DATAPATH_FAILED, "the reader stopped")
        assert (status(""), status(OBSERVER_SERVICE)) == (NOT_SERVING, SERVING)
        st = agent.stub(ch).ServerStatus(observer_pb2.ServerStatusRequest(), timeout=5)
        assert (st.datapath_state, st.datapath_error) == ("failed", "the reader stopped")
        refl = reflection_pb2_grpc.ServerReflectionStub(ch)
        answers = list(refl.ServerReflectionInfo(iter([
            reflection_pb2.ServerReflectionRequest(list_services=""),
            reflection_pb2.ServerReflectionRequest(file_containing_symbol=OBSERVER_SERVICE),
        ]), timeout=5))
    names = {s.name for s in answers[0].list_services_response.service}
    assert {"podflow.v1.Observer", "grpc.health.v1.Health"} <= names
    assert answers[1].file_descriptor_response.file_descriptor_proto


def test_unix_socket(sockdir):
    path = os.path.join(sockdir, "agent.sock")
    a = InProcessAgent(listen=f"unix:{path}").start()
    try:
        assert a.server.ready_info() == {"listen": f"unix:{path}"}
        a.feed(4)
        assert len(call(a, Req())) == 4
    finally:
        a.stop()
    assert not os.path.exists(path)


def test_port_zero_reports_the_real_port(agent):
    host, _, port = agent.server.ready_info()["listen"].rpartition(":")
    assert host == "127.0.0.1" and int(port) > 0


LISTEN = [(":4245", "[::]:4245"), ("0.0.0.0:0", "0.0.0.0:0"), ("[::1]:80", "[::1]:80"),
          ("unix:/run/x.sock", "unix:/run/x.sock")]


@pytest.mark.parametrize("value,bind", LISTEN, ids=[v for v, _ in LISTEN])
def test_listen_parse(value, bind):
    assert ListenAddress.parse(value).bind == bind


@pytest.mark.parametrize("value", ["4245", "host:x", ":70000", "unix:"])
def test_bad_listen_names_the_flag(value):
    with pytest.raises(ConfigError, match="--listen"):
        ListenAddress.parse(value)


def test_since_beyond_the_store_is_reported():
    a = InProcessAgent(capacity=10).start()
    try:
        base = 1_800_000_000 * 10**9
        a.store.extend([make_flow(i, time_ns=base + i * 10**9) for i in range(25)])
        got = call(a, Req(since=timestamp_pb2.Timestamp(seconds=1_800_000_005)))
        assert got[0].lost_events.stage == observer_pb2.STORE_OVERWRITTEN
        assert got[0].lost_events.num_events_lost == 10  # flows 5 .. 14 are gone
        assert [f.bytes for f in flows_of(got)] == list(range(115, 125))
    finally:
        a.stop()


def test_port_in_use_is_a_config_error_naming_listen(agent):
    port = agent.server.address.rpartition(":")[2]
    other = InProcessAgent(listen=f"127.0.0.1:{port}")
    with pytest.raises(ConfigError, match="--listen"):
        other.start()


def test_stuck_client_that_disconnects_is_freed():
    """The server's send is blocked on a client that never reads; when it goes away the
    stream ends and its subscriber is released at once."""
    a = InProcessAgent(capacity=4096, client_queue_size=1024).start()
    try:
        template = [make_flow(i) for i in range(1000)]
        with a.channel() as ch:
            stuck = a.stub(ch).GetFlowsBatched(Req(follow=True))
            next(stuck)  # the empty opening batch: the stream is up
            assert wait_until(lambda: a.store.num_subscribers == 1)
            for _ in range(100):  # ~50 MB: far more than HTTP/2 windows hold
                a.store.extend(template)
            stuck.cancel()
            assert wait_until(lambda: a.store.num_subscribers == 0, timeout_s=2)
            assert not len(a.server.servicer.followers)
    finally:
        a.stop()
