"""The flow-log file format, written and read in one place: the agent's flow log,
`podflow observe -o jsonl --output-file`, the TUI's `e` export all write it, and the TUI's
`--file` replay reads it (also gzip-compressed, also files written before the formats were
unified).

A file is JSON lines: a header line `{"podflow_flow_log": {...}}` saying what the file holds
(node, agent version, filters, field mask, aggregation, start time, format, and what the
writer adds: the servers of a merged stream, the TUI filter of an export), then one
`podflow.v1.GetFlowsResponse` per line in protobuf's JSON mapping with proto field names, so
`jq .flow` works. Besides flows, responses carry `lost_events` (what the writer or the agents
could not deliver), `flow_update` (a flow already written ended: apply it, count nothing) and
`node_status` notices. The agent's own flow log writes its records compactly: no spaces, the
time in the flow, the node only in the header (the reader puts it back on every response).
Exports of the TUI written before the header was unified start with `{"podflow_export":
{"filter", "flows", "written"}}`; the reader takes that too.
"""

from __future__ import annotations

import gzip
import json
import time
from collections.abc import Iterable, Iterator

from google.protobuf import json_format

from agent.wire import flowjson, flowupdate
from agent.wire.fieldmask import apply_mask
from agent.wire.timefmt import rfc3339_ns, set_ts
from podflow_api.v1 import flow_pb2, observer_pb2

HEADER_KEY = "podflow_flow_log"
LEGACY_EXPORT_KEY = "podflow_export"  # the TUI's exports before the header was unified
FORMAT = "podflow.v1.GetFlowsResponse"
_RESPONSE_FIELDS = frozenset(f.name for f in observer_pb2.GetFlowsResponse.DESCRIPTOR.fields)
_RESPONSE_KINDS = frozenset({"flow", "lost_events", "node_status", "flow_update"})
_NO_NODE = frozenset({"node_name"})  # a flow-log record leaves the node to the header


# -- writing -----------------------------------------------------------------------------------

def header_fields(*, node_name: str = "", agent_version: str = "",
                  allowlist: Iterable[observer_pb2.FlowFilter] = (),
                  denylist: Iterable[observer_pb2.FlowFilter] = (),
                  field_mask: Iterable[str] = (), aggregate: str = "", **extra) -> dict:
    """What a header says, without its start time (added each time a file is opened).
    `extra` holds what one writer adds: `servers` (observe), `filter` and `flows` (an
    export of the TUI)."""
    return {"node_name": node_name, "agent_version": agent_version,
            "allowlist": [flowjson.to_dict(f) for f in allowlist],
            "denylist": [flowjson.to_dict(f) for f in denylist],
            "field_mask": list(field_mask), "aggregate": aggregate, "format": FORMAT, **extra}


def header_line(fields: dict, now_ns: int | None = None) -> bytes:
    """The first line of a file: `fields` with the time the file was started."""
    header = dict(fields)
    header["start_time"] = rfc3339_ns(time.time_ns() if now_ns is None else now_ns)
    return (json.dumps({HEADER_KEY: header}) + "\n").encode()


def flow_line(flow: flow_pb2.Flow, mask_tree: dict | None = None, key: str = "flow") -> bytes:
    """One record of the agent's flow log: `{"flow":{...}}` in compact JSON, the time in
    the flow, no node (the file's header names it; FlowLogReader puts it back), as
    agent.wire.recordcols writes the records it renders from columns. `mask_tree`: trim the
    flow to these fields (fieldmask.mask_tree); `key`: "flow_update" for an end notice (which
    holds only what names the flow and what changes: flowupdate.LOG_FIELDS)."""
    if key == "flow_update":
        flow = flowupdate.log_part(flow)
    if mask_tree is None:
        body = flowjson.to_compact_json(flow, _NO_NODE)
    else:
        fields = flowjson.to_dict(flow)
        fields.pop("node_name", None)
        body = json.dumps(apply_mask(fields, mask_tree), separators=(",", ":"))
    return ('{"%s":%s}\n' % (key, body)).encode()


