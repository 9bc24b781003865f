"""JSON-lines files that never lose a line silently: a size-rotating writer with numbered
backups (optionally gzip-compressed) and the one loss-reporting sink on top of it.

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
import errno
import gzip
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from agent.errors import ConfigError, ExportError
from agent.wire import logformat
from podflow_api.v1 import observer_pb2

log = logging.getLogger("podflow.rotate")

MIB = 1024 * 1024
# JSON flow logs compress ~14x at level 3 at ~300 MB/s here; level 6 gains ~25% in size
# for 2.5x the CPU, which the writer thread would pay inline at every rotation.
GZIP_LEVEL = 3


@dataclass(frozen=True)
class RotationConfig:
    max_bytes: int = 10 * MIB
    max_backups: int = 5
    compress: bool = False


NO_ROTATION = RotationConfig(max_bytes=sys.maxsize, max_backups=0)  # one file, never rotated


# The agent's flow log keeps history by default: 100 MB x (1 + 30) of JSON lines, the
# backups gzip-compressed (~14x on real flow logs, ~40x on churn): at 2,000 new flows/s seen
# on two pod veths (~4 MB/s of records, measured by bench/churn.py) that is about 13
# minutes, in ~320 MB of disk at most (100 MB written, 30 x ~7 MB compressed).
FLOW_LOG_ROTATION = RotationConfig(max_bytes=100 * MIB, max_backups=30, compress=True)


def add_rotation_arguments(parser: argparse.ArgumentParser, prefix: str,
                           defaults: RotationConfig = RotationConfig()) -> None:
    """Add --{prefix}max-size-mb, --{prefix}max-backups and --{prefix}compress
    (prefix "flow-log-" for the agent, "output-" for observe)."""
    size_mb = defaults.max_bytes / MIB
    parser.add_argument(f"--{prefix}max-size-mb", type=float, default=size_mb, metavar="MB",
                        help="rotate the file when it would grow past this size "
                             f"(default {size_mb:g})")
    parser.add_argument(f"--{prefix}max-backups", type=int, default=defaults.max_backups,
                        metavar="N", help="rotated files to keep: PATH.1 ... PATH.N "
                                          f"(default {defaults.max_backups})")
    parser.add_argument(f"--{prefix}compress", action=argparse.BooleanOptionalAction,
                        default=defaults.compress,
                        help="gzip rotated files (PATH.1.gz ...) "
                             f"(default {'on' if defaults.compress else 'off'})")


def rotation_from_args(args: argparse.Namespace, prefix: str) -> RotationConfig:
    attr = prefix.replace("-", "_")
    size_mb = getattr(args, f"{attr}max_size_mb")
    backups = getattr(args, f"{attr}max_backups")
    if not size_mb > 0:
        raise ConfigError(f"--{prefix}max-size-mb must be > 0, got {size_mb}")
    if backups < 0:
        raise ConfigError(f"--{prefix}max-backups must be >= 0, got {backups}")
    return RotationConfig(max_bytes=max(1, int(size_mb * MIB)), max_backups=backups,
                          compress=bool(getattr(args, f"{attr}compress")))


def backup_name(path: str, index: int, compressed: bool) -> str:
    return f"{path}.{index}.gz" if compressed else f"{path}.{index}"


class RotatingWriter:
    """Writes lines (bytes ending in b"\\n") to `path`, or to stdout when path is "-"
    (never rotated). Not thread-safe: one thread owns it.

    `header()` returns the header line (bytes, with newline) written first in every file
    this writer opens.
    """

    def __init__(self, path: str, config: RotationConfig, header: Callable[[], bytes]):
        self.path = path
        self.config = config
        self._header = header
        self._fd: int | None = None
        self._size = 0
        self._needs_header = True
        self._has_data = False  # lines other than our header in the current file
        self.rotations = 0
        self.lines_in_current = 0  # of the last write_lines call: lines in the file open now

    # -- opening and closing ---------------------------------------------------------------

    @property
    def is_stdout(self) -> bool:
        return self.path == "-"

    def open(self) -> None:
        """Open (append) the file and write its header line at once, so a new file appears
        as soon as it is opened (after a start, a rotation or a SIGHUP)."""
        if self._fd is not None:
            return
        if self.is_stdout:
            self._fd = os.dup(1)
            self._size = 0
        else:
            try:
                self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                                   0o644)
                self._size = os.fstat(self._fd).st_size
            except OSError as exc:
                raise ExportError(f"cannot open {self.path}: {exc.strerror}") from exc
        self._has_data = self._size > 0
        self._needs_header = True
        self._write_header()

    def _write_header(self) -> None:
        try:
            self._write_all(self._header())
        except OSError as exc:
            raise ExportError(f"cannot write {self.path}: {exc.strerror or exc}") from exc
        self._needs_header = False

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                os.close(fd)
            except OSError as exc:
                log.warning("closing %s: %s", self.path, exc)

    def reopen(self) -> None:
        """Close and open the path again (after an external tool renamed the file)."""
        self.close()
        self.open()

    def follow_path(self) -> str:
        """What logging.WatchedFileHandler checks before each record: is the open file still
        the one at the path? "" when it is (or nothing is open); else the file was "deleted"
        or "moved" (renamed away, or another file put at the path), and the path is opened
        again (ExportError when it cannot be). One stat() and one fstat()."""
        if self._fd is None or self.is_stdout:
            return ""
        try:
            ours = os.fstat(self._fd)
        except OSError:
            return ""
        try:
            there = os.stat(self.path)
            if (there.st_dev, there.st_ino) == (ours.st_dev, ours.st_ino):
                return ""
        except FileNotFoundError:
            pass
        self.close()
        self.open()
        return "deleted" if ours.st_nlink == 0 else "moved"

    def current_file_deleted(self) -> bool:
        """True when the open file has no name any more (unlinked): what is written to it
        now reaches no reader."""
        if self._fd is None or self.is_stdout:
            return False
        try:
            return os.fstat(self._fd).st_nlink == 0
        except OSError:
            return False

    # -- writing ---------------------------------------------------------------------------

    def write_lines(self, lines: list[bytes]) -> None:
        """Write every line, rotating between lines when the next one would cross the size
        limit. On failure raises ExportError with `.unwritten` = how many of `lines` were
        not written (the file keeps only complete lines)."""
        self.lines_in_current = 0
        if not lines:
            return
        done = 0
        try:
            self.open()
            if self._needs_header:
                self._write_header()
            while done < len(lines):
                chunk, count = self._next_chunk(lines, done)
                if count == 0:
                    self._rotate()
                    self.lines_in_current = 0
                    continue
                self._write_all(chunk)
                self._has_data = True
                done += count
                self.lines_in_current += count
        except ExportError as exc:
            exc.unwritten = len(lines) - done
            raise
        except OSError as exc:
            err = ExportError(f"cannot write {self.path}: {exc.strerror or exc}")
            err.unwritten = len(lines) - done
            raise err from exc

    def _next_chunk(self, lines: list[bytes], start: int) -> tuple[bytes, int]:
        """The lines from `start` that fit in the current file. Returns count 0 when the
        file must rotate first."""
        room = self.config.max_bytes - self._size
        parts = []
        for line in lines[start:]:
            if len(line) > room and not self.is_stdout:
                # A line that fits no file at all goes alone into a fresh file.
                if not parts and not self._has_data:
                    parts.append(line)
                break
            parts.append(line)
            room -= len(line)
        return b"".join(parts), len(parts)

    def _write_all(self, data: bytes) -> None:
        """Write `data` completely or undo the partial write (truncate to the old size)."""
        start = self._size
        view = memoryview(data)
        written = 0
        try:
            while written < len(view):
                n = os.write(self._fd, view[written:])
                if n <= 0:
                    raise OSError(errno.EIO, "short write")
                written += n
        except OSError:
            if written and not self.is_stdout:
                try:
                    os.ftruncate(self._fd, start)
                except OSError as exc:
                    log.warning("truncating %s after a failed write: %s", self.path, exc)
            raise
        self._size = start + written

    def _rotate(self) -> None:
        """PATH -> PATH.1[.gz], PATH.k -> PATH.k+1, dropping what exceeds max_backups."""
        self.close()
        cfg = self.config
        if not os.path.exists(self.path):
            pass  # renamed or removed behind our back: just start a new file
        elif cfg.max_backups == 0:
            os.unlink(self.path)
        else:
            for index in range(cfg.max_backups, 0, -1):
                for compressed in (True, False):
                    src = backup_name(self.path, index, compressed)
                    if not os.path.exists(src):
                        continue
                    if index == cfg.max_backups:
                        os.unlink(src)
                    else:
                        os.replace(src, backup_name(self.path, index + 1, compressed))
            first = backup_name(self.path, 1, False)
            os.replace(self.path, first)
            if cfg.compress:
                _gzip_file(first)
        self.rotations += 1
        self.open()


def _gzip_file(path: str) -> None:
    """path -> path.gz; on failure (disk full) the uncompressed backup is kept."""
    target = f"{path}.gz"
    try:
        with open(path, "rb") as src, gzip.open(target, "wb", compresslevel=GZIP_LEVEL) as dst:
            shutil.copyfileobj(src, dst, 1024 * 1024)
    except OSError as exc:
        log.warning("compressing %s failed, keeping it uncompressed: %s", path, exc)
        try:
            os.unlink(target)
        except FileNotFoundError:
            pass
        return
    os.unlink(path)


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
        self._pending: list[bytes] = []
        self._times: list[int] = []  # record time (ns) of each pending line
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
        return len(self._pending)

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
        self._pending.append(line)
        self._times.append(time_ns)
        self.pending_bytes += len(line)
        if self.flush_bytes is not None and self.pending_bytes >= self.flush_bytes:
            self.flush()

    def add_many(self, lines: list[bytes], times_ns: list[int]) -> None:
        """add() for a batch (the flow log's hot path)."""
        self._pending.extend(lines)
        self._times.extend(times_ns)
        self.pending_bytes += sum(map(len, lines))
        if self.flush_bytes is not None and self.pending_bytes >= self.flush_bytes:
            self.flush()

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
        lines = lost_lines + self._pending
        times = self._times
        self._pending, self._times, self.pending_bytes = [], [], 0
        try:
            self.writer.write_lines(lines)
        except ExportError as exc:
            written = len(lines) - exc.unwritten
            self._mark_reported(spans[:written])
            records_done = max(0, written - len(lost_lines))
            self.records_written += records_done
            unwritten = times[records_done:]
            if unwritten:
                now = time.time_ns()
                stamped = [t or now for t in unwritten]
                self.count_lost(observer_pb2.EXPORTER_WRITE, len(unwritten), min(stamped),
                                max(stamped))
            self._fail(exc)
            return False
        self._mark_reported(spans)
        self.records_written += len(times)
        if self.failing:
            self.failing = False
            if self._on_recovery is not None:
                self._on_recovery(self.lost_total)
        if self.writer.current_file_deleted():
            self._written_into_deleted_file(times)
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
        times, self._pending, self._times, self.pending_bytes = self._times, [], [], 0
        if times:
            now = time.time_ns()
            stamped = [t or now for t in times]
            self.count_lost(observer_pb2.EXPORTER_WRITE, len(times), min(stamped), max(stamped))

    def _written_into_deleted_file(self, times: list[int]) -> None:
        """The file was deleted during the write just made: its records reach no reader.
        Counted as EXPORTER_WRITE, the path opened again, and the count written there."""
        records = min(self.writer.lines_in_current, len(times))
        if records:
            now = time.time_ns()
            stamped = [t or now for t in times[len(times) - records:]]
            self.records_written -= records
            self.count_lost(observer_pb2.EXPORTER_WRITE, records, min(stamped), max(stamped))
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
