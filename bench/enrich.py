"""Enrichment cost: flows/s through the pipeline with and without enrichment (same run, same
records), and with the NetworkPolicy verdict judged inside it for 500 policies (the policy
stage's budget: at most 20% of enrichment's throughput), both record by record (Flow objects:
drop records, `extend`) and as the datapath hands records over (FlowBatch columns of a sweep,
names and verdicts once per identity: agent/enrich/batch.py), memory of the cluster cache for
10,000 pods and 2,000 Services, a netlink conntrack lookup's round trip, and the time from a
pod's creation on the (fake) API server to its flows being named.

    .venv/bin/python -m bench.enrich [--pods 10000] [--services 2000] [--flows 100000]
                                     [--policies 500]
"""

from __future__ import annotations

import argparse
import collections
import gc
import ipaddress
import os
import random
import statistics
import tempfile
import time
import tracemalloc

import numpy as np

from agent.config import StoreSection
from agent.enrich.conntrack import CTA_TUPLE_ORIG, Conntrack, Entry, Tuple5, open_conntrack
from agent.datapath import abi
from agent.datapath.batch import FlowBatch
from agent.datapath.decode import InterfaceInfo, InterfaceKind
from agent.enrich.batch import BatchEnricher
from agent.enrich.names import FlowEnricher
from agent.flowstore import FlowStore
from agent.enrich.k8s.state import ClusterState
from agent.stats import AgentStats
from podflow_api.v1 import flow_pb2

BATCH = 256
SWEEP_BATCH = 4096  # records per FlowBatch: a sweep's worth at a few thousand new flows/s


def pod_ip(i: int) -> str:
    return f"10.{64 + i // 65000}.{(i // 250) % 256}.{i % 250 + 2}"


def cluster_objects(pods: int, services: int, nodes: int = 100) -> list[dict]:
    """Pods of Deployments (via ReplicaSets) spread over nodes and namespaces, Services
    with an EndpointSlice of 5 pods each; a tenth of the Services are headless."""
    items: list[dict] = []
    for n in range(nodes):
        items.append({"kind": "Node", "metadata": {"name": f"node-{n}"},
                      "spec": {"podCIDR": f"10.200.{n}.0/24"},
                      "status": {"addresses": [{"type": "InternalIP", "address": f"172.20.{n // 250}.{n % 250 + 2}"}]}})
    for i in range(pods):
        ns, app = f"ns-{i % 50}", f"app-{i % (pods // 5 or 1)}"
        rs = f"{app}-5f4d8c9b7"
        items.append({"kind": "Pod", "metadata": {
            "name": f"{rs}-{i:05x}", "namespace": ns, "creationTimestamp": "2026-11-21T09:00:00Z",
            "labels": {"app": app, "pod-template-hash": "5f4d8c9b7", "tier": "backend",
                       "version": "v1"},
            "ownerReferences": [{"kind": "ReplicaSet", "name": rs, "controller": True}]},
            "spec": {"nodeName": f"node-{i % nodes}"},
            "status": {"phase": "Running", "podIP": pod_ip(i), "podIPs": [{"ip": pod_ip(i)}]}})
        if i < pods // 5:
            items.append({"kind": "ReplicaSet", "metadata": {
                "name": rs, "namespace": ns,
                "ownerReferences": [{"kind": "Deployment", "name": app, "controller": True}]}})
    for s in range(services):
        ns = f"ns-{s % 50}"
        headless = s % 10 == 9
        items.append({"kind": "Service", "metadata": {"name": f"svc-{s}", "namespace": ns},
                      "spec": {"type": "ClusterIP",
                               "clusterIP": "None" if headless else f"10.96.{s // 250}.{s % 250 + 1}",
                               "ports": [{"port": 80, "targetPort": 8080, "protocol": "TCP"}]}})
        eps = [{"addresses": [pod_ip((s * 5 + k) % pods)], "conditions": {"ready": True}}
               for k in range(5)]
        items.append({"kind": "EndpointSlice", "metadata": {
            "name": f"svc-{s}-abcde", "namespace": ns,
            "labels": {"kubernetes.io/service-name": f"svc-{s}"}},
            "ports": [{"port": 8080, "protocol": "TCP"}], "endpoints": eps})
    return items


def build_state(items: list[dict]) -> ClusterState:
    state = ClusterState()
    for item in items:
        state.apply(item["kind"], "ADDED", item)
    return state


