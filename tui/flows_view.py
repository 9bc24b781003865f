"""FlowsView: the live table of flow records, newest first, and a detail pane with every
field of the highlighted record (fetched from the engine, which keeps the records)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical, VerticalScroll
from textual.message import Message
from textual.widgets import DataTable, Static

from tui.format import FLOW_COLUMNS
from tui.snapshot import Snapshot


class FlowsView(Vertical):
    DEFAULT_CSS = """
    FlowsView > DataTable { height: 1fr; }
    FlowsView > #flow-detail { height: 14; border-top: solid $accent; display: none; }
    FlowsView.detail > #flow-detail { display: block; }
    """

    class DetailWanted(Message):
        """The detail pane needs the record behind a row."""

        def __init__(self, entry_id: int):
            super().__init__()
            self.entry_id = entry_id

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.rows: list[tuple[int, tuple]] = []

    def compose(self) -> ComposeResult:
        table = DataTable(id="flows-table", cursor_type="row", zebra_stripes=True)
        table.add_columns(*FLOW_COLUMNS)
        yield table
        with VerticalScroll(id="flow-detail", can_focus=False):
            yield Static("", id="flow-detail-text")

    def toggle_detail(self) -> None:
        self.toggle_class("detail")
        self._want_detail()

    def show(self, snapshot: Snapshot) -> None:
        if [r[0] for r in snapshot.flows] == [r[0] for r in self.rows]:
            return
        table = self.query_one(DataTable)
        cursor = table.cursor_row
        self.rows = snapshot.flows
        table.clear()
        table.add_rows([cells for _id, cells in self.rows])
        if self.rows:
            table.move_cursor(row=min(max(cursor, 0), len(self.rows) - 1), animate=False)
        self._want_detail()

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        event.stop()
        self._want_detail()

    def selected_id(self) -> int | None:
        row = self.query_one(DataTable).cursor_row
        if 0 <= row < len(self.rows):
            return self.rows[row][0]
        return None

    def _want_detail(self) -> None:
        if not self.has_class("detail"):
            return
        entry_id = self.selected_id()
        if entry_id is None:
            self.query_one("#flow-detail-text", Static).update("(no flow selected)")
        else:
            self.post_message(self.DetailWanted(entry_id))

    def show_detail(self, entry_id: int, text: str) -> None:
        if entry_id == self.selected_id():
            self.query_one("#flow-detail-text", Static).update(text)
