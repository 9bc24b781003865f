"""`podflow status`: what each agent holds, has seen and has lost (its ServerStatus).

The quickest answer to "is this agent healthy and is my picture complete": flows held and seen,
flows per second, lost events by stage, datapath errors, interfaces traced, metadata and flow
log health. Human text by default, `-o json` for scripts (one ServerStatusResponse JSON object
per line, with the server address).
"""

from __future__ import annotations

import argparse
import json
import sys

import grpc

from agent.client.channel import (DEFAULT_SERVER, TLSOptions, add_tls_arguments,
                                  normalize_address, server_status)
from agent.errors import ConfigError
from agent.wire import flowjson
from agent.wire.timefmt import duration
from podflow_api.v1 import observer_pb2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server", action="append", metavar="HOST:PORT|unix:PATH",
                        help=f"agent to ask (repeatable; default {DEFAULT_SERVER})")
    parser.add_argument("-o", "--output", choices=("text", "json"), default="text")
    parser.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS",
                        help="give up on an agent after this long (default 5)")
    add_tls_arguments(parser)


def format_status(address: str, st: observer_pb2.ServerStatusResponse) -> str:
    pct = 100.0 * st.num_flows / st.max_flows if st.max_flows else 0.0
    lines = [
        f"{address}: node {st.node_name or '?'}, podflow {st.version or '?'}, "
        f"up {duration(st.uptime_ns)}",
        f"  flows: {st.num_flows}/{st.max_flows} held ({pct:.0f}%), {st.seen_flows} seen, "
        f"{st.flows_per_second:.1f}/s",
    ]
    lost = [(observer_pb2.LostStage.Name(lc.stage), lc.count) for lc in st.lost if lc.count]
    if lost:
        lines.append("  LOST: " + ", ".join(f"{n} {stage}" for stage, n in lost))
    else:
        lines.append("  lost: none")
    errors = {k: v for k, v in st.datapath_errors.items() if v}
    if errors:
        lines.append("  datapath errors: " + ", ".join(f"{k}={v}"
                                                       for k, v in sorted(errors.items())))
    if st.datapath_state:  # older agents do not say
        state = st.datapath_state.upper() if st.datapath_state == "failed" else st.datapath_state
        lines.append(f"  datapath: {state}" + (f": {st.datapath_error}"
                                                 if st.datapath_error else ""))
    ifaces = ", ".join(i.name for i in st.interfaces) or "none"
    lines.append(f"  interfaces ({len(st.interfaces)}): {ifaces}")
    for note in st.interface_notes:
        lines.append(f"  NOTE {note.interface} {note.hook}: {note.note}")
    meta = st.metadata_source or "none"
    if st.metadata_stale:
        meta += " (STALE: source unreachable, serving last known state)"
    if st.metadata_error:
        meta += f" error: {st.metadata_error}"
    lines.append(f"  metadata: {meta}")
    if st.exporter_error:
        lines.append(f"  flow log ERROR: {st.exporter_error}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    try:
        servers = [normalize_address(s) for s in (args.server or [DEFAULT_SERVER])]
        tls = TLSOptions.from_args(args)
    except ConfigError as exc:
        print(f"podflow status: {exc}", file=sys.stderr)
        return 2
    failed = 0
    for address in servers:
        try:
            st = server_status(address, tls, timeout_s=args.timeout)
        except grpc.RpcError as exc:
            failed += 1
            print(f"WARNING: {address}: UNAVAILABLE: {exc.code().name}: {exc.details()}",
                  file=sys.stderr)
            continue
        if args.output == "json":
            record = {"server": address, "status": flowjson.to_dict(st)}
            print(json.dumps(record), flush=True)
        else:
            print(format_status(address, st), flush=True)
    return 1 if failed else 0
