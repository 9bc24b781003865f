"""Prometheus metrics for the agent (`--metrics HOST:PORT`).

Another independent consumer of the flow store: it reads flows through its own subscription
and folds them into counters by a small set of labels chosen with `--metrics-labels`, so label
cardinality stays bounded: at most `--metrics-max-series` series per family (what does not fit
goes to one series whose labels all read "__overflow__"), and series not updated for
`--metrics-series-ttl` seconds (deleted pods, namespaces, Services) disappear.
Agent health (lost events by stage, datapath errors, exporter and metadata state, traced
interfaces) is read from AgentStats at scrape time, so it matches ServerStatus.

Records kept as columns (the datapath's batches) are counted a batch at a time: the labels
and the count-once rule are read once per identity (and outcome) of the batch, the packets
and bytes summed with numpy; end notices count nothing.

Double counting: the same packet may be recorded on a pod veth, on a bridge, and on the
peer pod's veth, on this node and on another. Flow metrics count one record per packet by
the rule the TUI's views follow (agent.wire.counting.counts_once), so summing a family over
every agent counts each packet once: the sender's FROM_POD veth record, a TO_POD record only
when the sender has no veth of its own, bridge records only for traffic no veth sees, drops
where they happened. Without metadata, the pods are the source addresses seen leaving this
node's pod veths.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from agent.datapath.batch import FlowBatch
from agent.errors import ConfigError
from agent.stage import Stage
from agent.stats import AgentStats
from agent.wire.counting import counts_once, veth_sender
from agent.wire.flowtext import denying_policies, policy_finding_word, policy_names
from podflow_api.v1 import flow_pb2, observer_pb2

if TYPE_CHECKING:
    from agent.config import MetricsSection

log = logging.getLogger("podflow.metrics")

OVERFLOW = "__overflow__"


def _service(flow: flow_pb2.Flow) -> str:
    svc = flow.service
    return f"{svc.namespace}/{svc.name}" if svc.name else ""


def _workload(endpoint: flow_pb2.Endpoint) -> str:
    w = endpoint.workload
    return f"{w.kind}/{w.name}" if w.name else ""


def _enum_name(enum_type, number: int) -> str:
    """The value's name; the number for a value this build does not know (newer agents)."""
    value = enum_type.DESCRIPTOR.values_by_number.get(number)
    return value.name if value is not None else str(number)


def _protocol(flow: flow_pb2.Flow) -> str:
    return flow.l4.WhichOneof("protocol") or ""


_L4_PROTOCOLS = {6: "tcp", 17: "udp", 132: "sctp", 1: "icmpv4", 58: "icmpv6"}


# label name -> how to read it from a flow
LABELS: dict[str, Callable[[flow_pb2.Flow], str]] = {
    "source_namespace": lambda f: f.source.namespace,
    "destination_namespace": lambda f: f.destination.namespace,
    "source_pod": lambda f: f.source.pod_name,
    "destination_pod": lambda f: f.destination.pod_name,
    "source_workload": lambda f: _workload(f.source),
    "destination_workload": lambda f: _workload(f.destination),
    "service": _service,
    "verdict": lambda f: _enum_name(flow_pb2.Verdict, f.verdict),
    "protocol": _protocol,
    "traffic_direction": lambda f: _enum_name(flow_pb2.TrafficDirection, f.traffic_direction),
    "category": lambda f: _enum_name(flow_pb2.FlowCategory, f.category),
    "outcome": lambda f: _enum_name(flow_pb2.ConnectionOutcome, f.outcome),
    "interface": lambda f: f.interface.name,
}


