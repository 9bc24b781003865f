"""`podflow agent`: wires the node agent's stages together and runs them until a signal.

    datapath (kernel maps, ring buffer) -> annotate (outcomes, DNS) -> enrich (Kubernetes,
    conntrack; NetworkPolicy verdicts judged inside it by the policy stage) -> flow store ->
    gRPC Observer, Hubble API / flow log exporter / metrics

The flags and their checks live in agent/config (one section per stage); this module reads
them once, hands each stage its section, connects the stages, starts them in data-flow order
and stops them in reverse order. Every stage is built before any starts, so a bad flag or an
unreadable file fails before anything is attached. What main may ask of a running stage is
declared in agent/stage.py.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading

from agent import __version__, config as agent_config
from agent.errors import PodflowError
from agent.stage import Stage
from agent.stats import AgentStats

log = logging.getLogger("podflow.agent")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    agent_config.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    try:
        config = agent_config.AgentConfig.from_args(args)
    except PodflowError as exc:
        print(f"podflow agent: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=config.agent.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not config.agent.log_netlink:
        for handler in logging.getLogger().handlers:
            handler.addFilter(_quiet_netlink)
    stats = AgentStats(node_name=config.agent.node_name, version=__version__)
    from agent.datapath import memory  # noqa: PLC0415 (libc calls: only for the agent)

    memory.fixed_mmap_threshold()
    started: list[Stage] = []  # in start order, stopped in reverse
    try:
        for stage in build_stages(config, stats):
            stage.start()
            started.append(stage)
    except PodflowError as exc:
        print(f"podflow agent: {exc}", file=sys.stderr)
        _stop_all(started)
        return 2

    stopping = threading.Event()

    def on_signal(_signum, _frame):
        stopping.set()

    def on_hup(_signum, _frame):
        for stage in started:
            stage.reopen()

    if config.agent.ready_file:
        _write_ready_file(config.agent.ready_file, started)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, on_hup)
    log.info("podflow agent %s running on node %s", __version__, config.agent.node_name)
    while not stopping.wait(1.0):
        failure = _failure(started)
        if failure:
            log.error("%s; stopping", failure)
            print(f"podflow agent: {failure}", file=sys.stderr)
            _stop_all(started)
            return 2
    log.info("stopping")
    _stop_all(started)
    return 0


def _failure(started: list[Stage]) -> str | None:
    """The first running stage that says the agent cannot go on (Stage.failure)."""
    for stage in started:
        failure = stage.failure()
        if failure:
            return failure
    return None


def _quiet_netlink(record: logging.LogRecord) -> bool:
    """pyroute2 logs every netlink message it sends and receives at debug (and the asyncio
    loops it runs say which selector they use): ~95% of a debug log, unasked. Kept from
    warning up; --log-netlink shows all. A filter on the handler, not a logger level:
    pyroute2 resets its logger's level when it is imported."""
    if record.levelno >= logging.WARNING:
        return True
    return not record.name.startswith(("pyroute2", "asyncio"))


def build_stages(config: agent_config.AgentConfig, stats: AgentStats) -> list[Stage]:
    """Every stage the configuration turns on, in start order (the datapath last: nothing
    flows before its consumers run). Building reads files and kernel BTF, starts nothing."""
    from agent.annotate.stage import Annotator
    from agent.datapath.batch import FlowBatch
    from agent.datapath.loader import Datapath
    from agent.enrich.stage import Enricher
    from agent.export.flowlog import FlowLogExporter
    from agent.export.metrics import MetricsServer
    from agent.flowstore import FlowStore
    from agent.observer.hubble.server import from_config as hubble_server
    from agent.observer.server import ObserverServer
    from agent.policy.stage import PolicyStage

    store = FlowStore(config.store, stats)
    annotator = Annotator(config.annotate, stats)
    enricher = Enricher.from_config(config.metadata, stats,
                                    flow_idle_timeout_s=config.datapath.idle_timeout_s)
    policy = PolicyStage.from_config(config.policy, enricher.state, stats)
    if policy is not None:
        enricher.use_judge(policy.judge)   # verdicts are judged where names are found

    def pipeline(records) -> None:
        """Called by the datapath's reader thread with each batch of records (a FlowBatch of
        columns), or a list of Flow objects (drop records)."""
        if isinstance(records, FlowBatch):
            annotator.annotate_batch(records)
            enricher.enrich_batch(records)
            store.extend_batch(records)
        else:
            annotator.annotate(records)
            enricher.enrich(records)
            store.extend(records)

    stages: list[Stage] = [enricher] + ([policy] if policy is not None else [])
    if config.observer.enabled:
        stages.append(ObserverServer(config.observer, store, stats))
    hubble = hubble_server(config.hubble, config.observer, store, stats, enricher.state)
    if hubble is not None:
        stages.append(hubble)
    if config.flow_log.path:
        stages.append(FlowLogExporter(config.flow_log, store, stats))
    if config.metrics.address:
        stages.append(MetricsServer(config.metrics, store, stats))
    # The drop tracer and the DNS capture are kernel code whose records the annotator
    # consumes: it builds them, the datapath loads them.
    extensions = annotator.datapath_extensions(
        active_timeout_s=config.datapath.active_timeout_s,
        idle_timeout_s=config.datapath.idle_timeout_s)
    stages.append(Datapath(config.datapath, stats, pipeline, extensions))
    return stages


def _write_ready_file(path: str, started: list[Stage]) -> None:
    """Merge each stage's `ready_info()` (e.g. {"listen": "unix:/run/x.sock"}) into one file,
    written atomically so a reader never sees half of it."""
    info: dict = {"pid": os.getpid()}
    for stage in started:
        info.update(stage.ready_info())
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(info, fh)
    os.replace(tmp, path)


def _stop_all(started: list[Stage]) -> None:
    """Stop stages newest first: the datapath detaches before the consumers flush."""
    for stage in reversed(started):
        try:
            stage.stop()
        except PodflowError as exc:
            log.error("stopping %s: %s", type(stage).__name__, exc)
