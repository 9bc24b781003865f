"""The flow tracker: the kernel's cumulative per-flow counters -> interval records whose sums
are exact.

The kernel never resets a flow entry's counters (bpf/podflow.c); users want one record per
interval of one flow at one observation point (active timeout), a final record after an idle
timeout, and packets that found the flow map full (MAP_FULL events) accounted in user space.
The tracker remembers what it already emitted per entry and emits deltas. Plain Python
without bcc: the datapath (agent/datapath/loader.py) and the drop reporter
(agent/annotate/drops.py) feed it what they read from their maps; tests feed it tuples.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class FlowRecord:
    """One interval of one flow at one observation point (before protobuf)."""

    key: bytes  # struct pf_flow_key, as bytes
    packets: int
    bytes: int
    first_seen_ns: int  # ktime of the flow entry's first packet
    last_seen_ns: int  # ktime of the latest packet in this record
    tcp_flags: int  # union of TCP flags seen so far
    flow_end: bool = False


@dataclass
class _Tracked:
    """What was already emitted for one kernel flow entry."""

    first_seen_ns: int
    emitted_packets: int = 0
    emitted_bytes: int = 0
    last_emit_ns: int = 0  # ktime of the last record


@dataclass
class _Overflow:
    """Packets of one key that found the flow map full, accumulated from MAP_FULL events."""

    first_seen_ns: int
    last_seen_ns: int
    last_emit_ns: int
    packets: int = 0  # since the last record
    bytes: int = 0
    tcp_flags: int = 0


@dataclass
class SweepResult:
    records: list[FlowRecord] = field(default_factory=list)
    idle_keys: list[bytes] = field(default_factory=list)  # delete these, then call end()


class FlowTracker:
    """Cumulative kernel counters -> interval records whose sums are exact.

    The kernel's counters are never reset: the tracker remembers what it already emitted per
    entry and emits deltas. An entry idle for `idle_timeout_ns` is deleted by the caller with
    an atomic lookup-and-delete, whose value closes the flow (`end`). A packet landing after
    the delete re-creates the entry and is a new flow, counted from its first packet.
    """

    def __init__(self, active_timeout_ns: int, idle_timeout_ns: int):
        self.active_timeout_ns = active_timeout_ns
        self.idle_timeout_ns = idle_timeout_ns
        self._tracked: dict[bytes, _Tracked] = {}
        self._overflow: dict[bytes, _Overflow] = {}

    def __len__(self) -> int:
        return len(self._tracked) + len(self._overflow)

    def on_new(self, key: bytes, pkt_len: int, ts_ns: int, tcp_flags: int) -> FlowRecord | None:
        """A FLOW_NEW event: emit the first packet at once (unless a sweep already did)."""
        tracked = self._tracked.get(key)
        if tracked is not None and tracked.first_seen_ns == ts_ns and tracked.emitted_packets:
            return None
        if tracked is None or tracked.first_seen_ns != ts_ns:
            tracked = self._tracked[key] = _Tracked(first_seen_ns=ts_ns)
        tracked.emitted_packets = 1
        tracked.emitted_bytes = pkt_len
        tracked.last_emit_ns = ts_ns
        return FlowRecord(key, 1, pkt_len, ts_ns, ts_ns, tcp_flags)

    def on_map_full(self, key: bytes, pkt_len: int, ts_ns: int, tcp_flags: int) -> None:
        """A FLOW_MAP_FULL event: the packet is real, account it in user space."""
        acc = self._overflow.get(key)
        if acc is None:
            acc = self._overflow[key] = _Overflow(ts_ns, ts_ns, ts_ns)
        acc.packets += 1
        acc.bytes += pkt_len
        acc.last_seen_ns = max(acc.last_seen_ns, ts_ns)
        acc.tcp_flags |= tcp_flags

    def sweep(self, entries, now_ns: int) -> SweepResult:
        """entries: iterable of (key bytes, packets, bytes, first_seen_ns, last_seen_ns,
        tcp_flags) read from the kernel map. Returns the records due and the idle keys."""
        result = SweepResult()
        seen: set[bytes] = set()
        for key, packets, nbytes, first_ns, last_ns, flags in entries:
            seen.add(key)
            tracked = self._tracked.get(key)
            if tracked is None or tracked.first_seen_ns != first_ns:
                tracked = self._tracked[key] = _Tracked(first_seen_ns=first_ns,
                                                        last_emit_ns=first_ns)
            if now_ns - last_ns >= self.idle_timeout_ns:
                result.idle_keys.append(key)
            elif (now_ns - tracked.last_emit_ns >= self.active_timeout_ns
                  and packets > tracked.emitted_packets):
                result.records.append(self._delta(key, tracked, packets, nbytes, first_ns,
                                                  last_ns, flags, now_ns, flow_end=False))
        for key in [k for k in self._tracked if k not in seen]:
            # Gone from the map without our delete (map cleared by someone else): nothing
            # more can be known about it.
            del self._tracked[key]
        result.records.extend(self._sweep_overflow(now_ns))
        return result

    def end(self, key: bytes, value, now_ns: int) -> FlowRecord | None:
        """Close a flow with the value its lookup-and-delete returned (None: already gone).
        value: (packets, bytes, first_seen_ns, last_seen_ns, tcp_flags)."""
        tracked = self._tracked.pop(key, None)
        if value is None:
            return None
        packets, nbytes, first_ns, last_ns, flags = value
        if tracked is None or tracked.first_seen_ns != first_ns:
            tracked = _Tracked(first_seen_ns=first_ns)
        return self._delta(key, tracked, packets, nbytes, first_ns, last_ns, flags, now_ns,
                           flow_end=True)

    def flush(self, entries, now_ns: int) -> list[FlowRecord]:
        """At stop: final records for every entry still in the map and every overflow."""
        records = []
        for key, packets, nbytes, first_ns, last_ns, flags in entries:
            records.append(self.end(key, (packets, nbytes, first_ns, last_ns, flags), now_ns))
        self._tracked.clear()
        for key, acc in self._overflow.items():
            records.append(FlowRecord(key, acc.packets, acc.bytes, acc.first_seen_ns,
                                      acc.last_seen_ns, acc.tcp_flags, flow_end=True))
        self._overflow.clear()
        return [r for r in records if r is not None]

    def _delta(self, key, tracked: _Tracked, packets, nbytes, first_ns, last_ns, flags,
               now_ns, flow_end: bool) -> FlowRecord:
        record = FlowRecord(key, packets - tracked.emitted_packets,
                            nbytes - tracked.emitted_bytes, first_ns, last_ns, flags, flow_end)
        tracked.emitted_packets = packets
        tracked.emitted_bytes = nbytes
        tracked.last_emit_ns = now_ns
        return record

    def _sweep_overflow(self, now_ns: int) -> list[FlowRecord]:
        records = []
        for key, acc in list(self._overflow.items()):
            idle = now_ns - acc.last_seen_ns >= self.idle_timeout_ns
            due = now_ns - acc.last_emit_ns >= self.active_timeout_ns and acc.packets
            if idle or due:
                records.append(FlowRecord(key, acc.packets, acc.bytes, acc.first_seen_ns,
                                          acc.last_seen_ns, acc.tcp_flags, flow_end=idle))
                acc.packets = acc.bytes = 0
                acc.last_emit_ns = now_ns
            if idle:
                del self._overflow[key]
        return records
