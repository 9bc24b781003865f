"""Aggregated flow logs (`--flow-log-aggregate 1m`): one record per flow key per interval.

Long-term logs do not need every active-timeout report of every flow. Records are grouped by
the time window their own `time` falls in (windows aligned to the epoch, so agents on
different nodes cut the same windows) and by the flow key below; a window is written once the
wall clock is past its end plus a grace period for records still in the pipeline. A record
that arrives after its window was written opens that window again and is written at the next
tick, so the sums over the log always equal the sums of the raw records.

The aggregated record is a Flow: identity and Kubernetes fields from the window's first
record, packets and bytes summed, first_seen the earliest, last_seen the latest, TCP flags the
union, flow_end if any record ended the flow, the last known connection outcome; `time` is the
window's end. Per-record details that do not add up (DNS payloads, the summary line) are
dropped.
"""

from __future__ import annotations

import re

from agent.errors import ConfigError
from podflow_api.v1 import flow_pb2

_NS = 1_000_000_000
_UNITS_NS = {"ms": 1_000_000, "s": _NS, "m": 60 * _NS, "h": 3600 * _NS}
_TCP_FLAGS = ("FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR")  # field numbers 1..8


def parse_interval(text: str, flag: str = "--flow-log-aggregate") -> int:
    """'1m', '30s', '500ms', '1h', or plain seconds -> nanoseconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*", text or "")
    if not match:
        raise ConfigError(f"{flag}: expected an interval like 30s, 1m or 1h, got {text!r}")
    value = float(match.group(1)) * _UNITS_NS[match.group(2) or "s"]
    if value < 1_000_000:
        raise ConfigError(f"{flag}: interval must be at least 1ms, got {text!r}")
    return int(value)


def flow_key(flow: flow_pb2.Flow) -> tuple:
    """What makes two records the same flow at the same observation point."""
    l4 = flow.l4
    proto = l4.WhichOneof("protocol")
    if proto is None:
        a = b = 0
    elif proto in ("icmpv4", "icmpv6"):
        m = getattr(l4, proto)
        a, b = m.type, m.code
    else:
        m = getattr(l4, proto)
        a, b = m.source_port, m.destination_port
    ip = flow.ip
    return (flow.node_name, flow.interface.index, flow.observation_point, flow.traffic_direction,
            flow.verdict, flow.drop_reason_code, ip.source, ip.destination, ip.ip_version, proto,
            a, b, flow.is_reply)


class _Entry:
    __slots__ = ("flow", "packets", "bytes", "first_ns", "last_ns", "flags", "flow_end",
                 "outcome")

    def __init__(self, flow: flow_pb2.Flow):
        self.flow = flow
        self.packets = 0
        self.bytes = 0
        self.first_ns = 0
        self.last_ns = 0
        self.flags = 0
        self.flow_end = False
        self.outcome = 0


class Aggregator:
    """Sums records per (window, flow key). Not thread-safe: the exporter thread owns it."""

    def __init__(self, interval_ns: int, grace_ns: int = 5 * _NS, max_entries: int = 500_000):
        self.interval_ns = interval_ns
        self.grace_ns = grace_ns
        # Memory bound: with more distinct flow keys than this pending, every open window is
        # written early (a window may then have two records per key; sums stay exact).
        self.max_entries = max_entries
        self._entries = 0
        self._windows: dict[int, dict[tuple, _Entry]] = {}  # window start -> key -> entry
        self.records_in = 0

    def add(self, flows: list[flow_pb2.Flow], now_ns: int) -> None:
        interval = self.interval_ns
        windows = self._windows
        for flow in flows:
            t = flow.time
            t_ns = t.seconds * _NS + t.nanos if (t.seconds or t.nanos) else now_ns
            start = t_ns - t_ns % interval
            entries = windows.get(start)
            if entries is None:
                entries = windows[start] = {}
            key = flow_key(flow)
            entry = entries.get(key)
            if entry is None:
                entry = entries[key] = _Entry(flow)
                self._entries += 1
            entry.packets += flow.packets
            entry.bytes += flow.bytes
            ts = flow.first_seen
            first = ts.seconds * _NS + ts.nanos
            ts = flow.last_seen
            last = ts.seconds * _NS + ts.nanos
            if first and (not entry.first_ns or first < entry.first_ns):
                entry.first_ns = first
            if last > entry.last_ns:
                entry.last_ns = last
            if flow.l4.HasField("tcp"):
                # Only the set flags are listed; TCPFlags field numbers are 1 (FIN) .. 8 (CWR).
                for field, _value in flow.l4.tcp.flags.ListFields():
                    entry.flags |= 1 << (field.number - 1)
            if flow.flow_end:
                entry.flow_end = True
            if flow.outcome:
                entry.outcome = flow.outcome
            self.records_in += 1

    def due(self, now_ns: int) -> list[flow_pb2.Flow]:
        """Records of every window that ended more than the grace period ago (of every
        window when more than max_entries records are pending)."""
        if self._entries > self.max_entries:
            return self.flush()
        out: list[flow_pb2.Flow] = []
        for start in sorted(self._windows):
            if start + self.interval_ns + self.grace_ns > now_ns:
                break
            entries = self._windows.pop(start)
            self._entries -= len(entries)
            out.extend(self._emit(start, entries))
        return out

    def flush(self) -> list[flow_pb2.Flow]:
        """Every window, finished or not (clean shutdown)."""
        out: list[flow_pb2.Flow] = []
        for start in sorted(self._windows):
            out.extend(self._emit(start, self._windows[start]))
        self._windows.clear()
        self._entries = 0
        return out

    def pending_records(self) -> int:
        return self._entries

    def _emit(self, start: int, entries: dict[tuple, _Entry]) -> list[flow_pb2.Flow]:
        end_ns = start + self.interval_ns
        out = []
        for entry in entries.values():
            flow = flow_pb2.Flow()
            flow.CopyFrom(entry.flow)
            flow.ClearField("dns")
            flow.ClearField("summary")
            flow.time.FromNanoseconds(end_ns)
            flow.packets = entry.packets
            flow.bytes = entry.bytes
            if entry.first_ns:
                flow.first_seen.FromNanoseconds(entry.first_ns)
            if entry.last_ns:
                flow.last_seen.FromNanoseconds(entry.last_ns)
            if flow.l4.HasField("tcp"):
                tcp = flow.l4.tcp
                tcp.ClearField("flags")
                for bit, name in enumerate(_TCP_FLAGS):
                    if entry.flags & (1 << bit):
                        setattr(tcp.flags, name, True)
            flow.flow_end = entry.flow_end
            flow.outcome = entry.outcome
            out.append(flow)
        return out