class FlowCounters:
    """flows / packets / bytes per label tuple, bounded and expiring. Thread-safe."""

    def __init__(self, labels: Sequence[str], max_series: int, ttl_s: float):
        self.labels = list(labels)
        self._readers = [LABELS[n] for n in labels]
        self.max_series = max_series
        self.ttl_ns = int(ttl_s * 1e9)
        self._lock = threading.Lock()
        # label values -> [flows, packets, bytes, last update (monotonic ns)]
        self._series: dict[tuple[str, ...], list[int]] = {}
        self._drops: dict[str, list[int]] = {}  # drop reason -> [packets, bytes, last update]
        # (policy, verdict or finding) -> [records, last update]: NetworkPolicy verdicts of
        # counted records, and every record that showed a finding (bounded like the rest).
        self._policy: dict[tuple[str, str], list[int]] = {}
        self._findings: dict[tuple[str, str], list[int]] = {}
        self.overflow_key = tuple(OVERFLOW for _ in labels)
        self.skipped = 0  # flows this consumer fell too far behind to read
        # Source IPs seen leaving a pod veth on this node (-> last seen), for agents without
        # metadata; they expire with the series TTL.
        self._local_ips: dict[str, int] = {}

    def counts(self, flow: flow_pb2.Flow) -> bool:
        """Whether this record is the one counted for its packets (agent.wire.counting)."""
        return counts_once(flow, self._local_ips)

    def _learn_local_pods(self, flows: list[flow_pb2.Flow], now: int) -> None:
        local = self._local_ips
        for flow in flows:
            ip = veth_sender(flow)
            if ip:
                local[ip] = now

    def add(self, flows: list[flow_pb2.Flow]) -> None:
        now = time.monotonic_ns()
        readers = self._readers
        with self._lock:
            self._learn_local_pods(flows, now)  # first: the sender's record may come later in the batch
            for flow in flows:
                if flow.verdict == flow_pb2.DROPPED:
                    drop = self._drops.setdefault(flow.drop_reason or "UNKNOWN", [0, 0, 0])
                    drop[0] += flow.packets
                    drop[1] += flow.bytes
                    drop[2] = now
                counted = self.counts(flow)
                if flow.HasField("policy"):
                    self._add_policy(flow, counted, now)
                if not counted:
                    continue
                self._count(tuple(read(flow) for read in readers), 1, flow.packets,
                            flow.bytes, now)

    def add_batch(self, batch: FlowBatch, lo: int, hi: int) -> None:
        """Records [lo, hi) of a batch of columns, end notices left out."""
        keep = np.flatnonzero(~batch.update[lo:hi]) + lo
        if not len(keep):
            return
        # Records of one identity, outcome and policy finding read the same labels.
        ident = batch.ident[keep].astype(np.int64)
        groups = (ident * 256 + batch.outcome[keep]) * 256 + batch.enforcement[keep]
        uniq, inverse = np.unique(groups, return_inverse=True)
        inverse = inverse.ravel()
        flows = np.bincount(inverse, minlength=len(uniq))
        packets = np.bincount(inverse, weights=batch.packets[keep], minlength=len(uniq))
        nbytes = np.bincount(inverse, weights=batch.bytes[keep], minlength=len(uniq))
        protos = np.zeros(len(batch.idents), np.int64)
        protos[batch.ident] = batch.proto
        now = time.monotonic_ns()
        readers = self._readers
        with self._lock:
            reps = []
            for group in uniq.tolist():
                rest, enforcement = divmod(group, 256)
                ident_no, outcome = divmod(rest, 256)
                rep = flow_pb2.Flow()
                rep.CopyFrom(batch.idents[ident_no].flow)
                name = _L4_PROTOCOLS.get(int(protos[ident_no]))
                if name:
                    getattr(rep.l4, name).SetInParent()
                rep.outcome = outcome
                if enforcement:
                    rep.policy.enforcement = enforcement
                reps.append(rep)
            self._learn_local_pods(reps, now)
            for rep, n_flows, n_packets, n_bytes in zip(reps, flows.tolist(), packets.tolist(),
                                                        nbytes.tolist()):
                counted = self.counts(rep)
                if rep.HasField("policy"):
                    self._add_policy(rep, counted, now, n_flows)
                if not counted:
                    continue
                self._count(tuple(read(rep) for read in readers), n_flows, int(n_packets),
                            int(n_bytes), now)

    def _count(self, key: tuple, records: int, packets: int, nbytes: int, now: int) -> None:
        """Add to one series (the overflow series once max_series are alive); lock held."""
        series = self._series
        entry = series.get(key)
        if entry is None:
            if len(series) >= self.max_series:
                self._expire(now)
            if len(series) >= self.max_series:
                key = self.overflow_key
                entry = series.get(key)
            if entry is None:
                entry = series[key] = [0, 0, 0, 0]
        entry[0] += records
        entry[1] += packets
        entry[2] += nbytes
        entry[3] = now

    def _add_policy(self, flow: flow_pb2.Flow, counted: bool, now: int, records: int = 1
                    ) -> None:
        """Per policy the record names: its verdict (a counted record: one per packet, as
        the flow families), and what the record showed (enforced, not-enforced: the
        denying policies; dropped-otherwise: the allowing ones), every record that shows it.
        `records`: how many records alike this one counts for."""
        denying = denying_policies(flow)
        finding = policy_finding_word(flow)
        for name in policy_names(flow):
            denied = name in denying
            if counted:
                self._bump(self._policy, (name, "denied" if denied else "allowed"), now, records)
            if finding and denied == (finding != "dropped-otherwise"):
                self._bump(self._findings, (name, finding), now, records)

    def _bump(self, family: dict, key: tuple[str, str], now: int, n: int = 1) -> None:
        entry = family.get(key)
        if entry is None:
            if len(self._policy) + len(self._findings) >= self.max_series:
                self._expire(now)
            if len(self._policy) + len(self._findings) >= self.max_series:
                key = (OVERFLOW, OVERFLOW)
                entry = family.get(key)
            if entry is None:
                entry = family[key] = [0, 0]
        entry[0] += n
        entry[1] = now

    def _expire(self, now: int) -> None:
        cutoff = now - self.ttl_ns
        for family in (self._policy, self._findings):
            for key in [k for k, v in family.items() if v[1] < cutoff]:
                del family[key]
        for key in [k for k, v in self._series.items() if v[3] < cutoff]:
            del self._series[key]
        for key in [k for k, v in self._drops.items() if v[2] < cutoff]:
            del self._drops[key]
        for ip in [ip for ip, seen in self._local_ips.items() if seen < cutoff]:
            del self._local_ips[ip]

    def snapshot(self) -> tuple[dict[tuple[str, ...], list[int]], dict[str, list[int]]]:
        with self._lock:
            self._expire(time.monotonic_ns())
            return ({k: list(v) for k, v in self._series.items()},
                    {k: list(v) for k, v in self._drops.items()})

    def policy_snapshot(self) -> tuple[dict[tuple[str, str], int], dict[tuple[str, str], int]]:
        """(policy, verdict) -> counted records; (policy, finding) -> records."""
        with self._lock:
            return ({k: v[0] for k, v in self._policy.items()},
                    {k: v[0] for k, v in self._findings.items()})


