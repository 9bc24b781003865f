"""The aggregator's rules, without Textual: one count per packet (the rule itself is
agent.wire.counting's: tests/wire/test_wire_counting.py), time-ordered merge of several
agents, pivots, Services with failed attempts once per connection, node state and lost
events, bounds."""

from __future__ import annotations

import time

from podflow_api.v1 import flow_pb2, observer_pb2
from tui.aggregator import Aggregator
from tui.filterexpr import parse_filter
from tui.flowkey import flow_key
from tui.synthetic import CALLS, Cluster, responses

ALL = parse_filter("")


def _ep(kind, ns="", pod="", host_network=False):
    return flow_pb2.Endpoint(kind=kind, namespace=ns, pod_name=pod, host_network=host_network)


POD_A = _ep(flow_pb2.POD, "shop", "cart-1")
POD_B = _ep(flow_pb2.POD, "shop", "redis-0")


def test_pod_to_pod_on_one_node_counted_once():
    """The same packets seen at both veths (and the bridge) add up once in Top."""
    agg = Aggregator()
    agg.add_source("a", "x", "file")
    base = dict(node_name="node-a", packets=10, bytes=1000, source=POD_A, destination=POD_B)
    records = [
        flow_pb2.Flow(observation_point=flow_pb2.POD_VETH, traffic_direction=flow_pb2.FROM_POD, **base),
        flow_pb2.Flow(observation_point=flow_pb2.POD_VETH, traffic_direction=flow_pb2.TO_POD, **base),
        flow_pb2.Flow(observation_point=flow_pb2.BRIDGE, **base),
    ]
    for i, f in enumerate(records):
        f.time.FromNanoseconds(1_700_000_000_000_000_000 + i)
    agg.feed_many("a", responses(records))
    agg.process()
    rows = agg.top(ALL, "pod")
    assert [(r.label, r.packets, r.bytes) for r in rows] == [("shop/cart-1", 10, 1000)]
    assert agg.summary().flows_seen == 3          # the Flows view still shows every record
    assert len(agg.recent(ALL, 10)) == 3


def test_streams_merged_in_time_order():
    """Two agents whose records interleave in time come out of the ring in time order."""
    c = Cluster(["node-a", "node-b"], seed=3)
    agg = Aggregator(reorder_s=0.2)
    for node in ("node-a", "node-b"):
        agg.add_source(node, node, "agent")
        agg.set_state(node, "connected")
    now = time.time_ns()
    a = c.flows(200, now_ns=now, node="node-a")
    b = c.flows(200, now_ns=now - 3_000_000, node="node-b")  # b's clock slightly behind
    # b's stream is late: a first, then b, in chunks as a reader would hand them over
    for i in range(0, 200, 50):
        agg.feed_many("node-a", responses(a[i:i + 50]))
        agg.process()
        agg.feed_many("node-b", responses(b[i:i + 50]))
        agg.process()
    time.sleep(0.3)  # both idle past the reorder window: everything is released
    agg.process()
    times = [e.time_ns for e in reversed(agg.recent(ALL, 1000))]
    assert len(times) == 400
    assert times == sorted(times)


def test_pivots_and_sorts():
    c = Cluster(["node-a", "node-b"], seed=5)
    agg = Aggregator()
    agg.add_source("f", "f", "file")
    agg.feed_many("f", responses(c.flows(3000, now_ns=1_700_000_060_000_000_000,
                                         spread_ns=30_000_000_000)))
    agg.process()
    total = sum(r.bytes for r in agg.top(ALL, "namespace"))
    for pivot in ("namespace", "workload", "pod", "service", "port", "verdict", "node"):
        rows = agg.top(ALL, pivot)
        assert sum(r.bytes for r in rows) == total, pivot  # each packet in exactly one row
        assert [r.bytes for r in rows] == sorted((r.bytes for r in rows), reverse=True)
    services = {r.label for r in agg.top(ALL, "service")}
    assert services == {f"{call[1][0]}/{call[1][1]}" for call in CALLS}
    ports = {r.label for r in agg.top(ALL, "port")}
    assert ports == {"tcp/8080", "tcp/443", "tcp/6379", "udp/53"}
    assert {r.label for r in agg.top(ALL, "verdict")} == {"forwarded", "dropped"}
    for sort in ("packets", "flows", "rate"):
        rows = agg.top(ALL, "workload", sort=sort)
        values = [getattr(r, {"rate": "rate_bps"}.get(sort, sort)) for r in rows]
        assert values == sorted(values, reverse=True)
    # a replay's "now" is its last flow, so its last seconds have a rate and a sparkline
    rows = agg.top(ALL, "namespace", spark_s=30)
    assert rows[0].rate_bps > 0 and sum(rows[0].series) > 0
    # the filter applies to pivots
    rows = agg.top(parse_filter("proto=udp"), "service")
    assert [r.label for r in rows] == ["kube-system/kube-dns"]


