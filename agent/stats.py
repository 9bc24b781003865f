"""Counters the whole agent shares: what was lost where, datapath errors, interfaces traced
(and what limits what podflow sees on them), whether the datapath is tracing, metadata and
exporter health.

Every stage that can lose or fail reports here, so ServerStatus, in-band lost-events notices,
the flow log and Prometheus metrics all tell the same story from one place.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from podflow_api.v1 import flow_pb2, observer_pb2


@dataclass
class LostSpan:
    """How many events one stage lost (and the packets they held, where known), and over
    which wall-clock span (ns)."""

    count: int = 0
    first_ns: int = 0
    last_ns: int = 0
    packets: int = 0


# The datapath's life, as readiness sees it: only TRACING means "flows are being counted".
DATAPATH_STARTING = "starting"   # loading and attaching
DATAPATH_TRACING = "tracing"     # programs attached, reader running
DATAPATH_FAILED = "failed"       # could not start, or its reader stopped: nothing is counted
DATAPATH_STOPPING = "stopping"


@dataclass(frozen=True)
class InterfaceNote:
    """Something on one hook of a traced interface that limits what podflow sees there (a
    foreign filter that runs first and may end the chain), or that podflow did about it."""

    interface: str
    hook: str   # "ingress" or "egress"
    note: str


@dataclass
class AgentStats:
    """Thread-safe shared counters. Writers call the `add_*`/`set_*` methods; readers
    take a consistent copy with `snapshot_*`."""

    node_name: str
    version: str
    started_ns: int = field(default_factory=time.time_ns)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _lost: dict[int, LostSpan] = field(default_factory=dict, repr=False)
    _datapath_errors: dict[str, int] = field(default_factory=dict, repr=False)
    _agent_errors: dict[str, int] = field(default_factory=dict, repr=False)  # add_error()
    _interfaces: dict[int, str] = field(default_factory=dict, repr=False)
    _notes: dict[tuple[str, str], str] = field(default_factory=dict, repr=False)
    _datapath_state: str = DATAPATH_STARTING
    datapath_error: str = ""
    _state_listeners: list = field(default_factory=list, repr=False)
    # what the agent sheds under overload (agent/datapath/shedding.py): 0 nothing,
    # 1 DNS decoding, 2 also per-connection enrichment detail; set by the datapath's reader
    shed_level: int = 0
    metadata_source: str = "none"
    metadata_stale: bool = False
    metadata_error: str = ""
    exporter_error: str = ""

    def add_lost(self, stage: int, count: int, when_ns: int | None = None,
                 packets: int = 0) -> None:
        """Count `count` events lost at `stage` (an observer_pb2.LostStage value), holding
        `packets` packets (0: unknown; at the kernel's flow map an event is a packet)."""
        if count <= 0:
            return
        now = when_ns or time.time_ns()
        with self._lock:
            span = self._lost.setdefault(stage, LostSpan(first_ns=now))
            span.count += count
            span.packets += packets
            span.last_ns = now

    def set_datapath_errors(self, errors: dict[str, int]) -> None:
        """Replace the kernel-side counters (they are cumulative in the kernel)."""
        with self._lock:
            self._datapath_errors = dict(errors)

    def add_error(self, name: str, count: int = 1) -> None:
        """Count a user-space decoding error (e.g. "dns_malformed"); reported with the
        kernel's counters in ServerStatus.datapath_errors, which set_datapath_errors keeps."""
        if count <= 0:
            return
        with self._lock:
            self._agent_errors[name] = self._agent_errors.get(name, 0) + count

    def set_interface(self, ifindex: int, name: str | None) -> None:
        """Record an interface as traced (name) or released (None)."""
        with self._lock:
            if name is None:
                self._interfaces.pop(ifindex, None)
            else:
                self._interfaces[ifindex] = name

    def set_interface_notes(self, interface: str, notes: dict[str, str]) -> None:
        """Replace the notes of one interface ({hook: note}; empty: none any more)."""
        with self._lock:
            for key in [k for k in self._notes if k[0] == interface]:
                del self._notes[key]
            for hook, note in notes.items():
                self._notes[(interface, hook)] = note

    def snapshot_notes(self) -> list[InterfaceNote]:
        with self._lock:
            return [InterfaceNote(i, h, n) for (i, h), n in sorted(self._notes.items())]

    @property
    def datapath_state(self) -> str:
        return self._datapath_state

    def set_datapath_state(self, state: str, error: str = "") -> None:
        """The datapath moved to `state` (DATAPATH_*); listeners (gRPC health) hear of it
        at once, on the caller's thread."""
        with self._lock:
            changed = state != self._datapath_state or error != self.datapath_error
            self._datapath_state, self.datapath_error = state, error
            listeners = list(self._state_listeners)
        if changed:
            for listener in listeners:
                listener(state)

    def on_datapath_state(self, listener: Callable[[str], None]) -> None:
        """Call `listener(state)` now and at every change of the datapath's state."""
        with self._lock:
            self._state_listeners.append(listener)
            state = self._datapath_state
        listener(state)

    def snapshot_lost(self) -> dict[int, LostSpan]:
        with self._lock:
            return {k: LostSpan(v.count, v.first_ns, v.last_ns, v.packets)
                    for k, v in self._lost.items()}

    def snapshot_datapath_errors(self) -> dict[str, int]:
        with self._lock:
            out = {**self._datapath_errors, **self._agent_errors}
        if self.shed_level:
            out["shed_level"] = self.shed_level
        return out

    def snapshot_interfaces(self) -> list[flow_pb2.Interface]:
        with self._lock:
            return [flow_pb2.Interface(index=i, name=n) for i, n in sorted(self._interfaces.items())]

    def uptime_ns(self) -> int:
        return time.time_ns() - self.started_ns

    def lost_counts(self) -> list[observer_pb2.LostCount]:
        return [observer_pb2.LostCount(stage=stage, count=span.count, packets=span.packets)
                for stage, span in sorted(self.snapshot_lost().items())]
