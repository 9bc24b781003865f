"""`podflow observe`: print flows from one or more agents, merged in time order.

History (--last / --first / --since / --until) and live flows (--follow), filtered on the
agents with the same flags as the flow log, printed as a table, one compact line per flow, or
GetFlowsResponse JSON lines. Lost-events and node-status notices always reach stderr as
WARNING lines, so an incomplete picture never looks complete; an agent that cannot be reached
is reported and the others keep streaming.

Everything printed goes through one sink object (`open_sink`), so file output with rotation
plugs in there without touching the formatting.
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
import signal
import sys
import time
from typing import Protocol, TextIO

import grpc
from google.protobuf import field_mask_pb2, timestamp_pb2

from agent import __version__
from agent.filters import engine as filters
from agent.filters.flags import add_filter_arguments, filters_from_args
from agent.wire import flowjson
from agent.wire import jsonlines as rotate
from agent.client.streams import (DEFAULT_SERVER, MergedFlows, RequestRejected, TLSOptions,
                          add_tls_arguments, normalize_address)
from agent.errors import ConfigError
from podflow_api.v1 import flow_pb2, observer_pb2

DEFAULT_LAST = 20  # what a bare `podflow observe` shows, as hubble observe does
OUTPUTS = ("table", "compact", "json", "jsonl")
_NS = 1_000_000_000
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT_NS = {"ms": 1_000_000, "s": _NS, "m": 60 * _NS, "h": 3600 * _NS, "d": 86400 * _NS}


# -- flags ------------------------------------------------------------------------------------

def parse_time(text: str, now_ns: int | None = None) -> int:
    """'5m', '1h30m', '90s' (ago) or RFC 3339 ('2026-11-21T10:00:00Z') -> ns since epoch."""
    text = text.strip()
    now_ns = time.time_ns() if now_ns is None else now_ns
    rest, total = text, 0
    while rest and (m := _DURATION.match(rest)):
        total += int(float(m[1]) * _UNIT_NS[m[2]])
        rest = rest[m.end():]
    if text and not rest:
        return now_ns - total
    try:
        when = dt.datetime.fromisoformat(text.replace("z", "Z").replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither a duration (30s, 5m, 1h30m, 2d) nor an RFC 3339 time "
            "(2026-11-21T10:00:00Z)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return int(when.timestamp()) * _NS + when.microsecond * 1000


def _positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    return n


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server", action="append", metavar="HOST:PORT|unix:PATH",
                        help=f"agent to read (repeatable; default {DEFAULT_SERVER})")
    g = parser.add_argument_group("what to show")
    g.add_argument("--last", type=_positive_int, metavar="N",
                   help=f"the last N matching flows of each agent (default {DEFAULT_LAST} "
                        "without --follow, --since or --first)")
    g.add_argument("--first", type=_positive_int, metavar="N",
                   help="the oldest N matching flows each agent still holds")
    g.add_argument("--all", action="store_true", help="every matching flow the agents hold")
    g.add_argument("-f", "--follow", action="store_true", help="keep printing new flows")
    g.add_argument("--since", type=parse_time, metavar="5m|RFC3339",
                   help="flows from this time on (a duration means that long ago)")
    g.add_argument("--until", type=parse_time, metavar="5m|RFC3339",
                   help="flows up to this time")
    g.add_argument("--fields", metavar="PATH,...",
                   help="keep only these Flow fields (field mask), e.g. 'source,destination,l4'")
    out = parser.add_argument_group("output")
    out.add_argument("-o", "--output", choices=OUTPUTS, default="compact",
                     help="table, compact (one line per flow, the default), json or jsonl "
                          "(one GetFlowsResponse JSON object per line)")
    rotate.add_output_file_arguments(out)
    fg = parser.add_argument_group("filters (repeatable; --not turns the next one into a deny)")
    add_filter_arguments(fg)
    add_tls_arguments(parser)


def build_request(args: argparse.Namespace) -> observer_pb2.GetFlowsRequest:
    """The GetFlowsRequest the flags ask for; ConfigError names a conflicting flag."""
    if args.last and args.first:
        raise ConfigError("--last and --first cannot be used together")
    if (args.last or args.first) and args.since is not None:
        raise ConfigError(f"--{'last' if args.last else 'first'} cannot be combined with "
                          "--since (the agent serves one or the other)")
    if args.all and (args.last or args.first):
        raise ConfigError("--all cannot be combined with --last or --first")
    if args.since is not None and args.until is not None and args.until < args.since:
        raise ConfigError("--until is before --since")
    req = observer_pb2.GetFlowsRequest(follow=args.follow)
    if args.last:
        req.number = args.last
    elif args.first:
        req.number, req.first = args.first, True
    elif not (args.follow or args.all or args.since is not None or args.until is not None):
        req.number = DEFAULT_LAST
    if args.since is not None:
        req.since.CopyFrom(_ts(args.since))
    if args.until is not None:
        req.until.CopyFrom(_ts(args.until))
    allow, deny = filters_from_args(args)
    req.allowlist.extend(allow)
    req.denylist.extend(deny)
    if args.fields:
        paths = [p.strip() for p in args.fields.split(",") if p.strip()]
        mask = field_mask_pb2.FieldMask(paths=paths)
        for path in paths:
            if not field_mask_pb2.FieldMask(paths=[path]).IsValidForDescriptor(
                    flow_pb2.Flow.DESCRIPTOR):
                raise ConfigError(f"--fields: {path!r} is not a field path of Flow")
        req.field_mask.CopyFrom(mask)
    return req


def _ts(ns: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=ns // _NS, nanos=ns % _NS)


# -- formatting -------------------------------------------------------------------------------

_PROTO_NAMES = {"tcp": "TCP", "udp": "UDP", "sctp": "SCTP", "icmpv4": "ICMPv4",
                "icmpv6": "ICMPv6"}
_DIRECTION = {flow_pb2.FROM_POD: "from-pod", flow_pb2.TO_POD: "to-pod"}
_VERDICT = {flow_pb2.FORWARDED: "FORWARDED", flow_pb2.DROPPED: "DROPPED"}


_second_text: dict[int, str] = {}  # epoch second -> "Nov 21 10:00:00" (UTC)


def format_time(ts: timestamp_pb2.Timestamp) -> str:
    prefix = _second_text.get(ts.seconds)
    if prefix is None:
        if len(_second_text) > 4096:
            _second_text.clear()
        when = dt.datetime.fromtimestamp(ts.seconds, dt.timezone.utc)
        prefix = _second_text[ts.seconds] = f"{when:%b %d %H:%M:%S}"
    return f"{prefix}.{ts.nanos // 1_000_000:03d}"


def _ports(flow: flow_pb2.Flow) -> tuple[int | None, int | None]:
    which = flow.l4.WhichOneof("protocol")
    if which in ("tcp", "udp", "sctp"):
        l4 = getattr(flow.l4, which)
        return l4.source_port, l4.destination_port
    return None, None


def _host_port(host: str, port: int | None) -> str:
    if port is None:
        return host
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def endpoint_text(ep: flow_pb2.Endpoint, ip: str, port: int | None) -> str:
    """ns/pod:port for a pod, the IP otherwise (with the node for a node address)."""
    if ep.pod_name:
        return _host_port(f"{ep.namespace}/{ep.pod_name}", port)
    text = _host_port(ip or "?", port)
    if ep.kind == flow_pb2.NODE and ep.node_name:
        text += f" (node {ep.node_name})"
    elif ep.kind == flow_pb2.WORLD:
        text += " (world)"
    return text


def service_text(flow: flow_pb2.Flow) -> str:
    svc = flow.service
    if not svc.name:
        return ""
    text = f"{svc.namespace}/{svc.name}" if svc.namespace else svc.name
    if svc.port:
        text += f":{svc.port}"
    be = flow.backend
    if be.pod_name:
        text += f" -> {be.namespace}/{be.pod_name}" + (f":{be.port}" if be.port else "")
    elif be.ip:
        text += f" -> {_host_port(be.ip, be.port or None)}"
    elif svc.no_endpoints:
        text += " -> (no endpoints)"
    return text


def flags_text(flow: flow_pb2.Flow) -> str:
    if flow.l4.WhichOneof("protocol") == "tcp":
        f = flow.l4.tcp.flags
        return ",".join(n for n in filters.TCP_FLAG_NAMES if getattr(f, n))
    which = flow.l4.WhichOneof("protocol")
    if which in ("icmpv4", "icmpv6"):
        icmp = getattr(flow.l4, which)
        return f"type={icmp.type} code={icmp.code}"
    return ""


def flow_columns(flow: flow_pb2.Flow) -> dict[str, str]:
    sport, dport = _ports(flow)
    verdict = _VERDICT.get(flow.verdict, "")
    if flow.verdict == flow_pb2.DROPPED and flow.drop_reason:
        verdict += f" ({flow.drop_reason})"
    proto = _PROTO_NAMES.get(flow.l4.WhichOneof("protocol") or "", "")
    if flow.dns.query:
        proto += f" DNS {flow.dns.query}" + (f" {flow.dns.rcode}" if flow.dns.rcode else "")
    return {
        "time": format_time(flow.time),
        "node": flow.node_name,
        "source": endpoint_text(flow.source, flow.ip.source, sport),
        "destination": endpoint_text(flow.destination, flow.ip.destination, dport),
        "service": service_text(flow),
        "proto": proto,
        "direction": _DIRECTION.get(flow.traffic_direction, ""),
        "verdict": verdict,
        "packets": str(flow.packets),
        "bytes": str(flow.bytes),
        "flags": flags_text(flow),
    }


TABLE_COLUMNS = (("TIME", "time", 19), ("NODE", "node", 10), ("SOURCE", "source", 38),
                 ("DESTINATION", "destination", 38), ("SERVICE -> BACKEND", "service", 30),
                 ("PROTO", "proto", 6), ("DIR", "direction", 8), ("VERDICT", "verdict", 9),
                 ("PKTS", "packets", 6), ("BYTES", "bytes", 9), ("FLAGS", "flags", 0))


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
    line = f"{c['time']} [{c['node']}] {c['source']} -> {c['destination']}"
    if c["service"]:
        line += f" svc {c['service']}"
    parts = [p for p in (c["proto"], c["direction"], c["verdict"]) if p]
    line += " " + " ".join(parts) if parts else ""
    line += f" {c['packets']} pkts {c['bytes']} B"
    if c["flags"]:
        line += f" {c['flags']}"
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
        return (f"WARNING: node {node}: {le.num_events_lost} flows LOST at {stage}"
                f"{f' ({hint})' if hint else ''} between {format_time(le.first)} and "
                f"{format_time(le.last)}")
    ns = resp.node_status
    state = observer_pb2.NodeState.Name(ns.state)
    names = ",".join(ns.node_names) or node
    return f"WARNING: node {names}: {state}: {ns.message}"


# -- output -----------------------------------------------------------------------------------

class Sink(Protocol):
    def write_line(self, line: str) -> None: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...


class StreamSink:
    """Lines to a text stream (stdout)."""

    def __init__(self, stream: TextIO):
        self.stream = stream

    def write_line(self, line: str) -> None:
        self.stream.write(line + "\n")

    def flush(self) -> None:
        self.stream.flush()

    def close(self) -> None:
        self.flush()


def open_sink(args: argparse.Namespace) -> Sink:
    """Where formatted output goes: the one place for file output."""
    if getattr(args, "output_file", None):
        header = None  # text output: rotated, without the JSON header line
        if args.output in ("json", "jsonl"):
            allow, deny = filters_from_args(args)
            header = {"node_name": "", "servers": args.server or [DEFAULT_SERVER],
                      "agent_version": __version__,
                      "allowlist": [flowjson.to_dict(f) for f in allow],
                      "denylist": [flowjson.to_dict(f) for f in deny],
                      "field_mask": [p.strip() for p in (args.fields or "").split(",") if p.strip()],
                      "aggregate": "", "format": "podflow.v1.GetFlowsResponse"}
        return rotate.open_output_sink(args, header)
    return StreamSink(sys.stdout)


class FlowPrinter:
    """Formats responses for one sink; notices also go to stderr (as WARNING lines)."""

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
            if self.output in ("json", "jsonl"):
                self.sink.write_line(flowjson.to_json(resp))
            elif self.output == "table":
                if not self._header_done:
                    self._header_done = True
                    self.sink.write_line(format_table_header())
                self.sink.write_line(format_table_row(flow_columns(resp.flow)))
            else:
                self.sink.write_line(format_compact(resp.flow))
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


def run(args: argparse.Namespace) -> int:
    try:
        servers = [normalize_address(s) for s in (args.server or [DEFAULT_SERVER])]
        request = build_request(args)
        tls = TLSOptions.from_args(args)
        sink = open_sink(args)
    except ConfigError as exc:
        print(f"podflow observe: {exc}", file=sys.stderr)
        return 2
    printer = FlowPrinter(args.output, sink, flush_each=args.follow)
    merged = MergedFlows(servers, request, tls=tls)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        for resp in merged:
            printer.write(resp)
    except RequestRejected as exc:
        print(f"podflow observe: server {exc.address} rejected the request: {exc.details}",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130 if not args.follow else 0
    except BrokenPipeError:
        sys.stderr.close()  # `observe | head`: nothing left to tell anyone
        return 0
    except grpc.RpcError as exc:  # defensive: the merge turns stream errors into notices
        print(f"podflow observe: {exc}", file=sys.stderr)
        return 1
    finally:
        merged.close()
        try:
            sink.close()
        except BrokenPipeError:
            pass
    if printer.unavailable:
        print(f"podflow observe: {len(printer.unavailable)} of {len(servers)} servers "
              f"unreachable: {', '.join(sorted(printer.unavailable))}", file=sys.stderr)
        return 1
    return 0
