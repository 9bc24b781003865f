"""The agent's Hubble server in process: Hubble's GetFlows semantics over a real flow store
(number / first / follow / since / until, filters, field masks, lost events, the stream's
end), ServerStatus, GetNodes, GetNamespaces, health, the version header, and what is not
served. Clients are generated from podflow's own declaration (proto/podflow_hubble)."""

from __future__ import annotations

import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tests.observer.observer_flows import make_flow

from agent.config import StoreSection
from agent.flowstore import FlowStore
from agent.observer.hubble import servicer as hubble_servicer
from agent.observer.hubble.server import HubbleServer
from agent.stats import DATAPATH_FAILED, DATAPATH_TRACING, AgentStats
from podflow_api.v1 import observer_pb2 as pf_observer
from podflow_hubble.flow import flow_pb2 as hb
from podflow_hubble.observer import observer_pb2, observer_pb2_grpc
from tests.waiting import wait_until

T0 = 1_796_000_000 * 1_000_000_000  # a fixed wall clock: flows i at T0 + i ms
MS = 1_000_000


class Agent:
    """A store and a started HubbleServer on a free loopback port."""

    def __init__(self, capacity: int = 4096, client_queue_size: int = 1024):
        self.stats = AgentStats(node_name="node-a", version="0.1.0")
        self.store = FlowStore(StoreSection(capacity=capacity,
                                            client_queue_size=client_queue_size), self.stats)
        self.server = HubbleServer("127.0.0.1:0", self.store, self.stats)
        self.server.start()
        self.channel = grpc.insecure_channel(self.server.address)
        self.stub = observer_pb2_grpc.ObserverStub(self.channel)

    def feed(self, first: int, n: int, **fields) -> None:
        self.store.extend([make_flow(i, time_ns=T0 + i * MS, **fields)
                           for i in range(first, first + n)])

    def flows(self, **request) -> list[observer_pb2.GetFlowsResponse]:
        return list(self.stub.GetFlows(observer_pb2.GetFlowsRequest(**request), timeout=10))

    def stop(self) -> None:
        self.channel.close()
        self.server.stop(0.2)


@pytest.fixture
def agent():
    a = Agent()
    yield a
    a.stop()


def ports(responses) -> list[int]:
    """The record numbers of the flows received (make_flow's source port is 40000 + i)."""
    out = []
    for r in responses:
        if r.HasField("flow"):
            l4 = r.flow.l4
            out.append(getattr(l4, l4.WhichOneof("protocol")).source_port - 40000)
    return out


