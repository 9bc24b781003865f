"""Time helpers (agent.wire.timefmt): the RFC 3339 text is byte for byte protobuf's JSON
mapping, the texts people read are UTC, and Timestamp <-> ns round-trips."""

from __future__ import annotations

import argparse

import pytest
from google.protobuf import timestamp_pb2

from agent.wire import timefmt

NS = [0, 1_700_000_000_000_000_000, 1_700_000_000_123_000_000, 1_700_000_000_123_456_000,
      1_700_000_000_123_456_789, 1_799_999_999_999_999_999]


@pytest.mark.parametrize("ns", NS)
def test_rfc3339_is_protobufs_json_form(ns):
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(ns)
    assert timefmt.rfc3339(ts) == ts.ToJsonString()
    assert timefmt.rfc3339_ns(ns) == ts.ToJsonString()
    assert timefmt.rfc3339_quoted(ts) == f'"{ts.ToJsonString()}"'


@pytest.mark.parametrize("ns", NS)
def test_timestamp_round_trip(ns):
    ts = timefmt.timestamp(ns)
    assert timefmt.ts_ns(ts) == ns == ts.ToNanoseconds()
    other = timestamp_pb2.Timestamp()
    timefmt.set_ts(other, ns)
    assert other == ts


READABLE = [
    # (ns, short_time, clock, long_time): UTC whatever the machine's zone
    (1_700_000_000_123_456_789, "Nov 14 22:13:20.123", "22:13:20.123",
     "2023-11-14 22:13:20.123 UTC"),
    (0, "Jan 01 00:00:00.000", "00:00:00.000", "1970-01-01 00:00:00.000 UTC"),
]


@pytest.mark.parametrize("ns,short,clock,long", READABLE, ids=["2023", "epoch"])
def test_readable_times_are_utc(ns, short, clock, long, monkeypatch):
    monkeypatch.setenv("TZ", "America/New_York")
    assert (timefmt.short_time(ns), timefmt.clock(ns), timefmt.long_time(ns)) == \
        (short, clock, long)


@pytest.mark.parametrize("ns,text", [(0, "0s"), (59 * 10**9, "59s"), (61 * 10**9, "1m1s"),
                                     (3600 * 10**9, "1h0m0s"), (90061 * 10**9, "1d1h1m1s")])
def test_duration(ns, text):
    assert timefmt.duration(ns) == text


@pytest.mark.parametrize("bad", ["yesterday", "5x", "2026-13-01T00:00:00Z", ""])
def test_parse_time_says_what_it_accepts(bad):
    with pytest.raises(argparse.ArgumentTypeError, match="duration .* RFC 3339"):
        timefmt.parse_time(bad)


def test_parse_time_without_zone_is_utc():
    assert timefmt.parse_time("2023-11-14T22:13:20") == 1_700_000_000 * 10**9
