"""The agent's flow log: every flow the store receives, as JSON lines in a rotating file.

An independent consumer of the flow store: it reads through its own subscription (a cursor
with a bounded lag) on its own thread, so a slow or full disk never slows the datapath or the
gRPC API; when it falls behind, the flows it skipped are counted. Nothing is lost silently:
every flow that is skipped (EXPORTER_QUEUE) or could not be written (EXPORTER_WRITE) is counted
in AgentStats and written into the log itself as a `lost_events` record as soon as the file
can be written again. While writing fails (disk full, read-only directory) the agent keeps
running, the error is logged once per episode and shown in ServerStatus.exporter_error.

The file format (a header line, then one GetFlowsResponse per line) is agent.wire.logformat;
the writing, rotation and loss accounting are agent.wire.jsonlines's sink, shared with
`podflow observe --output-file` and the TUI's export. Records kept as columns (the datapath's
batches) are written a batch at a time (agent.wire.recordcols), without a Flow object per
record unless a filter or a field mask needs one; end notices become `flow_update` lines.

One record per flow and interval: a pod-to-pod flow on this node is reported by both pods'
veths, with the same counts when nothing was lost between them. The flow log writes the
sending pod's record (FROM_POD, the one every aggregate counts: agent/wire/counting.py) and
leaves the receiving veth's repeat out (FlowBatch.receiver_repeats), unless
`--flow-log-every-point`; records that differ between the veths are all written. The header
says which (`every_point`). The API and the TUI still get every observation point.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

import numpy as np

from google.protobuf import json_format

from agent.errors import ConfigError, ExportError
from agent.export.windows import Aggregator, parse_interval
from agent.filters import engine as filters
from agent.stage import Stage
from agent.stats import AgentStats
from agent.datapath.batch import FlowBatch
from agent.wire import logformat, recordcols
from agent.wire.fieldmask import mask_tree
from agent.wire.jsonlines import JsonLinesSink
from agent.wire.timefmt import ts_ns
from podflow_api.v1 import flow_pb2, observer_pb2

if TYPE_CHECKING:
    from agent.config import FlowLogSection

log = logging.getLogger("podflow.exporter")

FLUSH_INTERVAL_S = 1.0      # lines reach the file at least this often
FLUSH_BYTES = 1024 * 1024   # ... or as soon as this much is pending
# At stop, what the store still holds for the log is written for at most this long (the
# DaemonSet's grace period is finite: the agent stops within 5 s at any load); the rest is
# counted as lost (EXPORTER_QUEUE), with its packets, in the file and in ServerStatus.
STOP_DRAIN_S = 2.0


def parse_filter_json(text: str, flag: str) -> observer_pb2.FlowFilter:
    """A FlowFilter from its JSON mapping (proto field names or lowerCamelCase)."""
    try:
        return json_format.Parse(text, observer_pb2.FlowFilter())
    except json_format.ParseError as exc:
        raise ConfigError(f"{flag}: not a FlowFilter in JSON ({exc}): {text!r}") from exc


class FlowLogExporter(Stage):
    """Reads the store on its own thread and writes the flow log to `config.path`."""

    def __init__(self, config: FlowLogSection, store, stats: AgentStats):
        self.path = config.path
        self.allowlist = list(config.allowlist)
        self.denylist = list(config.denylist)
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
        self.every_point = config.every_point
        header = logformat.header_fields(
            node_name=self.node_name, agent_version=stats.version, allowlist=self.allowlist,
            denylist=self.denylist, field_mask=self.field_mask, aggregate=self.aggregate,
            every_point=self.every_point)
        self.sink = JsonLinesSink(self.path, config.rotation, header, node_name=self.node_name,
                                  on_failure=self._failed, on_recovery=self._recovered,
                                  on_lost=lambda stage, n, packets: stats.add_lost(
                                      stage, n, packets=packets))
        self.writer = self.sink.writer
        self._stop = threading.Event()
        self._drain_until = 0.0  # monotonic deadline of the drain at stop
        self._reopen = threading.Event()
        self._thread: threading.Thread | None = None
        self._subscription = None

    @property
    def records_written(self) -> int:
        return self.sink.records_written

    # -- stage interface ------------------------------------------------------------------

    def start(self) -> None:
        # The filter is applied here, per batch (next_segments reads every record).
        self._subscription = self.store.subscribe(queue_size=self.queue_size)
        self.sink.open()
        self._thread = threading.Thread(target=self._run_guarded, name="flow-log", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Drain what the store holds for us (for at most STOP_DRAIN_S), flush, close."""
        self._drain_until = time.monotonic() + STOP_DRAIN_S
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=STOP_DRAIN_S + 3)
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
        sink = self.sink
        last_flush = time.monotonic()
        while True:
            stopping = self._stop.is_set()
            # Whole batches: the fold pairs each batch's records (FlowBatch.receiver_repeats).
            segments, lost = sub.next_segments(timeout_s=0.0 if stopping else 0.2,
                                               max_flows=16384, whole_batches=True)
            if lost is not None and lost.count:
                sink.count_lost(observer_pb2.EXPORTER_QUEUE, lost.count, lost.first_ns,
                                lost.last_ns, lost.packets)
            if self._reopen.is_set():
                # Before this batch: what came in after the HUP goes to the new file.
                self._reopen.clear()
                log.info("reopening flow log %s", self.path)
                sink.reopen()
            for batch, lo, hi in segments:
                self._add_segment(batch, lo, hi)
            now = time.monotonic()
            drained = not segments
            if stopping and not drained and now > self._drain_until:
                left = self.store._count_matching(sub.cursor, self.store.seq, None)
                sink.count_lost(observer_pb2.EXPORTER_QUEUE, left.count, left.first_ns,
                                left.last_ns, left.packets)
                log.warning("flow log: %d records not written at stop (out of time)",
                            left.count)
                drained = True
            if (now - last_flush >= FLUSH_INTERVAL_S or sink.pending_bytes >= FLUSH_BYTES
                    or (stopping and drained)):
                if self._aggregator is not None:
                    # Once per flush, not per batch: late records of a window already written
                    # are summed for a second before they are written too.
                    agg = self._aggregator
                    done = agg.flush() if stopping and drained else agg.due(time.time_ns())
                    if done:
                        self._add_records(done)
                sink.flush()
                last_flush = now
            if stopping and drained:
                sub.close()
                return

    def _add_segment(self, batch, lo: int, hi: int) -> None:
        """Records [lo, hi) of a held batch, through the filter, into the file (or the
        aggregation windows)."""
        columns = isinstance(batch, FlowBatch)
        rows = range(lo, hi)
        if self._predicate is not None:
            rows = [i for i in rows if self._predicate(batch.flow(i))]
        enforcement = None
        if columns and not self.every_point:
            rows = np.asarray(rows, np.int64)
            repeats, enforcement = batch.receiver_repeats(rows)
            if repeats.any():
                # Told where losses are (podflow status, metrics): a reader summing the
                # log's packets per veth knows what the senders' records hold for receivers.
                self.stats.add_error("flow_log_receiver_records_folded", int(repeats.sum()))
                self.stats.add_error("flow_log_receiver_packets_folded",
                                     int(batch.packets[rows[repeats]].sum()))
                rows, enforcement = rows[~repeats], enforcement[~repeats]
        if columns and self._mask_tree is None and self._aggregator is None:
            text = recordcols.json_lines(batch, rows=np.asarray(rows, np.int64),
                                         enforcement=enforcement)
            if text:  # one line per record
                self.sink.add_block(text.encode(), len(rows), batch.time_ns)
            return
        if enforcement is None:  # no fold (Flow objects, or every point)
            flows = [batch.flow(i) for i in rows]
        else:  # with the receivers' findings moved to the senders' records
            flows = [batch.flow(i, finding) for i, finding in zip(rows, enforcement.tolist())]
        updates = [bool(batch.update[i]) for i in rows]
        if self._aggregator is not None:
            flows = [f for f, update in zip(flows, updates) if not update]
            if flows:
                self._aggregator.add(flows, time.time_ns())
            return
        self._add_records(flows, updates)

    def _add_records(self, flows: list[flow_pb2.Flow], updates: list[bool] | None = None) -> None:
        tree = self._mask_tree
        flow_line = logformat.flow_line
        updates = updates or [False] * len(flows)
        self.sink.add_many([flow_line(flow, tree, "flow_update" if update else "flow")
                            for flow, update in zip(flows, updates)],
                           [ts_ns(flow.time) for flow in flows])

    def _failed(self, exc: ExportError, first: bool) -> None:
        self.stats.exporter_error = str(exc)
        if first:
            log.error("flow log: %s; counting lost records until it can be written again", exc)

    def _recovered(self, _lost_total: int) -> None:
        self.stats.exporter_error = ""
        log.warning("flow log %s writable again; lost records were reported in it", self.path)