def test_services_backends_and_failures_once_per_connection():
    c = Cluster(["node-a"], seed=9)
    agg = Aggregator()
    agg.add_source("f", "f", "file")
    t0 = 1_700_000_000_000_000_000
    cart_call = next(call for wl, call in CALLS if call[1] == "cart")
    flows = [c.service_flow("frontend", cart_call, t0 + i) for i in range(100)]
    refused = c.service_flow("frontend", cart_call, t0 + 200, refused=True)
    again = flow_pb2.Flow()
    again.CopyFrom(refused)              # a later record of the same refused connection
    again.time.FromNanoseconds(t0 + 300)
    again.packets = again.bytes = 0
    empty = c.service_flow("frontend", cart_call, t0 + 400, no_endpoints=True)
    agg.feed_many("f", responses(flows + [refused, again, empty]))
    agg.process()
    [svc] = agg.services(ALL)
    assert svc.name == "shop/cart"
    assert (svc.refused, svc.no_endpoints, svc.unanswered) == (1, 1, 0)
    assert {b.name for b in svc.backends} == {f"shop/{p[1]}" for p in c.pods["cart"]}
    assert abs(sum(b.share for b in svc.backends) - 1.0) < 1e-9
    assert svc.flows == 102  # the zero-count outcome record is not a new flow
    assert agg.services(parse_filter("!svc=shop/cart")) == []


def test_node_state_and_lost_events():
    agg = Aggregator()
    agg.add_source("a", "unix:/a", "agent")
    agg.add_source("b", "unix:/b", "agent")
    agg.set_state("a", "connected")
    agg.set_state("b", "unavailable", "UNAVAILABLE: connection refused", retry_in_s=1)
    status = observer_pb2.ServerStatusResponse(node_name="node-a", lost=[
        observer_pb2.LostCount(stage=observer_pb2.KERNEL_RING_BUFFER, count=7)])
    agg.set_status("a", status)
    agg.feed("a", observer_pb2.GetFlowsResponse(node_name="node-a", lost_events=observer_pb2.LostEvents(
        stage=observer_pb2.CLIENT_QUEUE, num_events_lost=5)))
    agg.feed("a", observer_pb2.GetFlowsResponse(node_name="node-a", lost_events=observer_pb2.LostEvents(
        stage=observer_pb2.KERNEL_RING_BUFFER, num_events_lost=3)))  # already in status' 7
    agg.process()
    s = agg.summary()
    assert (s.connected, s.known, s.lost) == (1, 2, 12)
    a = next(n for n in agg.nodes() if n.source_id == "a")
    assert a.name == "node-a"
    assert a.lost_by_stage() == {"KERNEL_RING_BUFFER": 7, "CLIENT_QUEUE": 5}
    agg.remove_source("b")
    assert (agg.summary().connected, agg.summary().known) == (1, 1)


def test_bounded():
    c = Cluster(["node-a"], seed=2)
    agg = Aggregator(max_flows=100, max_keys=5, max_inbox=300, window_s=10)
    agg.add_source("f", "f", "file")
    agg.feed_many("f", responses(c.flows(500, now_ns=1_700_000_100_000_000_000,
                                         spread_ns=60_000_000_000)))
    agg.process()
    assert len(agg.recent(ALL, 10_000)) == 100
    assert len(agg._totals) <= 6                    # 5 keys and "(other)"
    assert len(agg._buckets) <= 11                  # window_s of seconds
    node = agg.nodes()[0]
    assert node.dropped_here == 200                 # inbox overflow is counted as lost
    assert agg.summary().lost == 200
    # all traffic is still in the totals, in "(other)" beyond max_keys
    assert sum(r.flows for r in agg.top(ALL, "node")) == sum(1 for _ in range(300))



