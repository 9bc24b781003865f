"""FlowTable: per-interval kernel deltas and new-flow events -> records. Whatever the order of
events, drains and steps, the records of a flow sum to exactly what the kernel counted; a
short flow is one record carrying flow_end; a flow whose end comes after its last record
gets an end notice, not a new row."""

from __future__ import annotations

import numpy as np
import pytest

from agent.datapath import abi, flowtable
from agent.datapath.bpfsys import VALUE_DTYPE
from agent.datapath.flowtable import FlowTable, key_hash, reverse_keys

S = 1_000_000_000


def key(sport: int, dport: int = 80, proto: int = abi.IPPROTO_UDP, direction: int = 0,
        src: bytes = b"\x0a\x00\x00\x01", dst: bytes = b"\x0a\x00\x00\x02",
        ifindex: int = 7) -> np.ndarray:
    k = abi.FlowKey(ifindex=ifindex, direction=direction, family=4, proto=proto,
                    src_port=sport, dst_port=dport)
    k.src_addr[:4] = list(src)
    k.dst_addr[:4] = list(dst)
    return np.frombuffer(bytes(k), np.uint8)


def keys(*ks) -> np.ndarray:
    return np.stack(ks)


def values(*rows) -> np.ndarray:
    """rows: (packets, bytes, first, last, flags)"""
    return np.array(list(rows), dtype=VALUE_DTYPE)


def totals(emitted_list, k) -> tuple[int, int, list]:
    p = b = 0
    ends = []
    for e in emitted_list:
        for i in range(len(e)):
            if (e.keys[i] == k).all():
                p += int(e.packets[i])
                b += int(e.bytes[i])
                ends.append((bool(e.flow_end[i]), bool(e.update[i])))
    return p, b, ends


def table(active=5, idle=5, **kw) -> FlowTable:
    return FlowTable(active * S, idle * S, **kw)


def test_hash_is_stable_and_reverse_of_reverse_is_identity():
    a, b = key(1000), key(1001)
    assert key_hash(keys(a, a))[0] == key_hash(keys(a))[0]
    assert key_hash(keys(a))[0] != key_hash(keys(b))[0]
    ks = keys(a, b)
    assert (reverse_keys(reverse_keys(ks)) == ks).all()
    assert reverse_keys(keys(a))[0][4] == 1


def test_a_one_packet_flow_is_one_record_with_its_end():
    t = table()
    k = key(1000)
    t.ingest(keys(k), values((1, 70, 1 * S, 1 * S, 0)))
    out = [t.step(2 * S, 2 * S)]
    assert len(out[0]) == 0  # held: quiet, not ended, not due
    out.append(t.step(7 * S, 6 * S + 1))
    assert totals(out, k) == (1, 70, [(True, False)])
    assert len(t) == 0


def test_announced_flow_counts_its_first_packet_once_and_ends_with_a_notice():
    t = table()
    k = key(1000)
    out = [t.announce(keys(k), np.array([70]), np.array([1 * S]), np.array([0]))]
    assert totals(out, k) == (1, 70, [(False, False)])
    # the drained entry holds the announced packet and no other
    t.ingest(keys(k), values((1, 70, 1 * S, 1 * S, 0)))
    out.append(t.step(3 * S, 2 * S))
    assert len(out[-1]) == 0
    out.append(t.step(8 * S, 7 * S))
    assert totals(out, k) == (1, 70, [(False, False), (True, True)])


def test_announced_flow_with_more_packets_sends_the_rest_once():
    t = table()
    k = key(1000)
    out = [t.announce(keys(k), np.array([70]), np.array([1 * S]), np.array([0]))]
    t.ingest(keys(k), values((4, 280, 1 * S, 2 * S, 0)))          # first half
    out.append(t.step(3 * S, 3 * S))
    t.ingest(keys(k), values((2, 140, 3 * S + 5, 3 * S + 9, 0)))  # the other half
    out.append(t.step(4 * S, 4 * S))
    out.append(t.step(20 * S, 20 * S))
    assert totals(out, k) == (6, 420, [(False, False), (True, False)])


