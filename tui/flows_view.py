"""FlowsView: the live table of flow records, newest first, and a detail pane with every
field of the highlighted record (fetched from the engine, which keeps the records).

The table fits the terminal's width (tui.columns): columns get widths between a minimum and
a maximum, long names are cut with an ellipsis, and on narrow terminals the least important
columns are hidden. Widths are fitted again on resize and when wider cells arrive."""

from __future__ import annotations

from rich.cells import cell_len
from textual import events
from textual.app import ComposeResult
from textual.containers import Vertical, VerticalScroll
from textual.message import Message
from textual.widgets import Static

from tui.columns import ColumnSpec, fit
from tui.line_table import PADDING, LineTable
from tui.scrollbars import use_whole_cell_scrollbars
from tui.format import FLOW_COLUMNS
from tui.snapshot import Snapshot

# label, min width, max width, drop rank (hidden first: highest; 0: always shown)
FLOW_SPECS = [ColumnSpec(label, *limits) for label, limits in zip(FLOW_COLUMNS, [
    (12, 12, 1),  # time
    (6, 16, 4),   # node
    (16, 40, 0),  # source
    (16, 40, 0),  # destination
    (17, 44, 3),  # service -> backend
    (11, 20, 2),  # proto/ports
    (9, 9, 6),    # direction
    (9, 24, 0),   # verdict
    (7, 11, 5),   # packets
    (8, 9, 0),    # bytes
])]
SCROLLBAR_CELLS = 2  # kept free for the table's vertical scrollbar


class FlowsView(Vertical):
    DEFAULT_CSS = """
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
        # the widest cell seen per column: widths only grow, so they do not flicker
        self._natural = [cell_len(spec.label) for spec in FLOW_SPECS]
        self.widths: list[int | None] = [None] * len(FLOW_SPECS)  # None: hidden
        self._shown: list[int] = []  # indexes of the shown columns
        # Kept as attributes, not queried: drawing while the app shuts down (children are
        # removed first) must not look them up.
        self.table = LineTable(id="flows-table", zebra_stripes=True)
        self.detail_text = Static("", id="flow-detail-text")

    def compose(self) -> ComposeResult:
        yield self.table
        with VerticalScroll(id="flow-detail", can_focus=False):
            yield self.detail_text

    def toggle_detail(self) -> None:
        self.toggle_class("detail")
        self._want_detail()

    def on_mount(self) -> None:
        use_whole_cell_scrollbars(self.query_one("#flow-detail"))
        self._fit(self.size.width)

    def on_resize(self, event: events.Resize) -> None:
        if self._fit(event.size.width):
            self._fill()

    def _fit(self, width_cells: int) -> bool:
        """Choose the column widths for a table `width_cells` wide; True if they changed
        (the rows must be given to the table again)."""
        if width_cells <= 0 and self.table.labels:  # hidden or not laid out yet: keep them
            return False
        widths = fit(FLOW_SPECS, self._natural, max(0, width_cells - SCROLLBAR_CELLS),
                     2 * PADDING)
        if widths == self.widths and self.table.labels:
            return False
        self.widths = widths
        self._shown = [i for i, w in enumerate(widths) if w is not None]
        self.table.set_columns([FLOW_SPECS[i].label for i in self._shown],
                               [widths[i] for i in self._shown])
        return True

    def _fill(self) -> None:
        """Give the table self.rows' shown cells; it cuts them to the column widths when
        it draws them, and draws only the visible ones."""
        shown = self._shown
        if len(shown) == len(FLOW_SPECS):
            self.table.set_rows([cells for _id, cells in self.rows])
        else:
            self.table.set_rows([[cells[i] for i in shown] for _id, cells in self.rows])

    def show(self, snapshot: Snapshot) -> None:
        if [r[0] for r in snapshot.flows] == [r[0] for r in self.rows]:
            return
        self.rows = snapshot.flows
        natural = self._natural
        for _id, cells in self.rows:
            for i, cell in enumerate(cells):
                # len() first: cells are ASCII or narrow arrows, where it is cell_len()
                if len(cell) > natural[i]:
                    natural[i] = max(natural[i], cell_len(cell))
        self._fit(self.size.width)
        self._fill()
        self._want_detail()

    def on_line_table_row_highlighted(self, event: LineTable.RowHighlighted) -> None:
        event.stop()
        self._want_detail()

    def selected_id(self) -> int | None:
        row = self.table.cursor_row
        if 0 <= row < len(self.rows):
            return self.rows[row][0]
        return None

    def _want_detail(self) -> None:
        if not self.has_class("detail"):
            return
        entry_id = self.selected_id()
        if entry_id is None:
            self.detail_text.update("(no flow selected)")
        else:
            self.post_message(self.DetailWanted(entry_id))

    def show_detail(self, entry_id: int, text: str) -> None:
        if entry_id == self.selected_id():
            self.detail_text.update(text)
