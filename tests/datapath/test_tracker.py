"""FlowTracker: cumulative kernel counters -> interval records. Whatever the timing of
events, sweeps and deletes, the records of a flow must sum to exactly what the kernel
counted (no loss, no double count)."""

from __future__ import annotations

import pytest

from agent.datapath.tracker import FlowTracker

S = 1_000_000_000
K1, K2 = b"k1" + bytes(42), b"k2" + bytes(42)


def entry(key, packets, nbytes, first, last, flags=0):
    return (key, packets, nbytes, first, last, flags)


def sums(records, key):
    rs = [r for r in records if r.key == key]
    return sum(r.packets for r in rs), sum(r.bytes for r in rs), [r.flow_end for r in rs]


def test_new_event_then_active_then_idle_sums_exactly():
    t = FlowTracker(active_timeout_ns=5 * S, idle_timeout_ns=15 * S)
    out = [t.on_new(K1, 100, 1 * S, 0x02)]
    out += t.sweep([entry(K1, 4, 400, 1 * S, 2 * S)], 2 * S).records  # not due yet
    assert len(out) == 1
    out += t.sweep([entry(K1, 10, 1000, 1 * S, 6 * S)], 6 * S).records  # active timeout
    assert (out[-1].packets, out[-1].bytes, out[-1].flow_end) == (9, 900, False)
    res = t.sweep([entry(K1, 12, 1200, 1 * S, 7 * S)], 22 * S)
    assert res.idle_keys == [K1]
    out += res.records
    # the delete returns a value that saw one more packet after the sweep read it
    out.append(t.end(K1, (13, 1300, 1 * S, 7 * S, 0x12), 22 * S))
    assert sums(out, K1) == (13, 1300, [False, False, True])
    assert len(t) == 0


def test_sweep_before_new_event_counts_first_packet_once():
    """The entry is read by a sweep before its FLOW_NEW event is consumed."""
    t = FlowTracker(active_timeout_ns=5 * S, idle_timeout_ns=15 * S)
    out = t.sweep([entry(K1, 3, 300, 1 * S, 2 * S)], 2 * S).records
    first = t.on_new(K1, 100, 1 * S, 0)
    out.append(first)
    assert first.packets == 1
    assert t.on_new(K1, 100, 1 * S, 0) is None  # a duplicate never counts twice
    out += t.sweep([entry(K1, 3, 300, 1 * S, 2 * S)], 7 * S).records
    out.append(t.end(K1, (3, 300, 1 * S, 2 * S, 0), 20 * S))
    assert sums(out, K1) == (3, 300, [False, False, True])


def test_recreated_entry_is_a_new_flow():
    """A packet after the delete re-creates the entry: it starts again from zero."""
    t = FlowTracker(active_timeout_ns=5 * S, idle_timeout_ns=15 * S)
    out = [t.on_new(K1, 100, 1 * S, 0)]
    t.sweep([entry(K1, 2, 200, 1 * S, 1 * S)], 20 * S)
    out.append(t.end(K1, (2, 200, 1 * S, 1 * S, 0), 20 * S))
    out.append(t.on_new(K1, 60, 21 * S, 0))
    out += t.sweep([entry(K1, 1, 60, 21 * S, 21 * S)], 40 * S).records
    out.append(t.end(K1, (1, 60, 21 * S, 21 * S, 0), 40 * S))
    assert sums(out, K1) == (3, 260, [False, True, False, True])


def test_entry_gone_before_delete_yields_nothing():
    t = FlowTracker(active_timeout_ns=5 * S, idle_timeout_ns=15 * S)
    t.sweep([entry(K1, 2, 200, 1 * S, 1 * S)], 20 * S)
    assert t.end(K1, None, 20 * S) is None


def test_map_full_packets_are_accumulated_and_ended():
    t = FlowTracker(active_timeout_ns=5 * S, idle_timeout_ns=15 * S)
    for i in range(10):
        t.on_map_full(K2, 64, 1 * S + i, 0x10)
    out = t.sweep([], 2 * S).records
    assert out == []
    out += t.sweep([], 7 * S).records  # active timeout since the first one
    t.on_map_full(K2, 64, 8 * S, 0)
    out += t.sweep([], 30 * S).records  # idle: ends
    assert sums(out, K2) == (11, 704, [False, True])
    assert len(t) == 0


@pytest.mark.parametrize("with_event", [True, False], ids=["after-new-event", "sweep-only"])
def test_flush_at_stop_ends_everything(with_event):
    t = FlowTracker(active_timeout_ns=5 * S, idle_timeout_ns=15 * S)
    out = [t.on_new(K1, 100, 1 * S, 0)] if with_event else []
    t.on_map_full(K2, 50, 1 * S, 0)
    out += t.flush([entry(K1, 5, 500, 1 * S, 2 * S)], 3 * S)
    assert sums(out, K1)[:2] == (5, 500)
    assert sums(out, K1)[2][-1] is True
    assert sums(out, K2) == (1, 50, [True])
