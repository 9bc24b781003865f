"""NetworkPolicy evaluation cost with 500 policies: evaluations/s without caches, cold (a
fresh evaluator's first pass) and cached, and judging recorded flows after the fact (what
`podflow policy` does). What the agent pays, judging inside enrichment, is bench.enrich's
NetworkPolicy row (the budget: at most 20% of enrichment's throughput).

    .venv/bin/python -m bench.policy [--policies 500] [--pods 10000] [--services 2000]
                                     [--flows 100000]

The cluster and the records are bench.enrich's (pods of Deployments over 50 namespaces and
100 nodes, Services with 5 backends, 45% pod->pod, 35% pod->ClusterIP, 10% headless, 10%
world); the policies are a mix of what clusters run: default deny, same-namespace allow,
namespace and pod selectors, matchExpressions, named ports, port ranges, DNS egress, world
egress through ipBlock with except. CPU time of this thread, medians of 3 interleaved runs.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time

from agent.enrich.conntrack import Conntrack
from agent.enrich.names import FlowEnricher
from agent.policy.cluster import ClusterStatePolicyView
from agent.policy.evaluate import PolicyEvaluator
from agent.policy.flows import connection_of, judge
from agent.policy.load import load_policies
from bench.enrich import build_state, cluster_objects, make_flows
from podflow_api.v1 import flow_pb2

NAMESPACES = 50


def namespaces() -> list[dict]:
    return [{"kind": "Namespace", "metadata": {"name": f"ns-{k}", "labels": {
        "kubernetes.io/metadata.name": f"ns-{k}", "team": f"t-{k % 5}",
        "env": "prod" if k % 3 else "dev"}}} for k in range(NAMESPACES)]


def policy_manifests(count: int, apps: int) -> list[dict]:
    """`count` policies, ten kinds cycled over the namespaces. bench.enrich puts app-j in
    namespace ns-(j % 50)."""
    out = []
    for i in range(count):
        k, kind = (i // 10) % NAMESPACES, i % 10
        ns = f"ns-{k}"
        app = f"app-{(k + NAMESPACES * (i // (10 * NAMESPACES))) % max(apps, 1)}"
        name = f"p{i}-{kind}"
        if kind == 0:
            spec = {"podSelector": {}, "policyTypes": ["Ingress"]}
        elif kind == 1:
            spec = {"podSelector": {}, "ingress": [{"from": [{"podSelector": {}}]}]}
        elif kind == 2:
            spec = {"podSelector": {"matchLabels": {"tier": "backend"}}, "ingress": [{
                "from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ns-0"}},
                          "podSelector": {"matchLabels": {"tier": "backend"}}}],
                "ports": [{"port": 9090}]}]}
        elif kind == 3:
            spec = {"podSelector": {"matchLabels": {"app": app}}, "ingress": [{
                "from": [{"namespaceSelector": {"matchLabels": {"team": f"t-{(k + 1) % 5}"}}}],
                "ports": [{"protocol": "TCP", "port": 8080}]}]}
        elif kind == 4:
            spec = {"podSelector": {"matchExpressions": [
                {"key": "app", "operator": "In", "values": [app, f"{app}-canary"]},
                {"key": "version", "operator": "NotIn", "values": ["v0"]}]},
                "ingress": [{"ports": [{"port": 8000, "endPort": 8100}]}]}
        elif kind == 5:
            spec = {"podSelector": {"matchLabels": {"app": app}}, "policyTypes": ["Egress"]}
        elif kind == 6:
            spec = {"podSelector": {}, "policyTypes": ["Egress"], "egress": [{
                "to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                        "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
                "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]}]}
        elif kind == 7:
            spec = {"podSelector": {}, "policyTypes": ["Egress"], "egress": [{
                "to": [{"ipBlock": {"cidr": "0.0.0.0/0",
                                    "except": ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"]}}],
                "ports": [{"port": 443}]}]}
        elif kind == 8:
            spec = {"podSelector": {}, "policyTypes": ["Egress"], "egress": [{
                "to": [{"namespaceSelector": {"matchLabels": {"env": "prod"}}}],
                "ports": [{"port": 8080}]}]}
        else:
            spec = {"podSelector": {"matchLabels": {"tier": "backend"}}, "ingress": [{
                "from": [{"ipBlock": {"cidr": "172.20.0.0/16"}}], "ports": [{"port": "http"}]}]}
        out.append({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                    "metadata": {"name": name, "namespace": ns}, "spec": spec})
    return out


def cpu(fn) -> float:
    gc.collect()
    start = time.thread_time()
    fn()
    return time.thread_time() - start


def bench_evaluations(state, view, policies, conns) -> list[tuple[str, str]]:
    n = len(conns)
    few = conns[: max(n // 20, 1)]

    def uncached():
        ev = PolicyEvaluator(view, policies)
        snap = ev._snap
        for c in few:
            snap.reset()              # every evaluation from scratch: addresses, verdicts
            ev.evaluate(*c)

    fresh: list[PolicyEvaluator] = []

    def cold():
        ev = PolicyEvaluator(view, policies)
        fresh.append(ev)
        for c in conns:
            ev.evaluate(*c)

    def cached():
        ev = fresh[-1]
        for c in conns:
            ev.evaluate(*c)

    runs: dict[str, list[float]] = {"uncached": [], "cold": [], "cached": []}
    for _ in range(3):
        runs["uncached"].append(cpu(uncached))
        runs["cold"].append(cpu(cold))
        runs["cached"].append(cpu(cached))
    stats = fresh[-1].cache_stats()
    denied = sum(1 for c in conns if fresh[-1].evaluate(*c).denied)
    rows = []
    for label, key, count in (("no cache (every evaluation from scratch)", "uncached", len(few)),
                              ("cold (fresh evaluator, first pass)", "cold", n),
                              ("cached (second pass)", "cached", n)):
        t = statistics.median(runs[key])
        rows.append((f"evaluations/s, {label}", f"{count / t:,.0f} ({t / count * 1e6:.2f} us each)"))
    rows.append(("cache after one pass", f"{stats['identities']:,} identities, "
                                         f"{stats['rule_sets']:,} rule sets, "
                                         f"{stats['verdicts']:,} connection verdicts "
                                         f"({stats['direction_verdicts']:,} per direction), "
                                         f"{stats['addresses']:,} addresses for {n:,} connections "
                                         f"({len({c for c in conns}):,} distinct)"))
    rows.append(("connections denied by the policies", f"{denied / n:.0%}"))
    return rows


def bench_records(evaluator: PolicyEvaluator, enriched: list) -> list[tuple[str, str]]:
    """What the tools pay per recorded flow (`podflow policy` reads flow logs): the
    connection of a record, its verdict and its finding (flows.judge). The agent judges
    inside enrichment instead; bench.enrich measures that against its 20% budget."""
    times = []
    for _ in range(3):
        times.append(cpu(lambda: [judge(evaluator, f) for f in enriched]))
    t = statistics.median(times)
    return [("records judged after the fact (flows.judge)",
             f"{len(enriched) / t:,.0f} records/s ({t / len(enriched) * 1e6:.2f} us each)")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policies", type=int, default=500)
    parser.add_argument("--pods", type=int, default=10_000)
    parser.add_argument("--services", type=int, default=2_000)
    parser.add_argument("--flows", type=int, default=100_000)
    args = parser.parse_args()

    state = build_state(cluster_objects(args.pods, args.services) + namespaces())
    view = ClusterStatePolicyView(state)
    manifests = policy_manifests(args.policies, args.pods // 5)
    start = time.thread_time()
    loaded = load_policies(manifests)
    parse_s = time.thread_time() - start
    assert not loaded.problems, loaded.problems[:3]
    rows = [(f"parse {len(loaded.policies)} policies", f"{parse_s * 1000:.1f} ms CPU")]

    ct = Conntrack()
    ct._listening_since_ns = time.time_ns() - 60_000_000_000
    flows = make_flows(args.flows, args.pods, args.services, ct)
    for ip in list(state.pod_by_ip):   # endpoints built once, as in a running agent
        state.peer(ip)
    enriched = [flow_pb2.Flow() for _ in flows]
    for c, f in zip(enriched, flows):
        c.CopyFrom(f)
    FlowEnricher(state, ct).enrich(enriched)
    per_record = [None if c is None else (c.src_ip, c.dst_ip, c.dst_port, c.protocol)
                  for c in map(connection_of, enriched)]
    conns = [c for c in per_record if c is not None]
    rows += bench_evaluations(state, view, loaded.policies, conns)
    evaluator = PolicyEvaluator(view, loaded.policies)
    evaluator.warm(state.pod_by_ip)
    rows += bench_records(evaluator, enriched)

    width = max(len(k) for k, _ in rows)
    print(f"{'measure'.ljust(width)}  value")
    for key, value in rows:
        print(f"{key.ljust(width)}  {value}")


if __name__ == "__main__":
    main()
