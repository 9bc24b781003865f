"""The `e` key: write the flows matching the current filter to a JSON-lines file.

The flow-log format (agent.wire.logformat: its header, then one GetFlowsResponse per line)
written by the same loss-reporting sink as the agent's flow log and `observe --output-file`
(agent.wire.jsonlines), so an export replays with `podflow tui --file` and reads with the
same tools. The file appears whole or not at all: it is written under a `.part` name and
renamed when every line is in; a write that fails (disk full) removes it and says why.
"""

from __future__ import annotations

import os
import time

from agent import __version__
from agent.errors import ExportError
from agent.wire import logformat
from agent.wire.jsonlines import JsonLinesSink
from agent.wire.rotation import NO_ROTATION
from podflow_api.v1 import observer_pb2

from tui.records import Entry


def export_path(directory: str, now: float | None = None) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now or time.time()))
    path = os.path.join(directory, f"podflow-export-{stamp}.jsonl")
    n = 1
    while os.path.exists(path):
        n += 1
        path = os.path.join(directory, f"podflow-export-{stamp}-{n}.jsonl")
    return path


def write_export(entries: list[Entry], directory: str, filter_text: str = "") -> str:
    """Write the entries (oldest first); returns the path. ExportError (or OSError for the
    directory) says why nothing was written."""
    os.makedirs(directory, exist_ok=True)
    path = export_path(directory)
    tmp = f"{path}.part"
    header = logformat.header_fields(agent_version=__version__, filter=filter_text,
                                     flows=len(entries))
    failures: list[ExportError] = []
    sink = JsonLinesSink(tmp, NO_ROTATION, header,
                         on_failure=lambda exc, _first: failures.append(exc))
    try:
        if sink.open():
            for e in entries:
                resp = observer_pb2.GetFlowsResponse(node_name=e.flow.node_name, flow=e.flow)
                resp.time.CopyFrom(e.flow.time)
                sink.add(logformat.response_line(resp), e.time_ns)
            sink.close()
        if failures:
            raise ExportError(f"{failures[0]} ({sink.lost_total:,} of {len(entries):,} flows "
                              "not written)")
    except BaseException:
        sink.writer.close()
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    os.replace(tmp, path)
    return path
