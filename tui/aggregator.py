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

Time order: each agent streams its own flows in time order; flows from several agents are
held back until every live agent has sent something at least as new (a watermark), or for
at most `reorder_s`, then merged into the ring in time order. File replays are merged by
time too.

Counting: the Flows view shows every record; Top, Services and the totals count each packet
once, following `tui.flowkey.counts_once` (the sender's FROM_POD veth record; a TO_POD record
only when the sender has no veth of its own; bridge records only for traffic no veth sees;
host-stack drop records as verdict=dropped). A pivot row is named after the pod at the
observation point (`local_is_src`): for pod traffic that is the sender, so Top is "who sent
how much", with replies counted under the server that sent them.
"""

from __future__ import annotations

import bisect
import heapq
import math
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Callable

from podflow_api.v1 import flow_pb2, observer_pb2

from tui.filterexpr import FlowFilter
from tui.flowkey import FlowKey, counts_once, endpoint_label, flow_key

PIVOTS = ("namespace", "workload", "pod", "service", "port", "verdict", "node")
SORTS = ("bytes", "packets", "flows", "rate")
LIVE_KINDS = ("agent", "kubernetes")
OTHER_KEY = FlowKey("(other)", "(other)", "(other)", "(other)", "(other)", "(other)", "(other)",
                    "", "", 0, "", "unknown", "outcome_unknown", False, True)
_STAGE_NAMES = {v.number: v.name for v in observer_pb2.LostStage.DESCRIPTOR.values}


def _ts_ns(ts) -> int:
    return ts.seconds * 1_000_000_000 + ts.nanos


class Entry:
    """One flow record as the Flows view keeps it."""

    __slots__ = ("time_ns", "source_id", "flow", "key", "counted", "row")

    def __init__(self, time_ns: int, source_id: str, flow: flow_pb2.Flow, key: FlowKey,
                 counted: bool):
        self.time_ns = time_ns
        self.source_id = source_id
        self.flow = flow
        self.key = key
        self.counted = counted
        self.row = None  # formatted cells, filled by the Flows view on first display


@dataclass
class NodeInfo:
    """One source of flows (an agent, a port-forwarded agent pod, a replayed file)."""

    source_id: str
    address: str
    kind: str                      # agent, kubernetes, file
    name: str = ""                 # node name reported by the agent (or by the flows)
    state: str = "connecting"      # connecting, connected, reconnecting, unavailable,
                                   # replaying, replayed, gone
    message: str = ""
    status: observer_pb2.ServerStatusResponse | None = None
    received: int = 0              # flow records received from this source
    rate_fps: float = 0.0          # records/s received, measured here
    inband_lost: dict[str, int] = field(default_factory=dict)  # stage -> count (notices)
    dropped_here: int = 0          # records this TUI could not keep up with (inbox full)
    malformed: int = 0             # file replay: lines that were not valid JSON / responses
    skipped: int = 0               # file replay: valid JSON objects that are not responses
    last_time_ns: int = 0          # newest flow time from this source
    last_recv_mono: float = 0.0
    retry_at_mono: float = 0.0
    _rate_mark: tuple[float, int] = (0.0, 0)

    @property
    def live(self) -> bool:
        return self.kind in LIVE_KINDS

    def lost_by_stage(self) -> dict[str, int]:
        """Per stage, the larger of the agent's cumulative ServerStatus count and the
        notices received in-band (they overlap: notices are a subset the stream saw)."""
        lost = dict(self.inband_lost)
        if self.status is not None:
            for lc in self.status.lost:
                name = _STAGE_NAMES.get(lc.stage, str(lc.stage))
                lost[name] = max(lost.get(name, 0), lc.count)
        if self.dropped_here:
            lost["TUI_INBOX"] = self.dropped_here
        return lost

    def lost_total(self) -> int:
        return sum(self.lost_by_stage().values())


@dataclass
class TopRow:
    label: str
    packets: int
    bytes: int
    flows: int
    rate_bps: float                # bytes/s over the rate window
    series: list[int]              # bytes per second, oldest first


@dataclass
class BackendShare:
    name: str
    bytes: int
    flows: int
    share: float                   # of the Service's bytes, 0..1


@dataclass
class ServiceRow:
    name: str
    packets: int
    bytes: int
    flows: int
    backends: list[BackendShare]
    no_endpoints: int
    refused: int
    unanswered: int


@dataclass
class Summary:
    connected: int
    known: int
    lost: int
    flows_seen: int
    flows_kept: int
    backlog: int = 0   # responses fed but not yet taken in (the inbox)


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
        self._pending: list[Entry] = []
        self._totals: dict[FlowKey, list[int]] = {}
        self._buckets: dict[int, dict[FlowKey, list[int]]] = {}
        self._failures: dict[FlowKey, list[int]] = {}       # key -> [no_endpoints, refused, unanswered]
        self._failed_conns: OrderedDict = OrderedDict()     # connections already counted
        self.flows_seen = 0
        self.latest_ns = 0
        self.version = 0                                   # bumps when anything changed

    # ---- sources (any thread) -------------------------------------------------------

    def add_source(self, source_id: str, address: str, kind: str, name: str = "") -> None:
        with self._lock:
            node = self._nodes.get(source_id)
            if node is None:
                self._nodes[source_id] = NodeInfo(source_id, address, kind, name=name)
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
        notices = []
        for source_id, resp in items:
            kind = resp.WhichOneof("response_types")
            if kind == "flow":
                flow = resp.flow
                if not flow.node_name and resp.node_name:
                    flow.node_name = resp.node_name
                t_ns = _ts_ns(flow.time) or _ts_ns(resp.time)
                entries.append(Entry(t_ns, source_id, flow, flow_key(flow), counts_once(flow)))
            elif kind is not None:
                notices.append((source_id, resp))
        now_mono = time.monotonic()
        # The UI thread queries under the same lock: hold it for short chunks only, so a key
        # press never waits for a whole burst to be counted.
        for i in range(0, len(entries), self.LOCK_CHUNK):
            with self._lock:
                for entry in entries[i:i + self.LOCK_CHUNK]:
                    self._account(entry, now_mono)
                self._pending.extend(entries[i:i + self.LOCK_CHUNK])
        with self._lock:
            for source_id, resp in notices:
                self._take_notice(source_id, resp)
            released = self._merge()
            self._update_rates(now_mono)
            self._prune()
            if entries or notices or released:
                self.version += 1
        return len(entries)

    def _take_notice(self, source_id: str, resp) -> None:
        node = self._nodes.get(source_id)
        if node is None:
            return
        if resp.HasField("lost_events"):
            lost = resp.lost_events
            name = _STAGE_NAMES.get(lost.stage, str(lost.stage))
            node.inband_lost[name] = node.inband_lost.get(name, 0) + lost.num_events_lost
        elif resp.HasField("node_status"):
            st = resp.node_status
            state = observer_pb2.NodeState.Name(st.state).removeprefix("NODE_").lower()
            node.message = f"{', '.join(st.node_names)}: {state} {st.message}".strip()

    def _account(self, entry: Entry, now_mono: float) -> None:
        node = self._nodes.get(entry.source_id)
        if node is not None:
            node.received += 1
            node.last_recv_mono = now_mono
            if entry.time_ns > node.last_time_ns:
                node.last_time_ns = entry.time_ns
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
        sec = entry.time_ns // 1_000_000_000
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

    def _watermark_ns(self, now_mono: float) -> float:
        live = [n for n in self._nodes.values()
                if n.live and n.state == "connected" and n.received
                and now_mono - n.last_recv_mono < self.reorder_s]
        if not live:
            return math.inf
        return min(n.last_time_ns for n in live)

    def _merge(self) -> int:
        if not self._pending:
            return 0
        now_mono = time.monotonic()
        self._pending.sort(key=lambda e: e.time_ns)
        wm = self._watermark_ns(now_mono)
        times = [e.time_ns for e in self._pending]
        cut = bisect.bisect_right(times, wm)
        # never hold anything longer than reorder_s of the newest flow, nor more than the ring
        oldest_allowed = self.latest_ns - int(self.reorder_s * 1e9)
        cut = max(cut, bisect.bisect_right(times, oldest_allowed))
        cut = max(cut, len(self._pending) - self.max_flows)
        released, self._pending = self._pending[:cut], self._pending[cut:]
        if not released:
            return 0
        recent = self._recent
        if recent and released[0].time_ns < recent[-1].time_ns:
            merged = heapq.merge(recent, released, key=lambda e: e.time_ns)
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
        return self.latest_ns // 1_000_000_000

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

    @staticmethod
    def pivot_label(key: FlowKey, pivot: str) -> str:
        local_src = key.local_is_src
        if pivot == "namespace":
            ns = key.src_ns if local_src else key.dst_ns
            return ns or (key.src_pod if local_src else key.dst_pod) or "(none)"
        if pivot == "workload":
            ns, wl = (key.src_ns, key.src_workload) if local_src else (key.dst_ns, key.dst_workload)
            pod = key.src_pod if local_src else key.dst_pod
            return endpoint_label(ns, wl, pod)
        if pivot == "pod":
            return endpoint_label(key.src_ns if local_src else key.dst_ns,
                                  key.src_pod if local_src else key.dst_pod)
        if pivot == "service":
            return key.service or "(no service)"
        if pivot == "port":
            return f"{key.proto or 'ip'}/{key.port}" if key.port else (key.proto or "(no port)")
        if pivot == "verdict":
            return key.verdict
        if pivot == "node":
            return key.node or "(unknown)"
        raise ValueError(f"pivot {pivot!r}: use one of {', '.join(PIVOTS)}")

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
                label = labels[key] = self.pivot_label(key, pivot)
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
                           len(self._inbox) + len(self._pending))
