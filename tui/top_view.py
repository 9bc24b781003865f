"""TopView: traffic pivoted by namespace, workload, pod, Service, port, verdict or node,
sorted by bytes, packets, flows or rate, with each row's recent rate as a sparkline."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.widgets import Sparkline

from tui.aggregator import PIVOTS, SORTS
from tui.format import human_bytes, human_rate, sparkline
from tui.snapshot import TREND_S, Snapshot
from tui.table_view import TableView


class TopView(TableView):
    DEFAULT_CSS = """
    TopView > Sparkline { height: 3; }
    """
    NAME = "top"
    ZEBRA = True

    def __init__(self, **kwargs):
        self.pivot = "namespace"
        self.sort = "bytes"
        self.COLUMNS = self._columns()
        super().__init__(**kwargs)
        self.spark = Sparkline([0], id="top-rate")

    def compose_extra(self) -> ComposeResult:
        yield self.spark

    def _columns(self) -> tuple[str, ...]:
        return (self.pivot, "bytes", "packets", "flows", "rate", f"last {TREND_S}s")

    def next_pivot(self) -> None:
        self.pivot = PIVOTS[(PIVOTS.index(self.pivot) + 1) % len(PIVOTS)]

    def next_sort(self) -> None:
        self.sort = SORTS[(SORTS.index(self.sort) + 1) % len(SORTS)]

    def _header(self, note: str = "") -> str:
        return (f"Top by [b]{self.pivot}[/b] (p: next), sorted by [b]{self.sort}[/b] (o: next)"
                f"{note}")

    def show_header(self, note: str = "") -> None:
        self.header.update(self._header(note))

    def show(self, snapshot: Snapshot) -> None:
        state = snapshot.state
        if (state.pivot, state.sort) != (self.pivot, self.sort):
            self.show_header(" · updating…")  # a snapshot for the new choice is on its way
            return
        rows = snapshot.top
        total = snapshot.total_series
        total_rate = sum(total[-snapshot.rate_s:]) / snapshot.rate_s if total else 0.0
        self.spark.data = total or [0]
        columns = self._columns()
        if self.table.labels != columns:
            self.table.set_columns(columns)  # a new pivot: its label heads the first column
        self.show_rows(
            self._header(f" · {len(rows)} rows · all matching traffic now "
                         f"{human_rate(total_rate)} (each packet counted once)"),
            [(r.label, human_bytes(r.bytes), f"{r.packets:,}", f"{r.flows:,}",
              human_rate(r.rate_bps), sparkline(r.series, TREND_S)) for r in rows])
