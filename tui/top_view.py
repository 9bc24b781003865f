"""TopView: traffic pivoted by namespace, workload, pod, Service, port, verdict or node,
sorted by bytes, packets, flows or rate, with each row's recent rate as a sparkline."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import DataTable, Sparkline, Static

from tui.aggregator import PIVOTS, SORTS
from tui.fast_table import FastTable, plain
from tui.format import human_bytes, human_rate, sparkline
from tui.snapshot import TREND_S, Snapshot


class TopView(Vertical):
    DEFAULT_CSS = """
    TopView > #top-header { height: 1; }
    TopView > Sparkline { height: 3; }
    TopView > DataTable { height: 1fr; }
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.pivot = "namespace"
        self.sort = "bytes"

    def compose(self) -> ComposeResult:
        yield Static("", id="top-header")
        yield Sparkline([0], id="top-rate")
        table = FastTable(id="top-table", cursor_type="row", zebra_stripes=True)
        table.add_columns(*self._columns())
        yield table

    def _columns(self) -> tuple[str, ...]:
        return (self.pivot, "bytes", "packets", "flows", "rate", f"last {TREND_S}s")

    def next_pivot(self) -> None:
        self.pivot = PIVOTS[(PIVOTS.index(self.pivot) + 1) % len(PIVOTS)]

    def next_sort(self) -> None:
        self.sort = SORTS[(SORTS.index(self.sort) + 1) % len(SORTS)]

    def show_header(self, note: str = "") -> None:
        self.query_one("#top-header", Static).update(
            f"Top by [b]{self.pivot}[/b] (p: next), sorted by [b]{self.sort}[/b] (o: next)"
            f"{note}")

    def show(self, snapshot: Snapshot) -> None:
        state = snapshot.state
        if (state.pivot, state.sort) != (self.pivot, self.sort):
            self.show_header(" · updating…")  # a snapshot for the new choice is on its way
            return
        rows = snapshot.top
        total = snapshot.total_series
        total_rate = sum(total[-snapshot.rate_s:]) / snapshot.rate_s if total else 0.0
        self.show_header(f" · {len(rows)} rows · all matching traffic now "
                         f"{human_rate(total_rate)} (each packet counted once)")
        self.query_one(Sparkline).data = total or [0]
        table = self.query_one(DataTable)
        cursor = table.cursor_row
        columns = self._columns()
        if tuple(str(c.label) for c in table.ordered_columns) != columns:
            table.clear(columns=True)  # a new pivot: its label heads the first column
            table.add_columns(*columns)
        else:
            table.clear()
        table.add_rows([plain((r.label, human_bytes(r.bytes), f"{r.packets:,}", f"{r.flows:,}",
                               human_rate(r.rate_bps), sparkline(r.series, TREND_S)))
                        for r in rows])
        if rows:
            table.move_cursor(row=min(max(cursor, 0), len(rows) - 1), animate=False)
