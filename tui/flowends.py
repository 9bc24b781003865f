"""Where the end of a flow goes when it comes after the flow's last record: the agent sends a
`flow_update` (a flow reported on its first packet, then quiet; agent/wire/flowupdate.py
says how to apply one). The Flows view keeps records; this keeps, for each flow, its latest
record (bounded), so an update marks that record ended and gives it the final outcome
instead of adding a row.
"""

from __future__ import annotations

from collections import OrderedDict

from agent.wire import flowupdate
from podflow_api.v1 import flow_pb2

from tui.flowkey import FlowKey, flow_key
from tui.records import Entry


class LatestRecords:
    """A flow's latest record, for the newest `max_records` flows.

    Records are indexed by a cheap key, the flow's first packet time (ns) and interface,
    which this runs for every record; the full identity (flowupdate.identity) is compared
    only when an update comes. Two flows whose first packets share a nanosecond and an
    interface keep only the newer one's record: the other's update is then shown alone."""

    def __init__(self, max_records: int):
        self.max_records = max_records
        self._latest: OrderedDict = OrderedDict()

    @staticmethod
    def _key(flow: flow_pb2.Flow) -> tuple[int, int, int]:
        fs = flow.first_seen
        return fs.seconds, fs.nanos, flow.interface.index

    def remember(self, entry: Entry) -> None:
        """Keep `entry` as its flow's latest record, unless it already ends the flow (no
        update can follow a record with flow_end)."""
        flow = entry.flow
        if flow.flow_end:
            return
        latest = self._latest
        latest[self._key(flow)] = entry
        if len(latest) > self.max_records:
            latest.popitem(last=False)

    def apply(self, update: flow_pb2.Flow) -> tuple[flow_pb2.Flow, FlowKey]:
        """Apply an update to its flow's latest record when held (redrawn with its end);
        returns the flow as it now reads and its key (the update itself when not held)."""
        entry = self._latest.get(self._key(update))
        if entry is None or flowupdate.identity(entry.flow) != flowupdate.identity(update):
            return update, flow_key(update)
        flowupdate.apply(entry.flow, update)
        entry.key = flow_key(entry.flow)
        entry.row = None
        return entry.flow, entry.key
