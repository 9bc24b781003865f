"""The Flows table fits the terminal like k9s: every column shown at 160 cells, the
important ones on narrow terminals, long names cut with an ellipsis, re-fitted on resize.
Pure fitting rules first, then the real app (Pilot) and what its screen shows."""

from __future__ import annotations

import pytest

from tests.tui.conftest import screen_lines, wait_for
from tui.app import create_app
from tui.columns import ColumnSpec, fit, truncate
from tui.format import FLOW_COLUMNS
from tui.messages import SnapshotBuilt

A = ColumnSpec("a", 4, 10, 0)
B = ColumnSpec("bb", 4, 30, 0)
C = ColumnSpec("c", 3, 5, 2)   # hidden first
D = ColumnSpec("d", 3, 5, 1)


@pytest.mark.parametrize("text, width, expected", [
    ("shop/frontend", 20, "shop/frontend"),
    ("shop/frontend-7d9f0-x0k0", 12, "shop/fronte…"),
    ("abc", 3, "abc"),
    ("abcd", 1, "…"),
    ("abcd", 0, ""),
], ids=["fits", "cut-keeps-namespace-prefix", "exact", "one-cell", "zero"])
def test_truncate(text, width, expected):
    assert truncate(text, width) == expected


@pytest.mark.parametrize("natural, available, expected", [
    ([8, 20, 5, 5], 100, [8, 20, 5, 5]),        # room for everything: natural widths
    ([50, 50, 5, 5], 100, [10, 30, 5, 5]),      # capped at each column's maximum
    ([10, 30, 5, 5], 40, [10, 12, 5, 5]),       # the widest gives way first
    ([10, 30, 5, 5], 26, [4, 4, 5, 5]),         # ... down to its minimum
    ([10, 30, 5, 5], 20, [4, 5, None, 5]),      # minimums do not fit: highest rank hidden
    ([10, 30, 5, 5], 14, [5, 5, None, None]),   # then the next
    ([10, 30, 5, 5], 5, [4, 4, None, None]),    # rank-0 columns are never hidden
], ids=["natural", "capped", "shrink-widest-first", "shrink-to-minimum", "hide-rank-2",
        "hide-rank-1", "too-narrow"])
def test_fit(natural, available, expected):
    widths = fit([A, B, C, D], natural, available, padding=2)
    assert widths == expected
    shown = [w for w in widths if w is not None]
    if available >= 14:
        assert sum(shown) + 2 * len(shown) <= available


def header_line(app) -> str:
    return next((line for line in screen_lines(app) if line.lstrip().startswith("time")), "")


VISIBLE = {
    # terminal width: columns that must be on screen
    200: FLOW_COLUMNS,
    160: FLOW_COLUMNS,
    120: ("time", "node", "source", "destination", "service -> backend", "proto/ports",
          "verdict", "bytes"),
    80: ("time", "source", "destination", "verdict", "bytes"),
}


@pytest.mark.parametrize("width", sorted(VISIBLE, reverse=True), ids=lambda w: f"{w}-cols")
async def test_flows_table_fits_the_terminal(agents, width):
    for agent in agents:
        agent.send(200)
    app = create_app(servers=[a.address for a in agents])
    async with app.run_test(size=(width, 40)) as pilot:
        # every flow sent is in the table (no sleep-and-hope: the widths depend on them)
        await wait_for(pilot, lambda: app.snapshot is not None
                       and app.snapshot.summary.flows_seen == 400
                       and app.query_one("#flows").rows == app.snapshot.flows
                       and app.query_one("#flows-table").row_count == 150, what="all rows")
        header = header_line(app)
        words = header.split("  ")
        labels = [w.strip() for w in words if w.strip()]
        for column in VISIBLE[width]:
            assert column in labels, f"{column!r} not on screen at {width} cells: {header!r}"
        if width >= 160:
            assert labels == list(FLOW_COLUMNS)  # nothing cut off the right edge
        lines = screen_lines(app)
        body = [line for line in lines if "shop/" in line]
        assert body and all(len(line.rstrip()) <= width for line in lines)
        if width < 200:
            assert any("…" in line for line in body)  # long names cut, not overflowing


async def test_flows_table_refits_on_resize(agents):
    for agent in agents:
        agent.send(200)
    app = create_app(servers=[a.address for a in agents])
    async with app.run_test(size=(80, 30)) as pilot:
        await wait_for(pilot, lambda: "shop/" in "".join(screen_lines(app)), what="rows")
        assert "packets" not in header_line(app)
        await pilot.resize_terminal(160, 40)
        await wait_for(pilot, lambda: "packets" in header_line(app), what="refit to 160")
        assert header_line(app).split()[-1] == "bytes"
        await pilot.resize_terminal(100, 40)
        await wait_for(pilot, lambda: "packets" not in header_line(app), what="refit to 100")
        assert "source" in header_line(app) and "bytes" in header_line(app)


async def test_a_snapshot_drawn_after_the_table_is_removed_does_not_fail(agents):
    """Shutting down (run_test's exit too) removes widgets children first while the app
    may still handle a snapshot: the Flows table is gone, its view is not. Drawing then
    must not look the table up (that failed once: NoMatches 'DataTable' on FlowsView)."""
    for agent in agents:
        agent.send(200)
    app = create_app(servers=[a.address for a in agents])
    async with app.run_test(size=(160, 40)) as pilot:
        await wait_for(pilot, lambda: app.snapshot is not None, what="first snapshot")
        app.engine.stop()                 # only the snapshot posted here from now on
        await pilot.pause(0.3)            # whatever the engine posted before is drawn
        await app.query_one("#flows-table").remove()
        snapshot = app.snapshot
        snapshot.flows = snapshot.flows[1:]  # rows the view has not drawn yet
        app.post_message(SnapshotBuilt(snapshot))
        await pilot.pause(0.3)
        assert app.query_one("#flows").rows == snapshot.flows  # drawn, without its table
        await pilot.resize_terminal(120, 40)  # a refit of the columns, too
        await pilot.pause(0.1)
    # run_test re-raises here any exception the app met
