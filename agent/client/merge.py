"""ONE time-ordered merge of several agents, for every client: `podflow observe` iterates
MergedFlows; the TUI's aggregator feeds the same TimeMerge from its own sources.

Each agent sends its own flows in time order; the merge holds them back until every agent
that is still talking has sent something at least as recent (a watermark), then releases
them in time order. An agent that is done, or has been quiet for `quiet_s` (dead, partitioned,
idle), holds nothing back, so one silent agent delays the others by at most that window; a
slow agent that keeps sending holds the others back to its own pace, so the output stays in
order. Two bounds keep a live view live: at most `max_held` flows are held (the oldest go
first beyond it) and, with `max_lag_ns`, nothing is held longer than that behind the newest
flow seen (the TUI: an agent whose clock runs behind must not freeze the screen; its flows
are then merged late, where they belong).
"""

from __future__ import annotations

import bisect
import itertools
import math
import queue
import threading
import time
from collections.abc import Callable, Hashable, Iterator, Sequence

from agent.client.channel import TLSOptions, normalize_address
from agent.client.stream import AgentStream, Backoff
from agent.errors import ConfigError, RequestRejected
from agent.wire.timefmt import ts_ns
from podflow_api.v1 import observer_pb2


class _Source:
    __slots__ = ("holds", "last_time_ns", "heard_at")

    def __init__(self, holds: bool, now: float):
        self.holds = holds          # False: done, or never holds (a replayed file)
        self.last_time_ns = 0       # newest item time added
        self.heard_at = now         # monotonic time it last sent anything


class TimeMerge:
    """The reorder buffer behind every merge. Not thread-safe: one thread (or the caller's
    lock) owns it. Items are anything; `time_of(item)` gives their time in ns."""

    def __init__(self, *, time_of: Callable[[object], int], quiet_s: float, max_held: int,
                 max_lag_ns: int | None = None, clock: Callable[[], float] = time.monotonic):
        self.quiet_s = quiet_s
        self.max_held = max_held
        self.max_lag_ns = max_lag_ns
        self.time_of = time_of
        self._clock = clock
        self._sources: dict[Hashable, _Source] = {}
        self._held: list[tuple[int, int, object]] = []  # (time, arrival order, item)
        self._order = itertools.count()
        self.newest_ns = 0

    def __len__(self) -> int:
        return len(self._held)

    def add_source(self, key: Hashable, holds: bool = True) -> None:
        """A source of items; `holds=False` for one that never holds the others back."""
        self._sources[key] = _Source(holds, self._clock())

    def source_done(self, key: Hashable) -> None:
        """The source will send nothing more: it holds nothing back any longer."""
        src = self._sources.get(key)
        if src is not None:
            src.holds = False

    def forget(self, key: Hashable) -> None:
        """Drop what is known of a source that is gone for good (what it sent stays held
        until released)."""
        self._sources.pop(key, None)

    def heard(self, key: Hashable, now: float | None = None) -> None:
        """The source sent something that is not an item (a notice): it is alive."""
        src = self._sources.get(key)
        if src is not None:
            src.heard_at = self._clock() if now is None else now

    def add(self, key: Hashable, items: Sequence, now: float | None = None) -> None:
        """Items from one source, in its order."""
        if not items:
            return
        src = self._sources.get(key)
        if src is None:
            src = self._sources[key] = _Source(True, self._clock())
        time_of = self.time_of
        order = self._order
        held = self._held
        newest = src.last_time_ns
        for item in items:
            t = time_of(item)
            if t > newest:
                newest = t
            held.append((t, next(order), item))
        src.last_time_ns = newest
        src.heard_at = self._clock() if now is None else now
        if newest > self.newest_ns:
            self.newest_ns = newest

    def watermark_ns(self, now: float | None = None) -> float:
        """Items up to this time may go: the oldest newest-time of the sources still
        talking (infinity when none is)."""
        now = self._clock() if now is None else now
        quiet_s = self.quiet_s
        return min((s.last_time_ns for s in self._sources.values()
                    if s.holds and now - s.heard_at <= quiet_s), default=math.inf)

    def release(self, now: float | None = None) -> list:
        """The items that may go now, oldest first."""
        held = self._held
        if not held:
            return []
        held.sort()  # (time, arrival order): mostly in order already, and never compares items
        cut = bisect.bisect_right(held, (self.watermark_ns(now), math.inf))
        if self.max_lag_ns is not None:
            cut = max(cut, bisect.bisect_right(held, (self.newest_ns - self.max_lag_ns, math.inf)))
        cut = max(cut, len(held) - self.max_held)
        if not cut:
            return []
        out = [entry[2] for entry in held[:cut]]
        del held[:cut]
        return out

    def drain(self) -> list:
        """Everything held, oldest first (the end of a finite stream)."""
        self._held.sort()
        out = [entry[2] for entry in self._held]
        self._held.clear()
        return out


