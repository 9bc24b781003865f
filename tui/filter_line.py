"""FilterLine: the `/` prompt. It only collects text; the app compiles it and, on an
error, shows the message here and keeps the filter that was in force."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Input, Static


class FilterLine(Vertical):
    DEFAULT_CSS = """
    FilterLine { height: auto; display: none; }
    FilterLine.open { display: block; }
    FilterLine > #filter-error { color: $error; height: auto; }
    """

    def compose(self) -> ComposeResult:
        yield Input(placeholder="ns=shop pod=cart-* svc=shop/cart port=443 proto=udp "
                                "verdict=dropped node=node-b  (! negates; Enter applies, Esc closes)",
                    id="filter-input")
        yield Static("", id="filter-error")

    def on_mount(self) -> None:
        self.query_one(Input).can_focus = False  # only while open (keys go to the app)

    def open(self, current: str) -> None:
        self.add_class("open")
        field = self.query_one(Input)
        field.can_focus = True
        field.value = current
        field.cursor_position = len(current)
        field.focus()

    def close(self) -> None:
        self.remove_class("open")
        self.query_one(Input).can_focus = False
        self.query_one("#filter-error", Static).update("")

    def show_error(self, message: str) -> None:
        self.query_one("#filter-error", Static).update(f"filter not applied: {message}")
