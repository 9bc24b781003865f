"""The flow store on its own: ring bounds, history queries, subscriber lag and loss counts."""

from __future__ import annotations

import threading
import time

import pytest
from tests.observer.observer_flows import make_flow

from agent.config import StoreSection
from agent.errors import ConfigError
from agent.flowstore import FlowStore
from agent.stats import AgentStats
from podflow_api.v1 import flow_pb2, observer_pb2
from tests import batches

T0 = 1_800_000_000 * 1_000_000_000


def filled(n: int, capacity: int = 100, client_queue_size: int = 8192, **kw) -> FlowStore:
    store = FlowStore(StoreSection(capacity=capacity, client_queue_size=client_queue_size),
                      AgentStats("n", "t"), **kw)
    store.extend([make_flow(i, time_ns=T0 + i * 1000) for i in range(n)])
    return store


def ids(flows) -> list[int]:
    return [(f.time.seconds * 1_000_000_000 + f.time.nanos - T0) // 1000 for f in flows]


def test_ring_keeps_the_newest():
    store = filled(250)
    assert len(store) == 100 and store.seq == 250 and store.oldest_seq == 150
    assert ids(store.history()) == list(range(150, 250))


HISTORY = [
    ("last-n", dict(number=5), [245, 246, 247, 248, 249]),
    ("first-n", dict(number=3, first=True), [150, 151, 152]),
    ("since", dict(since_ns=T0 + 247_000), [247, 248, 249]),
    ("until", dict(until_ns=T0 + 152_000), [150, 151, 152]),
    ("since-until", dict(since_ns=T0 + 200_000, until_ns=T0 + 202_000), [200, 201, 202]),
    ("more-than-held", dict(number=1000), list(range(150, 250))),
    ("filtered-last", dict(number=2, predicate=lambda f: f.packets == 1), [238, 245]),
]


@pytest.mark.parametrize("kw,expected", [h[1:] for h in HISTORY], ids=[h[0] for h in HISTORY])
def test_history(kw, expected):
    assert ids(filled(250).history(**kw)) == expected


def test_follow_gets_new_flows_in_order():
    store = filled(10)
    sub = store.subscribe()
    store.extend([make_flow(i, time_ns=T0 + i * 1000) for i in range(10, 15)])
    flows, lost = sub.next_batch(0.1)
    assert ids(flows) == [10, 11, 12, 13, 14] and lost is None
    flows, lost = sub.next_batch(0.05)
    assert flows == [] and lost is None


def test_lagging_subscriber_loses_its_oldest_exactly():
    store = filled(0, capacity=1000, client_queue_size=100)
    sub = store.subscribe()
    store.extend([make_flow(i, time_ns=T0 + i * 1000) for i in range(350)])
    flows, lost = sub.next_batch(0.1, max_flows=10_000)
    assert lost.count == 250 and lost.stage == observer_pb2.CLIENT_QUEUE
    assert (lost.first_ns, lost.last_ns) == (T0, T0 + 249_000)
    assert ids(flows) == list(range(250, 350))


def test_lost_counts_only_flows_the_filter_wanted():
    store = filled(0, capacity=1000, client_queue_size=10)
    sub = store.subscribe(predicate=lambda f: f.packets == 1)  # every 7th flow
    store.extend([make_flow(i, time_ns=T0 + i * 1000) for i in range(70)])
    flows, lost = sub.next_batch(0.1)
    assert lost.count == 9  # flows 0, 7, ... 56 matched and were skipped
    assert ids(flows) == [63]


def test_overwritten_before_read_counts_every_flow():
    store = filled(0, capacity=50, client_queue_size=50)
    sub = store.subscribe(predicate=lambda f: f.packets == 1)
    store.extend([make_flow(i, time_ns=T0 + i * 1000) for i in range(500)])
    flows, lost = sub.next_batch(0.1)
    # 450 flows left the ring unseen: they are counted whatever the filter would have said
    assert lost.count == 450
    assert len(flows) == sum(1 for i in range(450, 500) if i % 7 == 0)


def test_close_wakes_reader_and_unsubscribes():
    store = filled(0)
    sub = store.subscribe()
    assert store.num_subscribers == 1
    done = threading.Event()

    def reader():
        sub.next_batch(30.0)
        done.set()

    threading.Thread(target=reader, daemon=True).start()
    time.sleep(0.05)
    sub.close()
    assert done.wait(1.0)
    assert store.num_subscribers == 0


def test_extend_does_not_wait_for_readers():
    """extend() does no per-subscriber work: with 50 subscribers that never read it costs
    what it costs with none. Compared side by side (the best of alternating rounds), not
    against a fixed time, so a busy machine does not fail it."""
    batch = [make_flow(i) for i in range(1000)]

    def best_of(subscribers: int) -> float:
        store = filled(0, capacity=10_000, client_queue_size=100)
        subs = [store.subscribe() for _ in range(subscribers)]
        times = []
        for _ in range(10):
            t = time.perf_counter()
            store.extend(batch)
            times.append(time.perf_counter() - t)
        assert len(store) == 10_000
        for s in subs:
            s.close()
        return min(times)

    alone, followed = [], []
    for _ in range(3):
        alone.append(best_of(0))
        followed.append(best_of(50))
    assert min(followed) < 2 * min(alone), (min(followed), min(alone))


def test_flows_per_second():
    store = filled(0)
    assert store.flows_per_second() == 0.0
    for _ in range(5):
        store.extend([make_flow(i) for i in range(100)])
        time.sleep(0.1)
    assert 200 < store.flows_per_second() < 2000


@pytest.mark.parametrize("kw,flag", [({"capacity": 0}, "--store-size"),
                                     ({"client_queue_size": 0}, "--client-queue-size")])
def test_bad_sizes_name_the_flag(kw, flag):
    with pytest.raises(ConfigError, match=flag):
        StoreSection(**{"capacity": 10, **kw})


def test_only_the_newest_flows_stay_objects():
    store = FlowStore(StoreSection(capacity=100), AgentStats("n", "t"), hot_flows=10)
    flows = [make_flow(i, time_ns=T0 + i * 1000) for i in range(150)]
    store.extend(flows)
    objects = [o for seg in store._segments_list[store._head:] for o in seg.batch.objects or ()
               if o is not None]
    assert len(objects) == 10 and objects == flows[-10:] or set(map(id, objects)) == set(map(id, flows[-10:]))
    assert store.history() == flows[50:]  # older ones come back from their bytes, equal
    assert store.history()[-1] is flows[-1]  # the hot ones are the very objects handed in
    ((t_ns, framed, resp_off, flow_off),) = store.history_raw(number=1)
    assert t_ns == T0 + 149_000
    assert framed[flow_off:] == flows[-1].SerializeToString()
    # held as a GetFlowsBatch entry: a GetFlowsResponse with node name, time and flow
    batch = observer_pb2.GetFlowsBatch.FromString(framed)
    assert batch.responses[0] == observer_pb2.GetFlowsResponse(
        node_name="n", time=flows[-1].time, flow=flows[-1])
    assert observer_pb2.GetFlowsResponse.FromString(framed[resp_off:]) == batch.responses[0]


def test_evicted_since_counts_what_history_cannot_return():
    store = filled(250)  # 150 flows (times T0 .. T0+149us) were pushed out
    gone = store.evicted_since(T0)
    assert gone.count == 150 and gone.stage == observer_pb2.STORE_OVERWRITTEN
    assert gone.last_ns == T0 + 149_000
    assert store.evicted_since(T0 + 10**9) is None


def test_a_small_store_keeps_every_object():
    store = FlowStore(StoreSection(capacity=50), AgentStats("n", "t"), hot_flows=8192)
    flows = [make_flow(i) for i in range(120)]
    store.extend(flows)
    assert all(a is b for a, b in zip(store.history(), flows[70:]))


# -- batches of records (the datapath's columns) ---------------------------------------------

def _batch_store(capacity=100, queue=8192):
    return FlowStore(StoreSection(capacity=capacity, client_queue_size=queue),
                     AgentStats("n", "t"))


def test_a_batch_is_held_whole_and_read_as_flows_or_bytes():
    store = _batch_store()
    sub = store.subscribe()
    b = batches.batch(*[batches.rec("10.0.0.1", "10.0.0.2", 40000 + i, 80, packets=i + 1)
                        for i in range(5)])
    store.extend_batch(b)
    assert len(store) == 5 and store.seq == 5 and store.records_seen == 5
    assert [f.packets for f in store.history()] == [1, 2, 3, 4, 5]
    raw, lost = sub.next_raw(0.1)
    assert lost is None and len(raw) == 5
    assert observer_pb2.GetFlowsBatch.FromString(raw[2][1]).responses[0].flow == b.flow(2)


def test_an_end_notice_reaches_followers_and_marks_the_record_it_ends():
    store = _batch_store()
    first = batches.batch(batches.rec("10.0.0.1", "10.0.0.2", 40000, 80),
                          batches.rec("10.0.0.1", "10.0.0.2", 40001, 80))
    store.extend_batch(first)
    sub = store.subscribe()
    objects = store.subscribe()
    notice = batches.batch(batches.rec("10.0.0.1", "10.0.0.2", 40001, 80, update=True))
    notice.outcome[0] = flow_pb2.NO_REPLY
    store.extend_batch(notice)
    assert store.records_seen == 2 and len(store) == 3
    # history: the record itself now says it ended, with the final outcome; no new row
    history = store.history()
    assert [(f.l4.udp.source_port, f.flow_end, f.outcome) for f in history] == \
        [(40000, False, 0), (40001, True, flow_pb2.NO_REPLY)]
    # followers of bytes get it as a flow_update; followers of objects do not
    raw, _ = sub.next_raw(0.1)
    (resp,) = [observer_pb2.GetFlowsBatch.FromString(r[1]).responses[0] for r in raw]
    assert resp.WhichOneof("response_types") == "flow_update"
    assert resp.flow_update.l4.udp.source_port == 40001 and resp.flow_update.flow_end
    flows, _ = objects.next_batch(0.1)
    assert flows == []


def test_lost_records_are_counted_with_their_packets():
    store = _batch_store(capacity=1000, queue=10)
    sub = store.subscribe()
    store.extend_batch(batches.batch(*[batches.rec("10.0.0.1", "10.0.0.2", 40000 + i, 80,
                                                   packets=3) for i in range(30)]))
    segments, lost = sub.next_segments(0.1)
    assert (lost.count, lost.packets) == (20, 60)
    assert sum(hi - lo for _, lo, hi in segments) == 10


def test_records_overwritten_before_read_are_counted_with_their_packets_not_notices():
    """A reader asleep while the ring turned over: every record pushed out unread is counted
    with its packets (the flow log's EXPORTER_QUEUE lines, to the packet); end notices are
    not records and are not counted."""
    store = _batch_store(capacity=10, queue=10)
    sub = store.subscribe()
    for n in range(5):  # 5 batches of 4 records (2, 3, 4, 5 packets) and one end notice
        store.extend_batch(batches.batch(
            *[batches.rec("10.0.0.1", "10.0.0.2", 40000 + 10 * n + i, 80, packets=i + 2)
              for i in range(4)],
            batches.rec("10.0.0.1", "10.0.0.2", 40000 + 10 * n, 80, update=True)))
    segments, lost = sub.next_segments(0.1, max_flows=100)
    held = [(b, lo, hi) for b, lo, hi in segments]
    held_records = sum(int((~b.update[lo:hi]).sum()) for b, lo, hi in held)
    held_packets = sum(int(b.packets[lo:hi][~b.update[lo:hi]].sum()) for b, lo, hi in held)
    assert lost.count + held_records == 20
    assert lost.packets + held_packets == 5 * (2 + 3 + 4 + 5)


def test_records_beyond_what_the_store_remembers_are_counted_as_rows():
    from agent.flowstore import evictions as flowstore

    store = _batch_store(capacity=4, queue=4)
    sub = store.subscribe()
    for n in range(flowstore.EVICTED_ROWS_KEPT * 4 + 8):
        store.extend_batch(batches.batch(batches.rec("10.0.0.1", "10.0.0.2", 40000 + n, 80,
                                                     packets=7)))
    _segments, lost = sub.next_segments(0.1, max_flows=100)
    assert lost.count == flowstore.EVICTED_ROWS_KEPT * 4 + 4
    assert lost.packets == 7 * flowstore.EVICTED_ROWS_KEPT * 4  # those still remembered


def test_batches_are_trimmed_to_the_capacity_and_counted_as_evicted():
    store = _batch_store(capacity=100)
    for k in range(5):
        store.extend_batch(batches.batch(*[batches.rec("10.0.0.1", "10.0.0.2", 1000 * k + i, 80)
                                           for i in range(30)], time_ns=T0 + k))
    assert len(store) == 100 and store.oldest_seq == 50
    assert [f.l4.udp.source_port for f in store.history(number=2, first=True)] == [1020, 1021]
    assert store.evicted_since(T0).count == 50


def test_whole_batches_reads_on_to_the_end_of_the_batch_reached():
    """The flow log pairs a batch's records: past max_flows it reads the batch to its end,
    and the next read starts with the next batch."""
    store = _batch_store()
    sub, other = store.subscribe(), store.subscribe()
    for n in (3, 5, 2):
        store.extend_batch(batches.batch(*[batches.rec("10.0.0.1", "10.0.0.2", 40000 + i, 80)
                                           for i in range(n)]))
    segments, _ = sub.next_segments(0.1, max_flows=4, whole_batches=True)
    assert [(lo, hi) for _, lo, hi in segments] == [(0, 3), (0, 5)]
    segments, _ = sub.next_segments(0.1, max_flows=4, whole_batches=True)
    assert [(lo, hi) for _, lo, hi in segments] == [(0, 2)]
    segments, _ = other.next_segments(0.1, max_flows=4)  # without: cut at max_flows
    assert [(lo, hi) for _, lo, hi in segments] == [(0, 3), (0, 1)]
