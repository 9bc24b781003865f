"""The agent's datapath stage: compile and load the eBPF programs (bpf/podflow.c), attach them
to pod veths and bridges as they come and go, and turn the kernel's counters into records.

This is the ONLY module that imports bcc. It loads, attaches and owns the kernel objects; the
reader thread (reader.py) turns the ring buffer and the two halves of the flow map into
batches of records for the agent's pipeline (agent/main.py).

Around it, each in its own module: the environment checks (environment.py), raw bpf(2)
calls (bpfsys.py), TC/tcx attachment (tc.py), which interfaces to trace (interfaces.py),
the struct mirrors of bpf/types.h (abi.py), the reader (reader.py), the flow table between
records (flowtable.py), records as columns (batch.py), memory given back (memory.py),
records -> Flow one at a time (decode.py, the drop records' way), and features with kernel
code of their own (extension.py).
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

from agent.datapath import abi, bpfsys, decode, interfaces, memory, tc
from agent.datapath.environment import (check_environment, explain_refusal,
                                        probe_perf_event_open)
from agent.datapath.extension import DatapathExtension, EventHandler
from agent.datapath.reader import FlowMaps, FlowReader
from agent.errors import AttachError, DatapathError
from agent.stage import Stage
from agent.stats import (DATAPATH_FAILED, DATAPATH_STARTING, DATAPATH_STOPPING,
                         DATAPATH_TRACING, AgentStats)

if TYPE_CHECKING:
    from agent.config import DatapathSection

log = logging.getLogger("podflow.datapath")

BPF_DIR = Path(os.environ.get("PODFLOW_BPF_DIR") or Path(__file__).resolve().parents[2] / "bpf")
PROG_INGRESS = "podflow_ingress"  # also the TC filter names (agent/datapath/tc.py NAME_PREFIX)
PROG_EGRESS = "podflow_egress"
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
TC_CHECK_S = 5.0  # how often tc-mode interfaces are checked for foreign filters ahead of ours
NEW_EVENT_WINDOW_S = 0.1  # the new-flow event budget is spent per window (bpf/maps.h)
READER_STOP_S = 3.0  # the agent stops within 5 s at any load: the reader's share


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
                 pipeline: Callable[[object], None],
                 extensions: Sequence[DatapathExtension] = ()):
        self.config = config
        self.stats = stats
        self.node_name = stats.node_name
        self.pipeline = pipeline
        self.extensions = list(extensions)
        self.clock = decode.KtimeClock.now()
        self._bpf = None
        self.reader: FlowReader | None = None
        self._progs: dict[str, tuple[int, str]] = {}
        self._prog_ids: dict[str, int] = {}
        self._attached_extensions: list[DatapathExtension] = []
        self._next_tc_check = 0.0
        self._ipr: IPRoute | None = None
        self._lock = threading.Lock()  # interface set and netlink socket
        self._attached: dict[int, tc.Attachment] = {}
        self._known: dict[int, decode.InterfaceInfo] = {}  # every interface ever traced
        self.attach_errors: dict[str, str] = {}
        self._use_tcx = config.attach_mode in ("tcx", "auto")
        self._handlers: dict[int, EventHandler] = {}
        self._error_names: dict[int, str] = {}
        self._stop = threading.Event()
        self._reader: threading.Thread | None = None
        self._watcher: interfaces.LinkWatcher | None = None

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Check the node, load, attach, start the reader; the datapath is TRACING once this
        returns (gRPC health SERVING), FAILED when it raises."""
        self.stats.set_datapath_state(DATAPATH_STARTING)
        try:
            check_environment()
            self._start()
        except BaseException as exc:
            self.stop()  # release whatever was loaded or attached before the failure
            self.stats.set_datapath_state(DATAPATH_FAILED, str(exc) or type(exc).__name__)
            raise
        self.stats.set_datapath_state(DATAPATH_TRACING)

    def _start(self) -> None:
        self._load()
        self._ipr = IPRoute()
        removed = self._remove_all_leftovers()
        if removed:
            log.info("removed %d podflow filter(s) left by a previous agent", removed)
        self._watcher = interfaces.LinkWatcher(self.reconcile, on_tick=self.check_chains)
        self._watcher.start()  # subscribe before the first read: no event falls in between
        self.reconcile()
        self._warn_unmatched_globs()
        self._reader = threading.Thread(target=self._run_reader, name="podflow-reader",
                                        daemon=True)
        self._reader.start()
        log.info("datapath tracing %s", ", ".join(self.traced_names()) or "no interface yet")

    def stop(self) -> None:
        """Detach everything first (no new packets), then emit final records for what is
        left in the map, then unload."""
        if self.stats.datapath_state == DATAPATH_TRACING:
            self.stats.set_datapath_state(DATAPATH_STOPPING)
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher = None
        with self._lock:
            for attachment in list(self._attached.values()):
                self._detach(attachment)
        self._stop.set()
        if self._reader is not None:
            # the final sweep: both halves drained, every flow ended (seconds at most)
            self._reader.join(timeout=READER_STOP_S)
            if self._reader.is_alive():
                log.error("the datapath reader did not finish its final sweep in %.0f s",
                          READER_STOP_S)
            self._reader = None
        if self._bpf is not None:
            for ext in self._attached_extensions:  # not one that failed to attach
                ext.detach(self._bpf)
            self._attached_extensions = []
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
        source = expand_includes(BPF_DIR / "podflow.c")
        try:
            self._bpf = BPF(text=source, cflags=cflags)
            for direction, name in (("ingress", PROG_INGRESS), ("egress", PROG_EGRESS)):
                fn = self._bpf.load_func(name, BPF.SCHED_CLS)
                self._progs[direction] = (fn.fd, name)
                self._prog_ids[direction] = bpfsys.prog_id(fn.fd)
        # bcc raises plain Exception for compile and verifier failures
        except Exception as exc:  # noqa: BLE001
            raise DatapathError(f"cannot compile or load bpf/podflow.c: {exc} "
                                f"({_why_load_failed(exc)})") from exc
        bpf = self._bpf
        maps = FlowMaps((bpf["flows_a"].map_fd, bpf["flows_b"].map_fd),
                        bpf["flow_maps"].map_fd, bpf["flow_sel"].map_fd,
                        self.config.flow_map_size)
        self.reader = FlowReader(self.config, self.stats, self.pipeline, maps, self._known,
                                 self.clock, consume_ring=bpf.ring_buffer_consume,
                                 sweep_extensions=self._sweep_extensions,
                                 kernel_errors=self.kernel_errors,
                                 map_full_bytes=self._map_full_bytes,
                                 error_names=self._error_names)
        self._handlers[abi.EVENT_FLOW_NEW] = lambda _dp, raw: self.reader.on_flow_event(raw)
        bpf["events"].open_ring_buffer(self._on_event)
        for ext in self.extensions:
            self._attach_extension(ext)
        memory.release_compiler()  # the compiler is not needed again

    def _attach_extension(self, ext: DatapathExtension) -> None:
        """Attach one extension; an optional one (the drop tracer) that cannot attach is
        switched off with a warning and a counted `<name>_disabled`, and never detached."""
        try:
            ext.attach(self._bpf)
        # bcc raises plain Exception (e.g. a tracepoint perf_event_open() refused)
        except Exception as exc:  # noqa: BLE001
            if not ext.optional:
                raise DatapathError(f"cannot attach {ext.name}: {exc}") from exc
            reason = str(exc)
            err = probe_perf_event_open()
            if err:
                reason = f"{reason}: {explain_refusal('perf_event_open', 'CAP_PERFMON', err)}"
            log.warning("%s are off, flows are traced without them: %s", ext.name, reason)
            self.stats.add_error(f"{ext.name}_disabled")
            return
        self._attached_extensions.append(ext)

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
                    self.stats.set_interface_notes(attachment.ifname, {})
                    log.info("released %s (deleted)", attachment.ifname)
                elif ifindex not in wanted:
                    self._detach(attachment)
            for ifindex, info in wanted.items():
                current = self._attached.get(ifindex)
                if current is not None:
                    if current.ifname != info.name:  # renamed (CNIs create, then rename)
                        log.info("%s is now %s", current.ifname, info.name)
                        self.stats.set_interface_notes(current.ifname, {})
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
                self._note_chain(self._attached[ifindex])

    # -- who runs before us ---------------------------------------------------------------

    def _note_chain(self, attachment: tc.Attachment) -> None:
        """tc mode: what runs before our filters on this interface and may end the chain,
        in the log (when it changes) and in ServerStatus.interface_notes. (tcx links are at
        the head: nothing runs before them; check_chains keeps it so.)"""
        if attachment.mode != "tc":
            return
        try:
            notes = tc.chain_notes(self._ipr, attachment)
        except NetlinkError as exc:
            log.warning("cannot list the filters of %s: %s", attachment.ifname, exc)
            return
        self._set_notes(attachment, notes)

    def _set_notes(self, attachment: tc.Attachment, notes: dict[str, str]) -> None:
        before = {n.hook: n.note for n in self.stats.snapshot_notes()
                  if n.interface == attachment.ifname}
        if notes == before:
            return
        for hook, note in sorted(notes.items()):
            if before.get(hook) != note:
                log.warning("%s %s: %s", attachment.ifname, hook, note)
        self.stats.set_interface_notes(attachment.ifname, notes)

    def check_chains(self) -> None:
        """Called about once a second (the link watcher's tick): tcx links go back to the
        head of a chain a program was put before them in (BPF_PROG_QUERY's revision says
        when a chain changed: one syscall per hook); tc filters are checked every
        TC_CHECK_S for foreign filters that run first."""
        now = time.monotonic()
        check_tc = now >= self._next_tc_check
        if check_tc:
            self._next_tc_check = now + TC_CHECK_S
        with self._lock:
            if self._ipr is None:
                return
            progs = {d: (self._progs[d][0], self._prog_ids[d]) for d in self._progs}
            for attachment in list(self._attached.values()):
                if attachment.mode == "tcx":
                    self._set_notes(attachment, tc.keep_first(attachment, progs, now))
                elif check_tc:
                    self._note_chain(attachment)

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
            self.reader.add_flows(flows)
        return 0

    def _run_reader(self) -> None:
        """The reader thread: when it ends other than by stop(), nothing is counted any
        more, and readiness says so (FAILED: gRPC health NOT_SERVING)."""
        try:
            self.reader.run(self._stop)
        except Exception as exc:  # noqa: BLE001  the thread's last resort: reported, not hidden
            log.exception("the datapath reader stopped")
            self.stats.set_datapath_state(DATAPATH_FAILED, f"the reader stopped: {exc!r}")
            return
        if not self._stop.is_set():
            self.stats.set_datapath_state(DATAPATH_FAILED, "the reader stopped")

    @property
    def records_emitted(self) -> int:
        return self.reader.records_emitted if self.reader is not None else 0

    def _sweep_extensions(self, now_ns: int, final: bool) -> list:
        """Extensions with maps of their own (drop.h) sweep them with the flow map."""
        out: list = []
        for ext in self._attached_extensions:
            out.extend(ext.sweep(self, now_ns, final) or ())
        return out

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

    def _map_full_bytes(self) -> int:
        table = self._bpf["map_full_bytes"]
        return int(table.sum(table.Key(0)).value)


def _why_load_failed(exc: Exception) -> str:
    """What to look at when bcc could not compile or load the program: bpf() itself refused
    (seccomp, a security module) is not a headers problem."""
    err = bpfsys.probe_map_create()
    if err:
        return explain_refusal("bpf", "CAP_BPF", err)
    if "compile" in str(exc).lower():
        return (f"kernel headers at /lib/modules/{platform.release()}/build; see the compiler "
                "output above")
    return "the kernel refused it: see the verifier output above"
