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
    and only when an update comes (remember() only appends: most streams carry few updates,
    and reading a record's fields is most of the cost); the full identity
    (flowupdate.identity) is compared then too. Two flows whose first packets share a
    nanosecond and an interface keep only the newer one's record: the other's update is
    then shown alone."""

    def __init__(self, max_records: int):
        self.max_records = max_records
        self._latest: OrderedDict = OrderedDict()
        self._unindexed: list[Entry] = []  # remembered since the last update, oldest first

    @staticmethod
    def _key(flow: flow_pb2.Flow) -> tuple[int, int, int]:
        fs = flow.first_seen
        return fs.seconds, fs.nanos, flow.interface.index

    def remember(self, entry: Entry) -> None:
        """Keep `entry` as its flow's latest record (indexed when an update comes)."""
        unindexed = self._unindexed
        unindexed.append(entry)
        if len(unindexed) > 2 * self.max_records:  # the older half would be evicted anyway
            del unindexed[:self.max_records]

    def _index(self) -> None:
        """Index what was remembered since the last update, leaving out records that end
        their flow (no update can follow one)."""
        latest, key_of = self._latest, self._key
        for entry in self._unindexed:
            flow = entry.flow
            if not flow.flow_end:
                latest[key_of(flow)] = entry
        self._unindexed = []
        while len(latest) > self.max_records:
            latest.popitem(last=False)

    def apply(self, update: flow_pb2.Flow) -> tuple[flow_pb2.Flow, FlowKey]:
        """Apply an update to its flow's latest record when held (redrawn with its end);
        returns the flow as it now reads and its key (the update itself when not held)."""
        if self._unindexed:
            self._index()
        entry = self._latest.get(self._key(update))
        if entry is None or flowupdate.identity(entry.flow) != flowupdate.identity(update):
            return update, flow_key(update)
        flowupdate.apply(entry.flow, update)
        entry.key = flow_key(entry.flow)
        entry.row = None
        return entry.flow, entry.key
