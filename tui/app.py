"""The Textual app: draws the engine's snapshots and turns keys into requests, nothing more.

The engine (tui.engine: stream readers, aggregator, snapshot builder) runs in a thread or a
child process and posts SnapshotBuilt a few times a second, plus NodeConnected / NodeLost /
NodeGone as they happen. Switching views draws the latest snapshot at once; a new filter,
pivot or sort is sent to the engine, which answers with a fresh snapshot. `create_app` is
the factory the CLI and the tests use.
"""

from __future__ import annotations

import dataclasses
import gc
import threading
import time

from rich.markup import escape
from textual import events
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.widgets import ContentSwitcher, Footer, Input

from tui.aggregator import Aggregator, Summary
from tui.config import AppConfig, KubernetesOptions
from tui.engine import ProcessEngine, ThreadEngine
from tui.filter_line import FilterLine
from tui.filterexpr import FilterError, parse_filter
from tui.flows_view import FlowsView
from tui.messages import (DetailFetched, EngineFailed, ExportFinished, NodeConnected, NodeGone,
                          NodeLost, SnapshotBuilt)
from tui.nodes_view import NodesView
from tui.policies_view import PoliciesView
from tui.services_view import ServicesView
from tui.snapshot import Snapshot, ViewState
from tui.status_bar import StatusBar
from tui.top_view import TopView

__all__ = ["AppConfig", "KubernetesOptions", "PodflowApp", "create_app"]

# After a key press, snapshots wait this long before they are drawn: the key's own screen
# update comes first instead of queuing behind a redraw of the whole table.
KEY_QUIET_S = 0.15

VIEWS = {"flows": "Flows", "top": "Top", "services": "Services", "nodes": "Nodes",
         "policies": "Policies"}
_EVENTS = {"connected": NodeConnected, "lost": NodeLost, "gone": NodeGone}


