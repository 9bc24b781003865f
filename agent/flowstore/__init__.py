"""The agent's flow store: a bounded ring of the most recent records, with sequence numbers,
that feeds GetFlows history and live follow (and the flow log exporter and metrics).

The datapath's reader thread calls `extend_batch()` with each batch of records (columns,
agent/datapath/batch.py) or `extend()` with Flow objects (drop records, tests, benchmarks);
it must stay cheap whatever the number of clients, so subscribers do not get copies pushed to
them. Each subscriber is a cursor (a sequence number) into the ring plus a bound on how far it
may lag behind the newest record: its queue is the window of the ring between its cursor and
the head. A subscriber that lags more than its bound loses its oldest records and is told
exactly how many (and their packets); it never slows the writer or another subscriber, and
closing it releases everything it held at once.

The ring holds whole batches (segments of sequence numbers), never an object per record: a
record becomes the bytes GetFlowsBatched sends (a GetFlowsBatch entry: GetFlowsResponse with
node_name, time and the flow) only when a reader asks for bytes, once per batch, and a Flow
object only for a reader that needs one (a filter). Batch readers (the flow log, metrics)
read the columns themselves (`next_segments`). Flow objects handed to `extend` are held as
their bytes, and as objects while among the newest `hot_flows`, so readers that keep up never
parse.

End notices (`FlowBatch.update`: a flow already sent ended) take a sequence number like
records, so followers get them in order (as GetFlowsResponse.flow_update); history leaves
them out: the store applies each to the flow's latest record it still holds (flow_end and
the final outcome), so history shows the end on the record itself.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import numpy as np

from agent.datapath.batch import FlowBatch
from agent.flowstore.evictions import Evictions, Lost
from agent.stats import AgentStats
from agent.wire.protowire import frame_flow, node_prefix
from podflow_api.v1 import flow_pb2, observer_pb2

if TYPE_CHECKING:
    from agent.config import StoreSection

DEFAULT_HOT_FLOWS = 8192  # newest Flow objects kept as objects
_NS = 1_000_000_000
RATE_WINDOW_S = 5.0  # flows_per_second is averaged over about this many seconds

Predicate = Callable[[flow_pb2.Flow], bool]
# A record as held for the wire: (time_ns, framed, response_offset, flow_offset).
# framed[response_offset:] is the GetFlowsResponse, framed[flow_offset:] the Flow.
StoredFlow = tuple[int, bytes, int, int]


class ObjectBatch:
    """Flow objects held as their framed bytes (and as objects while hot)."""

    def __init__(self, flows: list[flow_pb2.Flow], prefix: bytes):
        self.objects: list | None = flows
        self.stored: list[StoredFlow] = []
        for flow in flows:
            t = flow.time
            framed, resp_off, flow_off = frame_flow(prefix, t.SerializeToString(),
                                                    flow.SerializeToString())
            self.stored.append((t.seconds * _NS + t.nanos, framed, resp_off, flow_off))
        self.times_ns = np.fromiter((s[0] for s in self.stored), np.int64, len(flows))
        self.packets = np.fromiter((f.packets for f in flows), np.uint64, len(flows))
        self.update = np.zeros(len(flows), bool)

    def __len__(self) -> int:
        return len(self.stored)

    def stored_items(self, _prefix: bytes) -> list[StoredFlow]:
        return self.stored

    def flow(self, i: int) -> flow_pb2.Flow:
        obj = self.objects[i] if self.objects is not None else None
        if obj is None:
            _t, data, _r, flow_off = self.stored[i]
            obj = flow_pb2.Flow.FromString(memoryview(data)[flow_off:])
        return obj

    def time_of(self, i: int) -> int:
        return self.stored[i][0]


def _times(batch) -> np.ndarray:
    if isinstance(batch, FlowBatch):
        return np.full(len(batch), batch.time_ns, np.int64)
    return batch.times_ns


class _Segment:
    """Records [first_seq, end_seq) of the ring: rows row0.. of one batch."""

    __slots__ = ("first_seq", "row0", "batch")

    def __init__(self, first_seq: int, row0: int, batch):
        self.first_seq, self.row0, self.batch = first_seq, row0, batch

    @property
    def end_seq(self) -> int:
        return self.first_seq + len(self.batch) - self.row0


class Subscription:
    """A reader's cursor into the store. Not thread-safe: one reader per subscription."""

    def __init__(self, store: FlowStore, cursor: int, predicate: Predicate | None,
                 queue_size: int):
        self._store = store
        self.cursor = cursor
        self._predicate = predicate
        self.queue_size = queue_size
        self.closed = False

    def close(self) -> None:
        """Stop following and release this subscriber at once (wakes a blocked reader)."""
        if self.closed:
            return
        self.closed = True
        self._store._unsubscribe(self)

    def next_batch(self, timeout_s: float, max_flows: int = 1024,
                   ) -> tuple[list[flow_pb2.Flow], Lost | None]:
        """Wait up to `timeout_s` for records after the cursor; return the matching ones (up
        to `max_flows` examined) as Flow objects, and what was lost since the last call
        because this reader lagged more than its queue size, or because records left the
        ring before it got to them. End notices are not Flows of their own: left out."""
        return self._next(timeout_s, max_flows, "flows")

    def next_raw(self, timeout_s: float, max_flows: int = 1024,
                 ) -> tuple[list[StoredFlow], Lost | None]:
        """Like next_batch, but as held for the wire (StoredFlow), end notices included
        (framed as flow_update): nothing is parsed unless the filter needs it."""
        return self._next(timeout_s, max_flows, "raw")

    def next_segments(self, timeout_s: float, max_flows: int = 4096, whole_batches: bool = False,
                      ) -> tuple[list[tuple[object, int, int]], Lost | None]:
        """Like next_batch for readers of columns (the flow log, metrics): (batch, first
        row, end row) ranges, end notices included, the subscription's filter NOT applied.
        `whole_batches`: past max_flows, read on to the end of the batch reached (the flow
        log pairs a batch's records with each other)."""
        return self._next(timeout_s, max_flows, "segments", whole_batches)

    def _next(self, timeout_s: float, max_flows: int, mode: str, whole_batches: bool = False):
        store = self._store
        if store.seq <= self.cursor and not self.closed:
            with store._cond:
                store._cond.wait_for(lambda: store.seq > self.cursor or self.closed, timeout_s)
        if self.closed:
            return [], None
        head = store.seq
        lost = None
        if head - self.cursor > self.queue_size:
            # The oldest records of this reader's window are dropped so it catches up with the
            # newest ones; they are counted (filtered where they can still be read).
            new_cursor = head - self.queue_size
            lost = store._count_matching(self.cursor, new_cursor, self._predicate)
            self.cursor = new_cursor
        end = min(head, self.cursor + max_flows)
        if whole_batches and end < head:
            end = store._segment_end(end - 1)
        segments, gone = store._segments(self.cursor, end)
        self.cursor = end
        if gone is not None:
            if lost is None:
                lost = gone
            else:
                lost.count += gone.count
                lost.packets += gone.packets
                lost.first_ns = min(lost.first_ns or gone.first_ns, gone.first_ns)
                lost.last_ns = max(lost.last_ns, gone.last_ns)
        if mode == "segments":
            return segments, lost
        return store._items(segments, self._predicate, raw=mode == "raw",
                            updates=mode == "raw"), lost


