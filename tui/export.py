"""The `e` key: write the flows matching the current filter to a JSON-lines file.

Same format as the agent's flow log and `observe -o jsonl` (one GetFlowsResponse per line,
protobuf JSON mapping with proto field names), so an export can be replayed with --file.
"""

from __future__ import annotations

import json
import os
import time

from google.protobuf import json_format

from podflow_api.v1 import observer_pb2

from tui.aggregator import Entry

try:  # the agent's fast encoder: same bytes as json_format, ~10x faster
    from agent.wire.flowjson import to_json as _to_json
except ImportError:  # pragma: no cover - only when the agent package is absent
    def _to_json(msg) -> str:
        return json_format.MessageToJson(msg, preserving_proto_field_name=True, indent=None)


def export_path(directory: str, now: float | None = None) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now or time.time()))
    path = os.path.join(directory, f"podflow-export-{stamp}.jsonl")
    n = 1
    while os.path.exists(path):
        n += 1
        path = os.path.join(directory, f"podflow-export-{stamp}-{n}.jsonl")
    return path


def write_export(entries: list[Entry], directory: str, filter_text: str = "") -> str:
    """Write the entries (oldest first); returns the path. A header line says what was
    exported; readers skip it because it is not a GetFlowsResponse."""
    os.makedirs(directory, exist_ok=True)
    path = export_path(directory)
    tmp = f"{path}.part"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(json.dumps({"podflow_export": {"filter": filter_text, "flows": len(entries),
                                                "written": time.strftime(
                                                    "%Y-%m-%dT%H:%M:%SZ", time.gmtime())}}))
        fh.write("\n")
        for e in entries:
            resp = observer_pb2.GetFlowsResponse(node_name=e.flow.node_name, flow=e.flow)
            resp.time.CopyFrom(e.flow.time)
            fh.write(_to_json(resp))
            fh.write("\n")
    os.replace(tmp, path)
    return path
