"""No sparkline marks outside the Top view (issue 13): after switching from Top back to Flows,
`▆▆`-like marks stood at the right edge of the Flows table and of the detail pane in tmux.
They were the ends of the scrollbars' thumbs, which Textual draws with the sparklines'
eighth-block glyphs; the app's scrollbars are drawn in whole cells (tui/scrollbars.py).
The screen is read as the compositor sends it to a terminal, scrollbars included."""

from __future__ import annotations

from tests.tui.conftest import screen_lines, wait_for
from tui.app import create_app
from tui.flows_view import FlowsView
from tui.line_table import LineTable

SIZE = (200, 50)
SPARK_GLYPHS = set("▁▂▃▄▅▆▇")  # tui.format.sparkline's, Textual's Sparkline's, thumb ends'


def _marks(app) -> list[tuple[int, str]]:
    """(screen line, line) of every line showing a sparkline glyph."""
    return [(y, line) for y, line in enumerate(screen_lines(app)) if SPARK_GLYPHS & set(line)]


async def test_no_sparkline_marks_outside_the_top_view(agents):
    for agent in agents:
        agent.send(300)
    app = create_app(servers=[a.address for a in agents])
    async with app.run_test(size=SIZE) as pilot:
        table = app.query_one("#flows-table", LineTable)
        await wait_for(pilot, lambda: table.row_count == 150, what="150 flow rows")
        await pilot.press("2")
        await wait_for(pilot, lambda: _marks(app), what="the Top view's sparklines")
        await pilot.press("1")
        await pilot.pause(0.2)
        # 150 rows in a 48-line table: a thumb of 15.3 cells, whose end was an eighth glyph
        assert table.show_vertical_scrollbar and table.max_scroll_y > 0
        assert _marks(app) == []

        await pilot.press("d")                    # the detail pane scrolls too
        detail = app.query_one("#flow-detail")
        await wait_for(pilot, lambda: detail.max_scroll_y > 0, what="a detail pane that scrolls")
        await pilot.pause(0.2)
        assert detail.show_vertical_scrollbar
        assert _marks(app) == []

        for key in ("end", "pageup", "up"):       # wherever the thumbs stand
            await pilot.press(key)
            await pilot.pause(0.1)
            assert _marks(app) == [], key


async def test_scrollbars_still_show_where_the_view_is(agents):
    """Whole cells, not none: the Flows table's thumb is on screen, at the top when the
    cursor is on the newest flow and at the bottom after `end`."""
    for agent in agents:
        agent.send(300)
    app = create_app(servers=[a.address for a in agents])
    async with app.run_test(size=SIZE) as pilot:
        table = app.query_one(FlowsView).table
        await wait_for(pilot, lambda: table.row_count == 150
                       and table.vertical_scrollbar.region.height > 0,
                       what="a table that scrolls")
        region = table.vertical_scrollbar.region

        def thumb_rows() -> list[int]:
            """Screen lines where the thumb (drawn reverse: a style, not a glyph) is."""
            return [y for y in range(region.y, region.bottom)
                    if app.screen._compositor.get_style_at(region.x, y).reverse]

        top = thumb_rows()
        assert top and top[0] == region.y
        await pilot.press("end")
        await pilot.pause(0.2)
        bottom = thumb_rows()
        assert bottom and bottom[-1] == region.bottom - 1
        # the thumb's share of the bar is the window's share of 150 rows and a header,
        # rounded to whole cells (which end rounds up depends on where it stands)
        exact = region.height * region.height / 151
        assert all(abs(len(rows) - exact) < 1 for rows in (top, bottom)), (top, bottom, exact)
