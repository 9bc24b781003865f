"""The engine: everything of the TUI that is not drawing. It owns the sources (stream
readers), the aggregator and its pump, and builds a Snapshot of every view a few times a
second for the app, which only draws them and sends back what the user asked for.

Two transports, one core:

* ThreadEngine runs the core in a thread of the app's process (tests, small loads);
* ProcessEngine runs it in a child process (what `podflow tui` uses). Decoding and counting
  20,000 flows/s costs a good part of a core in Python; in the app's process that work
  would take the GIL from the UI thread and every key press would queue behind it. In a
  child it only takes CPU, and the UI answers keys at once.

Messages out of the core are tuples: ("snapshot", Snapshot), ("event", kind, source_id,
text), ("detail", entry_id, text), ("exported", text, severity), ("error", text).
Commands in: ("state", ViewState), ("detail", entry_id), ("export", directory), ("stop",).
"""

from __future__ import annotations

import logging
import multiprocessing
from multiprocessing import resource_tracker
import os
import queue
import threading
import time
import traceback
from typing import Callable

from agent.errors import ExportError

from tui.aggregator import Aggregator
from tui.config import AppConfig
from tui.export import write_export
from tui.filterexpr import FilterError, parse_filter
from tui.format import flow_detail
from tui.snapshot import ViewState, build_snapshot
from tui.policy_source import PolicyCatalogSource
from tui.sources import AgentSource, FileSource, KubernetesDiscovery

log = logging.getLogger("podflow.tui.engine")
Out = Callable[[tuple], None]

# The engine process runs at a lower CPU priority than the UI. Its work (decoding and
# counting every flow) can wait a few milliseconds without anyone noticing; a key press
# cannot. When the cores are busy (on a node, or the agents of the benchmark on the same
# machine), the scheduler then runs the UI first as soon as a key arrives. How much lower
# was measured with bench/tui.py on a saturated machine (load ~6 on 2 cores): nice 0 lost
# nothing but keys took up to 380 ms (p99 240); nice 10 answered keys in p99 106 ms but the
# starved engine lost 7% of the flows (inbox overflow); nice 5 kept p99 ~155 ms and lost
# 0.1%. Whatever is lost is counted and shown (TUI_INBOX), never silent.
ENGINE_NICE = 5
PROCESS_SLICE = 5_000  # responses taken in per turn of the engine's loop (~50 ms of work)


class EngineCore:
    """Sources + aggregator + snapshots. `run` loops until `stop` is set."""

    def __init__(self, config: AppConfig, out: Out, aggregator: Aggregator | None = None):
        self.config = config
        self.out = out
        self.agg = aggregator or Aggregator(max_flows=config.max_flows)
        self.state = ViewState(filter_text=config.initial_filter)
        self.flt = parse_filter(config.initial_filter)
        self.kept: dict[int, object] = {}
        self.sources: list = []
        notify = self._notify
        for address in config.servers:
            self.sources.append(AgentSource(address, self.agg, history=config.history,
                                            notify=notify, backoff_max_s=config.backoff_max_s,
                                            tls=config.tls, status_poll_s=config.status_poll_s))
        for path in config.files:
            self.sources.append(FileSource(path, self.agg, notify=notify))
        if config.metadata:
            k = config.kubernetes
            self.sources.append(PolicyCatalogSource(
                self.agg, config.metadata, kubeconfig=k.kubeconfig if k else None,
                context=k.context if k else None, refresh_s=config.policy_refresh_s))
        if config.kubernetes is not None:
            k = config.kubernetes
            self.sources.append(KubernetesDiscovery(
                self.agg, context=k.context, namespace=k.namespace, selector=k.selector,
                port_name=k.port_name, default_port=k.port, history=config.history,
                notify=notify, poll_s=k.poll_s, kubeconfig=k.kubeconfig, tls=config.tls))

    def _notify(self, event: str, source_id: str, message: str) -> None:
        self.out(("event", event, source_id, message))

    def handle(self, command: tuple) -> bool:
        """Apply one command; True when the views must be rebuilt now."""
        kind = command[0]
        if kind == "state":
            state: ViewState = command[1]
            try:
                self.flt = parse_filter(state.filter_text)
            except FilterError as exc:  # the app validated it; keep the old filter anyway
                self.out(("error", f"filter: {exc}"))
                return False
            self.state = state
            return True
        if kind == "detail":
            entry = self.kept.get(command[1])
            text = flow_detail(entry.flow) if entry is not None else "(no longer kept)"
            self.out(("detail", command[1], text))
        elif kind == "export":
            entries = self.agg.matching(self.flt)
            try:
                path = write_export(entries, command[1], self.flt.text)
            except (OSError, ExportError) as exc:
                self.out(("exported", f"export failed: {exc}", "error"))
            else:
                self.out(("exported",
                          f"exported {len(entries):,} flows to {os.path.abspath(path)}",
                          "information"))
        return False

    def run(self, stop: threading.Event, commands: Callable[[float], list]) -> None:
        for source in self.sources:
            source.start()
        refresh_s = self.config.refresh_s
        last_snapshot = 0.0
        built_version = -1
        try:
            while not stop.is_set():
                # In slices, so that a new filter, pivot or sort is seen within one slice
                # even when a backlog is being worked off, and no pause while a slice waits.
                self.agg.process(max_items=PROCESS_SLICE)
                now_dirty = False
                backlog = self.agg.inbox_len >= PROCESS_SLICE
                for command in commands(0.0 if backlog else 0.05):
                    now_dirty |= self.handle(command)
                now = time.monotonic()
                if now_dirty or (self.agg.version != built_version
                                 and now - last_snapshot >= refresh_s):
                    built_version = self.agg.version
                    last_snapshot = now
                    self.out(("snapshot", build_snapshot(self.agg, self.state, self.flt,
                                                         self.kept)))
        finally:
            for source in self.sources:
                source.stop()


