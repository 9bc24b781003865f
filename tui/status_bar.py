"""StatusBar: always on screen, says how complete the picture is (nodes connected of
known, lost events), whether the view is live or paused, and the filter in force."""

from __future__ import annotations

from textual.widgets import Static

from tui.aggregator import Summary


class StatusBar(Static):
    DEFAULT_CSS = """
    StatusBar { height: 1; background: $boost; padding: 0 1; }
    """

    def show(self, summary: Summary, paused: bool, filter_text: str, view: str,
             note: str = "") -> None:
        complete = summary.connected == summary.known and summary.known > 0
        nodes = f"nodes {summary.connected}/{summary.known} connected"
        nodes = nodes if complete else f"[b red]{nodes}[/]"
        lost = f"lost {summary.lost:,}" if not summary.lost else f"[b yellow]lost {summary.lost:,}[/]"
        mode = "[b yellow]PAUSED[/]" if paused else "[b green]LIVE[/]"
        parts = [view, nodes, lost, mode,
                 f"filter: {filter_text}" if filter_text else "no filter",
                 f"{summary.flows_seen:,} flows seen, {summary.flows_kept:,} kept"]
        if note:
            parts.append(note)
        self.update(" │ ".join(parts))
