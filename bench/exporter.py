"""Flow log and metrics cost: records written per second (plain and gzip-rotated), and the
CPU share of the exporter thread (and of the metrics thread) while the store is fed at a fixed
rate, measured from the threads' own CPU clocks in /proc.

    .venv/bin/python -m bench.exporter [--rate 20000] [--seconds 20] [--dir /tmp]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import tempfile
import time

from agent.config import FlowLogSection, MetricsSection, StoreSection
from agent.export.flowlog import FlowLogExporter
from agent.export.metrics import MetricsServer
from agent.flowstore import FlowStore
from agent.stats import AgentStats
from agent.wire.rotation import RotationConfig
from podflow_api.v1 import flow_pb2, observer_pb2

NODE = "bench-node"
_TICKS = os.sysconf("SC_CLK_TCK")


def make_flows(n: int, seed: int = 1) -> list[flow_pb2.Flow]:
    """Enriched flows shaped like a busy node's: ~200 pods, a few Services, TCP and UDP."""
    rng = random.Random(seed)
    now = time.time_ns()
    out = []
    for i in range(n):
        f = flow_pb2.Flow(node_name=NODE, packets=rng.randrange(1, 500),
                          bytes=rng.randrange(60, 1_000_000), verdict=flow_pb2.FORWARDED,
                          observation_point=flow_pb2.POD_VETH,
                          traffic_direction=rng.choice([flow_pb2.FROM_POD, flow_pb2.TO_POD]),
                          category=flow_pb2.POD_TO_SERVICE)
        f.time.FromNanoseconds(now + i * 1000)
        f.first_seen.FromNanoseconds(now + i * 1000 - 5_000_000_000)
        f.last_seen.FromNanoseconds(now + i * 1000)
        pod = rng.randrange(200)
        f.interface.index = 100 + pod
        f.interface.name = f"veth{pod:08x}"
        f.ip.source = f"10.244.{pod // 100}.{pod % 100 + 2}"
        f.ip.destination = f"10.244.1.{rng.randrange(2, 50)}"
        f.ip.ip_version = flow_pb2.IPV4
        if rng.random() < 0.8:
            f.l4.tcp.source_port = rng.randrange(32768, 61000)
            f.l4.tcp.destination_port = rng.choice([80, 443, 5432, 6379])
            f.l4.tcp.flags.ACK = True
            f.l4.tcp.flags.PSH = rng.random() < 0.5
        else:
            f.l4.udp.source_port = rng.randrange(32768, 61000)
            f.l4.udp.destination_port = 53
        ns = ("shop", "db", "web", "kube-system")[pod % 4]
        f.source.kind = flow_pb2.POD
        f.source.namespace = ns
        f.source.pod_name = f"{ns}-{pod}"
        f.source.labels.extend([f"app={ns}", "tier=backend"])
        f.source.workload.kind = "Deployment"
        f.source.workload.name = ns
        f.source.node_name = NODE
        f.destination.kind = flow_pb2.POD
        f.destination.namespace = "db"
        f.destination.pod_name = f"db-{rng.randrange(10)}"
        f.service.namespace = "db"
        f.service.name = "postgres"
        f.service.ip = "10.96.0.20"
        f.service.port = 5432
        f.summary = f"TCP {f.ip.source} -> {f.ip.destination}"
        out.append(f)
    return out


