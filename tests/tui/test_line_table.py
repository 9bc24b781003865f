"""LineTable, the table of every view: what one line of it shows (cells padded, cut with an
ellipsis, in the header / zebra / cursor style), that only visible rows are ever built,
and the cursor the app drives (clamped, kept visible, RowHighlighted)."""

from __future__ import annotations

import pytest
from rich.style import Style
from textual.app import App, ComposeResult

from tui.line_table import LineTable

ROWS = [("shop/frontend-7d9f0-x0k0", "TCP 1234→8080", "12.3 KB"),
        ("kube-system/coredns-7d9f1-x1k1", "UDP 5353→53", "1 B"),
        ("pay/payments", "", "999.9 MB")]


class Tables(App):
    AUTO_FOCUS = None

    def __init__(self, rows, widths=(14, 16, None), styles=None):
        super().__init__()
        self.table_rows, self.widths, self.row_styles = rows, widths, styles
        self.highlighted: list[int] = []

    def compose(self) -> ComposeResult:
        table = LineTable(id="t", zebra_stripes=True)
        table.set_columns(("endpoint", "ports", "bytes"), self.widths)
        table.set_rows(self.table_rows, self.row_styles)
        yield table

    def on_line_table_row_highlighted(self, event: LineTable.RowHighlighted) -> None:
        self.highlighted.append(event.cursor_row)


def line(table: LineTable, y: int) -> tuple[str, set]:
    strip = table.render_line(y)
    return "".join(s.text for s in strip), {s.style for s in strip if s.text.strip()}


@pytest.mark.parametrize("y, text", [
    (0, " endpoint        ports             bytes    "),
    (1, " shop/frontend…  TCP 1234→8080     12.3 KB  "),
    (2, " kube-system/c…  UDP 5353→53       1 B      "),
    (3, " pay/payments                      999.9 MB "),
], ids=["header", "cut-with-ellipsis", "cut-second-row", "padded-and-auto-width"])
async def test_a_line_is_its_cells_padded_and_cut(y, text):
    app = Tables(ROWS)
    async with app.run_test(size=(60, 10)):
        table = app.query_one(LineTable)
        assert line(table, y)[0].rstrip() == text.rstrip()
        assert table.widths == (14, 16, 8)  # auto: the widest cell ("999.9 MB")


async def test_lines_are_drawn_in_the_component_styles():
    app = Tables(ROWS, styles=[None, Style(bold=True), None])
    async with app.run_test(size=(60, 10)):
        table = app.query_one(LineTable)
        header = table.get_component_rich_style("line-table--header")
        cursor = table.get_component_rich_style("line-table--cursor")
        even = table.get_component_rich_style("line-table--even-row")
        odd = table.get_component_rich_style("line-table--odd-row")
        assert line(table, 0)[1] == {header}
        assert line(table, 1)[1] == {cursor}            # row 0 has the cursor
        assert line(table, 2)[1] == {odd + Style(bold=True)}  # a row style adds to it
        assert line(table, 3)[1] == {even}              # rows 0, 2, ... striped
        assert header.bold and cursor != even != odd


async def test_only_visible_rows_are_built():
    rows = [(f"ns/pod-{i}", f"TCP {i}→80", f"{i} B") for i in range(10_000)]
    app = Tables(rows)
    async with app.run_test(size=(60, 12)) as pilot:
        table = app.query_one(LineTable)
        await pilot.pause()
        assert table.row_count == 10_000
        assert 0 < len(table._lines) <= 12
        assert table.get_row_at(9_999) == ["ns/pod-9999", "TCP 9999→80", "9999 B"]


async def test_cursor_is_clamped_kept_visible_and_reported():
    rows = [(f"ns/pod-{i}", "", "") for i in range(100)]
    app = Tables(rows)
    async with app.run_test(size=(60, 12)) as pilot:
        table = app.query_one(LineTable)
        table.action_cursor_down()
        table.action_page_down()
        await pilot.pause()
        page = table.size.height - 1  # the rows below the header
        assert table.cursor_row == 1 + page
        table.action_scroll_bottom()
        await pilot.pause()
        assert table.cursor_row == 99
        assert line(table, table.size.height - 1)[0].strip() == "ns/pod-99"  # scrolled to it
        table.move_cursor(row=500)     # clamped: no move, no message
        table.action_scroll_top()
        await pilot.pause()
        assert table.cursor_row == 0 and round(table.scroll_y) == 0
        assert app.highlighted == [1, 1 + page, 99, 0]
        table.set_rows(rows[:3])       # fewer rows: the cursor stays inside
        table.action_scroll_bottom()
        assert table.cursor_row == 2
