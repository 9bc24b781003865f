"""ServicesView: each Service, how its traffic spreads over its backends, and its failed
attempts (no endpoints, refused, unanswered), counted once per connection."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import DataTable, Static

from tui.format import human_bytes
from tui.snapshot import Snapshot

COLUMNS = ("service / backend", "flows", "packets", "bytes", "share", "no endpoints",
           "refused", "unanswered")


def _bar(share: float, width: int = 10) -> str:
    filled = int(round(share * width))
    return "█" * filled + "░" * (width - filled) + f" {share * 100:3.0f}%"


class ServicesView(Vertical):
    DEFAULT_CSS = """
    ServicesView > #services-header { height: 1; }
    ServicesView > DataTable { height: 1fr; }
    """

    def compose(self) -> ComposeResult:
        yield Static("Services: traffic per backend and failed attempts", id="services-header")
        table = DataTable(id="services-table", cursor_type="row")
        table.add_columns(*COLUMNS)
        yield table

    def show(self, snapshot: Snapshot) -> None:
        rows = []
        services = snapshot.services
        for svc in services:
            rows.append((f"[b]{svc.name}[/b]", f"{svc.flows:,}", f"{svc.packets:,}",
                         human_bytes(svc.bytes), f"{len(svc.backends)} backends",
                         str(svc.no_endpoints), str(svc.refused), str(svc.unanswered)))
            for be in svc.backends:
                rows.append((f"  └ {be.name}", f"{be.flows:,}", "", human_bytes(be.bytes),
                             _bar(be.share), "", "", ""))
        self.query_one("#services-header", Static).update(
            f"Services: {len(services)} · traffic per backend and failed attempts "
            "(each once per connection)")
        table = self.query_one(DataTable)
        cursor = table.cursor_row
        table.clear()
        table.add_rows(rows)
        if rows:
            table.move_cursor(row=min(max(cursor, 0), len(rows) - 1), animate=False)
