"""Messages the engine's side posts to the app, named as the facts they report.

Posting is thread-safe in Textual; nothing outside the UI thread touches widgets. Flows never
arrive one message each: the engine rebuilds the views a few times a second and posts one
SnapshotBuilt.
"""

from __future__ import annotations

from dataclasses import dataclass

from textual.message import Message

from tui.snapshot import Snapshot


@dataclass
class SnapshotBuilt(Message):
    """New flows (or a new filter, pivot, sort) made the engine rebuild every view."""

    snapshot: Snapshot


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


@dataclass
class DetailFetched(Message):
    """Every field of one flow record, asked for by the detail pane."""

    entry_id: int
    text: str


@dataclass
class ExportFinished(Message):
    """The `e` key's file is written (or could not be)."""

    text: str
    severity: str


@dataclass
class EngineFailed(Message):
    """The engine hit an error it could not handle (shown to the user)."""

    text: str
