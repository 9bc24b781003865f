"""The agent's datapath stage: compile and load the eBPF programs (bpf/podflow.c), attach them
to pod veths and bridges as they come and go, and turn the kernel's counters into records.

This is the ONLY module that imports bcc. The reader thread never blocks the kernel: the
programs write ring-buffer events without wakeups (BPF_RB_NO_WAKEUP) and the reader
consumes them on a timer; about once a second it drains the inactive half of the flow map
with batch syscalls (no program writes it: exact) and flips the halves (bpf/maps.h), and
the flow table (flowtable.py) turns what it read into records for the agent's pipeline
(agent/main.py).

Around it, each in its own module: the environment checks (environment.py), raw bpf(2)
calls (bpfsys.py), TC/tcx attachment (tc.py), which interfaces to trace (interfaces.py),
the struct mirrors of bpf/types.h (abi.py), counters -> interval records (tracker.py),
records -> Flow (decode.py), and features with kernel code of their own (extension.py).
"""

from __future__ import annotations

import ctypes
import fnmatch
import logging
import os
import platform
import re
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

import numpy as np

from agent.datapath import abi, bpfsys, decode, interfaces, memory, tc
from agent.datapath.environment import check_environment
from agent.datapath.extension import DatapathExtension, EventHandler
from agent.datapath.batch import FlowBatch
from agent.datapath.flowtable import Emitted, FlowTable
from agent.errors import AttachError, DatapathError
from agent.stage import Stage
from agent.stats import AgentStats
from podflow_api.v1 import observer_pb2

if TYPE_CHECKING:
    from agent.config import DatapathSection

log = logging.getLogger("podflow.datapath")

BPF_DIR = Path(os.environ.get("PODFLOW_BPF_DIR") or Path(__file__).resolve().parents[2] / "bpf")
PROG_INGRESS = "podflow_ingress"  # also the TC filter names (agent/datapath/tc.py NAME_PREFIX)
PROG_EGRESS = "podflow_egress"
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
NEW_EVENT_WINDOW_S = 0.1  # the new-flow event budget is spent per window (bpf/maps.h)
# Packets timed this long before a flip may still be counted into the half that becomes
# active (the program reads the selector, then the clock): margin for "every packet before
# the flip was drained".
FLIP_MARGIN_NS = 2_000_000


def _u32(value: int) -> bytes:
    return value.to_bytes(4, "little")


# struct pf_flow_event (abi.FlowEvent) as a numpy record, to read events in bulk.
_EVENT_DTYPE = np.dtype({"names": ["kind", "key", "pkt_len", "ts_ns", "tcp_flags"],
                         "formats": ["u1", ("u1", abi.KEY_SIZE), "<u4", "<u8", "<u4"],
                         "offsets": [abi.FlowEvent.hdr.offset, abi.FlowEvent.key.offset,
                                     abi.FlowEvent.pkt_len.offset, abi.FlowEvent.ts_ns.offset,
                                     abi.FlowEvent.tcp_flags.offset],
                         "itemsize": ctypes.sizeof(abi.FlowEvent)})


def expand_includes(path: Path, _stack: tuple[Path, ...] = ()) -> str:
    """podflow.c with its quoted #includes inlined (with #line markers, so compiler messages
    still name the right file and line).

    bcc rewrites map calls (flows.lookup, events.ringbuf_output ...) only in the main source
    file, so headers that use maps would otherwise fail to load. A quoted include whose file
    does not exist (an optional feature not written yet) is left to the compiler, which
    only complains when its -D flag is set."""
    if path in _stack:
        return ""
    out = [f'#line 1 "{path}"']
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        m = re.match(r'\s*#\s*include\s+"([^"]+)"', line)
        target = path.parent / m.group(1) if m else None
        if target is not None and target.is_file():
            out.append(expand_includes(target, _stack + (path,)))
            out.append(f'#line {lineno + 1} "{path}"')
        else:
            out.append(line)
    return "\n".join(out) + "\n"


