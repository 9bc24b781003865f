"""The cluster picture behind every view: merged flows, pivots, Services, node state.

Plain Python, no Textual: stream readers `feed()` responses from any thread (an append to a
deque, nothing more), the engine's loop (tui.engine) calls `process()` many times a second
and asks for what the views show (`recent`, `top`, `services`, `nodes`, `summary`) when it
builds a snapshot for the app. All of it is bounded, so memory is flat however long it
runs (bench/tui.py measures it):

* the inbox: `max_inbox` responses (~3 KB each), overflow counted and shown as lost;
* the recent-flows ring: `max_flows` records, and records waiting for the watermark: at
  most `max_flows` more;
* totals per key: `max_keys` distinct keys (traffic beyond them goes to an "(other)" row),
  and failures per key likewise (they use the same keys);
* per-second buckets: `window_s` seconds of the keys active in each;
* connections already counted as failed: 50,000, oldest forgotten first;
* sources: those configured or discovered, plus at most `max_gone` removed ones.

Time order: the client's merge (agent.client.merge.TimeMerge, the one `podflow observe`
uses): flows from several agents are held back until every agent still talking has sent
something at least as new, or for at most `reorder_s`, then merged into the ring in time
order. File replays hold nothing back and are merged by time too.

Ends that come after a flow's last record (`flow_update` responses: agent/wire/flowupdate.py)
are applied to the flow's latest record held (its flow_end and outcome, so the Flows view
shows it ended, and a Service's failed attempt is counted once); they are never counted as
records or traffic.

Counting: the Flows view shows every record; Top, Services and the totals count each packet
once, following `agent.wire.counting.counts_once`, the rule the agent's metrics follow (the
sender's FROM_POD veth record; a TO_POD record only when the sender has no veth of its own;
bridge records only for traffic no veth sees; drop records always). A pivot row is named
after the pod at the observation point (`local_is_src`): for pod traffic that is the sender,
so Top is "who sent how much", with replies counted under the server that sent them.
"""

from __future__ import annotations

import heapq
import threading
import time
from collections import OrderedDict, deque
from operator import attrgetter
from typing import Callable

from agent.client.merge import TimeMerge
from agent.wire.counting import counts_once
from agent.wire.timefmt import NS_PER_S, ts_ns
from podflow_api.v1 import flow_pb2, observer_pb2

from tui.filterexpr import FlowFilter
from tui.flowends import LatestRecords
from tui.flowkey import PIVOTS, FlowKey, flow_key, pivot_label
from tui.policy_rows import policy_rows
from tui.records import (LIVE_KINDS, STAGE_NAMES, BackendShare, Entry, NodeInfo, PolicyRow,
                         ServiceRow, Summary, TopRow)

__all__ = ["Aggregator", "BackendShare", "Entry", "NodeInfo", "ServiceRow", "Summary",
           "TopRow", "PIVOTS", "SORTS"]

SORTS = ("bytes", "packets", "flows", "rate")
OTHER_KEY = FlowKey("(other)", "(other)", "(other)", "(other)", "(other)", "(other)", "(other)",
                    "", "", 0, "", "unknown", "outcome_unknown", False, True)


