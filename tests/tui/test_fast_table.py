"""FastTable draws plain one-line cells itself instead of through Rich's console: what it
draws must be what the stock DataTable draws, cell for cell and style for style (cursor,
zebra stripes, cut cells included), and cells it does not handle go the stock way."""

from __future__ import annotations

from rich.segment import Segment
from rich.text import Text
from textual.app import App, ComposeResult
from textual.geometry import Region
from textual.widgets import DataTable

from tui.fast_table import FastTable, plain

ROWS = [("shop/frontend-7d9f0-x0k0", "TCP 1234→8080", "12.3 KB"),
        ("kube-system/coredns-7d9f1-x1k1", "UDP 5353→53", "1 B"),
        ("pay/payments", "", "999.9 MB")]


class Tables(App):
    AUTO_FOCUS = None  # as in the podflow app: neither table has focus
    def compose(self) -> ComposeResult:
        for table in (DataTable(id="stock", zebra_stripes=True, cursor_type="row"),
                      FastTable(id="fast", zebra_stripes=True, cursor_type="row")):
            table.add_column("endpoint", width=14)   # cut
            table.add_column("ports", width=16)      # padded
            table.add_column("bytes")                # auto width
            table.add_rows([plain(r) for r in ROWS])
            table.add_row(Text("styled", style="bold"), "[b]markup[/b]", "x")
            yield table


def cells(segments) -> list[tuple[str, object]]:
    """(character, style) for every cell of a rendered line."""
    return [(ch, seg.style) for seg in segments for ch in seg.text]


async def test_fast_table_draws_what_the_data_table_draws():
    app = Tables()
    async with app.run_test(size=(80, 20)) as pilot:
        await pilot.pause()
        stock, fast = app.query_one("#stock", DataTable), app.query_one("#fast", FastTable)
        assert stock.row_count == fast.row_count == len(ROWS) + 1
        compared = 0
        for row in range(fast.row_count):
            for column, col in enumerate(fast.ordered_columns):
                for cursor in (False, True):
                    style = fast.rich_style
                    width = col.get_render_width(fast)
                    want = stock._render_cell(row, column, style, width, cursor=cursor)
                    got = fast._render_cell(row, column, style, width, cursor=cursor)
                    assert len(got) == len(want) == 1
                    assert cells(got[0]) == cells(list(Segment.simplify(want[0]))), (
                        row, column, cursor)
                    compared += 1
        assert compared == (len(ROWS) + 1) * 3 * 2
        # whole lines as drawn on screen (one render pass each), cursor on the first row
        region = Region(0, 0, fast.size.width, fast.size.height)
        want_lines = stock.render_lines(region)
        got_lines = fast.render_lines(region)
        assert [cells(s) for s in got_lines] == [cells(s) for s in want_lines]
        drawn = ["".join(ch for ch, _style in cells(s)) for s in got_lines]
        assert any("shop/frontend" in line for line in drawn) and any("styled" in line
                                                                        for line in drawn)


class Fixed(App):
    AUTO_FOCUS = None

    def compose(self) -> ComposeResult:
        for table in (DataTable(id="stock"), FastTable(id="fast")):
            for label, width in (("endpoint", 14), ("ports", 16), ("bytes", 8)):
                table.add_column(label, width=width)
            yield table


async def test_fixed_width_table_has_the_stock_dimensions():
    """With fixed-width columns FastTable skips measuring cells: same scrollable size."""
    app = Fixed()
    async with app.run_test(size=(80, 20)) as pilot:
        for table in app.query(DataTable):
            table.add_rows([plain(r) for r in ROWS * 20])
        await pilot.pause()
        stock, fast = app.query_one("#stock", DataTable), app.query_one("#fast", FastTable)
        assert fast.virtual_size == stock.virtual_size
        assert fast.virtual_size.height == len(ROWS) * 20 + 1
