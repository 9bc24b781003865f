"""The plain records the aggregator keeps and hands out: one flow record as the Flows view
keeps it (Entry), one source of flows (NodeInfo), and the rows of the Top and Services views
and the status bar. Plain data, so a snapshot of them crosses into the app's process cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from podflow_api.v1 import flow_pb2, observer_pb2

from tui.flowkey import FlowKey

LIVE_KINDS = ("agent", "kubernetes")
STAGE_NAMES = {v.number: v.name for v in observer_pb2.LostStage.DESCRIPTOR.values}


class Entry:
    """One flow record as the Flows view keeps it."""

    __slots__ = ("time_ns", "source_id", "flow", "key", "counted", "row")

    def __init__(self, time_ns: int, source_id: str, flow: flow_pb2.Flow, key: FlowKey,
                 counted: bool):
        self.time_ns = time_ns
        self.source_id = source_id
        self.flow = flow
        self.key = key
        self.counted = counted
        self.row = None  # formatted cells, filled by the Flows view on first display


@dataclass
class NodeInfo:
    """One source of flows (an agent, a port-forwarded agent pod, a replayed file)."""

    source_id: str
    address: str
    kind: str                      # agent, kubernetes, file
    name: str = ""                 # node name reported by the agent (or by the flows)
    state: str = "connecting"      # connecting, connected, reconnecting, unavailable,
                                   # replaying, replayed, gone
    message: str = ""
    status: observer_pb2.ServerStatusResponse | None = None
    received: int = 0              # flow records received from this source
    rate_fps: float = 0.0          # records/s received, measured here
    inband_lost: dict[str, int] = field(default_factory=dict)  # stage -> count (notices)
    dropped_here: int = 0          # records this TUI could not keep up with (inbox full)
    malformed: int = 0             # file replay: lines that were not valid JSON / responses
    skipped: int = 0               # file replay: valid JSON objects that are not responses
    retry_at_mono: float = 0.0
    _rate_mark: tuple[float, int] = (0.0, 0)

    @property
    def live(self) -> bool:
        return self.kind in LIVE_KINDS

    def lost_by_stage(self) -> dict[str, int]:
        """Per stage, the larger of the agent's cumulative ServerStatus count and the
        notices received in-band (they overlap: notices are a subset the stream saw)."""
        lost = dict(self.inband_lost)
        if self.status is not None:
            for lc in self.status.lost:
                name = STAGE_NAMES.get(lc.stage, str(lc.stage))
                lost[name] = max(lost.get(name, 0), lc.count)
        if self.dropped_here:
            lost["TUI_INBOX"] = self.dropped_here
        return lost

    def lost_total(self) -> int:
        return sum(self.lost_by_stage().values())


@dataclass
class TopRow:
    label: str
    packets: int
    bytes: int
    flows: int
    rate_bps: float                # bytes/s over the rate window
    series: list[int]              # bytes per second, oldest first


@dataclass
class BackendShare:
    name: str
    bytes: int
    flows: int
    share: float                   # of the Service's bytes, 0..1


@dataclass
class ServiceRow:
    name: str
    packets: int
    bytes: int
    flows: int
    backends: list[BackendShare]
    no_endpoints: int
    refused: int
    unanswered: int


@dataclass
class Summary:
    connected: int
    known: int
    lost: int
    flows_seen: int
    flows_kept: int
    backlog: int = 0   # responses fed but not yet taken in (the inbox)


@dataclass
class PolicyRow:
    """One NetworkPolicy in the Policies view: connections (flows, counted once) its rules
    allowed, connections it denied and what became of those, and its rules nothing used
    (None when its rules are unknown: the TUI was not given --metadata)."""

    name: str
    allowed: int = 0
    denied: int = 0
    denied_dropped: int = 0        # enforced
    denied_delivered: int = 0      # NOT enforced by the CNI
    allowed_dropped: int = 0       # dropped for another reason (the kernel's)
    rules: int | None = None
    unused_rules: list[str] | None = None

    @property
    def not_enforced(self) -> bool:
        return self.denied_delivered > 0