class Aggregator:
    """See the module docstring. Thread-safe: `feed` from any reader thread, `process` and
    the queries from the engine's loop (or any other thread)."""

    LOCK_CHUNK = 512  # records counted per hold of the lock

    def __init__(self, max_flows: int = 10_000, window_s: int = 60, rate_s: int = 5,
                 max_keys: int = 50_000, max_inbox: int = 30_000, reorder_s: float = 0.5,
                 max_gone: int = 16, clock: Callable[[], float] = time.time):
        self.max_flows = max_flows
        self.max_gone = max_gone  # removed agent pods still listed (each rollout adds some)
        self.window_s = window_s
        self.rate_s = rate_s
        self.max_keys = max_keys
        self.max_inbox = max_inbox
        self.reorder_s = reorder_s
        self._clock = clock
        self._lock = threading.RLock()
        self._inbox: deque = deque()
        self._nodes: dict[str, NodeInfo] = {}
        self._gone: deque[str] = deque()                    # gone sources, oldest first
        self._recent: deque[Entry] = deque(maxlen=max_flows)
        # Never more held than the ring holds, nor longer than reorder_s behind the newest.
        self._merge = TimeMerge(time_of=attrgetter("time_ns"), quiet_s=reorder_s,
                                max_held=max_flows, max_lag_ns=int(reorder_s * NS_PER_S))
        self._totals: dict[FlowKey, list[int]] = {}
        self._buckets: dict[int, dict[FlowKey, list[int]]] = {}
        self._failures: dict[FlowKey, list[int]] = {}       # key -> [no_endpoints, refused, unanswered]
        self._failed_conns: OrderedDict = OrderedDict()     # connections already counted
        self._latest = LatestRecords(max_flows)  # where a flow's late end is applied
        self.flows_seen = 0
        self.policy_catalog = None                         # PolicyCatalog, when given
        self.latest_ns = 0
        self.version = 0                                   # bumps when anything changed

    # ---- sources (any thread) -------------------------------------------------------

    def add_source(self, source_id: str, address: str, kind: str, name: str = "") -> None:
        with self._lock:
            node = self._nodes.get(source_id)
            if node is None:
                self._nodes[source_id] = NodeInfo(source_id, address, kind, name=name)
                self._merge.add_source(source_id, holds=kind in LIVE_KINDS)
            else:
                node.address, node.state = address, "connecting"
            self.version += 1

    def set_state(self, source_id: str, state: str, message: str = "",
                  retry_in_s: float = 0.0) -> None:
        with self._lock:
            node = self._nodes.get(source_id)
            if node is None:
                return
            node.state, node.message = state, message
            node.retry_at_mono = time.monotonic() + retry_in_s if retry_in_s else 0.0
            if state != "connected":
                node.rate_fps = 0.0
            if state == "gone":
                self._merge.source_done(source_id)
                self._forget_gone(source_id)
            self.version += 1

    def _forget_gone(self, source_id: str) -> None:
        """Keep the newest `max_gone` gone sources only: over days of rollouts of the agent
        DaemonSet, every replaced pod would otherwise stay in the Nodes view and memory."""
        if source_id in self._gone:
            self._gone.remove(source_id)
        self._gone.append(source_id)
        while len(self._gone) > self.max_gone:
            old = self._gone.popleft()
            node = self._nodes.get(old)
            if node is not None and node.state == "gone":
                del self._nodes[old]
                self._merge.forget(old)

    def set_status(self, source_id: str, status: observer_pb2.ServerStatusResponse) -> None:
        with self._lock:
            node = self._nodes.get(source_id)
            if node is None:
                return
            node.status = status
            if status.node_name:
                node.name = status.node_name
            self.version += 1

    def count_file_lines(self, source_id: str, malformed: int = 0, skipped: int = 0) -> None:
        with self._lock:
            node = self._nodes.get(source_id)
            if node is not None:
                node.malformed += malformed
                node.skipped += skipped
                self.version += 1

    def feed(self, source_id: str, response: observer_pb2.GetFlowsResponse) -> None:
        """Hand one response over. Cheap (an append); overflow is counted, never silent."""
        if len(self._inbox) >= self.max_inbox:
            with self._lock:
                node = self._nodes.get(source_id)
                if node is not None:
                    node.dropped_here += 1
            return
        self._inbox.append((source_id, response))

    def feed_many(self, source_id: str, responses) -> None:
        for response in responses:
            self.feed(source_id, response)

    @property
    def inbox_len(self) -> int:
        """Responses fed and not taken in yet."""
        return len(self._inbox)

    def remove_source(self, source_id: str) -> None:
        """A source that will not come back (an agent pod deleted): shown as gone."""
        self.set_state(source_id, "gone", "removed")

    # ---- the engine loop (one thread) -------------------------------------------------

    def process(self, max_items: int = 50_000) -> int:
        """Drain the inbox, count, and merge what the watermark allows into the ring.
        Returns how many flow records were taken in."""
        items = []
        inbox = self._inbox
        while inbox and len(items) < max_items:
            items.append(inbox.popleft())
        entries: list[Entry] = []
        by_source: dict[str, list[Entry]] = {}
        notices = []
        updates = []
        for source_id, resp in items:
            kind = resp.WhichOneof("response_types")
            if kind == "flow_update":
                update = resp.flow_update
                if not update.node_name and resp.node_name:
                    update.node_name = resp.node_name
                updates.append(update)
            elif kind == "flow":
                flow = resp.flow
                if not flow.node_name and resp.node_name:
                    flow.node_name = resp.node_name
                t_ns = ts_ns(flow.time) or ts_ns(resp.time)
                entry = Entry(t_ns, source_id, flow, flow_key(flow), counts_once(flow))
                entries.append(entry)
                batch = by_source.get(source_id)
                if batch is None:
                    by_source[source_id] = [entry]
                else:
                    batch.append(entry)
            elif kind is not None:
                notices.append((source_id, resp))
        now_mono = time.monotonic()
        # The UI thread queries under the same lock: hold it for short chunks only, so a key
        # press never waits for a whole burst to be counted.
        for i in range(0, len(entries), self.LOCK_CHUNK):
            with self._lock:
                for entry in entries[i:i + self.LOCK_CHUNK]:
                    self._account(entry, now_mono)
        with self._lock:
            for update in updates:
                self._apply_update(update)
            for source_id, resp in notices:
                self._take_notice(source_id, resp)
                self._merge.heard(source_id, now_mono)
            for source_id, batch in by_source.items():
                self._merge.add(source_id, batch, now_mono)
            released = self._into_ring(self._merge.release(now_mono))
            self._update_rates(now_mono)
            self._prune()
            if entries or notices or released or updates:
                self.version += 1
        return len(entries)

    def _take_notice(self, source_id: str, resp) -> None:
        node = self._nodes.get(source_id)
        if node is None:
            return
        if resp.HasField("lost_events"):
            lost = resp.lost_events
            name = STAGE_NAMES.get(lost.stage, str(lost.stage))
            node.inband_lost[name] = node.inband_lost.get(name, 0) + lost.num_events_lost
        elif resp.HasField("node_status"):
            st = resp.node_status
            state = observer_pb2.NodeState.Name(st.state).removeprefix("NODE_").lower()
            node.message = f"{', '.join(st.node_names)}: {state} {st.message}".strip()

    def _apply_update(self, update: flow_pb2.Flow) -> None:
        """An end that came after the flow's last record: onto that record (if still held),
        and a failed attempt it reveals counted once; nothing else counted."""
        flow, key = self._latest.apply(update)
        if key.service and (key.no_endpoints or key.outcome in ("refused", "unanswered")):
            self._count_failure(flow, key)

    def _account(self, entry: Entry, now_mono: float) -> None:
        self._latest.remember(entry)
        node = self._nodes.get(entry.source_id)
        if node is not None:
            node.received += 1
            if not node.name and entry.key.node:
                node.name = entry.key.node
        self.flows_seen += 1
        if entry.time_ns > self.latest_ns:
            self.latest_ns = entry.time_ns
        if not entry.counted:
            return
        flow = entry.flow
        key = entry.key
        if key not in self._totals and len(self._totals) >= self.max_keys:
            key = OTHER_KEY
        packets, nbytes = flow.packets, flow.bytes
        nflows = 1 if packets else 0  # outcome-only records (zero counts) are not new flows
        tot = self._totals.get(key)
        if tot is None:
            self._totals[key] = [packets, nbytes, nflows]
        else:
            tot[0] += packets
            tot[1] += nbytes
            tot[2] += nflows
        sec = entry.time_ns // NS_PER_S
        bucket = self._buckets.get(sec)
        if bucket is None:
            bucket = self._buckets[sec] = {}
        cell = bucket.get(key)
        if cell is None:
            bucket[key] = [packets, nbytes, nflows]
        else:
            cell[0] += packets
            cell[1] += nbytes
            cell[2] += nflows
        if key.service and (key.no_endpoints or key.outcome in ("refused", "unanswered")):
            self._count_failure(flow, key)

    def _count_failure(self, flow: flow_pb2.Flow, key: FlowKey) -> None:
        """A failed attempt is counted once per connection, whichever records carry it."""
        l4 = flow.l4.WhichOneof("protocol") or ""
        sp = dp = 0
        if l4 in ("tcp", "udp", "sctp"):
            sp, dp = getattr(flow.l4, l4).source_port, getattr(flow.l4, l4).destination_port
        ends = sorted([(flow.ip.source, sp), (flow.ip.destination, dp)])
        conn = (flow.node_name, l4, ends[0], ends[1], key.service)
        if conn in self._failed_conns:
            return
        self._failed_conns[conn] = None
        if len(self._failed_conns) > 50_000:
            self._failed_conns.popitem(last=False)
        counts = self._failures.setdefault(key, [0, 0, 0])
        if key.no_endpoints:
            counts[0] += 1
        elif key.outcome == "refused":
            counts[1] += 1
        else:
            counts[2] += 1

    def _into_ring(self, released: list[Entry]) -> int:
        """Released records (in time order) into the ring; records released late (an
        agent whose clock runs behind) are merged in where they belong."""
        if not released:
            return 0
        recent = self._recent
        if recent and released[0].time_ns < recent[-1].time_ns:
            merged = heapq.merge(recent, released, key=attrgetter("time_ns"))
            self._recent = deque(merged, maxlen=self.max_flows)
        else:
            recent.extend(released)
        return len(released)

    def _update_rates(self, now_mono: float) -> None:
        for node in self._nodes.values():
            mark_t, mark_n = node._rate_mark
            if now_mono - mark_t >= 1.0:
                if mark_t:
                    node.rate_fps = (node.received - mark_n) / (now_mono - mark_t)
                node._rate_mark = (now_mono, node.received)

    def now_s(self) -> int:
        """The present of the picture: the wall clock when watching agents, the newest flow's
        time when only replaying files (so a replay shows its own last minute)."""
        if any(n.live for n in self._nodes.values()) or not self.latest_ns:
            return int(self._clock())
        return self.latest_ns // NS_PER_S

    def _prune(self) -> None:
        oldest = self.now_s() - self.window_s
        for sec in [s for s in self._buckets if s <= oldest]:
            del self._buckets[sec]

    # ---- queries (UI thread) --------------------------------------------------------

    def recent(self, flt: FlowFilter, limit: int) -> list[Entry]:
        """Newest first, at most `limit` records matching the filter."""
        out: list[Entry] = []
        with self._lock:
            for entry in reversed(self._recent):
                if flt(entry.key):
                    out.append(entry)
                    if len(out) >= limit:
                        break
        return out

    def matching(self, flt: FlowFilter) -> list[Entry]:
        """Every kept record matching the filter, oldest first (the export key)."""
        with self._lock:
            return [e for e in self._recent if flt(e.key)]

    def top(self, flt: FlowFilter, pivot: str, sort: str = "bytes", limit: int = 50,
            spark_s: int = 30) -> list[TopRow]:
        if sort not in SORTS:
            raise ValueError(f"sort {sort!r}: use one of {', '.join(SORTS)}")
        labels: dict[FlowKey, str] = {}
        rows: dict[str, list] = {}
        with self._lock:
            for key, (p, b, f) in self._totals.items():
                if not flt(key):
                    continue
                label = labels[key] = pivot_label(key, pivot)
                row = rows.get(label)
                if row is None:
                    rows[label] = [p, b, f, [0] * spark_s]
                else:
                    row[0] += p
                    row[1] += b
                    row[2] += f
            now = self.now_s()
            first = now - spark_s + 1
            for sec, bucket in self._buckets.items():
                i = sec - first
                if not 0 <= i < spark_s:
                    continue
                for key, cell in bucket.items():
                    label = labels.get(key)
                    if label is not None:
                        rows[label][3][i] += cell[1]
        out = []
        for label, (p, b, f, series) in rows.items():
            rate = sum(series[-self.rate_s:]) / self.rate_s
            out.append(TopRow(label, p, b, f, rate, series))
        metric = {"bytes": lambda r: r.bytes, "packets": lambda r: r.packets,
                  "flows": lambda r: r.flows, "rate": lambda r: r.rate_bps}[sort]
        out.sort(key=lambda r: (metric(r), r.bytes, r.label), reverse=True)
        return out[:limit]

    def total_rate_series(self, flt: FlowFilter, spark_s: int = 60) -> list[int]:
        """Bytes per second of everything matching the filter (the Top view's sparkline)."""
        series = [0] * spark_s
        with self._lock:
            first = self.now_s() - spark_s + 1
            for sec, bucket in self._buckets.items():
                i = sec - first
                if 0 <= i < spark_s:
                    series[i] = sum(c[1] for k, c in bucket.items() if flt(k))
        return series

    def services(self, flt: FlowFilter) -> list[ServiceRow]:
        svcs: dict[str, list] = {}
        with self._lock:
            for key, (p, b, f) in self._totals.items():
                if not key.service or not flt(key):
                    continue
                row = svcs.setdefault(key.service, [0, 0, 0, {}, [0, 0, 0]])
                row[0] += p
                row[1] += b
                row[2] += f
                if key.backend:
                    be = row[3].setdefault(key.backend, [0, 0])
                    be[0] += b
                    be[1] += f
            for key, counts in self._failures.items():
                if not flt(key):
                    continue
                row = svcs.setdefault(key.service, [0, 0, 0, {}, [0, 0, 0]])
                for i in range(3):
                    row[4][i] += counts[i]
        out = []
        for name, (p, b, f, backends, fails) in svcs.items():
            total_b = sum(v[0] for v in backends.values()) or 1
            shares = sorted((BackendShare(n, v[0], v[1], v[0] / total_b)
                             for n, v in backends.items()),
                            key=lambda s: (-s.bytes, s.name))
            out.append(ServiceRow(name, p, b, f, shares, fails[0], fails[1], fails[2]))
        out.sort(key=lambda r: (-r.bytes, r.name))
        return out

    def set_policy_catalog(self, catalog) -> None:
        """The cluster's NetworkPolicies (agent.client.policy.PolicyCatalog), for the
        Policies view's unused rules and untouched policies."""
        with self._lock:
            self.policy_catalog = catalog
            self.version += 1

    def policies(self, flt: FlowFilter) -> list[PolicyRow]:
        with self._lock:
            return policy_rows(self._totals.items(), flt, self.policy_catalog)

    def nodes(self) -> list[NodeInfo]:
        with self._lock:
            return sorted((NodeInfo(**{k: getattr(n, k) for k in NodeInfo.__dataclass_fields__})
                           for n in self._nodes.values()),
                          key=lambda n: (n.name or n.address, n.source_id))

    def summary(self) -> Summary:
        with self._lock:
            known = [n for n in self._nodes.values()
                     if n.state != "gone" and n.kind != "discovery"]
            connected = sum(1 for n in known if n.state in ("connected", "replayed", "replaying"))
            lost = sum(n.lost_total() for n in self._nodes.values())
            return Summary(connected, len(known), lost, self.flows_seen, len(self._recent),
                           len(self._inbox) + len(self._merge))
