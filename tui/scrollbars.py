"""Scrollbars drawn in whole cells, so they cannot be mistaken for data.

Textual draws the ends of a scrollbar's thumb with eighth-block glyphs (▁▂▃▄▅▆▇ upright,
▉▊▋▌▍▎▏ across) for sub-cell precision: colour alone tells them from text. Those are the
very glyphs of the Top view's sparklines. With 150 rows in the Flows table the thumb is a
few cells long, and its end, a lone `▆▆` at the right edge of the table (and of the detail
pane), read as a sparkline mark left behind by the Top view, in `tmux capture-pane`, on
terminals with few colours, and to people. A thumb made of whole cells has no such glyph.
"""

from __future__ import annotations

from textual.scrollbar import ScrollBarRender
from textual.widget import Widget


class WholeCellScrollBarRender(ScrollBarRender):
    """A thumb of whole cells: Textual skips an end glyph that is a blank, so the thumb
    covers exactly the cells its eighth-cell position starts in up to the one it ends
    before (at least one)."""

    VERTICAL_BARS = [" "] * len(ScrollBarRender.VERTICAL_BARS)
    HORIZONTAL_BARS = [" "] * len(ScrollBarRender.HORIZONTAL_BARS)


def use_whole_cell_scrollbars(widget: Widget) -> None:
    """Draw `widget`'s scrollbars in whole cells (call once it is mounted: Textual makes
    a widget's scrollbars on first use, and keeps them)."""
    widget.vertical_scrollbar.renderer = WholeCellScrollBarRender
    widget.horizontal_scrollbar.renderer = WholeCellScrollBarRender