def test_busy_flow_reports_each_active_timeout_and_quiet_one_waits_for_its_end():
    t = table(active=5, idle=5)
    k = key(1000)
    out = []
    for sec in range(1, 13):  # packets every second until 12 s
        t.ingest(keys(k), values((10, 1000, sec * S, sec * S + 1, 0)))
        out.append(t.step((sec + 1) * S, (sec + 1) * S))
    records = [e for e in out if len(e)]
    assert len(records) == 2  # at 6 s and 11 s, busy
    assert not any(e.flow_end[0] for e in records)
    for sec in range(13, 20):
        out.append(t.step(sec * S, sec * S))
    assert totals(out, k)[:2] == (120, 12000)
    assert totals(out, k)[2][-1] == (True, False)  # the rest comes with the end


def test_known_flow_event_is_only_a_hint():
    t = table()
    k = key(1000)
    t.ingest(keys(k), values((3, 300, 1 * S, 1 * S, 0)))
    assert len(t.announce(keys(k), np.array([100]), np.array([2 * S]), np.array([0]))) == 0
    t.ingest(keys(k), values((1, 100, 2 * S, 2 * S, 0)))
    out = [t.step(9 * S, 9 * S)]
    assert totals(out, k) == (4, 400, [(True, False)])


def test_reverse_side_is_seen_even_after_it_ended():
    t = table(idle=5)
    req = key(1000, 53)
    rep = key(53, 1000, direction=1, src=b"\x0a\x00\x00\x02", dst=b"\x0a\x00\x00\x01")
    t.ingest(keys(req), values((1, 80, 1 * S, 1 * S, 0)))
    t.ingest(keys(rep), values((1, 120, 1 * S + 10, 1 * S + 10, 0)))
    both = t.step(7 * S, 7 * S)
    assert len(both) == 2 and (both.rev_packets == 1).all() and (both.own_packets == 1).all()
    # the request goes on after the reply ended: its records still know a reply came
    t.ingest(keys(rep), values((1, 120, 8 * S, 8 * S, 0)))
    t.ingest(keys(req), values((1, 80, 8 * S, 8 * S, 0)))
    t.step(9 * S, 9 * S)
    t.ingest(keys(req), values((1, 80, 14 * S, 20 * S, 0)))
    t.step(21 * S, 21 * S)   # the reply flow ended at 14 s
    assert len(t) == 1
    out = t.step(30 * S, 30 * S)
    assert out.rev_packets[0] == 1 and out.rev_first_ns[0] == 8 * S


def test_tcp_close_ends_soon():
    t = table(idle=15)
    k = key(1000, 80, proto=abi.IPPROTO_TCP)
    t.ingest(keys(k), values((5, 500, 1 * S, 1 * S, 0x13)))  # SYN|ACK|FIN
    assert len(t.step(2 * S, 1 * S + 5)) == 0
    out = t.step(3 * S, 2 * S + 10)
    assert totals([out], k) == (5, 500, [(True, False)])


@pytest.mark.parametrize("n", [1000])
def test_bounded_table_ends_the_oldest_and_loses_nothing(n):
    t = table(idle=60, max_flows=100)
    ks = keys(*[key(1024 + i) for i in range(n)])
    vals = values(*[(1, 70, (1 + i) * 1000, (1 + i) * 1000, 0) for i in range(n)])
    t.ingest(ks, vals)
    out = t.step(2 * S, 2 * S)
    assert len(t) == 100
    assert t.ended_early == n - 100
    out2 = t.step(3 * S, 3 * S, final=True)
    assert int(out.packets.sum()) + int(out2.packets.sum()) == n
    assert len(t) == 0


def fake_hash(monkeypatch, hash_of):
    """Make the table hash keys with hash_of(source port) instead of key_hash."""
    def h(ks):
        ports = np.ascontiguousarray(ks[:, 40:42]).view("<u2")[:, 0]
        return np.array([hash_of(int(p)) for p in ports], np.uint64)
    monkeypatch.setattr(flowtable, "key_hash", h)


