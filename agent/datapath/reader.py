"""The datapath's reader thread: kernel counters and events -> batches for the pipeline.

It never blocks the kernel: the programs write ring-buffer events without wakeups
(BPF_RB_NO_WAKEUP) and the reader consumes them on a timer (every --sweep-interval / 10 at
most 0.1 s): new-flow events become fast first records at once. About once a sweep
interval it drains the half of the flow map the programs stopped writing at the previous
flip (bpf/maps.h: no program writes it, so the read-and-delete is exact), then flips the
halves and waits for the programs still running on the old one (a map-in-map update makes
the kernel wait: synchronize_rcu). The flow table (flowtable.py) turns what was drained into
records; each step's records go to the pipeline as one FlowBatch (batch.py), the Flow
objects of extensions (drop records) as a list.

Order matters for exactness: the ring is consumed before a half is drained, so every
new-flow event of a half is known before its entries (the table then counts the announced
packet once), and a half is drained one interval after it stopped being written.
"""

from __future__ import annotations

import ctypes
import logging
import threading
import time
from collections.abc import Callable

import numpy as np

from agent.datapath import abi, bpfsys, memory
from agent.datapath.batch import FlowBatch
from agent.datapath.decode import InterfaceInfo, KtimeClock
from agent.datapath.flowtable import Emitted, FlowTable
from agent.datapath.shedding import LoadGovernor
from agent.errors import DatapathError
from agent.stats import AgentStats
from podflow_api.v1 import observer_pb2

log = logging.getLogger("podflow.datapath")

# Packets timed this long before a flip may still be counted into the half that becomes
# active (the program reads the selector, then the clock): margin for "every packet before
# the flip was drained".
FLIP_MARGIN_NS = 2_000_000
# New-flow events in one poll that make the node busy: the next poll waits
# busy_poll_interval_s (0.25 s) instead of poll_interval_s (0.1 s). A quiet node's new
# connections get their first record within ~0.1 s; under churn (over ~160 new flows/s)
# within ~0.25 s, in 2.5x fewer batches (bench.churn at 2,000/s: 0.048 -> 0.037 core).
BUSY_EVENTS = 16

# A half of the flow map holds one sweep interval's flows: while the drained half comes back
# fuller than FULLER, sweeps come twice as often (down to a MIN_INTERVAL_SHARE of
# --sweep-interval); emptier than EMPTIER, they slow down again (up to --sweep-interval).
FULLER, EMPTIER = 0.5, 0.2
MIN_INTERVAL_SHARE = 1 / 8

# struct pf_flow_event (abi.FlowEvent) as a numpy record, to read events in bulk.
_EVENT_DTYPE = np.dtype({"names": ["kind", "key", "pkt_len", "ts_ns", "tcp_flags"],
                         "formats": ["u1", ("u1", abi.KEY_SIZE), "<u4", "<u8", "<u4"],
                         "offsets": [abi.FlowEvent.hdr.offset, abi.FlowEvent.key.offset,
                                     abi.FlowEvent.pkt_len.offset, abi.FlowEvent.ts_ns.offset,
                                     abi.FlowEvent.tcp_flags.offset],
                         "itemsize": ctypes.sizeof(abi.FlowEvent)})


def u32(value: int) -> bytes:
    return value.to_bytes(4, "little")


class FlowMaps:
    """The two halves of the flow map and the selector, by file descriptor."""

    def __init__(self, half_fds: tuple[int, int], maps_fd: int, sel_fd: int, max_entries: int):
        self.half_fds, self.maps_fd, self.sel_fd = half_fds, maps_fd, sel_fd
        self.max_entries = max_entries
        self.active = 0
        for slot, fd in enumerate(half_fds):
            bpfsys.update_elem(maps_fd, u32(slot), u32(fd))
        bpfsys.update_elem(sel_fd, u32(0), u32(0))
        self.flipped_ns = time.monotonic_ns()  # every packet before it is in a drained half

    def drain_inactive(self) -> tuple[np.ndarray, np.ndarray]:
        return bpfsys.drain_map(self.half_fds[self.active ^ 1], self.max_entries)

    def flip(self) -> int:
        """Make the other half active and wait until no program runs on the old one.
        Returns the monotonic time before the flip (the previous flip's is kept)."""
        before = self.flipped_ns
        self.flipped_ns = time.monotonic_ns()
        self.active ^= 1
        bpfsys.update_elem(self.sel_fd, u32(0), u32(self.active))
        bpfsys.update_elem(self.maps_fd, u32(0), u32(self.half_fds[0]))  # synchronize_rcu
        return before


