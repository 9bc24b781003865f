"""The Textual app: wires sources, the aggregator and the views, and nothing more.

Readers (tui.sources) feed the aggregator from their own threads; a pump thread runs the
aggregator and posts FlowsReceived a few times a second; a timer redraws the visible view
and the status bar from the aggregator when something changed. Keys switch views, filter,
pause, export. `create_app` is the factory the CLI and the tests use.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field

from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.widgets import ContentSwitcher, Footer, Input

from tui.aggregator import Aggregator
from tui.export import write_export
from tui.filter_line import FilterLine
from tui.filterexpr import FilterError, FlowFilter, parse_filter
from tui.flows_view import FlowsView
from tui.messages import FlowsReceived, NodeConnected, NodeGone, NodeLost
from tui.nodes_view import NodesView
from tui.services_view import ServicesView
from tui.sources import AgentSource, FileSource, KubernetesDiscovery
from tui.status_bar import StatusBar
from tui.top_view import TopView

VIEWS = {"flows": "Flows", "top": "Top", "services": "Services", "nodes": "Nodes"}


@dataclass
class KubernetesOptions:
    context: str | None = None
    namespace: str = "podflow"
    selector: str = "app.kubernetes.io/name=podflow,app.kubernetes.io/component=agent"
    port_name: str = "grpc"
    port: int = 4245
    poll_s: float = 5.0
    kubeconfig: str | None = None  # None: $KUBECONFIG or ~/.kube/config


@dataclass
class AppConfig:
    servers: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    kubernetes: KubernetesOptions | None = None
    history: int = 1000          # flows asked from each agent's history on connect
    max_flows: int = 10_000      # flow records kept (Flows view, export)
    export_dir: str = "."
    refresh_s: float = 0.25      # redraw period of the visible view
    initial_filter: str = ""
    backoff_max_s: float = 30.0
    tls: object = None           # agent.client.TLSOptions for --server / port-forwarded agents
    status_poll_s: float = 3.0


class PodflowApp(App):
    TITLE = "podflow"
    CSS = """
    ContentSwitcher { height: 1fr; }
    """
    BINDINGS = [
        Binding("1", "view('flows')", "Flows"),
        Binding("2", "view('top')", "Top"),
        Binding("3", "view('services')", "Services"),
        Binding("4", "view('nodes')", "Nodes"),
        Binding("slash", "open_filter", "Filter"),
        Binding("space", "pause", "Pause/Live"),
        Binding("d", "detail", "Detail"),
        Binding("p", "pivot", "Pivot"),
        Binding("o", "sort", "Sort"),
        Binding("e", "export", "Export"),
        Binding("escape", "close_filter", "Close filter", show=False),
        Binding("q", "quit", "Quit"),
    ]

    def __init__(self, config: AppConfig, aggregator: Aggregator | None = None):
        super().__init__()
        self.config = config
        self.agg = aggregator or Aggregator(max_flows=config.max_flows)
        self.flt: FlowFilter = parse_filter(config.initial_filter)
        self.paused = False
        self.note = ""
        self._dirty = True
        self._drawn_version = -1
        self._stopping = threading.Event()
        self.sources: list = []
        for address in config.servers:
            self.sources.append(AgentSource(address, self.agg, history=config.history,
                                            notify=self._notify_from_thread,
                                            backoff_max_s=config.backoff_max_s, tls=config.tls,
                                            status_poll_s=config.status_poll_s))
        for path in config.files:
            self.sources.append(FileSource(path, self.agg, notify=self._notify_from_thread))
        if config.kubernetes is not None:
            k = config.kubernetes
            self.sources.append(KubernetesDiscovery(
                self.agg, context=k.context, namespace=k.namespace, selector=k.selector,
                port_name=k.port_name, default_port=k.port, history=config.history,
                notify=self._notify_from_thread, poll_s=k.poll_s, kubeconfig=k.kubeconfig,
                tls=config.tls))

    # ---- layout and life cycle ------------------------------------------------------

    def compose(self) -> ComposeResult:
        with ContentSwitcher(initial="flows"):
            yield FlowsView(id="flows")
            yield TopView(id="top")
            yield ServicesView(id="services")
            yield NodesView(id="nodes")
        yield FilterLine(id="filter-line")
        yield StatusBar(id="status-bar")
        yield Footer()

    def on_mount(self) -> None:
        for source in self.sources:
            source.start()
        self._pump_thread = threading.Thread(target=self._pump, name="tui-pump", daemon=True)
        self._pump_thread.start()
        self.set_interval(self.config.refresh_s, self._tick)
        self._redraw()

    def on_unmount(self) -> None:
        self._stopping.set()
        for source in self.sources:
            source.stop()

    def _pump(self) -> None:
        """The aggregator's own thread: take in what the readers fed, a few times a second
        tell the app how much arrived (one message per period, not per flow)."""
        pending = 0
        last_post = 0.0
        while not self._stopping.is_set():
            pending += self.agg.process()
            now = time.monotonic()
            if pending and now - last_post >= self.config.refresh_s:
                self.post_message(FlowsReceived(pending))
                pending, last_post = 0, now
            self._stopping.wait(0.05)

    def _notify_from_thread(self, event: str, source_id: str, message: str) -> None:
        msg = {"connected": NodeConnected, "lost": NodeLost, "gone": NodeGone}[event]
        self.post_message(msg(source_id, message))

    # ---- facts from the background --------------------------------------------------

    def on_flows_received(self, _message: FlowsReceived) -> None:
        self._dirty = True

    def on_node_connected(self, _message: NodeConnected) -> None:
        self._redraw(status_only=self.paused)

    def on_node_lost(self, message: NodeLost) -> None:
        self._redraw(status_only=self.paused)

    def on_node_gone(self, message: NodeGone) -> None:
        self._redraw(status_only=self.paused)

    # ---- drawing --------------------------------------------------------------------

    @property
    def current_view(self) -> str:
        return self.query_one(ContentSwitcher).current or "flows"

    def _tick(self) -> None:
        if self._dirty or self.agg.version != self._drawn_version:
            self._redraw(status_only=self.paused)

    def _redraw(self, status_only: bool = False) -> None:
        self._dirty = False
        self._drawn_version = self.agg.version
        if not status_only:
            view = self.query_one(f"#{self.current_view}")
            view.refresh_from(self.agg, self.flt)
        self.query_one(StatusBar).show(self.agg.summary(), self.paused, self.flt.text,
                                       VIEWS[self.current_view], self.note)

    # ---- keys -----------------------------------------------------------------------

    def action_view(self, name: str) -> None:
        self.query_one(ContentSwitcher).current = name
        self.query_one(f"#{name}").query_one("DataTable").focus()
        self._redraw()

    def action_pause(self) -> None:
        self.paused = not self.paused
        self._redraw()

    def action_detail(self) -> None:
        if self.current_view != "flows":
            self.action_view("flows")
        self.query_one(FlowsView).toggle_detail()

    def action_pivot(self) -> None:
        if self.current_view != "top":
            self.query_one(ContentSwitcher).current = "top"
        else:
            self.query_one(TopView).next_pivot()
        self._redraw()

    def action_sort(self) -> None:
        if self.current_view != "top":
            self.query_one(ContentSwitcher).current = "top"
        else:
            self.query_one(TopView).next_sort()
        self._redraw()

    def action_open_filter(self) -> None:
        self.query_one(FilterLine).open(self.flt.text)

    def action_close_filter(self) -> None:
        line = self.query_one(FilterLine)
        if line.has_class("open"):
            line.close()
            self.query_one(f"#{self.current_view}").query_one("DataTable").focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        line = self.query_one(FilterLine)
        try:
            self.flt = parse_filter(event.value)
        except FilterError as exc:
            line.show_error(str(exc))  # the old filter stays in force
            return
        line.close()
        self.query_one(f"#{self.current_view}").query_one("DataTable").focus()
        self._redraw()

    def action_export(self) -> None:
        entries = self.agg.matching(self.flt)
        directory = self.config.export_dir
        filter_text = self.flt.text

        def work() -> None:
            try:
                path = write_export(entries, directory, filter_text)
            except OSError as exc:
                self.call_from_thread(self._exported, f"export failed: {exc}", "error")
                return
            self.call_from_thread(self._exported,
                                  f"exported {len(entries):,} flows to {os.path.abspath(path)}",
                                  "information")
        self.note = f"exporting {len(entries):,} flows…"
        self._redraw(status_only=True)
        self.run_worker(work, thread=True, exclusive=False, group="export")

    def _exported(self, text: str, severity: str) -> None:
        self.note = text
        self.notify(text, severity=severity, timeout=8)
        self._redraw(status_only=True)


def create_app(config: AppConfig | None = None, aggregator: Aggregator | None = None,
               **kwargs) -> PodflowApp:
    """The factory the CLI and the tests share: `create_app(servers=[...], files=[...])`."""
    if config is None:
        config = AppConfig(**kwargs)
    return PodflowApp(config, aggregator)
