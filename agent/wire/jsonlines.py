"""A size-rotating JSON-lines file writer with numbered backups, optionally gzip-compressed.

Shared by the agent's flow log (agent.export.flowlog) and `podflow observe --output-file`, so both
produce the same files: PATH (current), PATH.1[.gz] (newest backup) ... PATH.N[.gz]. Every
file starts with a header line produced by the caller, so a reader of any one file knows what
it holds. Lines are written whole or not at all: when a write fails (disk full, read-only
file system) the file is truncated back to its last complete line and the caller is told how
many lines were not written, so it can report them instead of leaving a torn record.
"""

from __future__ import annotations

import argparse
import errno
import gzip
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from agent.wire import flowjson
from agent.errors import ConfigError, ExportError
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


def add_rotation_arguments(parser: argparse.ArgumentParser, prefix: str) -> None:
    """Add --{prefix}max-size-mb, --{prefix}max-backups and --{prefix}compress
    (prefix "flow-log-" for the agent, "output-" for observe)."""
    parser.add_argument(f"--{prefix}max-size-mb", type=float, default=10.0, metavar="MB",
                        help="rotate the file when it would grow past this size (default 10)")
    parser.add_argument(f"--{prefix}max-backups", type=int, default=5, metavar="N",
                        help="rotated files to keep: PATH.1 ... PATH.N (default 5)")
    parser.add_argument(f"--{prefix}compress", action="store_true",
                        help="gzip rotated files (PATH.1.gz ...)")


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

    # -- writing ---------------------------------------------------------------------------

    def write_lines(self, lines: list[bytes]) -> None:
        """Write every line, rotating between lines when the next one would cross the size
        limit. On failure raises ExportError with `.unwritten` = how many of `lines` were
        not written (the file keeps only complete lines)."""
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
                    continue
                self._write_all(chunk)
                self._has_data = True
                done += count
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


# -- `podflow observe --output-file` ---------------------------------------------------------

def add_output_file_arguments(parser: argparse.ArgumentParser) -> None:
    """--output-file and its rotation flags (--output-max-size-mb, --output-max-backups,
    --output-compress) for `podflow observe`."""
    parser.add_argument("--output-file", metavar="PATH",
                        help="write the output to PATH instead of stdout, rotated like the "
                             "agent's flow log (with -o jsonl: the same file format)")
    add_rotation_arguments(parser, "output-")


class RotatingFileSink:
    """The observe output sink for --output-file: lines (str) buffered and written through a
    RotatingWriter. A write error (disk full) does not stop the stream: one warning per
    episode on stderr, the lines that could not be written are counted, and for JSON output a
    lost_events record (EXPORTER_WRITE) goes into the file once it can be written again.

    `header`: the fields of the {"podflow_flow_log": ...} header line (JSON output), or None
    for text output (no header, no lost records)."""

    FLUSH_BYTES = 256 * 1024

    def __init__(self, path: str, config: RotationConfig, header: dict | None, stderr=None):
        self._header_fields = header
        self._stderr = stderr or sys.stderr
        self.writer = RotatingWriter(path, config, self._header_line)
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self.failing = False
        self.lost_lines = 0       # not written and not yet reported in the file
        self.lost_total = 0
        self._lost_first_ns = 0
        self._lost_last_ns = 0
        try:
            self.writer.open()
        except ExportError as exc:
            raise ConfigError(f"--output-file: {exc}") from exc

    def _header_line(self) -> bytes:
        if self._header_fields is None:
            return b""
        fields = dict(self._header_fields)
        fields["start_time"] = flowjson.timestamp_ns_str(time.time_ns())
        return (json.dumps({"podflow_flow_log": fields}) + "\n").encode()

    def write_line(self, line: str) -> None:
        data = (line + "\n").encode()
        self._pending.append(data)
        self._pending_bytes += len(data)
        if self._pending_bytes >= self.FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        lost = self._lost_record()
        lines = lost + self._pending
        self._pending, self._pending_bytes = [], 0
        if not lines:
            return
        try:
            self.writer.write_lines(lines)
        except ExportError as exc:
            written = len(lines) - exc.unwritten
            if lost and written >= len(lost):
                self.lost_lines = 0  # the earlier loss is on record now
                self._lost_first_ns = 0
            now = time.time_ns()
            unwritten = min(exc.unwritten, len(lines) - len(lost))
            self.lost_lines += unwritten
            self.lost_total += unwritten
            if not self._lost_first_ns:
                self._lost_first_ns = now
            self._lost_last_ns = now
            self.writer.close()
            if not self.failing:
                self.failing = True
                print(f"WARNING: {exc}; counting the lines not written until it can be "
                      "written again", file=self._stderr, flush=True)
            return
        self.lost_lines = 0
        self._lost_first_ns = 0
        if self.failing:
            self.failing = False
            print(f"WARNING: {self.writer.path} can be written again; {self.lost_total} lines "
                  "were lost so far", file=self._stderr, flush=True)

    def _lost_record(self) -> list[bytes]:
        if not self.lost_lines or self._header_fields is None:
            return []
        resp = observer_pb2.GetFlowsResponse()
        resp.time.FromNanoseconds(time.time_ns())
        resp.lost_events.stage = observer_pb2.EXPORTER_WRITE
        resp.lost_events.num_events_lost = self.lost_lines
        resp.lost_events.first.FromNanoseconds(self._lost_first_ns)
        resp.lost_events.last.FromNanoseconds(self._lost_last_ns)
        return [(flowjson.to_json(resp) + "\n").encode()]

    def close(self) -> None:
        self.flush()
        self.writer.close()


def open_output_sink(args: argparse.Namespace, header: dict | None) -> RotatingFileSink | None:
    """The --output-file sink, or None when output goes to stdout."""
    path = getattr(args, "output_file", None)
    if not path:
        return None
    return RotatingFileSink(path, rotation_from_args(args, "output-"), header)