class _Collector:
    """Builds every metric family at scrape time from FlowCounters and AgentStats."""

    def __init__(self, counters: FlowCounters, stats: AgentStats, store):
        self.counters = counters
        self.stats = stats
        self.store = store

    def describe(self):
        return []  # no fixed set: avoids prometheus_client calling collect() at registration

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        labels = self.counters.labels
        series, drops = self.counters.snapshot()
        flows = CounterMetricFamily("podflow_flows", "Flow records counted (one observation point "
                                    "per packet)", labels=labels)
        packets = CounterMetricFamily("podflow_packets", "Packets in counted flow records",
                                      labels=labels)
        bytes_ = CounterMetricFamily("podflow_bytes", "Bytes (frame length at the hook) in "
                                     "counted flow records", labels=labels)
        for key, (n_flows, n_packets, n_bytes, _) in series.items():
            flows.add_metric(list(key), n_flows)
            packets.add_metric(list(key), n_packets)
            bytes_.add_metric(list(key), n_bytes)
        yield flows
        yield packets
        yield bytes_

        verdicts, findings = self.counters.policy_snapshot()
        family = CounterMetricFamily(
            "podflow_policy_verdicts", "Flow records (counted as podflow_flows: one per packet) "
            "whose connection a NetworkPolicy allowed or denied", labels=["policy", "verdict"])
        for (name, verdict), count in sorted(verdicts.items()):
            family.add_metric([name, verdict], count)
        yield family
        family = CounterMetricFamily(
            "podflow_policy_findings", "Flow records showing what became of a NetworkPolicy "
            "verdict: enforced (denied and dropped), not-enforced (denied but delivered: the "
            "CNI does not enforce the policy), dropped-otherwise (allowed but dropped)",
            labels=["policy", "finding"])
        for (name, finding), count in sorted(findings.items()):
            family.add_metric([name, finding], count)
        yield family

        drop_packets = CounterMetricFamily("podflow_drops", "Dropped packets by kernel drop reason",
                                           labels=["reason"])
        for reason, (n_packets, _, _) in sorted(drops.items()):
            drop_packets.add_metric([reason], n_packets)
        yield drop_packets

        lost = CounterMetricFamily("podflow_lost_events", "Events lost, by pipeline stage",
                                   labels=["stage"])
        for stage, span in sorted(self.stats.snapshot_lost().items()):
            lost.add_metric([_enum_name(observer_pb2.LostStage, stage)], span.count)
        yield lost
        yield CounterMetricFamily("podflow_metrics_skipped_flows", "Flows the metrics consumer "
                                  "fell too far behind to count", value=self.counters.skipped)

        errors = CounterMetricFamily("podflow_datapath_errors", "Kernel-side datapath error "
                                     "counters, by reason", labels=["reason"])
        for reason, count in sorted(self.stats.snapshot_datapath_errors().items()):
            errors.add_metric([reason], count)
        yield errors

        interfaces = self.stats.snapshot_interfaces()
        yield GaugeMetricFamily("podflow_interfaces_traced", "Interfaces with podflow programs "
                                "attached", value=len(interfaces))
        yield GaugeMetricFamily("podflow_datapath_tracing", "1 while the programs are attached "
                                "and the reader runs (what gRPC health SERVING means)",
                                value=1 if self.stats.datapath_state == "tracing" else 0)
        yield GaugeMetricFamily("podflow_interface_notes", "Hooks of traced interfaces where "
                                "something runs first and may end the chain (see podflow "
                                "status)", value=len(self.stats.snapshot_notes()))
        yield GaugeMetricFamily("podflow_exporter_failing", "1 while the flow log cannot be "
                                "written (see ServerStatus.exporter_error)",
                                value=1 if self.stats.exporter_error else 0)
        yield GaugeMetricFamily("podflow_metadata_stale", "1 while the Kubernetes metadata "
                                "source is unreachable and the last known state is served",
                                value=1 if self.stats.metadata_stale else 0)
        if self.store is not None:
            yield GaugeMetricFamily("podflow_store_flows", "Flows held in the flow store",
                                    value=len(self.store))


