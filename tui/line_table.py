"""LineTable: the table every view draws, one Rich segment per visible line.

Under 20,000 flows/s every snapshot changes every row of the Flows table, and a key press
that switches to it must reach the screen within 100 ms on a machine whose cores are busy
with the agents and the engine. Textual's DataTable is built for editable, styled cells:
adding 150 rows builds a Row, a key and a dict of cells each and sets reactive state per
row, and drawing a line goes cell by cell through its caches and style lookups. Profiled
under the benchmark (bench/tui.py) that was ~20 ms to refill the Flows table and ~40 ms to
draw it after a view switch. A table of plain one-line text needs none of it: LineTable
keeps the rows as tuples of strings, and only when a line becomes visible does it join that
row's cells (cut with an ellipsis to their column's width) into one string drawn in one
style (header, zebra stripe or cursor). Refilling is storing a list; drawing a screen is
~50 string joins.

It looks like a DataTable (same component roles: header, odd/even rows, cursor) and keeps
the small part of its interface the app uses: `cursor_row`, `move_cursor`, the cursor
actions, `row_count`, `get_row_at` and a RowHighlighted message. It never takes focus: the
app moves its cursor (see tui.app).
"""

from __future__ import annotations

from typing import Sequence

from rich.cells import cell_len
from rich.segment import Segment
from rich.style import Style
from textual import events
from textual.geometry import Size
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip

from tui.columns import truncate
from tui.scrollbars import use_whole_cell_scrollbars

PADDING = 1  # cells of space on each side of a cell, as DataTable's default


def _cut(text: str, width: int) -> str:
    """`text` cut (with an ellipsis) or padded to exactly `width` cells."""
    if len(text) <= width and text.isascii():
        return text + " " * (width - len(text))
    text = truncate(text, width)
    return text + " " * (width - cell_len(text))


