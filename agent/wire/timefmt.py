"""Time on the wire and on screen, in one place: protobuf Timestamps <-> epoch nanoseconds,
RFC 3339 text (what the JSON mapping, flow-log headers and `--since` use), the short UTC
forms people read (`Nov 21 10:00:00.123`, `10:00:00.123`), durations, and the `--since` /
`--until` parser.

Every printed time is UTC, like the flow logs' RFC 3339 `Z` times and `--since` without a
zone: a time read off the TUI or `observe` can be pasted into `--since` or matched against a
flow log whatever the reader's time zone. The texts are cached per epoch second because a
busy stream formats thousands of times per second within the same few seconds.
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
import time

from google.protobuf import timestamp_pb2

NS_PER_S = 1_000_000_000
_CACHE_MAX = 4096


def ts_ns(ts) -> int:
    """A Timestamp (or anything with seconds and nanos) -> nanoseconds since the epoch."""
    return ts.seconds * NS_PER_S + ts.nanos


def set_ts(ts, ns: int) -> None:
    """Set a Timestamp field in place (cheaper than FromNanoseconds on a hot path)."""
    ts.seconds, ts.nanos = divmod(ns, NS_PER_S)


def timestamp(ns: int) -> timestamp_pb2.Timestamp:
    """Nanoseconds since the epoch -> a new Timestamp message."""
    seconds, nanos = divmod(ns, NS_PER_S)
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)


# -- RFC 3339 ------------------------------------------------------------------------------------

_rfc3339_second: dict[int, str] = {}  # epoch second -> "YYYY-MM-DDTHH:MM:SS"


def _rfc3339_prefix(seconds: int) -> str:
    prefix = _rfc3339_second.get(seconds)
    if prefix is None:
        if len(_rfc3339_second) > _CACHE_MAX:
            _rfc3339_second.clear()
        prefix = _rfc3339_second[seconds] = time.strftime("%Y-%m-%dT%H:%M:%S",
                                                            time.gmtime(seconds))
    return prefix


def rfc3339(ts) -> str:
    """A Timestamp as protobuf's JSON mapping writes it: UTC, 'Z', and 0, 3, 6 or 9
    fractional digits (the fewest that are exact)."""
    seconds, nanos = ts.seconds, ts.nanos
    prefix = _rfc3339_second.get(seconds) or _rfc3339_prefix(seconds)
    if nanos == 0:
        return prefix + "Z"
    if nanos % 1_000_000 == 0:
        return "%s.%03dZ" % (prefix, nanos // 1_000_000)
    if nanos % 1000 == 0:
        return "%s.%06dZ" % (prefix, nanos // 1000)
    return "%s.%09dZ" % (prefix, nanos)


def rfc3339_quoted(ts) -> str:
    """rfc3339() as a JSON string literal: the most frequent field kind of a flow record."""
    return '"' + rfc3339(ts) + '"'


class _Ts:
    __slots__ = ("seconds", "nanos")

    def __init__(self, ns: int):
        self.seconds, self.nanos = divmod(ns, NS_PER_S)


def rfc3339_ns(ns: int) -> str:
    """Epoch nanoseconds -> the same text as rfc3339() of the Timestamp."""
    return rfc3339(_Ts(ns))


# -- what people read ----------------------------------------------------------------------------

_short_second: dict[int, str] = {}  # epoch second -> "Nov 21 10:00:00" (UTC)


def _short_prefix(seconds: int) -> str:
    prefix = _short_second.get(seconds)
    if prefix is None:
        if len(_short_second) > _CACHE_MAX:
            _short_second.clear()
        prefix = _short_second[seconds] = time.strftime("%b %d %H:%M:%S", time.gmtime(seconds))
    return prefix


def short_time(ns: int) -> str:
    """'Nov 21 10:00:00.123' (UTC, milliseconds): the time column of `podflow observe`."""
    seconds, nanos = divmod(ns, NS_PER_S)
    return "%s.%03d" % (_short_prefix(seconds), nanos // 1_000_000)


_clock_second: dict[int, str] = {}  # epoch second -> "10:00:00" (UTC)


def clock(ns: int) -> str:
    """'10:00:00.123' (UTC): the time of day, where a column is narrow (the TUI)."""
    seconds, nanos = divmod(ns, NS_PER_S)
    prefix = _clock_second.get(seconds)
    if prefix is None:
        if len(_clock_second) > _CACHE_MAX:
            _clock_second.clear()
        prefix = _clock_second[seconds] = time.strftime("%H:%M:%S", time.gmtime(seconds))
    return "%s.%03d" % (prefix, nanos // 1_000_000)


def long_time(ns: int) -> str:
    """'2026-11-21 10:00:00.123 UTC': every part of a time, for a detail pane."""
    seconds, nanos = divmod(ns, NS_PER_S)
    return "%s.%03d UTC" % (_rfc3339_prefix(seconds).replace("T", " "), nanos // 1_000_000)


def duration(ns: int) -> str:
    """Nanoseconds -> '3d4h5m6s', '5m0s', '42s' (an uptime)."""
    s = ns // NS_PER_S
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    parts = [f"{d}d"] if d else []
    if d or h:
        parts.append(f"{h}h")
    if d or h or m:
        parts.append(f"{m}m")
    parts.append(f"{s}s")
    return "".join(parts)


# -- parsing -------------------------------------------------------------------------------------

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT_NS = {"ms": 1_000_000, "s": NS_PER_S, "m": 60 * NS_PER_S, "h": 3600 * NS_PER_S,
            "d": 86400 * NS_PER_S}


def parse_time(text: str, now_ns: int | None = None) -> int:
    """'5m', '1h30m', '90s' (that long ago) or RFC 3339 ('2026-11-21T10:00:00Z'; no zone
    means UTC) -> nanoseconds since the epoch. An argparse `type=`: a bad value raises
    ArgumentTypeError saying what the two accepted forms look like."""
    text = text.strip()
    now_ns = time.time_ns() if now_ns is None else now_ns
    rest, total = text, 0
    while rest and (m := _DURATION.match(rest)):
        total += int(float(m[1]) * _UNIT_NS[m[2]])
        rest = rest[m.end():]
    if text and not rest:
        return now_ns - total
    try:
        when = dt.datetime.fromisoformat(text.replace("z", "Z").replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither a duration (30s, 5m, 1h30m, 2d) nor an RFC 3339 time "
            "(2026-11-21T10:00:00Z)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return int(when.timestamp()) * NS_PER_S + when.microsecond * 1000