def response_line(resp: observer_pb2.GetFlowsResponse) -> bytes:
    return (flowjson.to_json(resp) + "\n").encode()


def lost_events_response(stage: int, count: int, first_ns: int, last_ns: int,
                         node_name: str = "", now_ns: int | None = None, packets: int = 0,
                         ) -> observer_pb2.GetFlowsResponse:
    """The record that says `count` flows (holding `packets` packets, 0: unknown) between
    first and last were lost at `stage`."""
    resp = observer_pb2.GetFlowsResponse(node_name=node_name)
    set_ts(resp.time, time.time_ns() if now_ns is None else now_ns)
    resp.lost_events.stage = stage
    resp.lost_events.num_events_lost = count
    if packets:
        resp.lost_events.num_packets_lost = packets
    if first_ns:
        set_ts(resp.lost_events.first, first_ns)
    if last_ns:
        set_ts(resp.lost_events.last, last_ns)
    return resp


# -- reading -----------------------------------------------------------------------------------

def header_of(obj: dict) -> dict | None:
    """The header fields of a parsed header line (either form), else None. An old export
    header is given the unified names (`start_time`, `format`) beside its own."""
    header = obj.get(HEADER_KEY)
    if isinstance(header, dict):
        return header
    old = obj.get(LEGACY_EXPORT_KEY)
    if isinstance(old, dict):
        return {"node_name": "", "format": FORMAT, "start_time": old.get("written", ""),
                "filter": old.get("filter", ""), "flows": old.get("flows", 0)}
    return None


def parse_response_line(line: str):
    """One line -> GetFlowsResponse; False for a JSON object that is not one (a header,
    anything else a writer added); None for a malformed line."""
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    if not isinstance(obj, dict):
        return None
    if not obj.keys() & _RESPONSE_KINDS or not obj.keys() <= _RESPONSE_FIELDS:
        return False
    resp = observer_pb2.GetFlowsResponse()
    try:
        json_format.ParseDict(obj, resp, ignore_unknown_fields=True)
    except json_format.ParseError:
        return None
    return resp


def open_text(path: str):
    """A flow-log file for reading as text, gzip-compressed or not (by its magic bytes, not
    its name: a rotated file may have been compressed or renamed by another tool)."""
    with open(path, "rb") as fh:
        magic = fh.read(2)
    if magic == b"\x1f\x8b":
        return gzip.open(path, "rt", encoding="utf-8", errors="replace")
    return open(path, encoding="utf-8", errors="replace")


class FlowLogReader:
    """The responses of one flow-log file, in file order. Nothing stops a read: lines that
    are not JSON (a torn last line) count as `malformed`, JSON objects that are not responses
    (headers, other records) as `skipped`; the headers are kept in `headers`. I/O errors and
    a truncated gzip stream (OSError, EOFError) reach the caller."""

    def __init__(self, path: str):
        self.path = path
        self.malformed = 0
        self.skipped = 0
        self.headers: list[dict] = []

    def __iter__(self) -> Iterator[observer_pb2.GetFlowsResponse]:
        node = ""  # the agent's flow log names its node in the header, not on each line
        with open_text(self.path) as fh:
            for line in fh:
                line = line.strip()
                if not line:
                    continue
                resp = parse_response_line(line)
                if resp is None:
                    self.malformed += 1
                elif resp is False:
                    self.skipped += 1
                    header = header_of(json.loads(line))
                    if header is not None:
                        self.headers.append(header)
                        node = header.get("node_name") or ""
                else:
                    if node and not resp.node_name:
                        resp.node_name = node
                        kind = resp.WhichOneof("response_types")
                        if kind in ("flow", "flow_update"):
                            record = getattr(resp, kind)
                            if not record.node_name:
                                record.node_name = node
                    yield resp
