"""ONE printer of flows for the command line: `podflow observe`'s table, compact lines and
JSON lines, and the WARNING lines of notices, written to a sink (stdout, or the loss-reporting
file sink of --output-file). The words themselves (endpoints, Service -> backend, verdicts,
times) are agent.wire.flowtext's, the same the TUI and the agent's summaries use.
"""

from __future__ import annotations

import sys
from typing import Protocol, TextIO

from agent.wire import flowjson, flowtext
from agent.wire.timefmt import short_time, ts_ns
from podflow_api.v1 import flow_pb2, observer_pb2

OUTPUTS = ("table", "compact", "json", "jsonl")


def flow_columns(flow: flow_pb2.Flow) -> dict[str, str]:
    """Every column of the table (the compact line uses the same texts)."""
    sport, dport = flowtext.ports(flow)
    proto = flowtext.proto_text(flow)
    dns = flowtext.dns_text(flow)
    return {
        "time": short_time(ts_ns(flow.time)),
        "node": flow.node_name,
        "source": flowtext.endpoint_text(flow.source, flow.ip.source, sport),
        "destination": flowtext.endpoint_text(flow.destination, flow.ip.destination, dport),
        "service": flowtext.service_text(flow),
        "proto": f"{proto} {dns}" if dns else proto,
        "direction": flowtext.direction_text(flow),
        "verdict": flowtext.verdict_text(flow),
        "packets": str(flow.packets),
        "bytes": str(flow.bytes),
        "flags": flowtext.flags_text(flow),
    }


TABLE_COLUMNS = (("TIME", "time", 19), ("NODE", "node", 10), ("SOURCE", "source", 38),
                 ("DESTINATION", "destination", 38),
                 (f"SERVICE {flowtext.ARROW} BACKEND", "service", 30), ("PROTO", "proto", 6),
                 ("DIR", "direction", 8), ("VERDICT", "verdict", 9), ("PKTS", "packets", 6),
                 ("BYTES", "bytes", 9), ("FLAGS", "flags", 0))


def format_table_row(values: dict[str, str]) -> str:
    cells = []
    for _title, key, width in TABLE_COLUMNS:
        text = values[key]
        cells.append(text.ljust(width) if width else text)
    return "  ".join(cells).rstrip()


def format_table_header() -> str:
    return format_table_row({key: title for title, key, _w in TABLE_COLUMNS})


def format_compact(flow: flow_pb2.Flow) -> str:
    c = flow_columns(flow)
    line = f"{c['time']} [{c['node']}] {c['source']} {flowtext.ARROW} {c['destination']}"
    if c["service"]:
        line += f" svc {c['service']}"
    parts = [p for p in (c["proto"], c["direction"], c["verdict"]) if p]
    line += " " + " ".join(parts) if parts else ""
    line += f" {c['packets']} pkts {c['bytes']} B"
    if c["flags"]:
        line += f" {c['flags']}"
    policy = flowtext.policy_short(flow)
    if policy:
        line += f" {policy}"
    return line


def format_update(flow: flow_pb2.Flow) -> str:
    """The line of a flow_update: a flow already printed ended (and how it went)."""
    c = flow_columns(flow)
    line = f"{c['time']} [{c['node']}] {c['source']} {flowtext.ARROW} {c['destination']}"
    parts = [p for p in (c["proto"], c["direction"]) if p]
    line += (" " + " ".join(parts) if parts else "") + " ended"
    if flow.outcome:
        line += " " + flow_pb2.ConnectionOutcome.Name(flow.outcome).lower().replace("_", "-")
    return line


_STAGE_HINT = {
    observer_pb2.CLIENT_QUEUE: "this client read too slowly",
    observer_pb2.KERNEL_RING_BUFFER: "the kernel ring buffer was full",
    observer_pb2.KERNEL_FLOW_MAP: "the kernel flow map was full",
    observer_pb2.KERNEL_DROP_MAP: "the kernel drop map was full",
    observer_pb2.AGENT_QUEUE: "the agent's decode queue overflowed",
    observer_pb2.EXPORTER_QUEUE: "the flow log writer fell behind",
    observer_pb2.EXPORTER_WRITE: "the flow log could not be written",
    observer_pb2.STORE_OVERWRITTEN: "the agent no longer held them",
}


