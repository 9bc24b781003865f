"""The agent's flow store: a bounded ring of the most recent flows, with sequence numbers, that
feeds GetFlows history and live follow (and the flow log exporter and metrics).

The datapath's reader thread calls `extend()` with each batch; it must stay cheap whatever the
number of clients, so subscribers do not get copies pushed to them. Each subscriber is a
cursor (a sequence number) into the ring plus a bound on how far it may lag behind the newest
flow: its queue is the window of the ring between its cursor and the head. A subscriber that
lags more than its bound loses its oldest flows and is told exactly how many; it never slows
the writer or another subscriber, and closing it releases everything it held at once.

Flows are held serialized, already framed as a GetFlowsBatch entry (field 1: a
GetFlowsResponse with node_name, time and the flow): a parsed protobuf Flow of an enriched
record costs ~2.7 KB here against ~0.56 KB as bytes, and these bytes are exactly what
GetFlowsBatched sends, so a client costs the server a join per batch rather than an encoding
per flow. The newest `hot_flows` also keep the Flow object the datapath handed in, so readers
that keep up (exporter, metrics, filtered followers) never parse.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from agent.stats import AgentStats
from podflow_api.v1 import flow_pb2, observer_pb2

if TYPE_CHECKING:
    from agent.config import StoreSection

DEFAULT_HOT_FLOWS = 8192  # newest flows also kept as objects
EVICTED_SECONDS = 6 * 3600  # seconds (with evictions) remembered for `since` queries
_NS = 1_000_000_000
RATE_WINDOW_S = 5.0  # flows_per_second is averaged over about this many seconds

Predicate = Callable[[flow_pb2.Flow], bool]
# A flow as held: (time_ns, framed, response_offset, flow_offset). framed[response_offset:]
# is the GetFlowsResponse, framed[flow_offset:] the Flow.
StoredFlow = tuple[int, bytes, int, int]


def _varint_slow(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


# Lengths of flows and responses are almost always below 16 KiB: one lookup instead of a loop
# in extend(), which runs on the datapath's thread.
_VARINTS = [_varint_slow(n) for n in range(1 << 14)]


def varint(n: int) -> bytes:
    return _VARINTS[n] if n < 16384 else _varint_slow(n)


def timestamp_bytes(t_ns: int) -> bytes:
    """A google.protobuf.Timestamp's bytes (fields 1 seconds, 2 nanos; zeros omitted)."""
    seconds, nanos = divmod(t_ns, _NS)
    out = b""
    if seconds:
        out += b"\x08" + _varint_slow(seconds)
    if nanos:
        out += b"\x10" + _varint_slow(nanos)
    return out


def node_prefix(node: str) -> bytes:
    """GetFlowsResponse field 1 (node_name)."""
    raw = node.encode()
    return b"\n" + varint(len(raw)) + raw if raw else b""


def frame_flow(prefix: bytes, ts: bytes, data: bytes) -> tuple[bytes, int, int]:
    """(framed, response_offset, flow_offset) for a serialized Flow and its serialized time:
    GetFlowsBatch field 1 holding GetFlowsResponse{node_name, time, flow}, built without any
    message object."""
    head = prefix + b"\x12" + _VARINTS[len(ts)] + ts + b"\x1a" + varint(len(data))
    resp_len = len(head) + len(data)
    frame = b"\n" + varint(resp_len)
    return frame + head + data, len(frame), len(frame) + len(head)


@dataclass
class Lost:
    """Flows a subscriber missed: `count` of them, produced between first_ns and last_ns
    (wall clock of the flows themselves; 0 when none of them could be examined)."""

    stage: int
    count: int
    first_ns: int = 0
    last_ns: int = 0


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
        """Wait up to `timeout_s` for flows after the cursor; return the matching ones (up to
        `max_flows` examined) and what was lost since the last call because this reader lagged
        more than its queue size, or because flows left the ring before it got to them."""
        return self._next(timeout_s, max_flows, raw=False)

    def next_raw(self, timeout_s: float, max_flows: int = 1024,
                 ) -> tuple[list[StoredFlow], Lost | None]:
        """Like next_batch, but the flows as held (StoredFlow): nothing is parsed unless the
        subscription's filter needs it."""
        return self._next(timeout_s, max_flows, raw=True)

    def _next(self, timeout_s: float, max_flows: int, raw: bool):
        store = self._store
        if store.seq <= self.cursor and not self.closed:
            with store._cond:
                store._cond.wait_for(lambda: store.seq > self.cursor or self.closed, timeout_s)
        if self.closed:
            return [], None
        head = store.seq
        lost = None
        if head - self.cursor > self.queue_size:
            # The oldest flows of this reader's window are dropped so it catches up with the
            # newest ones; they are counted (filtered where they can still be read).
            new_cursor = head - self.queue_size
            lost = store._count_matching(self.cursor, new_cursor, self._predicate)
            self.cursor = new_cursor
        end = min(head, self.cursor + max_flows)
        items, overwritten = store._read(self.cursor, end, self._predicate, raw)
        self.cursor = end
        if overwritten:
            if lost is None:
                lost = Lost(observer_pb2.CLIENT_QUEUE, overwritten)
            else:
                lost.count += overwritten
        return items, lost


