"""Request planning for GetFlows: a GetFlowsRequest -> a checked FlowsPlan.

A request says which flows a client wants (`number` with `first`, or `since`/`until`), whether
to keep following, which flows (allow/deny FlowFilters, compiled into one predicate by
agent.filters) and which fields (a field mask). Everything that can be wrong with it is found
here, before a stream starts, and named after the request field (InvalidRequest: the servicer
answers INVALID_ARGUMENT with it). The servicer (agent/observer/servicer.py) then only
executes the plan over the store.
"""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf import field_mask_pb2, timestamp_pb2

from agent.errors import InvalidRequest
from agent.filters.engine import FilterError, compile_filters
from podflow_api.v1 import flow_pb2, observer_pb2

_NS = 1_000_000_000


@dataclass
class FlowsPlan:
    """A validated GetFlowsRequest."""

    predicate: object
    number: int
    first: bool
    follow: bool
    since_ns: int | None
    until_ns: int | None
    mask: field_mask_pb2.FieldMask | None


def _ts_ns(ts: timestamp_pb2.Timestamp) -> int:
    return ts.seconds * _NS + ts.nanos


def plan_request(request: observer_pb2.GetFlowsRequest) -> FlowsPlan:
    """Validate a request; InvalidRequest names the offending field."""
    since_ns = _ts_ns(request.since) if request.HasField("since") else None
    until_ns = _ts_ns(request.until) if request.HasField("until") else None
    if request.number and since_ns is not None:
        raise InvalidRequest("number: cannot be combined with since (use one or the other)")
    if request.first and not request.number:
        raise InvalidRequest("first: needs number (the first N flows)")
    if since_ns is not None and until_ns is not None and until_ns < since_ns:
        raise InvalidRequest("until: is before since")
    try:
        predicate = compile_filters(request.allowlist, request.denylist)
    except FilterError as exc:
        raise InvalidRequest(str(exc)) from exc
    mask = None
    if request.HasField("field_mask") and request.field_mask.paths:
        mask = field_mask_pb2.FieldMask()
        mask.CopyFrom(request.field_mask)
        for path in mask.paths:
            single = field_mask_pb2.FieldMask(paths=[path])
            if not single.IsValidForDescriptor(flow_pb2.Flow.DESCRIPTOR):
                raise InvalidRequest(f"field_mask: {path!r} is not a field path of Flow")
    return FlowsPlan(predicate=predicate, number=request.number, first=request.first,
                     follow=request.follow, since_ns=since_ns, until_ns=until_ns, mask=mask)