_DONE = object()


def response_time_ns(resp: observer_pb2.GetFlowsResponse) -> int:
    return ts_ns(resp.time)


class MergedFlows:
    """Iterate GetFlowsResponse from several agents in time order (see the module
    docstring), each agent read by an AgentStream in its own thread. Notices (lost events,
    node status) are passed on at once, not held. With `request.follow`, broken streams are
    retried with backoff and resume after the last flow received; an agent that rejects the
    request raises RequestRejected here."""

    def __init__(self, addresses: Sequence[str], request: observer_pb2.GetFlowsRequest,
                 tls: TLSOptions | None = None, window_s: float = 0.3,
                 max_buffered: int = 50_000, reconnect: bool | None = None,
                 max_backoff_s: float | None = None):
        if not addresses:
            raise ConfigError("--server: at least one server is needed")
        self.window_s = window_s
        self.streams = []
        for address in addresses:
            backoff = Backoff() if max_backoff_s is None else Backoff(max_s=max_backoff_s)
            self.streams.append(AgentStream(normalize_address(address), request, tls,
                                            reconnect=reconnect, backoff=backoff))
        self.merge = TimeMerge(time_of=response_time_ns, quiet_s=window_s,
                               max_held=max_buffered)
        # Batches (up to 2048 flows each) waiting for the consumer. Kept short: a consumer
        # that falls behind should make the agent drop (and count) flows for it, not grow
        # this process.
        self._queue: queue.Queue = queue.Queue(maxsize=16)
        self._closed = threading.Event()
        self._threads: list[threading.Thread] = []

    def _put(self, item) -> bool:
        while not self._closed.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def _read(self, stream: AgentStream) -> None:
        try:
            for batch in stream:
                if not self._put((stream, batch)):
                    return
        except RequestRejected as exc:
            self._put((stream, exc))
        finally:
            self._put((stream, _DONE))

    def __iter__(self) -> Iterator[observer_pb2.GetFlowsResponse]:
        merge = self.merge
        for stream in self.streams:
            merge.add_source(stream)
            t = threading.Thread(target=self._read, args=(stream,), daemon=True,
                                 name=f"flows-{stream.address}")
            t.start()
            self._threads.append(t)
        running = len(self.streams)
        try:
            while running and not self._closed.is_set():
                try:
                    stream, item = self._queue.get(timeout=self.window_s / 2)
                except queue.Empty:
                    item = None
                if item is _DONE:
                    running -= 1
                    merge.source_done(stream)
                elif isinstance(item, RequestRejected):
                    raise item
                elif item is not None:
                    # An end notice (flow_update) keeps its place after its flow's records.
                    flows = [resp for resp in item
                             if resp.HasField("flow") or resp.HasField("flow_update")]
                    if len(flows) < len(item):
                        merge.heard(stream)
                        yield from (resp for resp in item if not (
                            resp.HasField("flow") or resp.HasField("flow_update")))
                    merge.add(stream, flows)
                yield from merge.release()
            if not self._closed.is_set():
                yield from merge.drain()
        finally:
            self.close()

    def close(self) -> None:
        """Cancel every stream and stop the reader threads."""
        self._closed.set()
        for stream in self.streams:
            stream.close()