def make_flows(n: int, pods: int, services: int, ct: Conntrack, seed: int = 7) -> list[flow_pb2.Flow]:
    """45% pod->pod, 35% pod->ClusterIP (DNATed: conntrack knows the backend), 10% to a
    headless Service's pod, 10% pod->world; a few thousand distinct connections."""
    rng = random.Random(seed)
    now = time.time_ns()
    flows = []
    for i in range(n):
        f = flow_pb2.Flow(node_name="node-0", packets=3, bytes=400,
                          observation_point=flow_pb2.POD_VETH, traffic_direction=flow_pb2.FROM_POD)
        f.first_seen.FromNanoseconds(now)
        client = rng.randrange(pods)
        sport = 32768 + (i % 4000)
        kind = rng.random()
        if kind < 0.45:
            dst, dport = pod_ip(rng.randrange(pods)), 8080
        elif kind < 0.80:
            s = rng.randrange(services)
            if s % 10 == 9:
                s -= 1
            dst, dport = f"10.96.{s // 250}.{s % 250 + 1}", 80
            backend = pod_ip((s * 5 + rng.randrange(5)) % pods)
            ct._remember(Entry(Tuple5(6, pod_ip(client), sport, dst, dport),
                               Tuple5(6, backend, 8080, pod_ip(client), sport)), 0)
        elif kind < 0.90:
            s = rng.randrange(services // 10) * 10 + 9
            dst, dport = pod_ip((s * 5) % pods), 8080
        else:
            dst, dport = f"93.184.{rng.randrange(256)}.{rng.randrange(1, 255)}", 443
        f.ip.source, f.ip.destination, f.ip.ip_version = pod_ip(client), dst, flow_pb2.IPV4
        f.l4.tcp.source_port, f.l4.tcp.destination_port = sport, dport
        flows.append(f)
    return flows


def run_pipeline(flows: list[flow_pb2.Flow], enricher: FlowEnricher | None) -> float:
    """CPU seconds of this thread to push copies of `flows` through (enrich +) store, in
    batches. CPU time, not wall time: the machine is shared and wall time measures the
    other tenants as much as us."""
    store = FlowStore(StoreSection(capacity=65536), AgentStats("bench", "bench"))
    copies = [flow_pb2.Flow() for _ in flows]
    for c, f in zip(copies, flows):
        c.CopyFrom(f)
    gc.collect()
    start = time.thread_time()
    for i in range(0, len(copies), BATCH):
        batch = copies[i:i + BATCH]
        if enricher is not None:
            enricher.enrich(batch)
        store.extend(batch)
    return time.thread_time() - start


def flow_keys(flows: list[flow_pb2.Flow]) -> list[np.ndarray]:
    """The kernel's flow keys of `flows`, SWEEP_BATCH at a time (TCP, leaving the pod by its
    veth, interface 10 + the client address's last byte; a veth+bridge pair's second record
    on cni0, interface 1)."""
    out = []
    for lo in range(0, len(flows), SWEEP_BATCH):
        chunk = flows[lo:lo + SWEEP_BATCH]
        keys = np.zeros((len(chunk), abi.KEY_SIZE), np.uint8)
        for row, f in enumerate(chunk):
            on_bridge = f.observation_point == flow_pb2.BRIDGE
            k = abi.FlowKey(ifindex=1 if on_bridge else 10 + int(f.ip.source.rsplit(".")[-1]),
                            direction=abi.PF_DIR_INGRESS, family=abi.PF_FAMILY_IPV4,
                            proto=abi.IPPROTO_TCP, src_port=f.l4.tcp.source_port,
                            dst_port=f.l4.tcp.destination_port)
            k.src_addr[:4] = list(ipaddress.ip_address(f.ip.source).packed)
            k.dst_addr[:4] = list(ipaddress.ip_address(f.ip.destination).packed)
            keys[row] = np.frombuffer(bytes(k), np.uint8)
        out.append(keys)
    return out


def as_batches(all_keys: list[np.ndarray]) -> list[FlowBatch]:
    """Records with these keys (flow_keys) as FlowBatch columns, as a sweep hands them to
    enrichment."""
    out = []
    now = time.time_ns()
    interfaces = {1: InterfaceInfo(1, "cni0", InterfaceKind.BRIDGE)}
    for i in range(10, 10 + 256):
        interfaces[i] = InterfaceInfo(i, f"veth{i}", InterfaceKind.POD_VETH)
    for keys in all_keys:
        keys = keys.copy()
        n = len(keys)
        first = np.full(n, now, np.int64)
        out.append(FlowBatch(keys, np.full(n, 3, np.uint64), np.full(n, 400, np.uint64), first,
                             first + 1000, np.full(n, 0x18, np.uint8), np.zeros(n, bool),
                             np.zeros(n, bool), now, "node-0", interfaces))
    return out


def run_batches(keys: list[np.ndarray], enricher: BatchEnricher | None) -> float:
    """run_pipeline for FlowBatches (built fresh, outside the measure: enrichment writes
    into them): CPU seconds of this thread (enrich +) store."""
    store = FlowStore(StoreSection(capacity=65536), AgentStats("bench", "bench"))
    batches = as_batches(keys)
    gc.collect()
    start = time.thread_time()
    for batch in batches:
        if enricher is not None:
            enricher.enrich(batch)
        store.extend_batch(batch)
    return time.thread_time() - start


def paired(flows: list[flow_pb2.Flow]) -> list[flow_pb2.Flow]:
    """Each record twice in a row, as a bridge node reports a packet at the pod's veth and
    at the bridge: the second record of a 5-tuple finds its names cached."""
    out = []
    for f in flows[: len(flows) // 2]:
        other = flow_pb2.Flow()
        other.CopyFrom(f)
        other.observation_point = flow_pb2.BRIDGE
        out += [f, other]
    return out


def with_policies(state: ClusterState, count: int, apps: int):
    """The policy stage over `state` with `count` NetworkPolicies of bench.policy's mix (and
    its namespaces), as a running agent has it: subscribed, every pod's address learnt."""
    from agent.policy.stage import PolicyStage
    from bench.policy import namespaces, policy_manifests

    state.replace("Namespace", namespaces())
    state.replace("NetworkPolicy", policy_manifests(count, apps))
    stage = PolicyStage(state, AgentStats("bench", "bench"))
    stage.start()
    assert not stage.feed.problems, stage.feed.problems
    return stage


def _ratio_rows(rows: list, label: str, n: int, policies: int, base: list, enriched: list,
                judged: list) -> None:
    b, e = statistics.median(base), statistics.median(enriched)
    rows.append((f"{label}: without / with enrichment",
                 f"{n / b:,.0f} / {n / e:,.0f} flows/s of CPU, "
                 f"{(e - b) / n * 1e6:.2f} us CPU per flow"))
    if judged:
        # Each round's two runs are neighbours in time: the ratio of a pair is less
        # disturbed by the machine's other tenants than the ratio of two medians.
        p = statistics.median(judged)
        ratio = statistics.median(x / y for x, y in zip(enriched, judged))
        rows.append((f"{label}: enrichment + NetworkPolicy ({policies} policies)",
                     f"{n / p:,.0f} flows/s of CPU, {(p - e) / n * 1e6:.2f} us CPU per flow "
                     f"more; {ratio:.2f} of enrichment's throughput (median of the rounds' "
                     f"ratios; budget >= 0.80)"))


def bench_throughput(state: ClusterState, args) -> list[tuple[str, str]]:
    ct = Conntrack()
    # The event listener has been running (and lost nothing) since before these flows began.
    ct._listening_since_ns = time.time_ns() - 60_000_000_000
    unique = make_flows(args.flows, args.pods, args.services, ct)
    pairs = paired(unique)
    policy = with_policies(state, args.policies, args.pods // 5) if args.policies else None
    for ip in list(state.pod_by_ip):  # endpoints built once, as in a running agent
        state.peer(ip)
    rows = []
    n = len(unique)
    for label, flows in (("every record a new 5-tuple", unique),
                         ("records in veth+bridge pairs", pairs)):
        base, enriched, judged = [], [], []
        for _ in range(args.rounds):  # interleaved, medians: the machine is shared
            base.append(run_pipeline(flows, None))
            enriched.append(run_pipeline(flows, FlowEnricher(state, ct)))
            if policy is not None:
                judged.append(run_pipeline(flows, FlowEnricher(state, ct, judge=policy.judge)))
        _ratio_rows(rows, label, n, args.policies, base, enriched, judged)
        keys = flow_keys(flows)
        base, enriched, judged = [], [], []
        for _ in range(args.rounds):
            base.append(run_batches(keys, None))
            enriched.append(run_batches(keys, BatchEnricher(state, ct)))
            if policy is not None:
                judged.append(run_batches(keys, BatchEnricher(state, ct, judge=policy.judge)))
        _ratio_rows(rows, f"{label}, as batches", n, args.policies, base, enriched, judged)
    sample = unique[:1000]

    copies = [flow_pb2.Flow() for _ in sample]
    for c, fl in zip(copies, sample):
        c.CopyFrom(fl)
    FlowEnricher(state, ct).enrich(copies)
    named = sum(1 for fl in copies if fl.service.name or fl.destination.pod_name)
    rows.append(("records named (sample of 1,000; ~10% go to the world)", f"{named}"))
    if policy is not None:
        from agent.wire.flowtext import policy_verdict_word

        judged_copies = [flow_pb2.Flow() for _ in sample]
        for c, fl in zip(judged_copies, sample):
            c.CopyFrom(fl)
        FlowEnricher(state, ct, judge=policy.judge).enrich(judged_copies)
        words = collections.Counter(map(policy_verdict_word, judged_copies))
        rows.append(("policy verdicts (same sample)",
                     ", ".join(f"{w} {c}" for w, c in words.most_common())))
    return rows


def bench_memory(args) -> list[tuple[str, str]]:
    items = cluster_objects(args.pods, args.services)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    start = time.thread_time()
    state = build_state(items)
    build_s = time.thread_time() - start
    # Every pod's Endpoint message, as a running agent ends up holding them.
    for ip in list(state.pod_by_ip):
        state.peer(ip)
    gc.collect()
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return [(f"cache for {args.pods:,} pods, {args.services:,} Services",
             f"{used / 2**20:.1f} MiB ({used / args.pods / 1024:.2f} KiB/pod, all included)"),
            ("cache build from API objects (under tracemalloc)", f"{build_s * 1000:.0f} ms CPU")], state


def bench_netlink(rows: list[tuple[str, str]]) -> None:
    if os.geteuid() != 0:
        rows.append(("conntrack netlink lookup", "skipped (needs root)"))
        return
    ct = open_conntrack()
    if ct is None:
        rows.append(("conntrack netlink lookup", "unavailable"))
        return
    try:
        t = Tuple5(6, "192.0.2.1", 1, "192.0.2.2", 2)  # TEST-NET: never in the table
        n = 2000
        start, cpu = time.perf_counter(), time.thread_time()
        for _ in range(n):
            ct.get(CTA_TUPLE_ORIG, t)
        rows.append(("conntrack netlink lookup (one CT_GET, miss)",
                     f"{(time.perf_counter() - start) / n * 1e6:.1f} us wall, "
                     f"{(time.thread_time() - cpu) / n * 1e6:.1f} us CPU"))
    finally:
        ct.stop()


def bench_latency(args) -> list[tuple[str, str]]:
    from agent.enrich.k8s.kubesource import KubeSource
    from tests.enrich.fakeapi import FakeAPIServer

    api = FakeAPIServer(bookmark_interval_s=5).start()
    state, stats = ClusterState(), AgentStats("bench", "bench")
    with tempfile.TemporaryDirectory() as tmp:
        source = KubeSource(state, stats, kubeconfig=api.write_kubeconfig(os.path.join(tmp, "kc")))
        source.start()
        enricher = FlowEnricher(state, None)
        delays = []
        try:
            for i in range(args.latency_samples):
                ip = f"10.250.0.{i + 2}"
                start = time.perf_counter()
                api.create({"kind": "Pod", "metadata": {"name": f"new-{i}", "namespace": "bench"},
                            "spec": {"nodeName": "node-0"},
                            "status": {"phase": "Running", "podIP": ip}})
                state.wait_for(lambda s, ip=ip: ip in s.pod_by_ip, 5.0)
                f = flow_pb2.Flow()
                f.ip.source, f.ip.destination = ip, "10.250.1.1"
                enricher.enrich([f])
                assert f.source.pod_name == f"new-{i}"
                delays.append(time.perf_counter() - start)
        finally:
            source.stop()
            api.stop()
    delays.sort()
    return [("pod created on API server -> its flows named",
             f"median {statistics.median(delays) * 1000:.1f} ms, "
             f"p95 {delays[int(len(delays) * 0.95) - 1] * 1000:.1f} ms, max {delays[-1] * 1000:.1f} ms "
             f"({len(delays)} pods)")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=10_000)
    parser.add_argument("--services", type=int, default=2_000)
    parser.add_argument("--flows", type=int, default=100_000)
    parser.add_argument("--latency-samples", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5,
                        help="interleaved rounds of the throughput rows (medians are shown)")
    parser.add_argument("--policies", type=int, default=500,
                        help="NetworkPolicies for the policy row (0: no policy row)")
    args = parser.parse_args()
    rows, state = bench_memory(args)
    rows += bench_throughput(state, args)
    bench_netlink(rows)
    rows += bench_latency(args)
    width = max(len(k) for k, _ in rows)
    print(f"{'measure'.ljust(width)}  value")
    for key, value in rows:
        print(f"{key.ljust(width)}  {value}")


if __name__ == "__main__":
    main()