class FlowStore:
    """Bounded ring of flows. One writer (`extend`), any number of readers."""

    def __init__(self, config: StoreSection, stats: AgentStats | None = None, *,
                 hot_flows: int = DEFAULT_HOT_FLOWS):
        capacity = config.capacity
        self.capacity = capacity
        self.stats = stats
        self.node_name = stats.node_name if stats is not None else ""
        self._prefix = node_prefix(self.node_name)
        # A reader cannot lag by more than the ring holds.
        self.client_queue_size = min(config.client_queue_size, capacity)
        # Object kept for the newest `hot_flows`; for a store no bigger than that, for all.
        self.hot_flows = max(0, hot_flows)
        # Slot i % capacity holds [i, time_ns, framed bytes, Flow or None, response offset,
        # flow offset]; the sequence number tells a reader whether the slot was overwritten
        # since it computed the index. The Flow object is dropped once `hot_flows` newer
        # flows arrived.
        self._ring: list[list | None] = [None] * capacity
        self.seq = 0  # sequence number of the next flow; flows [seq - capacity, seq) are held
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._subscribers: set[Subscription] = set()
        self._rate_samples: deque[tuple[float, int]] = deque()
        # Flows pushed out of the ring, counted per second of their time, so a `since` query
        # reaching further back than the ring holds can say how many it cannot have.
        self._evicted: dict[int, int] = {}
        self._evicted_last_ns = 0
        self.started_mono = time.monotonic()

    # -- writer ---------------------------------------------------------------------------

    def extend(self, flows: Iterable[flow_pb2.Flow]) -> None:
        """Append a batch. O(len(flows)); never waits for a reader."""
        ring = self._ring
        cap = self.capacity
        hot = self.hot_flows
        demote = 0 < hot < cap
        prefix = self._prefix
        with self._cond:
            seq = self.seq
            evicted = self._evicted
            for flow in flows:
                t = flow.time
                slot = seq % cap
                old = ring[slot]
                if old is not None:
                    sec = old[1] // _NS
                    evicted[sec] = evicted.get(sec, 0) + 1
                    if old[1] > self._evicted_last_ns:
                        self._evicted_last_ns = old[1]
                t_ns = t.seconds * _NS + t.nanos
                framed, resp_off, flow_off = frame_flow(prefix, t.SerializeToString(),
                                                        flow.SerializeToString())
                ring[slot] = [seq, t_ns, framed, flow if hot else None, resp_off, flow_off]
                if demote and seq >= hot:
                    cold = ring[(seq - hot) % cap]
                    if cold is not None:
                        cold[3] = None
                seq += 1
            if seq == self.seq:
                return
            self.seq = seq
            while len(evicted) > EVICTED_SECONDS:
                del evicted[next(iter(evicted))]
            now = time.monotonic()
            samples = self._rate_samples
            if not samples or now - samples[-1][0] >= 0.5:
                samples.append((now, seq))
                while len(samples) > 2 and now - samples[1][0] > RATE_WINDOW_S:
                    samples.popleft()
            if self._subscribers:
                self._cond.notify_all()

    # -- readers --------------------------------------------------------------------------

    def __len__(self) -> int:
        return min(self.seq, self.capacity)

    @property
    def oldest_seq(self) -> int:
        return max(0, self.seq - self.capacity)

    @property
    def num_subscribers(self) -> int:
        return len(self._subscribers)

    def flows_per_second(self) -> float:
        """Flows stored per second over the last few seconds (falls to 0 when idle)."""
        now = time.monotonic()
        with self._lock:
            seq = self.seq
            samples = list(self._rate_samples)
        base_t, base_seq = self.started_mono, 0
        for t, s in samples:
            if now - t <= RATE_WINDOW_S:
                break
            base_t, base_seq = t, s
        elapsed = now - base_t
        if elapsed <= 0:
            return 0.0
        return (seq - base_seq) / elapsed

    def evicted_since(self, since_ns: int) -> Lost | None:
        """Flows no longer held whose time is at or after `since_ns` (to the second: the
        count includes evictions of since's own second), or None."""
        since_sec = since_ns // _NS
        with self._lock:
            count = sum(n for sec, n in self._evicted.items() if sec >= since_sec)
            last_ns = self._evicted_last_ns
        if not count:
            return None
        return Lost(observer_pb2.STORE_OVERWRITTEN, count, since_ns, last_ns)

    def subscribe(self, predicate: Predicate | None = None, start_seq: int | None = None,
                  queue_size: int | None = None) -> Subscription:
        """A cursor starting at `start_seq` (default: the next flow to arrive)."""
        with self._lock:
            sub = Subscription(self, self.seq if start_seq is None else start_seq, predicate,
                               min(queue_size or self.client_queue_size, self.capacity))
            self._subscribers.add(sub)
        return sub

    def _unsubscribe(self, sub: Subscription) -> None:
        with self._cond:
            self._subscribers.discard(sub)
            self._cond.notify_all()

    def history(self, predicate: Predicate | None = None, *, number: int = 0,
                first: bool = False, since_ns: int | None = None, until_ns: int | None = None,
                end_seq: int | None = None) -> list[flow_pb2.Flow]:
        """Matching flows held now (before `end_seq`), oldest first: the last `number` (the
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
        start = max(0, end - self.capacity)
        ring = self._ring
        cap = self.capacity
        out: list = []
        parse = flow_pb2.Flow.FromString

        def keep(i: int) -> bool:
            entry = ring[i % cap]
            if entry is None or entry[0] != i:
                return False  # overwritten while we read
            _, t_ns, data, flow, resp_off, flow_off = entry
            if since_ns is not None and t_ns < since_ns:
                return False
            if until_ns is not None and t_ns > until_ns:
                return False
            if predicate is not None:
                if flow is None:
                    flow = parse(memoryview(data)[flow_off:])
                if not predicate(flow):
                    return False
            if raw:
                out.append((t_ns, data, resp_off, flow_off))
            else:
                out.append(flow if flow is not None else parse(memoryview(data)[flow_off:]))
            return True

        if number and not first:
            for i in range(end - 1, start - 1, -1):
                if keep(i) and len(out) >= number:
                    break
            out.reverse()
        else:
            for i in range(start, end):
                if keep(i) and number and len(out) >= number:
                    break
        return out

    def _read(self, begin: int, end: int, predicate: Predicate | None, raw: bool,
              ) -> tuple[list, int]:
        """Flows in [begin, end) that match, and how many were already overwritten."""
        ring = self._ring
        cap = self.capacity
        parse = flow_pb2.Flow.FromString
        out = []
        overwritten = 0
        for i in range(begin, end):
            entry = ring[i % cap]
            if entry is None or entry[0] != i:
                overwritten += 1
                continue
            _, t_ns, data, flow, resp_off, flow_off = entry
            if predicate is not None:
                if flow is None:
                    flow = parse(memoryview(data)[flow_off:])
                if not predicate(flow):
                    continue
            if raw:
                out.append((t_ns, data, resp_off, flow_off))
            else:
                out.append(flow if flow is not None else parse(memoryview(data)[flow_off:]))
        return out, overwritten

    def _count_matching(self, begin: int, end: int, predicate: Predicate | None) -> Lost:
        """Count the flows in [begin, end) a reader skips: those matching its filter where the
        slot still holds them, every one already overwritten (it can no longer be judged)."""
        ring = self._ring
        cap = self.capacity
        parse = flow_pb2.Flow.FromString
        lost = Lost(observer_pb2.CLIENT_QUEUE, 0)
        floor = min(end, max(begin, self.seq - cap))
        lost.count += floor - begin  # already overwritten: no need to look
        for i in range(floor, end):
            entry = ring[i % cap]
            if entry is None or entry[0] != i:
                lost.count += 1
                continue
            _, t_ns, data, flow, _resp_off, flow_off = entry
            if predicate is not None:
                if flow is None:
                    flow = parse(memoryview(data)[flow_off:])
                if not predicate(flow):
                    continue
            lost.count += 1
            if not lost.first_ns or t_ns < lost.first_ns:
                lost.first_ns = t_ns
            if t_ns > lost.last_ns:
                lost.last_ns = t_ns
        return lost
