"""The agent's flow log: every flow the store receives, as JSON lines in a rotating file.

An independent consumer of the flow store: it reads through its own subscription (a cursor
with a bounded lag) on its own thread, so a slow or full disk never slows the datapath or the
gRPC API; when it falls behind, the flows it skipped are counted. Nothing is lost silently:
every flow that is skipped (EXPORTER_QUEUE) or could not be written (EXPORTER_WRITE) is counted
in AgentStats and written into the log itself as a `lost_events` record as soon as the file
can be written again. While writing fails (disk full, read-only directory) the agent keeps
running, the error is logged once per episode and shown in ServerStatus.exporter_error.

Line format: one `podflow.v1.GetFlowsResponse` per line in protobuf's JSON mapping with proto
field names, e.g. {"node_name": "node-a", "time": "...", "flow": {...}}; each file starts with
a {"podflow_flow_log": {...}} header line that says what the file holds.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from json.encoder import encode_basestring_ascii as _quote
from typing import TYPE_CHECKING

from google.protobuf import field_mask_pb2, json_format

from agent.errors import ConfigError, ExportError
from agent.export.windows import Aggregator, parse_interval
from agent.filters import engine as filters
from agent.stage import Stage
from agent.stats import AgentStats, LostSpan
from agent.wire import flowjson
from agent.wire.jsonlines import RotatingWriter
from podflow_api.v1 import flow_pb2, observer_pb2

if TYPE_CHECKING:
    from agent.config import FlowLogSection

log = logging.getLogger("podflow.exporter")

FORMAT = "podflow.v1.GetFlowsResponse"
FLUSH_INTERVAL_S = 1.0      # lines reach the file at least this often
FLUSH_BYTES = 1024 * 1024   # ... or as soon as this much is pending
_LOST_STAGES = (observer_pb2.EXPORTER_QUEUE, observer_pb2.EXPORTER_WRITE)


def parse_filter_json(text: str, flag: str) -> observer_pb2.FlowFilter:
    """A FlowFilter from its JSON mapping (proto field names or lowerCamelCase)."""
    try:
        return json_format.Parse(text, observer_pb2.FlowFilter())
    except json_format.ParseError as exc:
        raise ConfigError(f"{flag}: not a FlowFilter in JSON ({exc}): {text!r}") from exc


def parse_field_mask(text: str) -> list[str]:
    """'source,l4,destination.pod_name' -> validated paths into Flow."""
    paths = [p.strip() for p in text.split(",") if p.strip()]
    if not paths:
        return []
    mask = field_mask_pb2.FieldMask(paths=paths)
    if not mask.IsValidForDescriptor(flow_pb2.Flow.DESCRIPTOR):
        bad = [p for p in paths
               if not field_mask_pb2.FieldMask(paths=[p]).IsValidForDescriptor(flow_pb2.Flow.DESCRIPTOR)]
        raise ConfigError(f"--flow-log-fields: not a field of Flow: {', '.join(bad)}")
    return paths


def mask_tree(paths: list[str]) -> dict:
    """Paths -> nested dict; an empty dict keeps the whole field."""
    tree: dict = {}
    for path in sorted(paths, key=len):
        node = tree
        parts = path.split(".")
        for i, part in enumerate(parts):
            if part in node and not node[part]:
                break  # a shorter path already keeps the whole field
            node = node.setdefault(part, {})
            if i == len(parts) - 1:
                node.clear()
    return tree


def apply_mask(record: dict, tree: dict) -> dict:
    """Keep the fields of a JSON-mapped message named by `tree` (field order kept); messages
    left empty by the mask are dropped, as FieldMask.MergeMessage would."""
    out = {}
    for name, value in record.items():
        sub = tree.get(name)
        if sub is None:
            continue
        if sub:
            if not isinstance(value, dict):
                continue
            value = apply_mask(value, sub)
            if not value:
                continue
        out[name] = value
    return out


class FlowLogExporter(Stage):
    """Reads the store on its own thread and writes the flow log to `config.path`."""

    def __init__(self, config: FlowLogSection, store, stats: AgentStats):
        self.path = config.path
        self.allowlist = config.allowlist
        self.denylist = config.denylist
        self.field_mask = list(config.fields)
        self._mask_tree = mask_tree(self.field_mask) if self.field_mask else None
        self.aggregate = config.aggregate
        self._aggregator = (Aggregator(parse_interval(config.aggregate))
                            if config.aggregate else None)
        # The Observer's filter semantics; None keeps every flow.
        self._predicate = filters.compile_filters(self.allowlist, self.denylist)
        self.store = store
        self.stats = stats
        self.node_name = stats.node_name
        self.queue_size = config.queue_size
        self.writer = RotatingWriter(config.path, config.rotation, self._header_line)
        self._stop = threading.Event()
        self._reopen = threading.Event()
        self._thread: threading.Thread | None = None
        self._subscription = None
        # Lost records not yet written into the log, by stage.
        self._unreported: dict[int, LostSpan] = {}
        self._pending: list[bytes] = []
        self._pending_times: list[int] = []  # record time (ns) of each pending line
        self._pending_bytes = 0
        self._failing = False
        self.records_written = 0

    # -- stage interface ------------------------------------------------------------------

    def start(self) -> None:
        self._subscription = self.store.subscribe(predicate=self._predicate,
                                                  queue_size=self.queue_size)
        try:
            self.writer.open()
        except ExportError as exc:
            self._fail(exc)
        self._thread = threading.Thread(target=self._run_guarded, name="flow-log", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Drain what the store holds for us, flush, close."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.writer.close()

    def reopen(self) -> None:
        """SIGHUP: reopen the path (after logrotate renamed the file). Safe in a signal handler:
        the writer thread does the work."""
        self._reopen.set()

    def ready_info(self) -> dict:
        return {"flow_log": self.path}

    # -- the writer thread ----------------------------------------------------------------

    def _run_guarded(self) -> None:
        """A bug here must not end the flow log without a word: report it where a user
        looks (ServerStatus, metrics, log) before the thread ends."""
        try:
            self._run()
        except Exception as exc:  # the thread's last resort: anything unexpected is reported
            log.exception("flow log writer stopped")
            self.stats.exporter_error = f"flow log writer stopped: {exc!r}"
            self._subscription.close()

    def _run(self) -> None:
        sub = self._subscription
        last_flush = time.monotonic()
        while True:
            stopping = self._stop.is_set()
            flows, lost = sub.next_batch(timeout_s=0.0 if stopping else 0.2, max_flows=4096)
            if lost is not None and lost.count:
                self._count_lost(observer_pb2.EXPORTER_QUEUE, lost.count, lost.first_ns,
                                 lost.last_ns)
            if self._reopen.is_set():
                # Before this batch: what came in after the HUP goes to the new file.
                self._reopen.clear()
                self._flush()
                self.writer.close()
                log.info("reopening flow log %s", self.path)
                try:
                    self.writer.open()
                except ExportError as exc:
                    self._fail(exc)
            if self._aggregator is not None:
                if flows:
                    self._aggregator.add(flows, time.time_ns())
            elif flows:
                self._add_records(flows)
            now = time.monotonic()
            drained = not flows
            if (now - last_flush >= FLUSH_INTERVAL_S or self._pending_bytes >= FLUSH_BYTES
                    or (stopping and drained)):
                if self._aggregator is not None:
                    # Once per flush, not per batch: late records of a window already written
                    # are summed for a second before they are written too.
                    agg = self._aggregator
                    done = agg.flush() if stopping and drained else agg.due(time.time_ns())
                    if done:
                        self._add_records(done)
                self._flush()
                last_flush = now
            if stopping and drained:
                sub.close()
                return

    def _add_records(self, flows: list[flow_pb2.Flow]) -> None:
        node_json = _quote(self.node_name)
        tree = self._mask_tree
        pending = self._pending
        times = self._pending_times
        added = 0
        for flow in flows:
            t = flow.time
            node = _quote(flow.node_name) if flow.node_name else node_json
            if tree is None:
                flow_json = flowjson.to_json(flow)
            else:
                flow_json = json.dumps(apply_mask(flowjson.to_dict(flow), tree))
            if t.seconds or t.nanos:
                text = '{"node_name": %s, "time": "%s", "flow": %s}\n' % (
                    node, flowjson.timestamp_str(t), flow_json)
            else:
                text = '{"node_name": %s, "flow": %s}\n' % (node, flow_json)
            line = text.encode()
            pending.append(line)
            times.append(t.seconds * 1_000_000_000 + t.nanos)
            added += len(line)
        self._pending_bytes += added

    def _lost_lines(self) -> tuple[list[bytes], list[tuple[int, LostSpan]]]:
        lines, spans = [], []
        now = time.time_ns()
        for stage in _LOST_STAGES:
            span = self._unreported.get(stage)
            if span is None or not span.count:
                continue
            resp = observer_pb2.GetFlowsResponse(node_name=self.node_name)
            resp.time.FromNanoseconds(now)
            resp.lost_events.stage = stage
            resp.lost_events.num_events_lost = span.count
            if span.first_ns:
                resp.lost_events.first.FromNanoseconds(span.first_ns)
            if span.last_ns:
                resp.lost_events.last.FromNanoseconds(span.last_ns)
            lines.append((flowjson.to_json(resp) + "\n").encode())
            spans.append((stage, LostSpan(span.count, span.first_ns, span.last_ns)))
        return lines, spans

    def _flush(self) -> None:
        lost_lines, spans = self._lost_lines()
        if not lost_lines and not self._pending:
            return
        lines = lost_lines + self._pending
        times = self._pending_times
        self._pending, self._pending_times, self._pending_bytes = [], [], 0
        try:
            self.writer.write_lines(lines)
        except ExportError as exc:
            written = len(lines) - exc.unwritten
            self._mark_reported(spans[:written])
            self.records_written += max(0, written - len(lost_lines))
            unwritten_times = times[max(0, written - len(lost_lines)):]
            if unwritten_times:
                self._count_lost(observer_pb2.EXPORTER_WRITE, len(unwritten_times),
                                 min(unwritten_times), max(unwritten_times))
            self._fail(exc)
            return
        self._mark_reported(spans)
        self.records_written += len(times)
        if self._failing:
            self._failing = False
            self.stats.exporter_error = ""
            log.warning("flow log %s writable again; lost records were reported in it", self.path)

    def _mark_reported(self, spans: list[tuple[int, LostSpan]]) -> None:
        for stage, written in spans:
            span = self._unreported.get(stage)
            if span is None:
                continue
            span.count -= written.count
            if span.count <= 0:
                del self._unreported[stage]
            else:
                span.first_ns = written.last_ns

    def _count_lost(self, stage: int, count: int, first_ns: int, last_ns: int) -> None:
        self.stats.add_lost(stage, count)
        span = self._unreported.get(stage)
        if span is None:
            self._unreported[stage] = LostSpan(count, first_ns, last_ns)
            return
        span.count += count
        if first_ns and (not span.first_ns or first_ns < span.first_ns):
            span.first_ns = first_ns
        if last_ns > span.last_ns:
            span.last_ns = last_ns

    def _fail(self, exc: ExportError) -> None:
        self.stats.exporter_error = str(exc)
        if not self._failing:
            self._failing = True
            log.error("flow log: %s; counting lost records until it can be written again", exc)
        self.writer.close()

    def _header_line(self) -> bytes:
        header = {"podflow_flow_log": {
            "node_name": self.node_name,
            "agent_version": self.stats.version,
            "allowlist": [flowjson.to_dict(f) for f in self.allowlist],
            "denylist": [flowjson.to_dict(f) for f in self.denylist],
            "field_mask": self.field_mask,
            "aggregate": self.aggregate,
            "start_time": flowjson.timestamp_ns_str(time.time_ns()),
            "format": FORMAT,
        }}
        return (json.dumps(header) + "\n").encode()