def test_colliding_hashes_still_count_every_packet_once(monkeypatch):
    # Every key has the same hash: a lookup finds the key indexed last for it, an older key
    # is taken as new again (a collision, counted), and no packet is lost or doubled.
    fake_hash(monkeypatch, lambda port: 42)
    t = table()
    a, b, c = key(1000), key(1001), key(1002)
    out = [t.announce(keys(c), np.array([70]), np.array([1 * S]), np.array([0]))]
    t.ingest(keys(a, b, c), values((1, 10, 1 * S, 1 * S, 0), (2, 20, 1 * S, 1 * S, 0),
                                   (1, 70, 1 * S, 1 * S, 0)))
    out.append(t.step(2 * S, 2 * S))
    t.ingest(keys(a, b), values((4, 40, 2 * S, 2 * S, 0), (8, 80, 2 * S, 2 * S, 0)))
    out.append(t.step(3 * S, 3 * S))
    out.append(t.step(9 * S, 9 * S))
    assert t.collisions > 0
    assert totals(out, a)[:2] == (5, 50)
    assert totals(out, b)[:2] == (10, 100)
    assert totals(out, c)[:2] == (1, 70)
    assert len(t) == 0


def test_hashes_at_both_ends_of_the_index_and_between(monkeypatch):
    # Flows whose hashes go before, after and among those of a big table (the index is
    # searched through buckets from a few thousand rows): each is found again, every record
    # comes out in hash order.
    fake_hash(monkeypatch, lambda port: {1: 0, 2: (1 << 64) - 1}.get(port, port << 48))
    t = table()
    assert len(t.step(1 * S, 1 * S)) == 0   # an empty table
    n = 6000
    mid = keys(*[key(1024 + i) for i in range(n)])
    t.ingest(mid, values(*[(1, 10, 1 * S, 1 * S, 0)] * n))
    ends = keys(key(1), key(2))
    for sec in (1, 2):
        t.ingest(ends, values((1, 10, sec * S, sec * S, 0), (2, 20, sec * S, sec * S, 0)))
    t.ingest(mid[::7], values(*[(3, 30, 2 * S, 2 * S, 0)] * len(mid[::7])))
    assert len(t) == n + 2
    out = t.step(10 * S, 10 * S)
    assert len(out) == n + 2 and len(t) == 0
    assert totals([out], key(1)) == (2, 20, [(True, False)])
    assert totals([out], key(2)) == (4, 40, [(True, False)])
    assert totals([out], key(1024 + 7))[:2] == (4, 40)
    assert int(out.packets.sum()) == n + 3 * len(mid[::7]) + 6
    hashes = flowtable.key_hash(out.keys)
    assert (np.diff(hashes.astype(np.float64)) >= 0).all()


def test_a_churning_table_grows_shrinks_and_loses_nothing():
    # Many flows come and go (the buffers grow past their first size and give it back),
    # some on both sides of a connection, some announced.
    t = table(active=2, idle=3)
    rng = np.random.default_rng(7)
    sent, out = {}, []
    for sec in range(1, 16):
        ports = rng.choice(np.arange(1024, 9024), 1500, replace=False) if sec < 10 else []
        ks = [key(int(p)) for p in ports]
        ks += [key(80, int(p), direction=1, src=b"\x0a\x00\x00\x02", dst=b"\x0a\x00\x00\x01")
               for p in ports[:300]]
        if ks:
            ann = keys(*ks[:50])
            out.append(t.announce(ann, np.full(50, 70), np.full(50, sec * S), np.zeros(50)))
            t.ingest(keys(*ks), values(*[(2, 140, sec * S, sec * S, 0)] * len(ks)))
            for k in ks:
                sent[k.tobytes()] = sent.get(k.tobytes(), 0) + 2
        out.append(t.step(sec * S + 1, sec * S))
    out.append(t.step(30 * S, 30 * S, final=True))
    got: dict[bytes, int] = {}
    for e in out:
        for k, p in zip(e.keys, e.packets):
            got[k.tobytes()] = got.get(k.tobytes(), 0) + int(p)
    assert got == sent
    assert len(t) == 0 and len(t._key_buf) == flowtable._MIN_CAPACITY


def test_oldest_first_is_a_stable_sort_by_last_seen():
    rng = np.random.default_rng(3)
    for count in (1, 5, 50, 199, 200):
        last = rng.integers(0, 20, 200).astype(np.uint64)  # many ties
        rows = rng.permutation(1000)[:200]
        want = rows[np.argsort(last, kind="stable")[:count]]
        got = flowtable.oldest_first(rows, last, count)
        assert sorted(got.tolist()) == sorted(want.tolist())
