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
    """A flow's identity -> its latest record, for the newest `max_records` flows."""

    def __init__(self, max_records: int):
        self.max_records = max_records
        self._latest: OrderedDict = OrderedDict()

    def remember(self, entry: Entry) -> None:
        latest = self._latest
        latest[flowupdate.identity(entry.flow)] = entry
        if len(latest) > self.max_records:
            latest.popitem(last=False)

    def apply(self, update: flow_pb2.Flow) -> tuple[flow_pb2.Flow, FlowKey]:
        """Apply an update to its flow's latest record when held (redrawn with its end);
        returns the flow as it now reads and its key (the update itself when not held)."""
        entry = self._latest.get(flowupdate.identity(update))
        if entry is None:
            return update, flow_key(update)
        flowupdate.apply(entry.flow, update)
        entry.key = flow_key(entry.flow)
        entry.row = None
        return entry.flow, entry.key
