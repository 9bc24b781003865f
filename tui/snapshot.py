"""What the views draw, computed away from the UI: one Snapshot of every view for the
current filter, pivot and sort, built from the aggregator a few times a second.

The UI thread never walks the aggregator itself: switching views draws the latest snapshot
at once, and a new filter, pivot or sort asks the engine for a fresh one. Snapshots are plain
data (no protobuf messages), so they cross a process boundary as cheaply as a thread one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tui.aggregator import Aggregator, NodeInfo, ServiceRow, Summary, TopRow
from tui.records import PolicyRow
from tui.filterexpr import FlowFilter
from tui.format import flow_row

FLOW_ROWS = 150      # rows in the Flows table (a screen shows ~50; export takes them all)
TOP_ROWS = 100
TREND_S = 30         # seconds in each Top row's sparkline
TOTAL_SERIES_S = 60  # seconds in the Top view's overall sparkline


@dataclass
class ViewState:
    """What the user asked to see; the engine builds snapshots for it."""

    filter_text: str = ""
    pivot: str = "namespace"
    sort: str = "bytes"


@dataclass
class NodeRow:
    """A source as the Nodes view and the status bar show it."""

    source_id: str
    name: str
    address: str
    kind: str
    state: str
    message: str
    agent_fps: float | None      # flows/s the agent reports (ServerStatus), None if unknown
    rate_fps: float              # records/s received here
    received: int
    lost: dict[str, int]
    interfaces: list[str]
    malformed: int
    skipped: int

    @classmethod
    def of(cls, n: NodeInfo) -> NodeRow:
        status = n.status
        return cls(n.source_id, n.name, n.address, n.kind, n.state, n.message,
                   status.flows_per_second if status is not None else None, n.rate_fps,
                   n.received, n.lost_by_stage(),
                   [i.name for i in status.interfaces] if status is not None else [],
                   n.malformed, n.skipped)


@dataclass
class Snapshot:
    state: ViewState
    version: int
    summary: Summary
    flows: list[tuple[int, tuple]] = field(default_factory=list)  # (entry id, cells)
    top: list[TopRow] = field(default_factory=list)
    total_series: list[int] = field(default_factory=list)
    rate_s: int = 5
    services: list[ServiceRow] = field(default_factory=list)
    nodes: list[NodeRow] = field(default_factory=list)
    policies: list[PolicyRow] = field(default_factory=list)
    policy_source: str = ""      # where the cluster's policies came from ("" unknown)
    policy_error: str = ""       # why they could not be read


def build_snapshot(agg: Aggregator, state: ViewState, flt: FlowFilter,
                   kept: dict[int, object]) -> Snapshot:
    """Every view for `state`. `kept` receives entry id -> Entry of the rows shown, so the
    detail pane can ask for the full record of a row later."""
    entries = agg.recent(flt, FLOW_ROWS)
    kept.clear()
    flows = []
    for entry in entries:
        kept[id(entry)] = entry
        flows.append((id(entry), flow_row(entry)))
    return Snapshot(
        state=state, version=agg.version, summary=agg.summary(), flows=flows,
        top=agg.top(flt, state.pivot, state.sort, limit=TOP_ROWS, spark_s=TREND_S),
        total_series=agg.total_rate_series(flt, spark_s=TOTAL_SERIES_S), rate_s=agg.rate_s,
        services=agg.services(flt), nodes=[NodeRow.of(n) for n in agg.nodes()],
        policies=agg.policies(flt),
        policy_source=getattr(agg.policy_catalog, "source", ""),
        policy_error=getattr(agg.policy_catalog, "error", ""))
