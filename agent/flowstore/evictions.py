"""What left the flow store's ring: records pushed out to make room, remembered so that
losses are told exactly rather than guessed.

Two questions come after an eviction. A GetFlows `since` query reaching further back than
the ring holds asks how many records of that time it can no longer have: evictions are
counted per second of the records' time (STORE_OVERWRITTEN). A reader (a follower, the flow
log, metrics) that fell behind the ring asks which of the records it had not read are gone
and what they held: the newest EVICTED_ROWS_KEPT x capacity rows are remembered row by row
as prefix sums of records and packets, so its loss is exact to the packet (end notices are
not records); rows older than that are counted, their packets not.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from podflow_api.v1 import observer_pb2

EVICTED_SECONDS = 6 * 3600  # seconds (with evictions) remembered for `since` queries
EVICTED_ROWS_KEPT = 4       # x the store's capacity: rows remembered one by one
_NS = 1_000_000_000


@dataclass
class Lost:
    """Records a subscriber missed: `count` of them (holding `packets` packets, where they
    could still be read), produced between first_ns and last_ns (wall clock of the records
    themselves; 0 when none of them could be examined)."""

    stage: int
    count: int
    first_ns: int = 0
    last_ns: int = 0
    packets: int = 0


class _GoneChunk:
    """Rows [first_seq, first_seq + len) pushed out of the ring: cumulative records and
    packets before each row (one more entry than rows), and their time span."""

    __slots__ = ("first_seq", "records", "packets", "first_ns", "last_ns")

    def __init__(self, first_seq: int, batch, lo: int, hi: int, times: np.ndarray):
        self.first_seq = first_seq
        records = ~batch.update[lo:hi]
        self.records = np.concatenate(([0], np.cumsum(records, dtype=np.int64)))
        packets = np.where(records, batch.packets[lo:hi].astype(np.int64), 0)
        self.packets = np.concatenate(([0], np.cumsum(packets, dtype=np.int64)))
        self.first_ns, self.last_ns = int(times.min()), int(times.max())

    def __len__(self) -> int:
        return len(self.records) - 1


class Evictions:
    """The store's record of what it pushed out; called with the store's lock held."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._per_second: dict[int, int] = {}
        self._last_ns = 0
        self._chunks: deque[_GoneChunk] = deque()
        self._rows = 0

    def add(self, first_seq: int, batch, lo: int, hi: int, times: np.ndarray) -> None:
        """Rows [lo, hi) of `batch`, sequence numbers from first_seq, with their times."""
        chunk = _GoneChunk(first_seq, batch, lo, hi, times)
        self._chunks.append(chunk)
        self._rows += len(chunk)
        while self._rows - len(self._chunks[0]) >= EVICTED_ROWS_KEPT * self.capacity:
            self._rows -= len(self._chunks.popleft())
        per_second = self._per_second
        secs, counts = np.unique(times // _NS, return_counts=True)
        for sec, count in zip(secs.tolist(), counts.tolist()):
            per_second[sec] = per_second.get(sec, 0) + count
        while len(per_second) > EVICTED_SECONDS:
            del per_second[next(iter(per_second))]
        self._last_ns = max(self._last_ns, chunk.last_ns)

    def since(self, since_ns: int) -> Lost | None:
        """Records evicted whose time is at or after `since_ns` (to the second: the count
        includes evictions of since's own second), or None."""
        since_sec = since_ns // _NS
        count = sum(n for sec, n in self._per_second.items() if sec >= since_sec)
        if not count:
            return None
        return Lost(observer_pb2.STORE_OVERWRITTEN, count, since_ns, self._last_ns)

    def between(self, begin: int, end: int) -> Lost | None:
        """The records (and their packets) of sequence numbers [begin, end), all evicted."""
        if begin >= end:
            return None
        lost = Lost(observer_pb2.CLIENT_QUEUE, 0)
        known_from = self._chunks[0].first_seq if self._chunks else end
        if begin < known_from:  # older than what is remembered: counted as rows
            lost.count += min(end, known_from) - begin
        for chunk in self._chunks:
            lo = max(begin, chunk.first_seq) - chunk.first_seq
            hi = min(end, chunk.first_seq + len(chunk)) - chunk.first_seq
            if hi <= lo:
                continue
            lost.count += int(chunk.records[hi] - chunk.records[lo])
            lost.packets += int(chunk.packets[hi] - chunk.packets[lo])
            lost.first_ns = min(lost.first_ns or chunk.first_ns, chunk.first_ns)
            lost.last_ns = max(lost.last_ns, chunk.last_ns)
        return lost if lost.count else None