class LineTable(ScrollView, can_focus=False):
    COMPONENT_CLASSES = {"line-table--header", "line-table--odd-row",
                         "line-table--even-row", "line-table--cursor"}
    DEFAULT_CSS = """
    LineTable {
        background: $surface;
        color: $foreground;
        height: 1fr;
        &:dark > .line-table--even-row { background: $surface-darken-1 40%; }
        & > .line-table--header { text-style: bold; background: $panel; color: $foreground; }
        &:ansi > .line-table--header { background: ansi_bright_blue; color: ansi_default; }
        & > .line-table--odd-row { }
        & > .line-table--even-row { background: $surface-lighten-1 50%; }
        & > .line-table--cursor {
            background: $block-cursor-blurred-background;
            color: $block-cursor-blurred-foreground;
            text-style: $block-cursor-blurred-text-style;
        }
    }
    """

    class RowHighlighted(Message):
        """The cursor moved to another row (by a key or a click)."""

        def __init__(self, table: LineTable, cursor_row: int):
            super().__init__()
            self.table = table
            self.cursor_row = cursor_row

        @property
        def control(self) -> LineTable:
            return self.table

    def __init__(self, *, zebra_stripes: bool = False, id: str | None = None,
                 classes: str | None = None):
        super().__init__(id=id, classes=classes)
        self.zebra_stripes = zebra_stripes
        self.labels: tuple[str, ...] = ()
        self._fixed_widths: tuple[int | None, ...] = ()  # None: as wide as its widest cell
        self.widths: tuple[int, ...] = ()
        self._rows: list[Sequence[str]] = []
        self._row_styles: Sequence[Style | None] | None = None
        self._cursor = 0
        self._lines: dict[tuple[int, bool], Strip] = {}  # (row, cursor) -> drawn line
        self._header: Strip | None = None
        self._base_style: Style | None = None  # self.rich_style walks every ancestor

    def on_mount(self) -> None:
        use_whole_cell_scrollbars(self)  # no thumb end that looks like a sparkline mark

    # ---- content ----------------------------------------------------------------

    def set_columns(self, labels: Sequence[str],
                    widths: Sequence[int | None] | None = None) -> None:
        """The columns, each `widths[i]` cells wide (None: as wide as its widest cell or
        label). Rows are kept; call set_rows when their cells change too."""
        self.labels = tuple(labels)
        self._fixed_widths = tuple(widths) if widths is not None else (None,) * len(labels)
        self._measure()

    def set_rows(self, rows: Sequence[Sequence[str]],
                 row_styles: Sequence[Style | None] | None = None) -> None:
        """Replace every row. `row_styles[i]`, when given and not None, is added to row i's
        style (e.g. bold for a group's heading row). The cursor keeps its index."""
        self._rows = list(rows)
        self._row_styles = row_styles
        self._measure()
        if self._cursor >= len(self._rows):
            self._cursor = max(0, len(self._rows) - 1)
            self._scroll_to_cursor()

    def _measure(self) -> None:
        widths = []
        for i, fixed in enumerate(self._fixed_widths):
            if fixed is not None:
                widths.append(fixed)
                continue
            widest = cell_len(self.labels[i])
            for row in self._rows:
                cell = row[i]
                if len(cell) > widest or not cell.isascii():
                    widest = max(widest, cell_len(cell))
            widths.append(widest)
        self.widths = tuple(widths)
        self._lines.clear()
        self._header = None
        self.virtual_size = Size(sum(w + 2 * PADDING for w in widths), len(self._rows) + 1)
        self.refresh()

    @property
    def row_count(self) -> int:
        return len(self._rows)

    def get_row_at(self, row_index: int) -> list[str]:
        """The cells of a row as drawn (cut to their column's width, without padding)."""
        return [truncate(cell, width) for cell, width in zip(self._rows[row_index], self.widths)]

    # ---- cursor -----------------------------------------------------------------

    @property
    def cursor_row(self) -> int:
        return self._cursor

    def move_cursor(self, *, row: int, animate: bool = False) -> None:  # noqa: ARG002
        """Put the cursor on `row` (clamped), keep it visible, say so if it moved."""
        row = min(max(row, 0), max(0, len(self._rows) - 1))
        if row == self._cursor:
            return
        self._cursor = row
        self._scroll_to_cursor()
        self.refresh()
        self.post_message(self.RowHighlighted(self, row))

    def _page_rows(self) -> int:
        return max(1, self.scrollable_content_region.height - 1)

    def _scroll_to_cursor(self) -> None:
        top = round(self.scroll_y)
        visible = self._page_rows()
        if self._cursor < top:
            self.scroll_to(y=self._cursor, animate=False, immediate=True)
        elif self._cursor >= top + visible:
            self.scroll_to(y=self._cursor - visible + 1, animate=False, immediate=True)

    def action_cursor_up(self) -> None:
        self.move_cursor(row=self._cursor - 1)

    def action_cursor_down(self) -> None:
        self.move_cursor(row=self._cursor + 1)

    def action_page_up(self) -> None:
        self.move_cursor(row=self._cursor - self._page_rows())

    def action_page_down(self) -> None:
        self.move_cursor(row=self._cursor + self._page_rows())

    def action_scroll_top(self) -> None:
        self.move_cursor(row=0)

    def action_scroll_bottom(self) -> None:
        self.move_cursor(row=len(self._rows) - 1)

    def on_click(self, event: events.Click) -> None:
        if event.y >= 1:  # not the header
            self.move_cursor(row=round(self.scroll_y) + event.y - 1)

    # ---- drawing ----------------------------------------------------------------

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._lines.clear()
        self._header = None
        self._base_style = None

    def _text(self, cells: Sequence[str]) -> str:
        pad = " " * PADDING
        return "".join(pad + _cut(cell, width) + pad for cell, width in zip(cells, self.widths))

    def render_line(self, y: int) -> Strip:
        scroll_x, scroll_y = self.scroll_offset
        width = self.scrollable_content_region.width
        base = self._base_style
        if base is None:
            base = self._base_style = self.rich_style
        if y == 0:
            strip = self._header
            if strip is None:
                strip = self._header = Strip(
                    [Segment(self._text(self.labels),
                             self.get_component_rich_style("line-table--header"))])
        else:
            row = scroll_y + y - 1
            if row >= len(self._rows):
                return Strip.blank(width, base)
            cursor = row == self._cursor
            strip = self._lines.get((row, cursor))
            if strip is None:
                if cursor:
                    style = self.get_component_rich_style("line-table--cursor")
                elif self.zebra_stripes and row % 2 == 0:  # as DataTable: rows 0, 2, ...
                    style = self.get_component_rich_style("line-table--even-row")
                else:
                    style = self.get_component_rich_style("line-table--odd-row")
                extra = self._row_styles[row] if self._row_styles is not None else None
                if extra is not None:
                    style += extra
                strip = Strip([Segment(self._text(self._rows[row]), style)])
                self._lines[(row, cursor)] = strip
        if scroll_x == 0 and strip.cell_length == width:
            return strip
        return strip.crop_extend(scroll_x, scroll_x + width, base)
