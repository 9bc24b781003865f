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

from google.protobuf import field_mask_pb2

from agent.errors import ConfigError, InvalidRequest
from agent.filters.engine import FilterError, compile_filters
from agent.wire.fieldmask import check_paths
from agent.wire.timefmt import ts_ns
from podflow_api.v1 import observer_pb2



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


def plan_request(request: observer_pb2.GetFlowsRequest) -> FlowsPlan:
    """Validate a request; InvalidRequest names the offending field."""
    since_ns = ts_ns(request.since) if request.HasField("since") else None
    until_ns = ts_ns(request.until) if request.HasField("until") else None
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
        try:
            check_paths(request.field_mask.paths, "field_mask")
        except ConfigError as exc:
            raise InvalidRequest(str(exc)) from exc
        mask = field_mask_pb2.FieldMask()
        mask.CopyFrom(request.field_mask)
    return FlowsPlan(predicate=predicate, number=request.number, first=request.first,
                     follow=request.follow, since_ns=since_ns, until_ns=until_ns, mask=mask)
