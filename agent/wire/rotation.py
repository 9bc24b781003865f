"""Size-rotated files: a writer of whole lines into PATH with numbered backups PATH.1 ..
PATH.N, optionally gzip-compressed, and the flags that configure it (--flow-log-max-size-mb,
--output-max-backups ...). One home for rotation; the loss-reporting JSON-lines sink on top
of it (agent.wire.jsonlines) is the only writer that uses it.

Lines are written whole or not at all: when a write fails (disk full, read-only file
system) the file is truncated back to its last complete line and the error is raised for
the sink to count. A file deleted or moved away while open is noticed (st_dev, st_ino, as
logging.WatchedFileHandler does) and the path opened again.
"""

from __future__ import annotations

import argparse
import errno
import gzip
import logging
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass

from agent.errors import ConfigError, ExportError

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
# backups gzip-compressed (~14x on real flow logs, ~40x on churn): at 2,000 new one-packet
# flows/s seen on two pod veths (~2 MB/s of records: one record per flow, ~1,000 B,
# measured by bench/churn.py) that is about 26 minutes, in ~320 MB of disk at most (100 MB
# written, 30 x ~7 MB compressed).
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

    def write_lines(self, lines: list[bytes], counts: list[int] | None = None) -> None:
        """Write every line, rotating between lines when the next one would cross the size
        limit. An item of `lines` may hold several whole lines (a block, the flow log's
        batch; `counts` says how many each holds, default one): it goes out in one write
        when it fits, else it is cut at a line boundary. On failure raises ExportError with
        `.unwritten` = how many LINES were not written (the file keeps only complete
        lines)."""
        self.lines_in_current = 0
        if not lines:
            return
        if counts is None:
            counts = [1] * len(lines)
        total = sum(counts)
        done = 0
        at = (0, 0, 0)  # item, byte offset in it, lines of it already written
        try:
            self.open()
            if self._needs_header:
                self._write_header()
            while at[0] < len(lines):
                chunk, count, after = self._next_chunk(lines, counts, at)
                if not chunk:
                    self._rotate()
                    self.lines_in_current = 0
                    continue
                self._write_all(chunk)
                self._has_data = True
                done += count
                self.lines_in_current += count
                at = after
        except ExportError as exc:
            exc.unwritten = total - done
            raise
        except OSError as exc:
            err = ExportError(f"cannot write {self.path}: {exc.strerror or exc}")
            err.unwritten = total - done
            raise err from exc

    def _next_chunk(self, lines: list[bytes], counts: list[int], at: tuple[int, int, int]
                    ) -> tuple[bytes, int, tuple[int, int, int]]:
        """The whole lines from `at` that fit in the current file, how many, and the
        position after them. Empty when the file must rotate first."""
        room = self.config.max_bytes - self._size
        parts = []
        count = 0
        index, offset, taken = at
        while index < len(lines):
            item = lines[index]
            piece = item[offset:] if offset else item
            if len(piece) <= room or self.is_stdout:
                parts.append(piece)
                count += counts[index] - taken
                room -= len(piece)
                index, offset, taken = index + 1, 0, 0
                continue
            cut = piece.rfind(b"\n", 0, room) + 1  # the whole lines of the block that fit
            if not cut and not parts and not self._has_data:
                # A line that fits no file at all goes alone into a fresh file.
                cut = piece.find(b"\n") + 1 or len(piece)
            if cut:
                part = piece[:cut]
                parts.append(part)
                lines_in_part = part.count(b"\n")
                count += lines_in_part
                offset, taken = offset + cut, taken + lines_in_part
                if offset >= len(item):
                    index, offset, taken = index + 1, 0, 0
            break
        return b"".join(parts), count, (index, offset, taken)

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
