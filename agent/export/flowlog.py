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
`podflow observe --output-file` and the TUI's export.
"""

from __future__ import annotations

import argparse
import logging
import threading
import time

from google.protobuf import json_format

from agent.errors import ConfigError, ExportError
from agent.export.windows import Aggregator, parse_interval
from agent.filters import engine as filters
from agent.filters.flags import add_filter_arguments, filters_from_args
from agent.stats import AgentStats
from agent.wire import logformat
from agent.wire.fieldmask import mask_tree, parse_field_mask
from agent.wire.jsonlines import JsonLinesSink, add_rotation_arguments, rotation_from_args
from agent.wire.timefmt import ts_ns
from podflow_api.v1 import flow_pb2, observer_pb2

log = logging.getLogger("podflow.exporter")

FLUSH_INTERVAL_S = 1.0      # lines reach the file at least this often
FLUSH_BYTES = 1024 * 1024   # ... or as soon as this much is pending
DEFAULT_QUEUE = 65535       # flows the exporter may lag behind the store (capped by its size)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("flow log")
    group.add_argument("--flow-log", metavar="PATH",
                       help="write every flow as a JSON line to PATH ('-' for stdout)")
    add_rotation_arguments(group, "flow-log-")
    group.add_argument("--flow-log-allow", action="append", default=[], metavar="JSON",
                       help='write only flows matching this FlowFilter, as JSON, e.g. '
                            '\'{"source_namespace":["shop"]}\' (repeatable: any may match)')
    group.add_argument("--flow-log-deny", action="append", default=[], metavar="JSON",
                       help="never write flows matching this FlowFilter (JSON, repeatable)")
    add_filter_arguments(group, "flow-log-")  # --flow-log-namespace shop, --flow-log-not ...
    group.add_argument("--flow-log-fields", metavar="PATHS",
                       help="keep only these Flow fields, e.g. source,destination,l4,packets,"
                            "bytes,source.pod_name (default: all)")
    group.add_argument("--flow-log-aggregate", metavar="INTERVAL",
                       help="write one record per flow key per INTERVAL (30s, 1m, 1h) with "
                            "summed packets and bytes instead of every record")
    group.add_argument("--flow-log-queue-size", type=int, default=DEFAULT_QUEUE, metavar="N",
                       help="flows the flow log may lag behind before the oldest are skipped "
                            f"and reported as lost (default {DEFAULT_QUEUE})")


def from_args(args: argparse.Namespace, store, stats: AgentStats) -> FlowLogExporter | None:
    path = getattr(args, "flow_log", None)
    if not path:
        return None
    queue_size = args.flow_log_queue_size
    if queue_size < 1:
        raise ConfigError(f"--flow-log-queue-size must be at least 1, got {queue_size}")
    allow = [parse_filter_json(text, "--flow-log-allow") for text in args.flow_log_allow]
    deny = [parse_filter_json(text, "--flow-log-deny") for text in args.flow_log_deny]
    flag_allow, flag_deny = filters_from_args(args, "flow-log-")
    allow += flag_allow
    deny += flag_deny
    try:
        filters.compile_filters(allow, deny)
    except filters.FilterError as exc:
        raise ConfigError(f"--flow-log-allow/--flow-log-deny: {exc}") from exc
    return FlowLogExporter(path, store, stats, rotation=rotation_from_args(args, "flow-log-"),
                           node_name=args.node_name, queue_size=queue_size,
                           allowlist=allow, denylist=deny,
                           field_mask=parse_field_mask(args.flow_log_fields or "",
                                                       "--flow-log-fields"),
                           aggregate=args.flow_log_aggregate or "")


def parse_filter_json(text: str, flag: str) -> observer_pb2.FlowFilter:
    """A FlowFilter from its JSON mapping (proto field names or lowerCamelCase)."""
    try:
        return json_format.Parse(text, observer_pb2.FlowFilter())
    except json_format.ParseError as exc:
        raise ConfigError(f"{flag}: not a FlowFilter in JSON ({exc}): {text!r}") from exc


class FlowLogExporter:
    """Reads the store on its own thread and writes the flow log."""

    def __init__(self, path: str, store, stats: AgentStats, *, rotation, node_name: str,
                 queue_size: int = DEFAULT_QUEUE,
                 allowlist: list[observer_pb2.FlowFilter] | None = None,
                 denylist: list[observer_pb2.FlowFilter] | None = None,
                 field_mask: list[str] | None = None, aggregate: str = ""):
        self.path = path
        self.allowlist = list(allowlist or [])
        self.denylist = list(denylist or [])
        self.field_mask = list(field_mask or [])
        self._mask_tree = mask_tree(self.field_mask) if self.field_mask else None
        self.aggregate = aggregate
        self._aggregator = Aggregator(parse_interval(aggregate)) if aggregate else None
        # The Observer's filter semantics; None keeps every flow.
        self._predicate = filters.compile_filters(self.allowlist, self.denylist)
        self.store = store
        self.stats = stats
        self.node_name = node_name
        self._node_json = logformat.quote_node(node_name)
        self.queue_size = queue_size
        header = logformat.header_fields(
            node_name=node_name, agent_version=stats.version, allowlist=self.allowlist,
            denylist=self.denylist, field_mask=self.field_mask, aggregate=aggregate)
        self.sink = JsonLinesSink(path, rotation, header, node_name=node_name,
                                  on_failure=self._failed, on_recovery=self._recovered,
                                  on_lost=stats.add_lost)
        self.writer = self.sink.writer
        self._stop = threading.Event()
        self._reopen = threading.Event()
        self._thread: threading.Thread | None = None
        self._subscription = None

    @property
    def records_written(self) -> int:
        return self.sink.records_written

    # -- stage interface ------------------------------------------------------------------

    def start(self) -> None:
        self._subscription = self.store.subscribe(predicate=self._predicate,
                                                  queue_size=self.queue_size)
        self.sink.open()
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
        sink = self.sink
        last_flush = time.monotonic()
        while True:
            stopping = self._stop.is_set()
            flows, lost = sub.next_batch(timeout_s=0.0 if stopping else 0.2, max_flows=4096)
            if lost is not None and lost.count:
                sink.count_lost(observer_pb2.EXPORTER_QUEUE, lost.count, lost.first_ns,
                                lost.last_ns)
            if self._reopen.is_set():
                # Before this batch: what came in after the HUP goes to the new file.
                self._reopen.clear()
                log.info("reopening flow log %s", self.path)
                sink.reopen()
            if self._aggregator is not None:
                if flows:
                    self._aggregator.add(flows, time.time_ns())
            elif flows:
                self._add_records(flows)
            now = time.monotonic()
            drained = not flows
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

    def _add_records(self, flows: list[flow_pb2.Flow]) -> None:
        node_json = self._node_json
        tree = self._mask_tree
        flow_line = logformat.flow_line
        self.sink.add_many([flow_line(flow, node_json, tree) for flow in flows],
                           [ts_ns(flow.time) for flow in flows])

    def _failed(self, exc: ExportError, first: bool) -> None:
        self.stats.exporter_error = str(exc)
        if first:
            log.error("flow log: %s; counting lost records until it can be written again", exc)

    def _recovered(self, _lost_total: int) -> None:
        self.stats.exporter_error = ""
        log.warning("flow log %s writable again; lost records were reported in it", self.path)
