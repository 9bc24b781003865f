"""Messages the TUI's background threads post to the app, named as the facts they report.

Posting is thread-safe in Textual; the readers never touch widgets. Flow arrivals are
coalesced by the pump (at most a few FlowsReceived per second), never one message per flow.
"""

from __future__ import annotations

from dataclasses import dataclass

from textual.message import Message


@dataclass
class FlowsReceived(Message):
    """The aggregator took in `count` more flow records since the last such message."""

    count: int


@dataclass
class NodeConnected(Message):
    """A source is streaming (an agent answered, or a file finished replaying)."""

    source_id: str
    detail: str


@dataclass
class NodeLost(Message):
    """A source stopped (agent unreachable, stream ended, file unreadable); it is retried."""

    source_id: str
    reason: str


@dataclass
class NodeGone(Message):
    """An agent pod was removed from the cluster; it will not be retried."""

    source_id: str
    reason: str
