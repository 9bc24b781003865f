"""`podflow agent`: wires the node agent's stages together and runs them until a signal.

    datapath (kernel maps, ring buffer) -> annotate (outcomes, DNS) -> enrich (Kubernetes,
    conntrack) -> flow store -> gRPC Observer / flow log exporter / metrics

Each stage lives in its own module and contributes its own flags through `add_arguments`;
this module only builds them in order, connects them, and stops them in reverse order.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import sys
import threading

from agent import __version__
from agent.errors import PodflowError
from agent.stats import AgentStats

log = logging.getLogger("podflow.agent")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from agent.annotate import stage as annotate
    from agent.datapath import loader as datapath
    from agent.export import flowlog as exporter
    from agent.enrich import stage as metadata
    from agent.export import metrics
    from agent.observer import server
    from agent.observer.hubble import server as hubble

    parser.add_argument("--node-name", default=os.environ.get("NODE_NAME") or socket.gethostname(),
                        help="name this agent reports for its node (default: $NODE_NAME or hostname)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--ready-file", metavar="PATH",
                        help="write a JSON object here once every stage runs (addresses, "
                             "interfaces); used by the lab, the demo and the tests")
    datapath.add_arguments(parser)
    annotate.add_arguments(parser)
    server.add_arguments(parser)
    hubble.add_arguments(parser)
    metadata.add_arguments(parser)
    exporter.add_arguments(parser)
    metrics.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from agent.annotate import stage as annotate
    from agent.datapath import loader as datapath
    from agent.export import flowlog as exporter
    from agent.enrich import stage as metadata
    from agent.export import metrics
    from agent.observer import server
    from agent.observer.hubble import server as hubble
    from agent.flowstore import FlowStore

    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stats = AgentStats(node_name=args.node_name, version=__version__)
    stopping = threading.Event()
    started: list = []  # stages in start order, stopped in reverse
    try:
        store = FlowStore.from_args(args, stats)
        annotator = annotate.from_args(args, stats)
        enricher = metadata.from_args(args, stats)

        def pipeline(flows: list) -> None:
            """Called by the datapath's reader thread with each batch of decoded flows."""
            annotator.annotate(flows)
            enricher.enrich(flows)
            store.extend(flows)

        for stage in (enricher,
                      server.from_args(args, store, stats),
                      hubble.from_args(args, store, stats, enricher),
                      exporter.from_args(args, store, stats),
                      metrics.from_args(args, store, stats),
                      datapath.from_args(args, stats, pipeline, annotator)):
            if stage is None:
                continue
            stage.start()
            started.append(stage)
    except PodflowError as exc:
        print(f"podflow agent: {exc}", file=sys.stderr)
        _stop_all(started)
        return 2

    def on_signal(signum, _frame):
        stopping.set()

    def on_hup(_signum, _frame):
        for stage in started:
            reopen = getattr(stage, "reopen", None)
            if reopen is not None:
                reopen()

    if args.ready_file:
        _write_ready_file(args.ready_file, started)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, on_hup)
    log.info("podflow agent %s running on node %s", __version__, args.node_name)
    while not stopping.wait(1.0):
        pass
    log.info("stopping")
    _stop_all(started)
    return 0


def _write_ready_file(path: str, started: list) -> None:
    """Merge each stage's `ready_info()` (e.g. {"listen": "unix:/run/x.sock"}) into one file,
    written atomically so a reader never sees half of it."""
    info: dict = {"pid": os.getpid()}
    for stage in started:
        ready_info = getattr(stage, "ready_info", None)
        if ready_info is not None:
            info.update(ready_info())
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(info, fh)
    os.replace(tmp, path)


def _stop_all(started: list) -> None:
    """Stop stages newest first: the datapath detaches before the consumers flush."""
    for stage in reversed(started):
        try:
            stage.stop()
        except PodflowError as exc:
            log.error("stopping %s: %s", type(stage).__name__, exc)
