"""Field masks over Flow, in one place: `podflow observe --fields`, the flow log's
`--flow-log-fields` and the Observer's GetFlowsRequest.field_mask accept the same paths and
reject a bad one with the same words, and the flow log trims its JSON records to the fields
the server's FieldMask.MergeMessage keeps.
"""

from __future__ import annotations

from collections.abc import Iterable

from google.protobuf import field_mask_pb2

from agent.errors import ConfigError
from podflow_api.v1 import flow_pb2


def split_paths(text: str) -> list[str]:
    """'source, l4,destination.pod_name' -> ['source', 'l4', 'destination.pod_name']."""
    return [p.strip() for p in text.split(",") if p.strip()]


def invalid_paths(paths: Iterable[str]) -> list[str]:
    """The paths that name no field of Flow (a path into a message may go deeper:
    'source.pod_name')."""
    descriptor = flow_pb2.Flow.DESCRIPTOR
    return [p for p in paths
            if not field_mask_pb2.FieldMask(paths=[p]).IsValidForDescriptor(descriptor)]


def check_paths(paths: Iterable[str], what: str) -> list[str]:
    """The paths, validated; ConfigError names `what` (a flag or a request field) and every
    bad path."""
    paths = list(paths)
    bad = invalid_paths(paths)
    if len(bad) == 1:
        raise ConfigError(f"{what}: {bad[0]!r} is not a field path of Flow")
    if bad:
        raise ConfigError(f"{what}: {', '.join(map(repr, bad))} are not field paths of Flow")
    return paths


def parse_field_mask(text: str, flag: str) -> list[str]:
    """A flag's comma-separated paths, validated ([] for none)."""
    return check_paths(split_paths(text or ""), flag)


def mask_tree(paths: Iterable[str]) -> dict:
    """Paths -> nested dict; an empty dict keeps the whole field."""
    tree: dict = {}
    for path in sorted(paths, key=len):
        node = tree
        parts = path.split(".")
        for i, part in enumerate(parts):
            if part in node and not node[part]:
                break  # a shorter path already keeps the whole field
            node = node.setdefault(part, {})
            if i == len(parts) - 1:
                node.clear()
    return tree


def apply_mask(record: dict, tree: dict) -> dict:
    """Keep the fields of a JSON-mapped message named by `tree` (field order kept), as
    FieldMask.MergeMessage does, except that a message left empty by the mask is dropped
    rather than written as `{}`."""
    out = {}
    for name, value in record.items():
        sub = tree.get(name)
        if sub is None:
            continue
        if sub:
            if not isinstance(value, dict):
                continue
            value = apply_mask(value, sub)
            if not value:
                continue
        out[name] = value
    return out