class PodflowApp(App):
    TITLE = "podflow"
    AUTO_FOCUS = None  # nothing takes focus but the filter line while it is open
    CSS = """
    ContentSwitcher { height: 1fr; }
    """
    BINDINGS = [
        Binding("1", "view('flows')", "Flows"),
        Binding("2", "view('top')", "Top"),
        Binding("3", "view('services')", "Services"),
        Binding("4", "view('nodes')", "Nodes"),
        Binding("5", "view('policies')", "Policies"),
        Binding("slash", "open_filter", "Filter"),
        Binding("space", "pause", "Pause/Live"),
        Binding("d", "detail", "Detail"),
        Binding("p", "pivot", "Pivot"),
        Binding("o", "sort", "Sort"),
        Binding("e", "export", "Export"),
        Binding("escape", "close_filter", "Close filter", show=False),
        Binding("q", "quit", "Quit"),
        # The tables never take focus (see on_mount): the app moves their cursor.
        Binding("up", "cursor('cursor_up')", show=False),
        Binding("down", "cursor('cursor_down')", show=False),
        Binding("pageup", "cursor('page_up')", show=False),
        Binding("pagedown", "cursor('page_down')", show=False),
        Binding("home", "cursor('scroll_top')", show=False),
        Binding("end", "cursor('scroll_bottom')", show=False),
    ]

    async def action_help_quit(self) -> None:
        """Ctrl-C: Textual only says "press ctrl+q"; with `ctrl_c_quits` (the demo, where a
        newcomer expects Ctrl-C to end it) it quits."""
        if self.config.ctrl_c_quits:
            self.exit()
        else:
            await super().action_help_quit()

    def __init__(self, config: AppConfig, aggregator: Aggregator | None = None):
        super().__init__()
        self.config = config
        self.flt = parse_filter(config.initial_filter)
        self.paused = False
        self.note = ""
        # source id -> why it is not streaming (NodeLost), newest last: the status bar shows
        # the newest, so a port-forward's refusal is on screen, not only in the Nodes view
        self.unreachable: dict[str, str] = {}
        self.snapshot: Snapshot | None = None
        # The newest snapshot not drawn yet. Only one SnapshotBuilt is ever waiting in the
        # app's queue: a snapshot that arrives while one waits replaces it, so a slow
        # redraw never leaves a backlog of stale snapshots ahead of the next key press.
        self._latest: Snapshot | None = None
        self._latest_lock = threading.Lock()
        self._key_at = 0.0            # time.monotonic() of the last key press
        self._deferred_draw = None    # the timer drawing a snapshot held back by a key
        if config.engine == "process":
            self.engine = ProcessEngine(config, self._from_engine)
        else:
            self.engine = ThreadEngine(config, self._from_engine, aggregator)

    # ---- layout and life cycle ------------------------------------------------------

    def compose(self) -> ComposeResult:
        with ContentSwitcher(initial="flows"):
            yield FlowsView(id="flows")
            yield TopView(id="top")
            yield ServicesView(id="services")
            yield NodesView(id="nodes")
            yield PoliciesView(id="policies")
        yield FilterLine(id="filter-line")
        yield StatusBar(id="status-bar")
        yield Footer()

    def on_mount(self) -> None:
        # Focus moving between the views' tables makes Textual's Footer rebuild its keys,
        # and those rebuilt widgets were measured to pile up (memory grew ~20 MB/min while
        # switching views). The tables (LineTable) never take focus; the app drives their
        # cursors.
        self.set_focus(None)
        self.query_one(TopView).show_header()
        self._show_status()
        self.engine.start()
        # Python's full (generation 2) garbage collection walks every tracked object; with
        # Textual's ~70k objects from start-up that took 40-70 ms under load, and a key
        # pressed meanwhile waited for it. Those objects live as long as the app: moved out
        # of the collector's sight, a full collection only walks what came after.
        gc.collect()
        gc.freeze()

    def on_unmount(self) -> None:
        self.engine.stop()
        gc.unfreeze()  # collectable again (several apps in one process: the tests)

    def _from_engine(self, message: tuple) -> None:
        """Called from the engine's thread (or its pipe reader): post a fact to the app."""
        kind = message[0]
        if kind == "snapshot":
            with self._latest_lock:
                waiting = self._latest is not None
                self._latest = message[1]
            if not waiting:
                self.post_message(SnapshotBuilt(message[1]))
        elif kind == "event":
            self.post_message(_EVENTS[message[1]](message[2], message[3]))
        elif kind == "detail":
            self.post_message(DetailFetched(message[1], message[2]))
        elif kind == "exported":
            self.post_message(ExportFinished(message[1], message[2]))
        elif kind == "error":
            self.post_message(EngineFailed(message[1]))

    def _send_state(self) -> None:
        top = self.query_one(TopView)
        self.engine.send(("state", ViewState(self.flt.text, top.pivot, top.sort)))

    # ---- facts from the engine ------------------------------------------------------

    async def on_event(self, event: events.Event) -> None:
        if isinstance(event, events.Key):
            self._key_at = time.monotonic()
        await super().on_event(event)

    def on_snapshot_built(self, message: SnapshotBuilt) -> None:
        with self._latest_lock:
            self.snapshot = self._latest or message.snapshot
            self._latest = None
        wait_s = KEY_QUIET_S - (time.monotonic() - self._key_at)
        if wait_s > 0:
            if self._deferred_draw is None:
                self._deferred_draw = self.set_timer(wait_s, self._draw_snapshot)
            return
        self._draw_snapshot()

    def _draw_snapshot(self) -> None:
        """Draw self.snapshot (the newest) in the current view and the status bar."""
        self._deferred_draw = None
        if not self.paused:
            self._draw_view()
        self._show_status()

    def on_node_connected(self, message: NodeConnected) -> None:
        self.unreachable.pop(message.source_id, None)
        self._show_status()

    def on_node_lost(self, message: NodeLost) -> None:
        self.unreachable.pop(message.source_id, None)
        if message.reason:
            self.unreachable[message.source_id] = message.reason
        self._show_status()

    def on_node_gone(self, message: NodeGone) -> None:
        self.unreachable.pop(message.source_id, None)
        self._show_status()

    def on_detail_fetched(self, message: DetailFetched) -> None:
        if self.is_running:
            self.query_one(FlowsView).show_detail(message.entry_id, message.text)

    def on_flows_view_detail_wanted(self, message: FlowsView.DetailWanted) -> None:
        self.engine.send(("detail", message.entry_id))

    def on_export_finished(self, message: ExportFinished) -> None:
        self.note = message.text
        self.notify(message.text, severity=message.severity, timeout=8)
        self._show_status()

    def on_engine_failed(self, message: EngineFailed) -> None:
        self.note = message.text.strip().splitlines()[-1]
        self.notify(message.text, severity="error", timeout=15)
        self._show_status()

    # ---- drawing --------------------------------------------------------------------

    @property
    def current_view(self) -> str:
        switcher = self.query(ContentSwitcher)
        return (switcher.first().current if switcher else None) or "flows"

    def _draw_view(self) -> None:
        # Nothing is drawn once the app shuts down: Textual then removes widgets children
        # first while messages (a snapshot) may still be handled.
        if self.snapshot is not None and self.is_running:
            self.query_one(f"#{self.current_view}").show(self.snapshot)

    def _show_status(self) -> None:
        bars = self.query(StatusBar)
        if not bars or not self.is_running:
            return
        summary = self.snapshot.summary if self.snapshot is not None else Summary(0, 0, 0, 0, 0)
        note = self.note
        if self.unreachable:
            reason = escape(list(self.unreachable.values())[-1])
            more = len(self.unreachable) - 1
            lost = f"[b red]{reason}[/]" + (f" (+{more} more: 4 Nodes)" if more else "")
            note = f"{lost} │ {note}" if note else lost
        bars.first().show(summary, self.paused, self.flt.text, VIEWS[self.current_view], note)

    def _focus_view(self) -> None:
        self.set_focus(None)  # keys go to the app's bindings (see on_mount)

    def action_cursor(self, action: str) -> None:
        getattr(self.query_one(f"#{self.current_view}").table, f"action_{action}")()

    # ---- keys -----------------------------------------------------------------------

    def action_view(self, name: str) -> None:
        self.query_one(ContentSwitcher).current = name
        self._focus_view()
        self._draw_view()
        self._show_status()

    def action_pause(self) -> None:
        self.paused = not self.paused
        if not self.paused:
            self._draw_view()
        self._show_status()

    def action_detail(self) -> None:
        if self.current_view != "flows":
            self.action_view("flows")
        self.query_one(FlowsView).toggle_detail()

    def action_pivot(self) -> None:
        self._change_top(TopView.next_pivot)

    def action_sort(self) -> None:
        self._change_top(TopView.next_sort)

    def _change_top(self, step) -> None:
        """`p`/`o`: elsewhere they open the Top view; on it they take the next pivot or
        sort and ask the engine for a snapshot built that way."""
        if self.current_view != "top":
            self.action_view("top")
            return
        top = self.query_one(TopView)
        step(top)
        top.show_header(" · updating…")
        self._send_state()

    def action_open_filter(self) -> None:
        self.query_one(FilterLine).open(self.flt.text)

    def action_close_filter(self) -> None:
        line = self.query_one(FilterLine)
        if line.has_class("open"):
            line.close()
            self._focus_view()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        line = self.query_one(FilterLine)
        try:
            self.flt = parse_filter(event.value)
        except FilterError as exc:
            line.show_error(str(exc))  # the old filter stays in force
            return
        line.close()
        self._focus_view()
        self._send_state()
        self._show_status()

    def action_export(self) -> None:
        self.note = "exporting…"
        self._show_status()
        self.engine.send(("export", self.config.export_dir))


def create_app(config: AppConfig | None = None, aggregator: Aggregator | None = None,
               **kwargs) -> PodflowApp:
    """The factory the CLI and the tests share: `create_app(servers=[...], files=[...])`,
    `engine="process"` to run streams and aggregation in a child process."""
    if config is None:
        config = AppConfig(**kwargs)
    elif kwargs:
        config = dataclasses.replace(config, **kwargs)
    return PodflowApp(config, aggregator)
