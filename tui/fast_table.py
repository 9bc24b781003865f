"""FastTable: a DataTable that draws one-line plain-text cells cheaply.

Under 20,000 flows/s every snapshot changes every visible row, so each redraw renders every
visible cell again. The stock DataTable renders a cell through Rich's console (Padding,
Styled, line splitting and cropping), and profiling the UI process under the benchmark load
(py-spy, bench/tui.py) put most of its time there: a key press that arrived during such a
redraw waited for it. A plain one-line cell is just its text, cut or padded to the column's
width, in one style: FastTable builds that segment directly. Likewise, when every column
has a fixed width (the Flows table), measuring each new row's cells (what the stock table
does on idle after rows are added, 1,500 cells per Flows snapshot) changes nothing that is
drawn, and FastTable skips it. Cells with their own styles or
markup (and headers, row labels) go the stock way, so the result is the same on screen
(tests/tui/test_fast_table.py compares both).
"""

from __future__ import annotations

from rich.cells import set_cell_size
from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual.geometry import Size
from textual.widgets import DataTable


def plain(cells) -> list[Text]:
    """Cells as plain Text (never parsed as markup, drawn by FastTable's quick path)."""
    return [Text(str(c), no_wrap=True, end="") for c in cells]


class FastTable(DataTable):
    def _render_cell(self, row_index: int, column_index: int, base_style: Style, width: int,
                     cursor: bool = False, hover: bool = False):
        if row_index < 0 or column_index < 0:
            return super()._render_cell(row_index, column_index, base_style, width,
                                        cursor, hover)
        row_key = self._row_locations.get_key(row_index)
        column_key = self._column_locations.get_key(column_index)
        row = self.rows.get(row_key)
        value = self._data.get(row_key, {}).get(column_key)
        if (row is None or row.height != 1 or not isinstance(value, Text) or value.spans
                or value.style or "\n" in value.plain):
            return super()._render_cell(row_index, column_index, base_style, width,
                                        cursor, hover)
        cache_key = (row_key, column_key, base_style, cursor, hover, self._show_hover_cursor,
                     self._update_count, self._pseudo_class_state)
        lines = self._cell_render_cache.get(cache_key)
        if lines is None:
            is_fixed = row_index < self.fixed_rows or column_index < self.fixed_columns
            component_style, post_style = self._get_styles_to_render_cell(
                False, False, is_fixed, hover, cursor, self.show_cursor,
                self._show_hover_cursor, self.cursor_foreground_priority == "css",
                self.cursor_background_priority == "css")
            style = (base_style + Style.from_meta({"row": row_index, "column": column_index})
                     + component_style + post_style)
            pad = " " * self.cell_padding
            text = pad + set_cell_size(value.plain, max(0, width - 2 * len(pad))) + pad
            lines = [[Segment(set_cell_size(text, width), style)]]
            self._cell_render_cache[cache_key] = lines
        return lines

    def _update_dimensions(self, new_rows) -> None:
        rows = self.rows
        if any(column.auto_width for column in self.columns.values()) or any(
                (row := rows.get(key)) is not None and (row.label is not None or row.auto_height)
                for key in new_rows):
            super()._update_dimensions(new_rows)
            return
        header_height = self.header_height if self.show_header else 0
        self.virtual_size = Size(
            sum(column.get_render_width(self) for column in self.columns.values())
            + self._row_label_column_width,
            self._total_row_height + header_height)
