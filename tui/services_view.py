"""ServicesView: each Service, how its traffic spreads over its backends, and its failed
attempts (no endpoints, refused, unanswered), counted once per connection."""

from __future__ import annotations

from rich.style import Style

from tui.format import human_bytes
from tui.snapshot import Snapshot
from tui.table_view import TableView

BOLD = Style(bold=True)


def _bar(share: float, width: int = 10) -> str:
    filled = int(round(share * width))
    return "█" * filled + "░" * (width - filled) + f" {share * 100:3.0f}%"


class ServicesView(TableView):
    NAME = "services"
    COLUMNS = ("service / backend", "flows", "packets", "bytes", "share", "no endpoints",
               "refused", "unanswered")
    HEADER = "Services: traffic per backend and failed attempts"

    def rows_of(self, snapshot: Snapshot):
        rows, styles = [], []
        services = snapshot.services
        for svc in services:
            rows.append((svc.name, f"{svc.flows:,}", f"{svc.packets:,}",
                         human_bytes(svc.bytes), f"{len(svc.backends)} backends",
                         str(svc.no_endpoints), str(svc.refused), str(svc.unanswered)))
            styles.append(BOLD)
            for be in svc.backends:
                rows.append((f"  └ {be.name}", f"{be.flows:,}", "", human_bytes(be.bytes),
                             _bar(be.share), "", "", ""))
                styles.append(None)
        header = (f"Services: {len(services)} · traffic per backend and failed attempts "
                  "(each once per connection)")
        return header, rows, styles