class FlowReader:
    """See the module docstring. `consume_ring` polls the ring buffer (its callback hands
    new-flow events to `on_flow_event` and extension records to `add_flows`);
    `sweep_extensions(now_ns, final)` sweeps the extensions' own maps; `kernel_errors()` and
    `map_full_bytes()` read the per-CPU counters."""

    def __init__(self, config, stats: AgentStats, pipeline: Callable, maps: FlowMaps,
                 interfaces: dict[int, InterfaceInfo], clock: KtimeClock, *,
                 consume_ring: Callable[[], None],
                 sweep_extensions: Callable[[int, bool], list],
                 kernel_errors: Callable[[], list[int]],
                 map_full_bytes: Callable[[], int], error_names: dict[int, str]):
        self.config = config
        self.stats = stats
        self.pipeline = pipeline
        self.maps = maps
        self.interfaces = interfaces
        self.clock = clock
        self.table = FlowTable(int(config.active_timeout_s * 1e9),
                               int(config.idle_timeout_s * 1e9), max_flows=config.max_flows)
        self._consume_ring = consume_ring
        self._sweep_extensions = sweep_extensions
        self._kernel_errors = kernel_errors
        self._map_full_bytes = map_full_bytes
        self._error_names = error_names
        self._new_events: list[bytes] = []
        self._last_events = 0  # new-flow events of the latest poll
        self._pending: list = []   # Flow objects of extensions (drop records)
        self._batches: list[FlowBatch] = []
        self._last_errors: list[int] = [0] * abi.ERR_MAX
        self.records_emitted = 0
        self.governor = LoadGovernor(stats)
        self.interval_s = config.sweep_interval_s  # follows the churn (see FULLER)

    # -- events -----------------------------------------------------------------------------

    def on_flow_event(self, raw: bytes) -> None:
        self._new_events.append(raw[:_EVENT_DTYPE.itemsize])

    def add_flows(self, flows: list) -> None:
        self._pending.extend(flows)

    def _announce(self) -> None:
        """New-flow events read since the last call -> fast first records."""
        if not self._new_events:
            return
        self._last_events = len(self._new_events)
        raw, self._new_events = b"".join(self._new_events), []
        events = np.frombuffer(raw, dtype=_EVENT_DTYPE)
        keys = events["key"].view(np.uint8).reshape(len(events), abi.KEY_SIZE)
        self._emit(self.table.announce(keys, events["pkt_len"], events["ts_ns"],
                                       events["tcp_flags"]))

    def _emit(self, emitted: Emitted) -> None:
        if len(emitted):
            self.records_emitted += len(emitted)
            self._batches.append(FlowBatch.from_emitted(emitted, self.clock, time.time_ns(),
                                                        self.stats.node_name, self.interfaces))

    # -- the loop ---------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        next_sweep = time.monotonic()
        trim = False
        while True:
            stopping = stop.is_set()
            self._consume_ring()
            self._announce()
            now = time.monotonic()
            if stopping:
                self._final_sweep()
            elif now >= next_sweep:
                try:
                    self._sweep()
                except DatapathError as exc:
                    log.error("%s", exc)
                next_sweep = now + self.interval_s
                trim = True
            self._flush()
            if stopping:
                return
            if trim:  # after this sweep's batches went through the pipeline
                trim = False
                memory.trim()
                self.governor.sweep()
            stop.wait(self._next_wait_s())

    def _next_wait_s(self) -> float:
        """Until the next poll: longer while new flows keep coming (BUSY_EVENTS)."""
        busy, self._last_events = self._last_events >= BUSY_EVENTS, 0
        config = self.config
        return min(config.busy_poll_interval_s if busy else config.poll_interval_s,
                   self.interval_s)

    def _flush(self) -> None:
        """Hand what was read to the pipeline: batches of records and extension records."""
        work: list = self._batches
        if self._pending:
            work.append(self._pending)
        self._batches, self._pending = [], []
        for batch in work:
            try:
                self.pipeline(batch)
            # The reader is the boundary between the kernel and every later stage: a bug in
            # one of them must cost that batch (counted and logged), not stop all accounting.
            except Exception:  # noqa: BLE001
                log.exception("pipeline failed on a batch of %d records", len(batch))
                packets = int(batch.packets.sum()) if isinstance(batch, FlowBatch) else 0
                self.stats.add_lost(observer_pb2.AGENT_QUEUE, len(batch), packets=packets)

    def _sweep(self) -> None:
        """Drain the half the programs stopped writing at the previous flip, flip, and send
        what the flow table says is due."""
        keys, values = self.maps.drain_inactive()
        self._follow_churn(len(keys))
        self.table.ingest(keys, values)
        complete_until = self.maps.flip() - FLIP_MARGIN_NS
        now_ns = time.monotonic_ns()
        self._emit(self.table.step(now_ns, complete_until))
        self._pending.extend(self._sweep_extensions(now_ns, False))
        self._update_counters()

    def _follow_churn(self, drained: int) -> None:
        """Sweep more often while the halves fill up, so that one interval's flows fit."""
        fill = drained / self.maps.max_entries
        base = self.config.sweep_interval_s
        if fill > FULLER:
            self.interval_s = max(self.interval_s / 2, base * MIN_INTERVAL_SHARE)
        elif fill < EMPTIER:
            self.interval_s = min(self.interval_s * 2, base)

    def _final_sweep(self) -> None:
        """At stop, after detaching: both halves drained (after a flip, so no program still
        runs on either), every flow ended."""
        self.table.ingest(*self.maps.drain_inactive())
        self.maps.flip()
        self._consume_ring()
        self._announce()
        self.table.ingest(*self.maps.drain_inactive())
        now_ns = time.monotonic_ns()
        self._emit(self.table.step(now_ns, now_ns, final=True))
        self._pending.extend(self._sweep_extensions(now_ns, True))
        self._update_counters()

    def _update_counters(self) -> None:
        """Packets the flow map could not count are lost (KERNEL_FLOW_MAP, one event per
        packet); new-flow events not sent are not: those flows are announced by the sweep."""
        counts = self._kernel_errors()
        last = self._last_errors
        lost = sum(counts[i] - last[i] for i in (abi.ERR_MAP_FULL, abi.ERR_MAP_UPDATE))
        self.stats.add_lost(observer_pb2.KERNEL_FLOW_MAP, lost, packets=lost)
        self._last_errors = counts
        named = abi.error_counts(counts, self._error_names)
        if counts[abi.ERR_MAP_FULL]:
            named["flow_map_full_bytes"] = self._map_full_bytes()
        if self.table.ended_early:
            named["flows_ended_early"] = self.table.ended_early
        self.stats.set_datapath_errors(named)
