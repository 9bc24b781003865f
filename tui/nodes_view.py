"""NodesView: every source of flows and how complete its part of the picture is: state,
flows/s, lost events by stage, interfaces traced, last error."""

from __future__ import annotations

from tui.snapshot import Snapshot
from tui.table_view import TableView


class NodesView(TableView):
    NAME = "nodes"
    COLUMNS = ("node", "address", "state", "flows/s", "received", "lost (by stage)",
               "interfaces", "message")
    HEADER = "Nodes"

    def rows_of(self, snapshot: Snapshot):
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
            rows.append((n.name or "?", n.address, state, rate, f"{n.received:,}",
                         lost_text, ifaces, n.message))
        s = snapshot.summary
        header = (f"Nodes: {s.connected} of {s.known} connected · lost events {s.lost:,} "
                  "(ServerStatus every few seconds + in-band notices)")
        return header, rows, None
