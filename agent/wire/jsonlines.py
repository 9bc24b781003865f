"""JSON-lines files that never lose a line silently: the one loss-reporting sink, on top of
the size-rotating writer (agent.wire.rotation: numbered backups, optionally gzip-compressed).

The sink is shared by the agent's flow log (agent.export.flowlog), `podflow observe
--output-file` and the TUI's `e` export, so all three produce the same files: PATH (current),
PATH.1[.gz] (newest backup) ... PATH.N[.gz], each starting with the flow-log header
(agent.wire.logformat), so a reader of any one file knows what it holds. Lines are written
whole or not at all: when a write fails (disk full, read-only file system) the file is
truncated back to its last complete line, the lines not written are counted by stage with
the time span of the records they held, and a `lost_events` record saying so goes into the
file as soon as it can be written again.

A file deleted while it is open (an operator freeing disk space) is followed the way
logging.WatchedFileHandler follows one: before each flush the path is stat()ed and compared
with the open file (st_dev, st_ino); a file deleted, renamed away or replaced is closed and
the path opened again (a new file, with its header). Lines that still went into a deleted
file (it was unlinked during the write: fstat's st_nlink is 0 right after it) are lost to
every reader; they are counted as EXPORTER_WRITE and reported in the new file.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from agent.errors import ExportError
from agent.wire import logformat
from agent.wire.rotation import RotatingWriter, RotationConfig, add_rotation_arguments
from podflow_api.v1 import observer_pb2

log = logging.getLogger("podflow.rotate")


# -- the loss-reporting sink ----------------------------------------------------------------------

@dataclass
class _LostSpan:
    """Records lost at one stage and not yet reported in the file: how many, and the time
    span (record times, ns) they covered."""

    count: int = 0
    first_ns: int = 0
    last_ns: int = 0
    packets: int = 0  # the packets those records held, where known

    def add(self, count: int, first_ns: int, last_ns: int, packets: int = 0) -> None:
        self.count += count
        self.packets += packets
        if first_ns and (not self.first_ns or first_ns < self.first_ns):
            self.first_ns = first_ns
        if last_ns > self.last_ns:
            self.last_ns = last_ns


@dataclass
class _Pending:
    """What one flush handed to the writer: line count and record time of each item."""

    counts: list[int]
    times: list[int]
    lines: int

    def span_of_last(self, n: int) -> tuple[int, int]:
        """The time span (first_ns, last_ns) of the records in the last `n` lines (an
        unknown time counts as now)."""
        now = time.time_ns()
        stamped = []
        for count, t in zip(reversed(self.counts), reversed(self.times)):
            if n <= 0:
                break
            stamped.append(t or now)
            n -= count
        return (min(stamped), max(stamped)) if stamped else (now, now)


class JsonLinesSink:
    """Lines (bytes, each with the time of the record it holds) to a RotatingWriter, with
    every loss counted and reported. Not thread-safe: one thread owns it.

    * `count_lost(stage, ...)`: records the caller could not hand over (the flow log: its
      store subscription fell behind, EXPORTER_QUEUE).
    * A failed write (disk full, read-only) does not stop anything: the records not written
      are counted as EXPORTER_WRITE, the file keeps only whole lines, and the next flush
      tries again. `on_failure(exc, first)` is called at each failure (`first` once per
      episode), `on_recovery(lost_total)` once it can be written again, `on_lost(stage,
      count, packets)` for every count.
    * With `lost_records` (JSON output), the counts not yet reported go into the file as
      `lost_events` records, ahead of the next lines, as soon as it can be written.

    `header`: the header fields (logformat.header_fields) written at the top of every file
    this sink opens, or None for text output (no header, no lost records)."""

    def __init__(self, path: str, rotation: RotationConfig, header: dict | None, *,
                 node_name: str = "", flush_bytes: int | None = None,
                 on_failure: Callable[[ExportError, bool], None] | None = None,
                 on_recovery: Callable[[int], None] | None = None,
                 on_lost: Callable[[int, int, int], None] | None = None):
        self.header = header
        self.node_name = node_name
        self.lost_records = header is not None
        self.flush_bytes = flush_bytes
        self._on_failure = on_failure
        self._on_recovery = on_recovery
        self._on_lost = on_lost
        self.writer = RotatingWriter(path, rotation, self._header_line)
        # Pending items: a line, or a block of whole lines (add_block), each with its line
        # count and the time of the records it holds (ns, 0: unknown).
        self._pending: list[bytes] = []
        self._counts: list[int] = []
        self._times: list[int] = []
        self._pending_lines = 0
        self.pending_bytes = 0
        self._unreported: dict[int, _LostSpan] = {}  # stage -> not yet in the file
        self.failing = False
        self.records_written = 0
        self.lost_total = 0

    @property
    def path(self) -> str:
        return self.writer.path

    @property
    def pending_lines(self) -> int:
        """Lines added and not yet flushed."""
        return self._pending_lines

    def _header_line(self) -> bytes:
        return b"" if self.header is None else logformat.header_line(self.header)

    # -- opening ---------------------------------------------------------------------------

    def open(self, strict: bool = False) -> bool:
        """Open the file now (its header appears at once). False when it cannot be opened:
        reported like a failed write, and the next flush tries again; with `strict` the
        ExportError is raised instead (a command that should not start without its file)."""
        try:
            self.writer.open()
        except ExportError as exc:
            if strict:
                raise
            self._fail(exc)
            return False
        return True

    def reopen(self) -> bool:
        """What is pending goes to the old file, then the path is opened again (SIGHUP, after
        logrotate renamed the file)."""
        self.flush()
        self.writer.close()
        return self.open()

    def close(self) -> None:
        self.flush()
        self.writer.close()

    # -- writing ---------------------------------------------------------------------------

    def add(self, line: bytes, time_ns: int = 0) -> None:
        """One whole line (ending in a newline). `time_ns`: the time of the record it holds,
        for the span of a loss report (0: now)."""
        self.add_block(line, 1, time_ns)

    def add_many(self, lines: list[bytes], times_ns: list[int]) -> None:
        """add() for a batch (the flow log's hot path)."""
        self._pending.extend(lines)
        self._counts.extend([1] * len(lines))
        self._times.extend(times_ns)
        self._pending_lines += len(lines)
        self._added(sum(map(len, lines)))

    def add_block(self, block: bytes, count: int, time_ns: int = 0) -> None:
        """`count` whole lines in one bytes object, all holding records of about `time_ns`
        (the flow log's hot path: a batch's lines are written as they were encoded, with no
        list of lines to split and join again)."""
        if not count:
            return
        self._pending.append(block)
        self._counts.append(count)
        self._times.append(time_ns)
        self._pending_lines += count
        self._added(len(block))

    def _added(self, nbytes: int) -> None:
        self.pending_bytes += nbytes
        if self.flush_bytes is not None and self.pending_bytes >= self.flush_bytes:
            self.flush()

    def _take_pending(self) -> tuple[list[bytes], _Pending]:
        """What is pending (items, and their line counts and times), the sink left empty."""
        items, pending = self._pending, _Pending(self._counts, self._times, self._pending_lines)
        self._pending, self._counts, self._times = [], [], []
        self._pending_lines = self.pending_bytes = 0
        return items, pending

    def write_line(self, text: str, time_ns: int = 0) -> None:
        """A line of text (without its newline)."""
        self.add((text + "\n").encode(), time_ns)

    def count_lost(self, stage: int, count: int, first_ns: int = 0, last_ns: int = 0,
                   packets: int = 0) -> None:
        """`count` records (holding `packets` packets, 0: unknown) lost before they reached
        this sink."""
        if count <= 0:
            return
        self.lost_total += count
        span = self._unreported.setdefault(stage, _LostSpan())
        span.add(count, first_ns, last_ns, packets)
        if self._on_lost is not None:
            self._on_lost(stage, count, packets)

    def flush(self) -> bool:
        """Write what is pending, lost records first. False when the write failed (what was
        not written is counted, never retried: the file keeps time order). A file deleted
        or moved since the last flush is followed first (the path opened again)."""
        lost_lines, spans = self._lost_lines()
        if not lost_lines and not self._pending:
            return not self.failing
        if not self.failing and not self._follow_path():
            return False
        items, pending = self._take_pending()
        lines = lost_lines + items
        try:
            self.writer.write_lines(lines, [1] * len(lost_lines) + pending.counts)
        except ExportError as exc:
            written = len(lost_lines) + pending.lines - exc.unwritten
            self._mark_reported(spans[:written])
            records_done = max(0, written - len(lost_lines))
            self.records_written += records_done
            unwritten = pending.lines - records_done
            if unwritten:
                first_ns, last_ns = pending.span_of_last(unwritten)
                self.count_lost(observer_pb2.EXPORTER_WRITE, unwritten, first_ns, last_ns)
            self._fail(exc)
            return False
        self._mark_reported(spans)
        self.records_written += pending.lines
        if self.failing:
            self.failing = False
            if self._on_recovery is not None:
                self._on_recovery(self.lost_total)
        if self.writer.current_file_deleted():
            self._written_into_deleted_file(pending)
        return True

    def _follow_path(self) -> bool:
        """Before a write: the file at the path must be the one open (WatchedFileHandler's
        check). False when the path cannot be opened again (reported like a failed write)."""
        try:
            what = self.writer.follow_path()
        except ExportError as exc:
            self._fail(exc)
            self._drop_pending(exc)
            return False
        if what:
            log.warning("%s was %s while open; writing to a new %s", self.path, what, self.path)
        return True

    def _drop_pending(self, exc: ExportError) -> None:
        """The pending records cannot be written (the path cannot be opened): counted."""
        _, pending = self._take_pending()
        if pending.lines:
            first_ns, last_ns = pending.span_of_last(pending.lines)
            self.count_lost(observer_pb2.EXPORTER_WRITE, pending.lines, first_ns, last_ns)

    def _written_into_deleted_file(self, pending: _Pending) -> None:
        """The file was deleted during the write just made: its records reach no reader.
        Counted as EXPORTER_WRITE, the path opened again, and the count written there."""
        records = min(self.writer.lines_in_current, pending.lines)
        if records:
            first_ns, last_ns = pending.span_of_last(records)
            self.records_written -= records
            self.count_lost(observer_pb2.EXPORTER_WRITE, records, first_ns, last_ns)
        log.warning("%s was deleted while being written: %d records written into it are lost; "
                    "writing to a new %s", self.path, records, self.path)
        self.writer.close()
        self.flush()  # the new file, with the lost_events record

    def _lost_lines(self) -> tuple[list[bytes], list[tuple[int, _LostSpan]]]:
        if not self.lost_records:
            self._unreported.clear()  # text output: counted and told, not written
            return [], []
        lines, spans = [], []
        for stage in sorted(self._unreported):
            span = self._unreported[stage]
            resp = logformat.lost_events_response(stage, span.count, span.first_ns,
                                                  span.last_ns, self.node_name,
                                                  packets=span.packets)
            lines.append(logformat.response_line(resp))
            spans.append((stage, _LostSpan(span.count, span.first_ns, span.last_ns,
                                           span.packets)))
        return lines, spans

    def _mark_reported(self, spans: list[tuple[int, _LostSpan]]) -> None:
        for stage, written in spans:
            span = self._unreported.get(stage)
            if span is None:
                continue
            span.count -= written.count
            span.packets = max(0, span.packets - written.packets)
            if span.count <= 0:
                del self._unreported[stage]
            else:
                span.first_ns = written.last_ns

    def _fail(self, exc: ExportError) -> None:
        first = not self.failing
        self.failing = True
        self.writer.close()
        if self._on_failure is not None:
            self._on_failure(exc, first)


# -- `podflow observe --output-file` ---------------------------------------------------------

def add_output_file_arguments(parser: argparse.ArgumentParser) -> None:
    """--output-file and its rotation flags (--output-max-size-mb, --output-max-backups,
    --output-compress) for `podflow observe`."""
    parser.add_argument("--output-file", metavar="PATH",
                        help="write the output to PATH instead of stdout, rotated like the "
                             "agent's flow log (with -o jsonl: the same file format)")
    add_rotation_arguments(parser, "output-")
