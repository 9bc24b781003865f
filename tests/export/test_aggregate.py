"""agent.export.windows on its own: windows, keys, the memory bound, interval parsing."""

from __future__ import annotations

import pytest

from agent.export.windows import Aggregator, flow_key, parse_interval
from agent.errors import ConfigError
from podflow_api.v1 import flow_pb2
from tests.export.conftest import make_flow

S = 1_000_000_000
T0 = 1_700_000_040 * S  # a multiple of 60 s


INTERVALS = {"30s": ("30s", 30 * S), "1m": ("1m", 60 * S), "1h": ("1h", 3600 * S),
             "500ms": ("500ms", S // 2), "bare-seconds": ("15", 15 * S)}


@pytest.mark.parametrize("text,ns", INTERVALS.values(), ids=INTERVALS.keys())
def test_parse_interval(text, ns):
    assert parse_interval(text) == ns


@pytest.mark.parametrize("text", ["", "1 minute", "-5s", "0"], ids=["empty", "words", "negative", "zero"])
def test_bad_interval_names_the_flag(text):
    with pytest.raises(ConfigError, match="--flow-log-aggregate"):
        parse_interval(text)


def test_windows_are_written_after_their_end_plus_grace():
    agg = Aggregator(60 * S, grace_ns=5 * S)
    agg.add([make_flow(0, time_ns=T0 + S, packets=2, nbytes=20),
             make_flow(1, time_ns=T0 + 30 * S, packets=3, nbytes=30, flags=("FIN",)),
             make_flow(2, time_ns=T0 + 61 * S, packets=7, nbytes=70)], now_ns=T0 + 62 * S)
    assert agg.due(T0 + 64 * S) == []
    first = agg.due(T0 + 65 * S)
    assert len(first) == 1
    rec = first[0]
    assert (rec.packets, rec.bytes) == (5, 50)
    assert rec.time.ToNanoseconds() == T0 + 60 * S
    assert rec.first_seen.ToNanoseconds() == T0 + S - 1_000_000
    assert rec.last_seen.ToNanoseconds() == T0 + 30 * S
    assert rec.l4.tcp.flags.ACK and rec.l4.tcp.flags.FIN and not rec.l4.tcp.flags.SYN
    assert rec.summary == ""
    rest = agg.flush()
    assert [(r.packets, r.bytes) for r in rest] == [(7, 70)]


KEY_CASES = {
    "other-port": (dict(dport=443), False),
    "other-direction": (dict(direction=flow_pb2.TO_POD), False),
    "other-observation-point": (dict(point=flow_pb2.BRIDGE), False),
    "other-verdict": (dict(verdict=flow_pb2.DROPPED), False),
    "other-counters-same-flow": (dict(packets=9, nbytes=900, flags=("SYN",)), True),
}


@pytest.mark.parametrize("changes,same", KEY_CASES.values(), ids=KEY_CASES.keys())
def test_flow_key(changes, same):
    assert (flow_key(make_flow(0)) == flow_key(make_flow(1, **changes))) is same


def test_too_many_keys_write_windows_early_and_sums_stay_exact():
    agg = Aggregator(3600 * S, max_entries=10)
    flows = [make_flow(i, sport=1000 + i, time_ns=T0 + i, packets=i + 1) for i in range(25)]
    agg.add(flows, now_ns=T0)
    early = agg.due(T0)
    assert len(early) == 25 and agg.pending_records() == 0
    assert sum(r.packets for r in early) == sum(f.packets for f in flows)