def test_only_the_newest_gone_sources_are_kept():
    """Every rollout of the agent DaemonSet replaces its pods: the replaced ones are listed
    as gone, the newest `max_gone` of them, not forever."""
    agg = Aggregator(max_gone=3)
    for i in range(10):
        agg.add_source(f"pod:podflow/agent-{i}", f"pf-{i}", "kubernetes")
        agg.set_state(f"pod:podflow/agent-{i}", "connected")
    for i in range(8):
        agg.remove_source(f"pod:podflow/agent-{i}")
    nodes = {n.source_id: n.state for n in agg.nodes()}
    assert nodes == {"pod:podflow/agent-5": "gone", "pod:podflow/agent-6": "gone",
                     "pod:podflow/agent-7": "gone", "pod:podflow/agent-8": "connected",
                     "pod:podflow/agent-9": "connected"}
    assert (agg.summary().connected, agg.summary().known) == (2, 2)
    assert len(agg._merge._sources) == 5, "the merge forgets them too"


def test_flow_key_port_is_the_server_port():
    f = flow_pb2.Flow(is_reply=True)
    f.l4.tcp.source_port, f.l4.tcp.destination_port = 443, 51234
    assert flow_key(f).port == 443
    f.is_reply = False
    assert flow_key(f).port == 51234


def test_an_end_notice_marks_its_record_and_counts_a_failure_once():
    """A flow_update (the end of a flow after its last record) is applied to that record,
    never counted as a record or traffic; a Service's unanswered attempt it reveals counts
    once."""
    c = Cluster(["node-a"], seed=3)
    agg = Aggregator()
    agg.add_source("f", "f", "file")
    t0 = 1_700_000_000_000_000_000
    cart_call = next(call for wl, call in CALLS if call[1] == "cart")
    record = c.service_flow("frontend", cart_call, t0)
    record.outcome = flow_pb2.IN_PROGRESS
    update = flow_pb2.Flow()
    update.CopyFrom(record)
    update.packets = update.bytes = 0
    update.flow_end = True
    update.outcome = flow_pb2.UNANSWERED
    update.time.FromNanoseconds(t0 + 5_000_000_000)
    responses_ = responses([record]) + [observer_pb2.GetFlowsResponse(
        node_name="node-a", time=update.time, flow_update=update)] * 2
    agg.feed_many("f", responses_)
    agg.process()
    [svc] = agg.services(ALL)
    assert (svc.flows, svc.unanswered) == (1, 1)
    assert agg.summary().flows_seen == 1
    [entry] = agg.recent(ALL, 10)
    assert entry.flow.flow_end and entry.key.outcome == "unanswered"


def test_an_update_goes_only_to_its_own_flow_even_when_first_packets_share_a_nanosecond():
    from tui.flowends import LatestRecords
    from tui.records import Entry

    def record(sport: int, end: bool = False) -> flow_pb2.Flow:
        f = flow_pb2.Flow(flow_end=end)
        f.interface.index = 5
        f.ip.source, f.ip.destination = "10.0.0.1", "10.0.0.2"
        f.l4.udp.source_port, f.l4.udp.destination_port = sport, 53
        f.first_seen.FromNanoseconds(1_700_000_000_000_000_123)
        return f

    latest = LatestRecords(10)
    kept, newer = record(40000), record(40001)
    for f in (kept, newer, record(40002, end=True)):
        latest.remember(Entry(0, "a", f, flow_key(f), True))
    update = record(40000, end=True)  # the first flow's: its record was displaced
    flow, _ = latest.apply(update)
    assert flow is update and not kept.flow_end and not newer.flow_end
    flow, _ = latest.apply(record(40001, end=True))
    assert flow is newer and newer.flow_end


def test_latest_records_keep_the_newest_and_index_them_only_when_an_update_comes():
    from tui.flowends import LatestRecords
    from tui.records import Entry

    def record(i: int, end: bool = False) -> flow_pb2.Flow:
        f = flow_pb2.Flow(flow_end=end)
        f.interface.index = 5
        f.ip.source, f.ip.destination = "10.0.0.1", "10.0.0.2"
        f.l4.udp.source_port, f.l4.udp.destination_port = 40000 + i % 20000, 53
        f.first_seen.FromNanoseconds(1_700_000_000_000_000_000 + i)
        return f

    latest = LatestRecords(100)
    records = [record(i) for i in range(1000)]
    for f in records:
        latest.remember(Entry(0, "a", f, flow_key(f), True))
    assert not latest._latest  # nothing read until an update comes
    flow, _ = latest.apply(record(999, end=True))
    assert flow is records[999] and flow.flow_end
    flow, _ = latest.apply(record(10, end=True))  # long evicted: shown alone
    assert flow is not records[10] and not records[10].flow_end
    assert len(latest._latest) <= 100