def ts(ns: int):
    from google.protobuf import timestamp_pb2

    return timestamp_pb2.Timestamp(seconds=ns // 10**9, nanos=ns % 10**9)


# -- history -------------------------------------------------------------------------------

@pytest.mark.parametrize("request_fields,expected", [
    ({"number": 20}, list(range(30, 50))),                 # `hubble observe`: the last 20
    ({}, list(range(50))),                                 # number 0: everything held
    ({"number": 2**64 - 1}, list(range(50))),              # --all
    ({"number": 5, "first": True}, list(range(5))),        # --first 5
    ({"since": ts(T0 + 45 * MS)}, list(range(45, 50))),    # --since
    ({"since": ts(T0 + 10 * MS), "number": 3}, [10, 11, 12]),  # since wins: 3 from since on
    ({"until": ts(T0 + 4 * MS)}, list(range(5))),          # --until
    ({"since": ts(T0 + 7 * MS), "until": ts(T0 + 9 * MS)}, [7, 8, 9]),
], ids=["last", "all-held", "all", "first", "since", "since-number", "until", "since-until"])
def test_history_requests_read_as_cilium_reads_them(agent, request_fields, expected):
    agent.feed(0, 50)
    responses = agent.flows(**request_fields)  # the stream ends by itself without follow
    assert ports(responses) == expected
    first = responses[0]
    assert first.node_name == "node-a" and first.time == first.flow.time


def test_follow_alone_starts_at_the_next_flow_and_follow_with_number_replays_first(agent):
    agent.feed(0, 10)
    live = agent.stub.GetFlows(observer_pb2.GetFlowsRequest(follow=True), timeout=10)
    replay = agent.stub.GetFlows(observer_pb2.GetFlowsRequest(follow=True, number=3), timeout=10)
    since = agent.stub.GetFlows(observer_pb2.GetFlowsRequest(follow=True, since=ts(T0 + 8 * MS)),
                                timeout=10)
    assert ports([next(replay) for _ in range(3)]) == [7, 8, 9]
    assert ports([next(since) for _ in range(2)]) == [8, 9]
    assert wait_until(lambda: agent.store.num_subscribers >= 4)  # + the namespace reader
    agent.feed(10, 2)
    for call in (live, replay, since):
        assert ports([next(call) for _ in range(2)]) == [10, 11]
        call.cancel()
    assert wait_until(lambda: agent.store.num_subscribers == 1)  # released on cancel


def test_follow_with_until_ends_after_it(agent):
    until = time.time_ns() + 300 * MS
    call = agent.stub.GetFlows(observer_pb2.GetFlowsRequest(follow=True, until=ts(until)),
                               timeout=10)
    assert wait_until(lambda: agent.store.num_subscribers >= 2)
    agent.store.extend([make_flow(1, time_ns=until - 100 * MS),
                        make_flow(2, time_ns=until + 100 * MS)])
    assert ports(list(call)) == [1]  # the stream ended: `list` returned


@pytest.mark.parametrize("request_fields,message", [
    ({"first": True, "follow": True, "number": 5}, "first cannot be specified with follow"),
    ({"whitelist": [hb.FlowFilter(source_port=["8o"])]},
     "whitelist[0].source_port: invalid port '8o'"),
    ({"blacklist": [hb.FlowFilter(http_method=["GET"], event_type=[hb.EventTypeFilter(type=4)])]},
     "blacklist[0].http_method: filtering by http method requires the event type filter"),
], ids=["first-follow", "bad-port", "http-without-l7"])
def test_bad_requests_are_refused_naming_the_field(agent, request_fields, message):
    with pytest.raises(grpc.RpcError) as err:
        agent.flows(**request_fields)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in err.value.details()


def test_whitelist_or_blacklist_nor(agent):
    agent.feed(0, 4)
    agent.feed(4, 2, source__namespace="web")
    agent.feed(6, 2, proto="udp", dport=53)
    # `hubble observe --namespace web`: the source side OR the destination side
    web = [hb.FlowFilter(source_pod=["web/"]), hb.FlowFilter(destination_pod=["web/"])]
    assert ports(agent.flows(whitelist=web)) == [4, 5]
    # `--not --port 53` (blacklist: either side) and `--not --namespace web`
    no_dns = [hb.FlowFilter(source_port=["53"]), hb.FlowFilter(destination_port=["53"])]
    assert ports(agent.flows(blacklist=no_dns + web)) == [0, 1, 2, 3]
    assert ports(agent.flows(whitelist=[hb.FlowFilter(protocol=["udp"])])) == [6, 7]
    assert ports(agent.flows(number=1, whitelist=web)) == [5]  # number counts matches only


def test_uuid_filter_finds_one_record(agent):
    agent.feed(0, 5)
    uuid = agent.flows()[2].flow.uuid
    assert ports(agent.flows(whitelist=[hb.FlowFilter(uuid=[uuid])])) == [2]


def test_the_cli_default_field_mask_trims_the_flows(agent):
    from google.protobuf import field_mask_pb2

    agent.feed(0, 3)
    paths = ["time", "verdict", "ethernet", "IP", "l4", "source.identity", "source.namespace",
             "source.pod_name", "destination.identity", "destination.namespace",
             "destination.pod_name", "Type", "node_name", "l7", "event_type", "source_service",
             "destination_service", "is_reply", "Summary", "ip_trace_id"]
    (resp,) = agent.flows(number=1, field_mask=field_mask_pb2.FieldMask(paths=paths))
    flow = resp.flow
    assert flow.source.pod_name and flow.source.identity and not flow.source.labels
    assert flow.Summary and flow.HasField("time") and flow.destination_service.name == "cart"
    assert not flow.uuid and not flow.HasField("extensions") and not flow.HasField("interface")


# -- lost events -------------------------------------------------------------------------

def test_since_older_than_the_store_starts_with_a_lost_event():
    small = Agent(capacity=10)
    try:
        small.feed(0, 30)
        responses = small.flows(since=ts(T0))
        assert responses[0].WhichOneof("response_types") == "lost_events"
        lost = responses[0].lost_events
        assert (lost.source, lost.num_events_lost) == (hb.HUBBLE_RING_BUFFER, 20)
        assert ports(responses[1:]) == list(range(20, 30))
    finally:
        small.stop()


def test_a_slow_follower_and_other_stages_are_told_what_was_lost():
    lagging = Agent(capacity=1000, client_queue_size=10)
    try:
        gate = threading.Event()
        call = lagging.stub.GetFlows(observer_pb2.GetFlowsRequest(follow=True), timeout=20)
        assert wait_until(lambda: lagging.store.num_subscribers >= 2)
        lagging.stats.add_lost(pf_observer.EXPORTER_QUEUE, 7)   # the flow log's: not ours
        lagging.stats.add_lost(pf_observer.KERNEL_RING_BUFFER, 3)
        lagging.feed(0, 200)  # more than the client may lag behind
        gate.set()
        seen: dict = {}
        flows = 0
        for resp in call:
            if resp.HasField("lost_events"):
                source = resp.lost_events.source
                seen[source] = seen.get(source, 0) + resp.lost_events.num_events_lost
            else:
                flows += 1
            if hb.PERF_EVENT_RING_BUFFER in seen and flows + seen.get(hb.HUBBLE_RING_BUFFER,
                                                                     0) >= 200:
                break
        call.cancel()
        assert seen[hb.PERF_EVENT_RING_BUFFER] == 3 and hb.OBSERVER_EVENTS_QUEUE not in seen
        assert seen[hb.HUBBLE_RING_BUFFER] > 0 and flows + seen[hb.HUBBLE_RING_BUFFER] == 200
        assert len(seen) == 2  # EXPORTER_QUEUE has no Hubble meaning and is not sent
    finally:
        lagging.stop()


# -- unary methods, health, header -------------------------------------------------------

def test_server_status_and_nodes(agent):
    agent.feed(0, 30)
    status = agent.stub.ServerStatus(observer_pb2.ServerStatusRequest(), timeout=5)
    assert (status.num_flows, status.max_flows, status.seen_flows) == (30, 4096, 30)
    assert status.version == "0.1.0" and status.uptime_ns > 0 and status.flows_rate > 0
    assert not status.HasField("num_connected_nodes")  # Relay's to fill
    (node,) = agent.stub.GetNodes(observer_pb2.GetNodesRequest(), timeout=5).nodes
    assert (node.name, node.version, node.state) == ("node-a", "0.1.0", 1)  # NODE_CONNECTED
    assert node.address == agent.server.advertised and node.address.endswith(
        agent.server.address.rsplit(":", 1)[1])
    assert not node.tls.enabled and (node.num_flows, node.max_flows) == (30, 4096)


def test_namespaces_of_the_flows_seen(agent):
    assert not agent.stub.GetNamespaces(observer_pb2.GetNamespacesRequest()).namespaces
    now = time.time_ns()
    agent.store.extend([make_flow(0, time_ns=now, source__namespace="web"),
                        make_flow(1, time_ns=now, destination__namespace="data")])
    got = agent.stub.GetNamespaces(observer_pb2.GetNamespacesRequest(), timeout=5).namespaces
    assert [(n.cluster, n.namespace) for n in got] == [
        ("default", "data"), ("default", "shop"), ("default", "web")]
    old = time.time_ns() - (hubble_servicer.NAMESPACE_TTL_S + 60) * 10**9
    agent.store.extend([make_flow(2, time_ns=old, source__namespace="gone",
                                  destination__namespace="gone")])
    got = agent.stub.GetNamespaces(observer_pb2.GetNamespacesRequest(), timeout=5).namespaces
    assert "gone" not in [n.namespace for n in got]  # not seen for an hour: not listed


@pytest.mark.parametrize("method,request_type", [
    ("GetAgentEvents", observer_pb2.GetAgentEventsRequest),
    ("GetDebugEvents", observer_pb2.GetDebugEventsRequest)])
def test_agent_and_debug_events_are_unimplemented_with_a_reason(agent, method, request_type):
    with pytest.raises(grpc.RpcError) as err:
        list(getattr(agent.stub, method)(request_type(), timeout=5))
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "podflow has no Cilium" in err.value.details() and method in err.value.details()


def test_health_of_the_name_hubble_status_checks(agent):
    """What `hubble status` checks follows the datapath, as podflow's own readiness does:
    NOT_SERVING until it traces, SERVING while it does, NOT_SERVING again if it fails."""
    health = health_pb2_grpc.HealthStub(agent.channel)

    def statuses():
        return [health.Check(health_pb2.HealthCheckRequest(service=s), timeout=5).status
                for s in ("hubble.server.Observer", "")]

    serving, not_serving = (health_pb2.HealthCheckResponse.SERVING,
                            health_pb2.HealthCheckResponse.NOT_SERVING)
    assert statuses() == [not_serving] * 2
    agent.stats.set_datapath_state(DATAPATH_TRACING)
    assert statuses() == [serving] * 2
    agent.stats.set_datapath_state(DATAPATH_FAILED, "the reader stopped")
    assert statuses() == [not_serving] * 2


def test_every_answer_carries_the_server_version_header(agent):
    agent.feed(0, 2)
    _resp, call = agent.stub.ServerStatus.with_call(observer_pb2.ServerStatusRequest(),
                                                    timeout=5)
    assert ("hubble-server-version", "0.1.0") in call.initial_metadata()
    stream = agent.stub.GetFlows(observer_pb2.GetFlowsRequest(), timeout=5)
    assert ("hubble-server-version", "0.1.0") in stream.initial_metadata()
    list(stream)
    health = health_pb2_grpc.HealthStub(agent.channel)
    _resp, call = health.Check.with_call(health_pb2.HealthCheckRequest(), timeout=5)
    assert ("hubble-server-version", "0.1.0") in call.initial_metadata()


def test_stopping_ends_follow_streams(agent):
    call = agent.stub.GetFlows(observer_pb2.GetFlowsRequest(follow=True), timeout=20)
    assert wait_until(lambda: agent.store.num_subscribers >= 2)
    started = time.monotonic()
    agent.server.stop(1.0)
    try:
        assert list(call) == []  # ended cleanly, or cancelled by the stopping server
    except grpc.RpcError as exc:
        assert exc.code() in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE)
    assert time.monotonic() - started < 5


# -- the producer thread of a stream ---------------------------------------------------------

def test_prefetched_passes_items_and_errors_and_stops_with_its_consumer():
    def chunks():
        yield [b"a", b"b"]
        yield [b"c"]
        raise ValueError("store gone")

    out = hubble_servicer.prefetched(chunks())
    assert next(out) == [b"a", b"b"] and next(out) == [b"c"]
    with pytest.raises(ValueError, match="store gone"):
        next(out)

    closed = threading.Event()

    def endless():
        try:
            while True:
                yield [b"x"]
        finally:
            closed.set()

    out = hubble_servicer.prefetched(endless())
    next(out)
    out.close()
    assert closed.wait(5)  # the producer noticed and closed its source