class FlowStore:
    """Bounded ring of records. One writer (`extend_batch` / `extend`), any number of
    readers."""

    def __init__(self, config: StoreSection, stats: AgentStats | None = None, *,
                 hot_flows: int = DEFAULT_HOT_FLOWS):
        capacity = config.capacity
        self.capacity = capacity
        self.stats = stats
        self.node_name = stats.node_name if stats is not None else ""
        self._prefix = node_prefix(self.node_name)
        # A reader cannot lag by more than the ring holds.
        self.client_queue_size = min(config.client_queue_size, capacity)
        # Objects kept for the newest `hot_flows`; for a store no bigger than that, for all.
        self.hot_flows = max(0, hot_flows)
        self._segments_list: list[_Segment] = []  # oldest first from index _head
        self._firsts: list[int] = []              # first_seq of each segment (bisect)
        self._head = 0
        self._cold_seq = 0  # Flow objects before this sequence number were let go
        self.seq = 0  # sequence number of the next record; [seq - held, seq) are held
        self._held = 0
        self.records_seen = 0  # records stored since start (end notices left out)
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._subscribers: set[Subscription] = set()
        self._rate_samples: deque[tuple[float, int]] = deque()
        self._evicted = Evictions(capacity)  # what left the ring (agent/evictions.py)
        self.started_mono = time.monotonic()

    # -- writers --------------------------------------------------------------------------

    def extend(self, flows: Iterable[flow_pb2.Flow]) -> None:
        """Append Flow objects. O(len(flows)); never waits for a reader."""
        flows = list(flows)
        if flows:
            self._append(ObjectBatch(flows, self._prefix), len(flows))

    def extend_batch(self, batch: FlowBatch) -> None:
        """Append a batch of records; its end notices are applied to the records held."""
        if not len(batch):
            return
        if batch.update.any():
            self._apply_ends(batch)
        self._append(batch, int(len(batch) - batch.update.sum()))

    def _append(self, batch, records: int) -> None:
        with self._cond:
            seg = _Segment(self.seq, 0, batch)
            self._segments_list.append(seg)
            self._firsts.append(self.seq)
            self.seq += len(batch)
            self._held += len(batch)
            self.records_seen += records
            self._trim()
            self._demote()
            now = time.monotonic()
            samples = self._rate_samples
            if not samples or now - samples[-1][0] >= 0.5:
                samples.append((now, self.records_seen))
                while len(samples) > 2 and now - samples[1][0] > RATE_WINDOW_S:
                    samples.popleft()
            if self._subscribers:
                self._cond.notify_all()

    def _trim(self) -> None:
        """Drop the oldest records beyond the capacity, remembering what they held."""
        over = self._held - self.capacity
        while over > 0:
            seg = self._segments_list[self._head]
            rows = len(seg.batch) - seg.row0
            take = min(rows, over)
            times = _times(seg.batch)[seg.row0:seg.row0 + take]
            self._evicted.add(seg.first_seq, seg.batch, seg.row0, seg.row0 + take, times)
            if take == rows:
                self._segments_list[self._head] = None
                self._head += 1
            else:
                seg.row0 += take
                seg.first_seq += take
                self._firsts[self._head] = seg.first_seq
            self._held -= take
            over -= take
        if self._head > 1024 and self._head * 2 > len(self._segments_list):
            del self._segments_list[:self._head]
            del self._firsts[:self._head]
            self._head = 0

    def _demote(self) -> None:
        """Let go of the Flow objects of records no longer among the newest hot_flows."""
        cold = self.seq - self.hot_flows
        if self.hot_flows >= self.capacity or cold <= self._cold_seq:
            return
        i = max(self._head, bisect.bisect_right(self._firsts, self._cold_seq, self._head) - 1)
        while i < len(self._segments_list):
            seg = self._segments_list[i]
            if seg.first_seq >= cold:
                break
            batch = seg.batch
            if isinstance(batch, ObjectBatch) and batch.objects is not None:
                last_cold = min(seg.end_seq, cold) - seg.first_seq + seg.row0
                if last_cold >= len(batch):
                    batch.objects = None
                else:
                    for row in range(last_cold):
                        batch.objects[row] = None
            i += 1
        self._cold_seq = cold

    def _apply_ends(self, batch: FlowBatch) -> None:
        """Set flow_end and the final outcome on the latest record held of each flow that a
        notice of `batch` ends."""
        rows = np.flatnonzero(batch.update)
        want = batch.flow_ids()[rows]
        order = np.argsort(want)
        want, outcomes = want[order], batch.outcome[rows][order]
        found = np.zeros(len(want), bool)
        with self._lock:
            segments = self._segments_list[self._head:]
        for seg in reversed(segments):
            held = seg.batch
            if not isinstance(held, FlowBatch) or found.all():
                continue
            ids = held.flow_ids()[seg.row0:]
            pos = np.searchsorted(want, ids).clip(0, len(want) - 1)
            hit = (want[pos] == ids) & ~held.update[seg.row0:] & ~found[pos]
            if hit.any():
                held.patch_end(np.flatnonzero(hit) + seg.row0, outcomes[pos[hit]])
                found[pos[hit]] = True

    # -- readers --------------------------------------------------------------------------

    def __len__(self) -> int:
        return self._held

    @property
    def oldest_seq(self) -> int:
        return self.seq - self._held

    @property
    def num_subscribers(self) -> int:
        return len(self._subscribers)

    def flows_per_second(self) -> float:
        """Records stored per second over the last few seconds (falls to 0 when idle)."""
        now = time.monotonic()
        with self._lock:
            seen = self.records_seen
            samples = list(self._rate_samples)
        base_t, base_seen = self.started_mono, 0
        for t, s in samples:
            if now - t <= RATE_WINDOW_S:
                break
            base_t, base_seen = t, s
        elapsed = now - base_t
        if elapsed <= 0:
            return 0.0
        return (seen - base_seen) / elapsed

    def evicted_since(self, since_ns: int) -> Lost | None:
        """Records no longer held whose time is at or after `since_ns` (to the second: the
        count includes evictions of since's own second), or None."""
        with self._lock:
            return self._evicted.since(since_ns)

    def subscribe(self, predicate: Predicate | None = None, start_seq: int | None = None,
                  queue_size: int | None = None) -> Subscription:
        """A cursor starting at `start_seq` (default: the next record to arrive)."""
        with self._lock:
            sub = Subscription(self, self.seq if start_seq is None else start_seq, predicate,
                               min(queue_size or self.client_queue_size, self.capacity))
            self._subscribers.add(sub)
        return sub

    def _unsubscribe(self, sub: Subscription) -> None:
        with self._cond:
            self._subscribers.discard(sub)
            self._cond.notify_all()

    def _segment_end(self, seq: int) -> int:
        """The end (seq) of the held segment holding record `seq` (seq + 1 when gone)."""
        with self._lock:
            i = bisect.bisect_right(self._firsts, seq, self._head) - 1
            if i < self._head or i >= len(self._segments_list):
                return seq + 1
            return max(seq + 1, self._segments_list[i].end_seq)

    def _segments(self, begin: int, end: int) -> tuple[list[tuple[object, int, int]],
                                                         Lost | None]:
        """(batch, first row, end row) ranges holding records [begin, end), and what those
        already overwritten held (records and packets), or None."""
        with self._lock:
            oldest = self.seq - self._held
            overwritten = self._evicted.between(begin, min(end, oldest))
            begin = max(begin, oldest)
            out = []
            if begin >= end:
                return out, overwritten
            i = max(self._head, bisect.bisect_right(self._firsts, begin, self._head) - 1)
            while i < len(self._segments_list) and begin < end:
                seg = self._segments_list[i]
                stop = min(end, seg.end_seq)
                if stop > begin:
                    out.append((seg.batch, seg.row0 + begin - seg.first_seq,
                                seg.row0 + stop - seg.first_seq))
                    begin = stop
                i += 1
        return out, overwritten

    def _items(self, segments, predicate: Predicate | None, raw: bool, updates: bool) -> list:
        """The records of `segments` that match: StoredFlow tuples or Flow objects."""
        out: list = []
        prefix = self._prefix
        for batch, lo, hi in segments:
            is_update = batch.update
            stored = batch.stored_items(prefix) if raw else None
            for i in range(lo, hi):
                if is_update[i] and not updates:
                    continue
                flow = None
                if predicate is not None:
                    flow = batch.flow(i)
                    if not predicate(flow):
                        continue
                out.append(stored[i] if raw else (flow if flow is not None else batch.flow(i)))
        return out

    def history(self, predicate: Predicate | None = None, *, number: int = 0,
                first: bool = False, since_ns: int | None = None, until_ns: int | None = None,
                end_seq: int | None = None) -> list[flow_pb2.Flow]:
        """Matching records held now (before `end_seq`), oldest first: the last `number` (the
        first with `first`; all when 0) whose time lies within [since_ns, until_ns]."""
        return self._history(predicate, number, first, since_ns, until_ns, end_seq, raw=False)

    def history_raw(self, predicate: Predicate | None = None, *, number: int = 0,
                    first: bool = False, since_ns: int | None = None,
                    until_ns: int | None = None, end_seq: int | None = None,
                    ) -> list[StoredFlow]:
        """Like history, as held (StoredFlow)."""
        return self._history(predicate, number, first, since_ns, until_ns, end_seq, raw=True)

    def _history(self, predicate, number, first, since_ns, until_ns, end_seq, raw):
        end = self.seq if end_seq is None else end_seq
        segments, _ = self._segments(self.oldest_seq, end)
        rows = []  # (batch, row) in time order of the ring
        for batch, lo, hi in (segments if first or not number else reversed(segments)):
            times = _times(batch)
            keep = ~batch.update[lo:hi]
            if since_ns is not None:
                keep &= times[lo:hi] >= since_ns
            if until_ns is not None:
                keep &= times[lo:hi] <= until_ns
            idx = np.flatnonzero(keep) + lo
            if number and not first:
                idx = idx[::-1]
            for i in idx.tolist():
                if predicate is not None and not predicate(batch.flow(i)):
                    continue
                rows.append((batch, i))
                if number and len(rows) >= number:
                    break
            if number and len(rows) >= number:
                break
        if number and not first:
            rows.reverse()
        if raw:
            prefix = self._prefix
            return [batch.stored_items(prefix)[i] for batch, i in rows]
        return [batch.flow(i) for batch, i in rows]

    def _count_matching(self, begin: int, end: int, predicate: Predicate | None) -> Lost:
        """Count the records in [begin, end) a reader skips: those matching its filter where
        the ring still holds them, and every one already overwritten, with its packets (no
        longer judged by the filter). End notices are not records: not counted."""
        segments, gone = self._segments(begin, end)
        lost = gone or Lost(observer_pb2.CLIENT_QUEUE, 0)
        for batch, lo, hi in segments:
            rows = np.flatnonzero(~batch.update[lo:hi]) + lo
            if predicate is not None:
                rows = np.array([i for i in rows.tolist() if predicate(batch.flow(i))],
                                np.int64)
            if not len(rows):
                continue
            times = _times(batch)[rows]
            lost.count += len(rows)
            lost.packets += int(batch.packets[rows].sum())
            first, last = int(times.min()), int(times.max())
            if not lost.first_ns or first < lost.first_ns:
                lost.first_ns = first
            lost.last_ns = max(lost.last_ns, last)
        return lost
