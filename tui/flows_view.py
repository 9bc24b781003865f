"""FlowsView: the live table of flow records, newest first, and a detail pane with every
field of the highlighted record. Following redraws it from the aggregator a few times a
second; paused, it stays as it is so a user can read and move around."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical, VerticalScroll
from textual.widgets import DataTable, Static

from tui.aggregator import Aggregator, Entry
from tui.filterexpr import FlowFilter
from tui.format import FLOW_COLUMNS, flow_detail, flow_row

MAX_ROWS = 150  # rows in the table (a screen shows ~50); the aggregator keeps more (and exports them all)


class FlowsView(Vertical):
    DEFAULT_CSS = """
    FlowsView > DataTable { height: 1fr; }
    FlowsView > #flow-detail { height: 12; border-top: solid $accent; display: none; }
    FlowsView.detail > #flow-detail { display: block; }
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.entries: list[Entry] = []

    def compose(self) -> ComposeResult:
        table = DataTable(id="flows-table", cursor_type="row", zebra_stripes=True)
        table.add_columns(*FLOW_COLUMNS)
        yield table
        with VerticalScroll(id="flow-detail"):
            yield Static("", id="flow-detail-text")

    def toggle_detail(self) -> None:
        self.toggle_class("detail")
        self._show_detail()

    def refresh_from(self, agg: Aggregator, flt: FlowFilter) -> None:
        table = self.query_one(DataTable)
        entries = agg.recent(flt, MAX_ROWS)
        if [id(e) for e in entries] == [id(e) for e in self.entries]:
            return
        cursor = table.cursor_row
        self.entries = entries
        table.clear()
        table.add_rows([flow_row(e) for e in entries])
        if entries:
            table.move_cursor(row=min(max(cursor, 0), len(entries) - 1), animate=False)
        self._show_detail()

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        event.stop()
        self._show_detail()

    def selected(self) -> Entry | None:
        table = self.query_one(DataTable)
        row = table.cursor_row
        if 0 <= row < len(self.entries):
            return self.entries[row]
        return None

    def _show_detail(self) -> None:
        if not self.has_class("detail"):
            return
        entry = self.selected()
        text = flow_detail(entry.flow) if entry is not None else "(no flow selected)"
        self.query_one("#flow-detail-text", Static).update(text)