class MetricsServer(Stage):
    """Serves /metrics over HTTP and feeds FlowCounters from a store subscription."""

    def __init__(self, config: MetricsSection, store, stats: AgentStats):
        self.host, self.port = config.host_port
        self.store = store
        self.stats = stats
        self.counters = FlowCounters(config.labels, config.max_series, config.series_ttl_s)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._httpd = None
        self._subscription = None

    def start(self) -> None:
        from prometheus_client import CollectorRegistry
        from prometheus_client.exposition import start_http_server

        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Collector(self.counters, self.stats, self.store))
        try:
            self._httpd, _ = start_http_server(self.port, addr=self.host, registry=registry)
        except OSError as exc:
            raise ConfigError(f"--metrics {self.host}:{self.port}: cannot listen: {exc.strerror}") from exc
        self.port = self._httpd.server_address[1]
        if self.store is not None:
            self._subscription = self.store.subscribe(queue_size=self.store.capacity)
            self._thread = threading.Thread(target=self._run, name="metrics", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        sub = self._subscription
        while not self._stop.is_set():
            segments, lost = sub.next_segments(timeout_s=0.5, max_flows=16384)
            if lost is not None:
                self.counters.skipped += lost.count
            for batch, lo, hi in segments:
                if isinstance(batch, FlowBatch):
                    self.counters.add_batch(batch, lo, hi)
                else:
                    self.counters.add([batch.flow(i) for i in range(lo, hi)])
        sub.close()

    def stop(self) -> None:
        self._stop.set()
        if self._subscription is not None:
            self._subscription.close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()

    def ready_info(self) -> dict:
        """Where a local client reaches the endpoint (a wildcard address -> loopback)."""
        host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        return {"metrics": f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"}