def thread_cpu_s(native_id: int) -> float:
    with open(f"/proc/self/task/{native_id}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime + stime


def throughput(directory: str, flows: list[flow_pb2.Flow], compress: bool
               ) -> tuple[float, float, int]:
    """Records per second through the whole exporter (store read, encode, write, rotate),
    and the exporter thread's CPU time per record (independent of other load)."""
    path = os.path.join(directory, f"tp-{int(compress)}.jsonl")
    stats = AgentStats(node_name=NODE, version="bench")
    store = FlowStore(StoreSection(capacity=65535), stats)
    rotation = RotationConfig(max_bytes=10 * 1024 * 1024, max_backups=5, compress=compress)
    exp = FlowLogExporter(FlowLogSection(path=path, rotation=rotation, queue_size=65535),
                          store, stats)
    exp.start()
    cpu0 = thread_cpu_s(exp._thread.native_id)
    t0 = time.perf_counter()
    target = 0
    for i in range(0, len(flows), 5000):
        batch = flows[i:i + 5000]
        target += len(batch)
        store.extend(batch)
        # stay within the store so nothing is skipped: this measures the writer, not the queue
        while target - exp.records_written - exp.sink.pending_lines > 40000:
            time.sleep(0.005)
    while exp.records_written + exp.sink.pending_lines < target:
        time.sleep(0.005)
    cpu = thread_cpu_s(exp._thread.native_id) - cpu0
    exp.stop()
    elapsed = time.perf_counter() - t0
    lost = stats.snapshot_lost()
    assert observer_pb2.EXPORTER_QUEUE not in lost, "the throughput run skipped flows"
    return exp.records_written / elapsed, cpu / exp.records_written * 1e6, exp.writer.rotations


def cpu_share(directory: str, flows: list[flow_pb2.Flow], rate: int, seconds: float,
              compress: bool, aggregate: str = "", with_metrics: bool = False) -> dict:
    """Feed the store at `rate` flows/s; CPU seconds of the exporter (and metrics) thread
    per wall second."""
    path = os.path.join(directory, f"cpu-{int(compress)}-{aggregate or 'raw'}.jsonl")
    stats = AgentStats(node_name=NODE, version="bench")
    store = FlowStore(StoreSection(capacity=65535), stats)
    rotation = RotationConfig(max_bytes=10 * 1024 * 1024, max_backups=3, compress=compress)
    exp = FlowLogExporter(FlowLogSection(path=path, rotation=rotation, aggregate=aggregate),
                          store, stats)
    server = None
    exp.start()
    if with_metrics:
        server = MetricsServer(MetricsSection(address="127.0.0.1:0"), store, stats)
        server.start()
    batch_size = max(1, rate // 20)  # 20 batches per second, like a reader on a 50 ms timer
    sub = exp._subscription
    cursor0 = sub.cursor
    exp_cpu0 = thread_cpu_s(exp._thread.native_id)
    met_cpu0 = thread_cpu_s(server._thread.native_id) if server else 0.0
    t0 = time.monotonic()
    sent = 0
    i = 0
    while time.monotonic() - t0 < seconds:
        batch = flows[i:i + batch_size]
        if len(batch) < batch_size:
            i = 0
            batch = flows[:batch_size]
        i += batch_size
        now_ns = time.time_ns()
        for flow in batch:  # records are fresh, as the datapath's are (aggregation windows)
            flow.time.FromNanoseconds(now_ns)
        store.extend(batch)
        sent += len(batch)
        next_t = t0 + sent / rate
        delay = next_t - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    wall = time.monotonic() - t0
    # Measured while the thread runs: the flows it has read so far (not those it skipped)
    # and the CPU it used.
    read = sub.cursor - cursor0 - sum(s.count for s in stats.snapshot_lost().values())
    behind = store.seq - sub.cursor
    exp_cpu = thread_cpu_s(exp._thread.native_id) - exp_cpu0
    met_cpu = (thread_cpu_s(server._thread.native_id) - met_cpu0) if server else 0.0
    exp.stop()
    if server:
        server.stop()
    lost = stats.snapshot_lost()
    return {"rate": sent / wall, "exporter_cpu": exp_cpu / wall, "metrics_cpu": met_cpu / wall,
            "lost": sum(s.count for s in lost.values()), "behind": behind,
            "us_per_flow": exp_cpu / max(1, read) * 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=int, default=20000, help="flows/s for the CPU runs")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each CPU run")
    parser.add_argument("--records", type=int, default=100000, help="records per throughput run")
    parser.add_argument("--dir", default=None, help="where to write (default: a temp dir)")
    args = parser.parse_args()
    flows = make_flows(max(args.records, args.rate))
    directory = tempfile.mkdtemp(prefix="podflow-bench-", dir=args.dir)
    try:
        load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
        print(f"machine: {os.cpu_count()} CPUs, load average {load} (other work shares them)")
        print(f"flow log throughput ({args.records} enriched records, 10 MiB files, dir {directory})")
        print(f"{'mode':<28}{'records/s':>12}{'CPU us/rec':>12}{'rotations':>11}")
        for compress in (False, True):
            rps, us, rotations = throughput(directory, flows[:args.records], compress)
            print(f"{'gzip backups' if compress else 'plain':<28}{rps:>12,.0f}{us:>12.1f}"
                  f"{rotations:>11}")
        print()
        print(f"CPU share at {args.rate:,} flows/s for {args.seconds:g} s (1.00 = one core; "
              "us/flow = exporter CPU per flow read; behind = flows not yet read at the end;\n"
              " lost = skipped because the exporter lagged more than the store holds)")
        print(f"{'mode':<28}{'fed/s':>10}{'exporter':>10}{'us/flow':>9}{'metrics':>10}"
              f"{'behind':>8}{'lost':>9}")
        runs = [("plain + metrics", dict(compress=False, with_metrics=True)),
                ("gzip backups", dict(compress=True)),
                ("aggregate 1m", dict(compress=False, aggregate="1m"))]
        for name, kw in runs:
            r = cpu_share(directory, flows, args.rate, args.seconds, **kw)
            metrics_text = f"{r['metrics_cpu']:>10.2f}" if kw.get("with_metrics") else f"{'-':>10}"
            print(f"{name:<28}{r['rate']:>10,.0f}{r['exporter_cpu']:>10.2f}{r['us_per_flow']:>9.1f}"
                  f"{metrics_text}{r['behind']:>8}{r['lost']:>9}")
    finally:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
