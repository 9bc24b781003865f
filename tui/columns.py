"""Fitting a table's columns to the terminal's width, as k9s does: every column gets a
width between a minimum and a maximum, the widest ones give way first when space runs
short, long cells are cut with an ellipsis, and when even the minimums do not fit the least
important columns are hidden. Pure functions: the views call them on resize and whenever a
snapshot brings wider cells."""

from __future__ import annotations

from dataclasses import dataclass

from rich.cells import cell_len, set_cell_size

ELLIPSIS = "…"


@dataclass(frozen=True)
class ColumnSpec:
    label: str
    min_width: int
    max_width: int
    drop_rank: int = 0  # columns hidden first have the highest rank; 0: never hidden


def truncate(text: str, width: int) -> str:
    """`text` cut to `width` cells, its end replaced by an ellipsis when cut: the start
    (a namespace/ and the pod's name prefix) stays readable."""
    if (len(text) <= width and text.isascii()) or cell_len(text) <= width:
        return text
    if width <= 1:
        return ELLIPSIS[:width]
    return set_cell_size(text, width - 1) + ELLIPSIS


def fit(specs: list[ColumnSpec], natural: list[int], available: int,
        padding: int) -> list[int | None]:
    """The width of each column (None: hidden) so that the shown columns, each with
    `padding` extra cells, fit in `available` cells. `natural[i]` is the width column i
    would like (its widest cell or label); it is capped to the column's maximum, and
    columns wider than their minimum shrink one cell at a time, widest first."""
    labels = [cell_len(s.label) for s in specs]
    wanted = [max(label, min(s.max_width, n)) for s, n, label in zip(specs, natural, labels)]
    floors = [min(w, max(s.min_width, label)) for s, w, label in zip(specs, wanted, labels)]
    shown = [True] * len(specs)
    while True:
        widths = [w if on else 0 for w, on in zip(wanted, shown)]
        excess = sum(widths) + padding * sum(shown) - available
        while excess > 0:
            shrinkable = [i for i, on in enumerate(shown) if on and widths[i] > floors[i]]
            if not shrinkable:
                break
            widest = max(shrinkable, key=lambda i: widths[i])
            widths[widest] -= 1
            excess -= 1
        if excess <= 0:
            return [w if on else None for w, on in zip(widths, shown)]
        droppable = [i for i, on in enumerate(shown) if on and specs[i].drop_rank > 0]
        if not droppable:  # nothing left to hide: the terminal is very narrow
            return [w if on else None for w, on in zip(widths, shown)]
        shown[max(droppable, key=lambda i: specs[i].drop_rank)] = False
