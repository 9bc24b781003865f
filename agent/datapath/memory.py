"""Giving memory back: the agent's resident size should follow its load and fall back when
the load goes, not keep its peak.

Three places where memory would otherwise stay:
- bcc compiles the programs once, at start, with LLVM and clang: ~85 MB of their code stays
  resident (and ~25 MB of compiler heap) though nothing runs it again. After loading, the
  heap is trimmed and the agent lets go of the pages of their read-only mappings: those no
  write ever touched (madvise MADV_DONTNEED: the page stays in the page cache, shared with
  any other process, and comes back from the file if ever needed), and the rest is offered
  to reclaim (MADV_PAGEOUT, Linux 5.4+);
- glibc raises its mmap threshold after a large free, so the large arrays of a busy second
  (a sweep's columns, a batch's JSON) would then come from the heap and keep it large:
  `fixed_mmap_threshold` keeps allocations above 128 KiB in mappings of their own, unmapped
  when freed;
- small allocations freed after a burst leave free heap pages: `trim` (malloc_trim) after
  each sweep returns them.
Each step is best effort: where the call is missing (another libc, an old kernel), nothing
happens.
"""

from __future__ import annotations

import ctypes
import logging

log = logging.getLogger("podflow.memory")

MADV_DONTNEED = 4
MADV_PAGEOUT = 21
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 128 * 1024
_COMPILER_LIBRARIES = ("libLLVM", "libclang")

try:
    _libc = ctypes.CDLL(None, use_errno=True)
    _libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
except (OSError, AttributeError):  # not glibc / not Linux
    _libc = None


def fixed_mmap_threshold() -> None:
    """Allocations above 128 KiB get mappings of their own for the process's lifetime."""
    if _libc is not None and hasattr(_libc, "mallopt"):
        _libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)


def trim() -> None:
    """Return free heap pages to the kernel."""
    if _libc is not None and hasattr(_libc, "malloc_trim"):
        _libc.malloc_trim(0)


def _compiler_mappings(smaps_path: str) -> list[tuple[int, int, bool]]:
    """(start, end, untouched) of the compiler libraries' read-only mappings; untouched: no
    page of it was ever written (no anonymous copy: not a relocated RELRO segment)."""
    out = []
    current = None
    with open(smaps_path, encoding="ascii", errors="replace") as fh:
        for line in fh:
            head = line.split(None, 5)
            if "-" in head[0] and len(head) >= 5 and ":" not in head[0]:
                current = None
                if len(head) == 6 and "w" not in head[1] and any(
                        name in head[5] for name in _COMPILER_LIBRARIES):
                    lo, hi = (int(x, 16) for x in head[0].split("-"))
                    current = [lo, hi, True]
                    out.append(current)
            elif current is not None and head[0] == "Anonymous:" and int(head[1]):
                current[2] = False
    return [tuple(m) for m in out]


def release_compiler(smaps_path: str = "/proc/self/smaps") -> int:
    """After bcc compiled and loaded the programs: trim the heap and let go of the compiler
    libraries' read-only pages. Returns the bytes let go of."""
    trim()
    if _libc is None:
        return 0
    try:
        mappings = _compiler_mappings(smaps_path)
    except (OSError, ValueError):
        return 0
    released = 0
    for lo, hi, untouched in mappings:
        if _libc.madvise(lo, hi - lo, MADV_DONTNEED if untouched else MADV_PAGEOUT) == 0:
            released += hi - lo
    if released:
        log.debug("let go of %d MiB of compiler code", released >> 20)
    return released