class ThreadEngine:
    """The core in a thread of this process; `deliver` gets its messages (any thread)."""

    def __init__(self, config: AppConfig, deliver: Out, aggregator: Aggregator | None = None):
        self._commands: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self.core = EngineCore(config, deliver, aggregator)
        self._thread = threading.Thread(target=self._run, name="tui-engine", daemon=True)

    def _run(self) -> None:
        try:
            self.core.run(self._stop, self._take)
        except Exception:  # noqa: BLE001  reported to the user instead of dying silently
            self.core.out(("error", traceback.format_exc()))

    def _take(self, timeout_s: float) -> list:
        out = []
        try:
            out.append(self._commands.get(timeout=timeout_s))
            while True:
                out.append(self._commands.get_nowait())
        except queue.Empty:
            pass
        return out

    def start(self) -> None:
        self._thread.start()

    def send(self, command: tuple) -> None:
        self._commands.put(command)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    @property
    def pid(self) -> int:
        return os.getpid()


def _child_main(config: AppConfig, conn) -> None:
    """The engine process. It never writes to the terminal the app draws on: gRPC's own
    logging and any stray output go to /dev/null; errors are sent to the app."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    try:
        os.nice(ENGINE_NICE)
    except OSError:  # not allowed here: the engine runs at the UI's priority
        pass
    send_lock = threading.Lock()
    stop = threading.Event()

    def out(message: tuple) -> None:
        try:
            with send_lock:
                conn.send(message)
        except (OSError, EOFError, ValueError):
            stop.set()  # the app is gone

    def take(timeout_s: float) -> list:
        messages = []
        try:
            if conn.poll(timeout_s):
                while conn.poll():
                    message = conn.recv()
                    if message[0] == "stop":
                        stop.set()
                    else:
                        messages.append(message)
        except (OSError, EOFError):
            stop.set()
        return messages

    try:
        EngineCore(config, out).run(stop, take)
    except Exception:  # noqa: BLE001  reported to the user instead of dying silently
        out(("error", traceback.format_exc()))


class ProcessEngine:
    """The core in a child process (spawned: no threads or gRPC state inherited)."""

    def __init__(self, config: AppConfig, deliver: Out):
        # Start multiprocessing's resource tracker now: once Textual owns the terminal,
        # sys.stderr has no file descriptor and the tracker could not be started.
        resource_tracker.ensure_running()
        ctx = multiprocessing.get_context("spawn")
        self._conn, child_conn = ctx.Pipe()
        self._deliver = deliver
        self._send_lock = threading.Lock()
        self._process = ctx.Process(target=_child_main, args=(config, child_conn),
                                    name="podflow-tui-engine", daemon=True)
        self._child_conn = child_conn
        self._reader = threading.Thread(target=self._read, name="tui-engine-reader",
                                        daemon=True)

    def start(self) -> None:
        self._process.start()
        self._child_conn.close()
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                message = self._conn.recv()
            except (EOFError, OSError):
                if self._process.exitcode not in (None, 0):
                    self._deliver(("error", f"the engine process exited with code "
                                            f"{self._process.exitcode}"))
                return
            self._deliver(message)

    def send(self, command: tuple) -> None:
        try:
            with self._send_lock:
                self._conn.send(command)
        except (OSError, ValueError):
            pass  # the engine is gone; the reader reports it

    def stop(self) -> None:
        if self._process.pid is None:  # never started
            return
        self.send(("stop",))
        self._process.join(timeout=5)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(timeout=2)
        self._conn.close()

    @property
    def pid(self) -> int:
        return self._process.pid
