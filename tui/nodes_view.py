"""NodesView: every source of flows and how complete its part of the picture is: state,
flows/s, lost events by stage, interfaces traced, last error."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import DataTable, Static

from tui.fast_table import FastTable, plain
from tui.snapshot import Snapshot

COLUMNS = ("node", "address", "state", "flows/s", "received", "lost (by stage)",
           "interfaces", "message")


class NodesView(Vertical):
    DEFAULT_CSS = """
    NodesView > #nodes-header { height: 1; }
    NodesView > DataTable { height: 1fr; }
    """

    def compose(self) -> ComposeResult:
        yield Static("Nodes", id="nodes-header")
        table = FastTable(id="nodes-table", cursor_type="row")
        table.add_columns(*COLUMNS)
        yield table

    def show(self, snapshot: Snapshot) -> None:
        rows = []
        for n in snapshot.nodes:
            if n.kind == "file":
                rate = "replay"
                ifaces = f"{n.malformed} malformed, {n.skipped} skipped lines"
            else:
                agent_rate = f"{n.agent_fps:,.0f}" if n.agent_fps is not None else "-"
                rate = f"{agent_rate} (rx {n.rate_fps:,.0f})"
                names = n.interfaces
                ifaces = f"{len(names)}: {', '.join(names[:4])}" + (" …" if len(names) > 4 else "")
            lost_text = ", ".join(f"{k}={v:,}" for k, v in sorted(n.lost.items()) if v) or "0"
            state = n.state.upper() if n.state in ("unavailable", "gone") else n.state
            rows.append(plain((n.name or "?", n.address, state, rate, f"{n.received:,}",
                               lost_text, ifaces, n.message)))
        s = snapshot.summary
        self.query_one("#nodes-header", Static).update(
            f"Nodes: {s.connected} of {s.known} connected · lost events {s.lost:,} "
            "(ServerStatus every few seconds + in-band notices)")
        table = self.query_one(DataTable)
        cursor = table.cursor_row
        table.clear()
        table.add_rows(rows)
        if rows:
            table.move_cursor(row=min(max(cursor, 0), len(rows) - 1), animate=False)
