"""Overload, honestly: when the reader thread cannot keep up, the agent sheds work in a fixed
order instead of falling behind everywhere at once, and says what it shed.

The reader thread carries every record through annotate and enrich to the store; when it is
busy most of each sweep interval, the next sweep finds more than it can finish. Measured
per sweep (the thread's own CPU time over the wall time since the previous sweep), the load
steps through these levels, one per sweep, up when busy above HIGH, down when below LOW:

  0 NORMAL       everything;
  1 NO_DNS       DNS payloads are counted, not decoded (`dns_not_decoded`): records on port
                 53 lose their `dns` field and pods' lookups no longer name world addresses;
  2 NO_DETAIL    and new identities are named without per-connection detail: no conntrack
                 lookup (no Service backend or translation for a new DNATed connection),
                 no NetworkPolicy verdict (`enrichment_detail_shed` counts the records).

Beyond that, records themselves: the flow table ends the oldest flows early when it is full
(`flows_ended_early`), the kernel counts the packets a full flow map could not hold
(KERNEL_FLOW_MAP), the store's readers lose their oldest records (EXPORTER_QUEUE,
CLIENT_QUEUE): every one counted, with its packets. The level is in ServerStatus's
datapath_errors (`shed_level`, while above 0) and in the log at each change.
"""

from __future__ import annotations

import logging
import time

from agent.stats import AgentStats

log = logging.getLogger("podflow.datapath")

NORMAL, NO_DNS, NO_DETAIL = 0, 1, 2
NAMES = {NORMAL: "normal", NO_DNS: "no DNS decoding", NO_DETAIL: "no DNS decoding, no "
         "per-connection enrichment detail"}
HIGH = 0.6  # busy share of the reader thread above which one more kind of work is shed
LOW = 0.3   # ... below which one comes back


class LoadGovernor:
    """Sets `stats.shed_level` from the reader thread's busy share at each sweep."""

    def __init__(self, stats: AgentStats, high: float = HIGH, low: float = LOW,
                 clock=time.monotonic, cpu_clock=time.thread_time):
        self.stats = stats
        self.high, self.low = high, low
        self._clock, self._cpu_clock = clock, cpu_clock
        self._wall = clock()
        self._cpu = cpu_clock()
        self.busy = 0.0

    def sweep(self) -> int:
        """Called by the reader thread after each sweep; returns the level now."""
        wall, cpu = self._clock(), self._cpu_clock()
        elapsed = wall - self._wall
        if elapsed <= 0:
            return self.stats.shed_level
        self.busy = (cpu - self._cpu) / elapsed
        self._wall, self._cpu = wall, cpu
        level = self.stats.shed_level
        if self.busy > self.high and level < NO_DETAIL:
            level += 1
        elif self.busy < self.low and level > NORMAL:
            level -= 1
        if level > self.stats.shed_level:
            log.warning("datapath reader busy %.0f%% of the time: shedding %s",
                        100 * self.busy, NAMES[level])
        elif level < self.stats.shed_level:
            log.warning("datapath reader busy %.0f%%: back to %s", 100 * self.busy, NAMES[level])
        self.stats.shed_level = level
        return level
