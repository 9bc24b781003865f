"""FastTable: a DataTable that draws one-line plain-text cells cheaply.

Under 20,000 flows/s every snapshot changes every visible row, so each redraw renders every
visible cell again. The stock DataTable renders a cell through Rich's console (Padding,
Styled, line splitting and cropping), and profiling the UI process under the benchmark load
(py-spy, bench/tui.py) put most of its time there: a key press that arrived during such a
redraw waited for it. A plain one-line cell is just its text, cut or padded to the column's
width, in one style: FastTable builds that segment directly. Likewise, when every column
has a fixed width (the Flows table), measuring each new row's cells (what the stock table
does on idle after rows are added, 1,500 cells per Flows snapshot) changes nothing that is
drawn, and FastTable skips it. And within one render pass the component styles (zebra rows,
header, cursor) are worked out once, not once per line and cell: a full redraw of a 200x50
Flows table went from 46 ms to 20 ms (no load on the machine). Cells with their own styles or
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


class _StylesOnce:
    """A component's styles with its Rich style worked out once. The stock table asks for
    it for every line drawn, and each time Textual walks the widget's ancestors."""

    def __init__(self, styles):
        self._styles = styles
        self.rich_style = styles.rich_style

    def __getattr__(self, name: str):
        return getattr(self._styles, name)


class FastTable(DataTable):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._pass_styles: dict | None = None   # component styles, during one render pass
        self._pass_cell_styles: dict = {}

    def render_lines(self, crop):
        # Styles do not change while the lines of one pass are drawn.
        self._pass_styles, self._pass_cell_styles = {}, {}
        try:
            return super().render_lines(crop)
        finally:
            self._pass_styles = None

    def get_component_styles(self, *names: str):
        memo = self._pass_styles
        if memo is None:
            return super().get_component_styles(*names)
        styles = memo.get(names)
        if styles is None:
            styles = memo[names] = _StylesOnce(super().get_component_styles(*names))
        return styles

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
            style_key = (base_style, is_fixed, cursor, hover)
            in_pass = self._pass_styles is not None
            style = self._pass_cell_styles.get(style_key) if in_pass else None
            if style is None:
                component_style, post_style = self._get_styles_to_render_cell(
                    False, False, is_fixed, hover, cursor, self.show_cursor,
                    self._show_hover_cursor, self.cursor_foreground_priority == "css",
                    self.cursor_background_priority == "css")
                style = base_style + component_style + post_style
                if in_pass:
                    self._pass_cell_styles[style_key] = style
            style += Style.from_meta({"row": row_index, "column": column_index})
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
