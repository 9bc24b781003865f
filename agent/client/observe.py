"""`podflow observe`: print flows from one or more agents, merged in time order.

History (--last / --first / --since / --until) and live flows (--follow), filtered on the
agents with the same flags as the flow log, printed as a table, one compact line per flow, or
GetFlowsResponse JSON lines (agent.client.printer). Lost-events and node-status notices always
reach stderr as WARNING lines, so an incomplete picture never looks complete; an agent that
cannot be reached is reported and the others keep streaming (agent.client.merge).

Everything printed goes through one sink: stdout, or with --output-file the loss-reporting
JSON-lines sink the agent's flow log uses (agent.wire.jsonlines), so `-o jsonl --output-file`
writes flow-log files.
"""

from __future__ import annotations

import argparse
import signal
import sys
from typing import TextIO

import grpc

from agent import __version__
from agent.client.channel import DEFAULT_SERVER, TLSOptions, add_tls_arguments, normalize_address
from agent.client.merge import MergedFlows
from agent.client.printer import OUTPUTS, FlowPrinter, Sink, StreamSink
from agent.errors import ConfigError, ExportError, RequestRejected
from agent.filters.flags import add_filter_arguments, filters_from_args
from agent.wire import jsonlines, logformat, rotation
from agent.wire.fieldmask import parse_field_mask
from agent.wire.timefmt import parse_time, timestamp
from podflow_api.v1 import observer_pb2

DEFAULT_LAST = 20  # what a bare `podflow observe` shows, as hubble observe does
OUTPUT_FLUSH_BYTES = 256 * 1024  # --output-file: lines reach the file at least this often


# -- flags ------------------------------------------------------------------------------------

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
    jsonlines.add_output_file_arguments(out)
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
        req.since.CopyFrom(timestamp(args.since))
    if args.until is not None:
        req.until.CopyFrom(timestamp(args.until))
    allow, deny = filters_from_args(args)
    req.allowlist.extend(allow)
    req.denylist.extend(deny)
    paths = parse_field_mask(args.fields or "", "--fields")
    if paths:
        req.field_mask.paths.extend(paths)
    return req


# -- output -----------------------------------------------------------------------------------

def output_file_sink(path: str, rotation: rotation.RotationConfig, header: dict | None,
                     stderr: TextIO = sys.stderr) -> jsonlines.JsonLinesSink:
    """The --output-file sink: a write error (disk full) does not stop the stream; it is
    said once per episode on stderr, and the lines not written are counted (for JSON output
    also written into the file as a lost_events record once it can be written again)."""

    def failed(exc: ExportError, first: bool) -> None:
        if first:
            print(f"WARNING: {exc}; counting the lines not written until it can be "
                  "written again", file=stderr, flush=True)

    def recovered(lost_total: int) -> None:
        print(f"WARNING: {path} can be written again; {lost_total} lines were lost so far",
              file=stderr, flush=True)

    sink = jsonlines.JsonLinesSink(path, rotation, header, flush_bytes=OUTPUT_FLUSH_BYTES,
                                   on_failure=failed, on_recovery=recovered)
    try:
        sink.open(strict=True)
    except ExportError as exc:
        raise ConfigError(f"--output-file: {exc}") from exc
    return sink


def open_sink(args: argparse.Namespace) -> Sink:
    """Where formatted output goes: stdout, or the --output-file sink (JSON output: with
    the flow log's header)."""
    if not args.output_file:
        return StreamSink(sys.stdout)
    header = None  # text output: rotated, without the JSON header line
    if args.output in ("json", "jsonl"):
        allow, deny = filters_from_args(args)
        header = logformat.header_fields(
            agent_version=__version__, allowlist=allow, denylist=deny,
            field_mask=parse_field_mask(args.fields or "", "--fields"),
            servers=args.server or [DEFAULT_SERVER])
    return output_file_sink(args.output_file, rotation.rotation_from_args(args, "output-"),
                            header)


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
    except grpc.RpcError as exc:  # defensive: the merge turns stream errors into notices
        print(f"podflow observe: {exc}", file=sys.stderr)
        return 1
    finally:  # a closed pipe (`observe | head`) ends here too; agent.cli says nothing of it
        merged.close()
        sink.close()
    if printer.unavailable:
        print(f"podflow observe: {len(printer.unavailable)} of {len(servers)} servers "
              f"unreachable: {', '.join(sorted(printer.unavailable))}", file=sys.stderr)
        return 1
    return 0
