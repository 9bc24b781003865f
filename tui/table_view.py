"""TableView: what the Top, Services and Nodes views have in common, in one place: a
one-line header over a LineTable, and redrawing the table from a snapshot while the cursor
stays on the same row index. Each view only says which columns it has and turns a snapshot
into rows and a header line."""

from __future__ import annotations

from typing import Sequence

from rich.style import Style
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Static

from tui.line_table import LineTable
from tui.snapshot import Snapshot


class TableView(Vertical):
    DEFAULT_CSS = """
    TableView > .view-header { height: 1; }
    """
    NAME = ""                      # ids: "<NAME>-header", "<NAME>-table"
    COLUMNS: tuple[str, ...] = ()
    ZEBRA = False
    HEADER = ""                    # header text before the first snapshot

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        # Kept as attributes, not queried: a view drawn while the app shuts down (its
        # children removed first) must not look its widgets up.
        self.header = Static(self.HEADER, id=f"{self.NAME}-header", classes="view-header")
        self.table = LineTable(id=f"{self.NAME}-table", zebra_stripes=self.ZEBRA)
        self.table.set_columns(self.COLUMNS)

    def compose(self) -> ComposeResult:
        yield self.header
        yield from self.compose_extra()
        yield self.table

    def compose_extra(self) -> ComposeResult:
        """Widgets between the header and the table (none by default)."""
        return iter(())

    def show(self, snapshot: Snapshot) -> None:
        self.show_rows(*self.rows_of(snapshot))

    def rows_of(self, snapshot: Snapshot) -> tuple[str, list[Sequence[str]],
                                                   list[Style | None] | None]:
        """(header text, rows, per-row extra styles or None) for a snapshot."""
        raise NotImplementedError

    def show_rows(self, header: str, rows: list[Sequence[str]],
                  row_styles: list[Style | None] | None = None) -> None:
        self.header.update(header)
        self.table.set_rows(rows, row_styles)
