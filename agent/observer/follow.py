"""Reading the flow store for a GetFlows stream, for every API that streams flows (podflow's
Observer, Hubble's): history, then live flows, and what the client must be told besides.

A follower is a store subscription plus what a live stream owes its client besides flows:
how many flows THIS client missed because it read too slowly (the subscription's own loss),
and how many were lost at other stages of the agent since it last heard (kernel ring buffer,
agent queue ...); a history from a `since` that reaches past the store says how many flows
it can no longer have. Both APIs need exactly that and differ only in how they encode flows
and loss notices, so the reading lives here once (`read_flows`) and each servicer turns its
chunks into its wire.

`Followers` holds a servicer's open subscriptions, so stopping the server ends every stream
at once, and a client that goes away releases its subscription even while its worker thread
is blocked sending.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from agent.flowstore.evictions import Lost
from agent.flowstore import FlowStore, Subscription
from agent.stats import AgentStats
from podflow_api.v1 import observer_pb2

FOLLOW_POLL_S = 0.5     # how often a follower with nothing to send checks it is still wanted
STATS_NOTICE_S = 1.0    # how often a follower is told about loss at other stages
MAX_BATCH = 2048        # flows taken from the store per wake-up of a follower


class Followers:
    """The live subscriptions of one servicer. Thread-safe."""

    def __init__(self, store: FlowStore):
        self.store = store
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._subs: set[Subscription] = set()

    def subscribe(self, predicate, context) -> Subscription:
        """A subscription from the next flow on, released when the client goes away."""
        sub = self.store.subscribe(predicate)
        with self._lock:
            self._subs.add(sub)
        # Runs on the client's disconnect even while the stream's thread is blocked sending.
        context.add_callback(lambda: self.release(sub))
        return sub

    def release(self, sub: Subscription) -> None:
        sub.close()
        with self._lock:
            self._subs.discard(sub)

    def __len__(self) -> int:
        """Follow streams open now."""
        with self._lock:
            return len(self._subs)

    def shutdown(self) -> None:
        """End every follow stream (the server is stopping)."""
        self.stopping.set()
        with self._lock:
            subs = list(self._subs)
        for sub in subs:
            sub.close()


class StageLosses:
    """Loss at the agent's other stages since a client last heard. CLIENT_QUEUE is per
    client: each stream reports its own from its subscription, never another client's."""

    def __init__(self, stats: AgentStats):
        self.stats = stats
        self._baseline = {stage: span.count for stage, span in stats.snapshot_lost().items()}

    def new(self) -> list[Lost]:
        out = []
        for stage, span in self.stats.snapshot_lost().items():
            if stage == observer_pb2.CLIENT_QUEUE:
                continue
            before = self._baseline.get(stage, 0)
            if span.count > before:
                self._baseline[stage] = span.count
                out.append(Lost(stage, span.count - before, span.first_ns if not before else 0,
                                span.last_ns))
        return out


@dataclass
class Chunk:
    """What a stream got on one read: flows (StoredFlow tuples when `raw`, Flow objects
    otherwise), what this client lost, and what was lost elsewhere (other stages since the
    previous notice; flows asked for that had left the store)."""

    flows: list
    client_lost: Lost | None = None
    stage_lost: list[Lost] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.flows or self.client_lost or self.stage_lost)


def read_flows(followers: Followers, stats: AgentStats, context, predicate, *, follow: bool,
               history: bool, number: int = 0, first: bool = False,
               since_ns: int | None = None, until_ns: int | None = None, raw: bool = True,
               batch: int = MAX_BATCH, time_of: Callable[[object], int] | None = None,
               ) -> Iterator[Chunk]:
    """What a GetFlows stream reads, as Chunks: the history (when `history`; `number` /
    `first` / `since_ns` / `until_ns` as FlowStore.history reads them, up to `batch` flows a
    chunk, after a chunk saying how many flows since `since_ns` already left the store),
    then, when following, live flows from the flow after the history on (see `follow`)."""
    store = followers.store
    sub = followers.subscribe(predicate, context) if follow else None
    end_seq = sub.cursor if sub is not None else store.seq
    try:
        if history:
            if since_ns is not None:
                gone = store.evicted_since(since_ns)
                if gone is not None:
                    yield Chunk([], stage_lost=[gone])
            read = store.history_raw if raw else store.history
            flows = read(predicate, number=number, first=first, since_ns=since_ns,
                         until_ns=until_ns, end_seq=end_seq)
            for i in range(0, len(flows), batch):
                yield Chunk(flows[i:i + batch])
        if sub is not None:
            yield from _follow(followers, sub, stats, context, until_ns, raw, time_of)
    finally:
        if sub is not None:
            followers.release(sub)


def _follow(followers: Followers, sub: Subscription, stats: AgentStats, context,
            until_ns: int | None, raw: bool, time_of: Callable[[object], int] | None,
            ) -> Iterator[Chunk]:
    """Chunks of live flows until the client leaves, the server stops, or `until_ns` (wall
    clock) has passed; flows after `until_ns` are not sent. A client's own loss is counted
    in the agent's stats (CLIENT_QUEUE) as it happens. `time_of(flow)` gives a flow's time
    in ns (default: a StoredFlow's first element)."""
    time_of = time_of or (lambda item: item[0])
    losses = StageLosses(stats)
    last_notice = time.monotonic()
    read = sub.next_raw if raw else sub.next_batch
    while not followers.stopping.is_set() and context.is_active():
        flows, lost = read(FOLLOW_POLL_S, MAX_BATCH)
        if sub.closed:
            return
        if until_ns is not None:
            flows = [item for item in flows if time_of(item) <= until_ns]
        chunk = Chunk(flows)
        if lost is not None and lost.count:
            stats.add_lost(observer_pb2.CLIENT_QUEUE, lost.count)
            chunk.client_lost = lost
        now = time.monotonic()
        if now - last_notice >= STATS_NOTICE_S:
            last_notice = now
            chunk.stage_lost = losses.new()
        if chunk:
            yield chunk
        if until_ns is not None and time.time_ns() > until_ns:
            return