class Datapath(Stage):
    """Loads the programs, keeps the traced interface set current, runs the reader.

    `pipeline` receives, on the reader thread, every FlowBatch of records (batch.py) and
    every list of Flow objects the extensions made (drop records); `extensions` are the
    features compiled in with the programs (agent/datapath/extension.py)."""

    def __init__(self, config: DatapathSection, stats: AgentStats,
                 pipeline: Callable[[list], None],
                 extensions: Sequence[DatapathExtension] = ()):
        self.config = config
        self.stats = stats
        self.node_name = stats.node_name
        self.pipeline = pipeline
        self.extensions = list(extensions)
        self.clock = decode.KtimeClock.now()
        self.table = FlowTable(int(config.active_timeout_s * 1e9),
                               int(config.idle_timeout_s * 1e9), max_flows=config.max_flows)
        self._bpf = None
        self._half_fds: tuple[int, int] = (-1, -1)  # flows_a, flows_b
        self._maps_fd = -1   # flow_maps: the halves as a map-in-map
        self._sel_fd = -1    # flow_sel: which half the programs write
        self._active = 0
        self._flipped_ns = 0  # monotonic time of the last flip: drained up to it next sweep
        self._new_events: list[bytes] = []
        self._progs: dict[str, tuple[int, str]] = {}
        self._ipr: IPRoute | None = None
        self._lock = threading.Lock()  # interface set and netlink socket
        self._attached: dict[int, tc.Attachment] = {}
        self._known: dict[int, decode.InterfaceInfo] = {}  # every interface ever traced
        self.attach_errors: dict[str, str] = {}
        self._use_tcx = config.attach_mode in ("tcx", "auto")
        self._handlers: dict[int, EventHandler] = {}
        self._error_names: dict[int, str] = {}
        self._pending: list = []  # Flow objects of extensions (drop records)
        self._batches: list[FlowBatch] = []
        self._trim_at = False
        self._last_errors: list[int] = [0] * abi.ERR_MAX
        self._stop = threading.Event()
        self._reader: threading.Thread | None = None
        self._watcher: interfaces.LinkWatcher | None = None
        self.records_emitted = 0

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        check_environment()
        try:
            self._start()
        except BaseException:
            self.stop()  # release whatever was loaded or attached before the failure
            raise

    def _start(self) -> None:
        self._load()
        self._ipr = IPRoute()
        removed = self._remove_all_leftovers()
        if removed:
            log.info("removed %d podflow filter(s) left by a previous agent", removed)
        self._watcher = interfaces.LinkWatcher(self.reconcile)
        self._watcher.start()  # subscribe before the first read: no event falls in between
        self.reconcile()
        self._warn_unmatched_globs()
        self._reader = threading.Thread(target=self._read_loop, name="podflow-reader",
                                        daemon=True)
        self._reader.start()
        log.info("datapath tracing %s", ", ".join(self.traced_names()) or "no interface yet")

    def stop(self) -> None:
        """Detach everything first (no new packets), then emit final records for what is
        left in the map, then unload."""
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher = None
        with self._lock:
            for attachment in list(self._attached.values()):
                self._detach(attachment)
        self._stop.set()
        if self._reader is not None:
            self._reader.join(timeout=30)
            self._reader = None
        if self._bpf is not None:
            for ext in self.extensions:
                ext.detach(self._bpf)
            self._bpf.cleanup()
            self._bpf = None
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None

    def ready_info(self) -> dict:
        return {"interfaces": self.traced_names(), "attach_errors": dict(self.attach_errors),
                "attach_mode": "tcx" if self._use_tcx else "tc"}

    # -- loading --------------------------------------------------------------------------

    def _load(self) -> None:
        from bcc import BPF  # the only bcc import in podflow

        per_window = round(self.config.new_flow_events * NEW_EVENT_WINDOW_S)
        if self.config.new_flow_events and not per_window:
            per_window = 1
        cflags = [f"-I{BPF_DIR}",
                  f"-DPODFLOW_FLOW_MAP_SIZE={self.config.flow_map_size}",
                  f"-DPODFLOW_RINGBUF_PAGES={self.config.ringbuf_bytes // PAGE_SIZE}",
                  f"-DPODFLOW_NEW_EVENTS_PER_WINDOW={per_window}",
                  f"-DPODFLOW_NEW_EVENT_WINDOW_NS={int(NEW_EVENT_WINDOW_S * 1e9)}ULL"]
        for ext in self.extensions:
            cflags.extend(ext.cflags())
            self._error_names.update(ext.error_names())
            self._handlers.update(ext.event_handlers())
        self._handlers[abi.EVENT_FLOW_NEW] = Datapath._on_flow_event
        source = expand_includes(BPF_DIR / "podflow.c")
        try:
            self._bpf = BPF(text=source, cflags=cflags)
            for direction, name in (("ingress", PROG_INGRESS), ("egress", PROG_EGRESS)):
                fn = self._bpf.load_func(name, BPF.SCHED_CLS)
                self._progs[direction] = (fn.fd, name)
        # bcc raises plain Exception for compile and verifier failures
        except Exception as exc:  # noqa: BLE001
            raise DatapathError(f"cannot compile or load bpf/podflow.c: {exc} (kernel headers "
                                f"at /lib/modules/{platform.release()}/build; see the "
                                "compiler output above)") from exc
        self._half_fds = (self._bpf["flows_a"].map_fd, self._bpf["flows_b"].map_fd)
        self._maps_fd = self._bpf["flow_maps"].map_fd
        self._sel_fd = self._bpf["flow_sel"].map_fd
        for slot, fd in enumerate(self._half_fds):
            bpfsys.update_elem(self._maps_fd, _u32(slot), _u32(fd))
        bpfsys.update_elem(self._sel_fd, _u32(0), _u32(0))
        self._active = 0
        self._flipped_ns = time.monotonic_ns()
        self._bpf["events"].open_ring_buffer(self._on_event)
        for ext in self.extensions:
            ext.attach(self._bpf)
        memory.release_compiler()  # the compiler is not needed again

    # -- interfaces -----------------------------------------------------------------------

    def interface(self, ifindex: int) -> decode.InterfaceInfo | None:
        """The interface (traced now or earlier) with this index, for decoding."""
        return self._known.get(ifindex)

    def traced_names(self) -> list[str]:
        with self._lock:
            return sorted(a.ifname for a in self._attached.values())

    def _remove_all_leftovers(self) -> int:
        removed = 0
        with self._lock:
            for link in interfaces.list_links(self._ipr):
                try:
                    removed += tc.remove_leftovers(self._ipr, link.index)
                except NetlinkError as exc:
                    log.warning("cannot clean podflow leftovers on %s: %s", link.name, exc)
        return removed

    def reconcile(self) -> None:
        """Attach to what should be traced and is not, release what went away."""
        with self._lock:
            if self._ipr is None:
                return
            links = interfaces.list_links(self._ipr)
            uplinks = interfaces.default_route_ifindexes(self._ipr)
            wanted = interfaces.select_interfaces(links, uplinks, self.config.include,
                                                  self.config.exclude)
            present = {link.index: link for link in links}
            for ifindex, attachment in list(self._attached.items()):
                link = present.get(ifindex)
                if link is None:  # deleted (a pod went away): the kernel took our filters
                    tc.release(attachment)
                    del self._attached[ifindex]
                    self.stats.set_interface(ifindex, None)
                    log.info("released %s (deleted)", attachment.ifname)
                elif ifindex not in wanted:
                    self._detach(attachment)
            for ifindex, info in wanted.items():
                current = self._attached.get(ifindex)
                if current is not None:
                    if current.ifname != info.name:  # renamed (CNIs create, then rename)
                        log.info("%s is now %s", current.ifname, info.name)
                        current.ifname = info.name
                        self._known[ifindex] = info
                        self.stats.set_interface(ifindex, info.name)
                    continue
                self._known[ifindex] = info
                try:
                    self._attached[ifindex] = self._attach(ifindex, info.name)
                except AttachError as exc:
                    if self.attach_errors.get(info.name) != str(exc):
                        log.error("%s", exc)
                        self.stats.add_error("attach_failed")
                    self.attach_errors[info.name] = str(exc)
                    continue
                self.attach_errors.pop(info.name, None)
                self.stats.set_interface(ifindex, info.name)
                log.info("tracing %s (%s, ifindex %d)", info.name, info.kind.value, ifindex)

    def _attach(self, ifindex: int, ifname: str) -> tc.Attachment:
        if self._use_tcx:
            try:
                return tc.attach_tcx(self._ipr, ifindex, ifname, self._progs)
            except tc.TcxUnsupported as exc:
                if self.config.attach_mode == "tcx":
                    raise AttachError(f"--attach-mode tcx: {exc}") from exc
                log.info("%s; attaching with clsact + cls_bpf instead", exc)
                self._use_tcx = False
        return tc.attach(self._ipr, ifindex, ifname, self._progs)

    def _warn_unmatched_globs(self) -> None:
        """--interfaces globs that match nothing are most likely typos: say so once."""
        if not self.config.include:
            return
        with self._lock:
            names = [link.name for link in interfaces.list_links(self._ipr)]
        for glob in self.config.include:
            if not any(fnmatch.fnmatchcase(name, glob) for name in names):
                log.warning("--interfaces %r matches no interface (yet); links here: %s",
                            glob, ", ".join(sorted(names)))

    def _detach(self, attachment: tc.Attachment) -> None:
        try:
            tc.detach(self._ipr, attachment)
        except AttachError as exc:
            log.error("%s", exc)
            self.stats.add_error("detach_failed")
        self._attached.pop(attachment.ifindex, None)
        self.stats.set_interface(attachment.ifindex, None)

    # -- reading --------------------------------------------------------------------------

    def _on_event(self, _ctx, data, size) -> int:
        raw = ctypes.string_at(data, size)
        handler = self._handlers.get(raw[0])
        if handler is None:
            self.stats.add_error("unknown_event_kind")
            return 0
        flows = handler(self, raw)
        if flows:
            self._pending.extend(flows)
        return 0

    def _on_flow_event(self, raw: bytes) -> None:
        self._new_events.append(raw[:ctypes.sizeof(abi.FlowEvent)])

    def _announce(self) -> None:
        """New-flow events read since the last call -> fast first records."""
        if not self._new_events:
            return
        raw, self._new_events = b"".join(self._new_events), []
        events = np.frombuffer(raw, dtype=_EVENT_DTYPE)
        keys = events["key"].view(np.uint8).reshape(len(events), abi.KEY_SIZE)
        self._emit(self.table.announce(keys, events["pkt_len"], events["ts_ns"],
                                       events["tcp_flags"]))

    def _emit(self, emitted: Emitted) -> None:
        """Flow-table output -> a batch of records for the pipeline."""
        if not len(emitted):
            return
        self.records_emitted += len(emitted)
        self._batches.append(FlowBatch.from_emitted(emitted, self.clock, time.time_ns(),
                                                    self.node_name, self._known))

    def _read_loop(self) -> None:
        next_sweep = time.monotonic()
        while True:
            stopping = self._stop.is_set()
            self._bpf.ring_buffer_consume()
            self._announce()
            now = time.monotonic()
            if stopping:
                self._final_sweep()
            elif now >= next_sweep:
                try:
                    self._sweep()
                except DatapathError as exc:
                    log.error("%s", exc)
                next_sweep = now + self.config.sweep_interval_s
            self._flush()
            if stopping:
                return
            if self._trim_at:
                self._trim_at = False
                memory.trim()
            self._stop.wait(self.config.poll_interval_s)

    def _flush(self) -> None:
        """Hand what was read to the pipeline: batches of records (FlowBatch) and the Flow
        objects extensions made (drop records)."""
        work: list = self._batches
        if self._pending:
            work.append(self._pending)
        self._batches, self._pending = [], []
        for batch in work:
            try:
                self.pipeline(batch)
            # The reader is the boundary between the kernel and every later stage: a bug in
            # one of them must cost that batch (counted and logged), not stop all accounting.
            except Exception:  # noqa: BLE001
                log.exception("pipeline failed on a batch of %d records", len(batch))
                packets = batch.packets.sum() if isinstance(batch, FlowBatch) else 0
                self.stats.add_lost(observer_pb2.AGENT_QUEUE, len(batch), packets=int(packets))

    def _drain(self, half: int) -> None:
        keys, values = bpfsys.drain_map(self._half_fds[half], self.config.flow_map_size)
        self.table.ingest(keys, values)

    def _flip(self) -> int:
        """Make the other half active and wait until no program runs on the old one (the
        map-in-map update returns after every program in flight finished). Returns the
        monotonic time of the flip: every packet timed before it is in the old half."""
        flipped = time.monotonic_ns()
        self._active ^= 1
        bpfsys.update_elem(self._sel_fd, _u32(0), _u32(self._active))
        bpfsys.update_elem(self._maps_fd, _u32(0), _u32(self._half_fds[0]))  # synchronize
        return flipped

    def _sweep(self) -> None:
        """Drain the half the programs stopped writing at the previous flip, flip, and send
        what the flow table says is due."""
        self._drain(self._active ^ 1)
        complete_until = self._flipped_ns - FLIP_MARGIN_NS
        self._flipped_ns = self._flip()
        now_ns = time.monotonic_ns()
        self._emit(self.table.step(now_ns, complete_until))
        self._sweep_extensions(now_ns, final=False)
        self._update_counters()
        self._trim_at = True  # after this sweep's batches went through the pipeline

    def _final_sweep(self) -> None:
        """At stop, after detaching: both halves drained (after a flip, so no program still
        runs on either), every flow ended."""
        self._drain(self._active ^ 1)
        self._flipped_ns = self._flip()
        self._bpf.ring_buffer_consume()
        self._announce()
        self._drain(self._active ^ 1)
        now_ns = time.monotonic_ns()
        self._emit(self.table.step(now_ns, now_ns, final=True))
        self._sweep_extensions(now_ns, final=True)
        self._update_counters()

    def _sweep_extensions(self, now_ns: int, final: bool) -> None:
        """Extensions with maps of their own (drop.h) sweep them with the flow map."""
        for ext in self.extensions:
            self._pending.extend(ext.sweep(self, now_ns, final) or ())

    def kernel_errors(self) -> list[int]:
        """The per-reason counters, summed over CPUs."""
        table = self._bpf["errors"]
        return [int(table.sum(table.Key(i)).value) for i in range(abi.ERR_MAX)]

    def other_ethertype_packets(self) -> dict[str, int]:
        """Non-IP frames per traced interface name (ifindex when unknown)."""
        out = {}
        for k, v in self._bpf["other_ethertype"].items():
            info = self._known.get(k.value)
            out[info.name if info else str(k.value)] = int(sum(v))
        return out

    def _update_counters(self) -> None:
        """Packets the flow map could not count are lost (KERNEL_FLOW_MAP, one event per
        packet); new-flow events not sent are not: those flows are announced by the sweep."""
        counts = self.kernel_errors()
        last = self._last_errors
        lost = sum(counts[i] - last[i] for i in (abi.ERR_MAP_FULL, abi.ERR_MAP_UPDATE))
        self.stats.add_lost(observer_pb2.KERNEL_FLOW_MAP, lost, packets=lost)
        self._last_errors = counts
        named = abi.error_counts(counts, self._error_names)
        if counts[abi.ERR_MAP_FULL]:
            named["flow_map_full_bytes"] = self._map_full_bytes()
        if self.table.ended_early:
            named["flows_ended_early"] = self.table.ended_early
        self.stats.set_datapath_errors(named)

    def _map_full_bytes(self) -> int:
        table = self._bpf["map_full_bytes"]
        return int(table.sum(table.Key(0)).value)