def format_notice(resp: observer_pb2.GetFlowsResponse) -> str:
    """The WARNING line for a lost-events or node-status notice."""
    node = resp.node_name or "?"
    if resp.HasField("lost_events"):
        le = resp.lost_events
        stage = observer_pb2.LostStage.Name(le.stage)
        hint = _STAGE_HINT.get(le.stage, "")
        what = ("packets" if le.stage == observer_pb2.KERNEL_FLOW_MAP else
                f"flows ({le.num_packets_lost} packets)" if le.num_packets_lost else "flows")
        return (f"WARNING: node {node}: {le.num_events_lost} {what} LOST at {stage}"
                f"{f' ({hint})' if hint else ''} between {short_time(ts_ns(le.first))} and "
                f"{short_time(ts_ns(le.last))}")
    ns = resp.node_status
    state = observer_pb2.NodeState.Name(ns.state)
    names = ",".join(ns.node_names) or node
    return f"WARNING: node {names}: {state}: {ns.message}"


class Sink(Protocol):
    def write_line(self, line: str, time_ns: int = 0) -> None: ...
    def flush(self) -> object: ...
    def close(self) -> None: ...


class StreamSink:
    """Lines to a text stream (stdout)."""

    def __init__(self, stream: TextIO):
        self.stream = stream

    def write_line(self, line: str, time_ns: int = 0) -> None:
        self.stream.write(line + "\n")

    def flush(self) -> None:
        self.stream.flush()

    def close(self) -> None:
        self.flush()


class FlowPrinter:
    """Formats responses for one sink; notices also go to stderr (as WARNING lines), so an
    incomplete picture never looks complete. Keeps what the exit status needs: flows
    printed, flows lost, agents unavailable."""

    def __init__(self, output: str, sink: Sink, stderr: TextIO = sys.stderr,
                 flush_each: bool = False):
        self.output = output
        self.sink = sink
        self.stderr = stderr
        self.flush_each = flush_each
        self.flows = 0
        self.lost = 0
        self.unavailable: set[str] = set()
        self._header_done = False

    def write(self, resp: observer_pb2.GetFlowsResponse) -> None:
        kind = resp.WhichOneof("response_types")
        if kind == "flow":
            self.flows += 1
            t_ns = ts_ns(resp.time)
            if self.output in ("json", "jsonl"):
                self.sink.write_line(flowjson.to_json(resp), t_ns)
            elif self.output == "table":
                if not self._header_done:
                    self._header_done = True
                    self.sink.write_line(format_table_header())
                self.sink.write_line(format_table_row(flow_columns(resp.flow)), t_ns)
            else:
                self.sink.write_line(format_compact(resp.flow), t_ns)
            if self.flush_each:
                self.sink.flush()
            return
        if kind == "flow_update":  # not a flow of its own: nothing counted, no warning
            if self.output in ("json", "jsonl"):
                self.sink.write_line(flowjson.to_json(resp), ts_ns(resp.time))
            elif self.output == "compact":
                self.sink.write_line(format_update(resp.flow_update), ts_ns(resp.time))
            if self.flush_each:
                self.sink.flush()
            return
        if kind == "lost_events":
            self.lost += resp.lost_events.num_events_lost
        elif kind == "node_status":
            names = list(resp.node_status.node_names) or [resp.node_name]
            if resp.node_status.state in (observer_pb2.NODE_UNAVAILABLE,
                                          observer_pb2.NODE_RECONNECTING):
                self.unavailable.update(names)
            elif resp.node_status.state == observer_pb2.NODE_CONNECTED:
                self.unavailable.difference_update(names)
        if self.output in ("json", "jsonl"):
            self.sink.write_line(flowjson.to_json(resp))
        self.sink.flush()
        print(format_notice(resp), file=self.stderr, flush=True)
