"""What a filter costs per record on the two hot paths that evaluate one.

1. The agent: agent.filters.engine's predicate over Flow records, as GetFlows with filters
   and the flow log run it (one call per stored flow, on the server's threads).
2. The TUI: tui.filterexpr over FlowKeys, first sight of each key (a memo miss: the terms
   run) and again (a memo hit), as the aggregator's views call it a few times a second.

Flows are enriched-looking records of bench/observer.py's kind with varied namespaces, pods,
ports and protocols. Best of `--repeat` runs, nanoseconds per record.

    .venv/bin/python -m bench.filters [--flows 20000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import time


# (name, allowlist, denylist) as FlowFilter keyword arguments: what `observe` flags send
ENGINE_CASES = [
    ("namespace (either side)", [{"source_namespace": ["shop"]},
                                 {"destination_namespace": ["shop"]}], []),
    ("pod prefix (either side)", [{"source_pod": ["shop/cart-"]},
                                  {"destination_pod": ["shop/cart-"]}], []),
    ("destination port range", [{"destination_port": ["8000-8100"]}], []),
    ("protocol tcp,udp", [{"protocol": ["tcp", "udp"]}], []),
    ("verdict dropped", [{"verdict": [2]}], []),
    ("Service shop/cart", [{"service": ["shop/cart"]}], []),
    ("label selector", [{"source_label": ["app in (frontend,cart),tier!=db"]}], []),
    ("source CIDR", [{"source_ip": ["10.244.1.0/25"]}], []),
    ("node glob", [{"node_name": ["node-*"]}], []),
    ("deny kube-system", [], [{"source_namespace": ["kube-system"]},
                              {"destination_namespace": ["kube-system"]}]),
    ("ns + port + not udp", [{"source_namespace": ["shop"], "destination_port": ["1-1024"]},
                             {"destination_namespace": ["shop"], "destination_port": ["1-1024"]}],
     [{"protocol": ["udp"]}]),
]
# `/` expressions spelled the same before and after the shared vocabulary
TUI_CASES = ["ns=shop", "pod=cart-*", "port=8000-8100", "proto=tcp,udp", "verdict=dropped",
             "svc=shop/cart", "node=node-*", "ns=shop port=1-1024 !proto=udp"]


def _flows(n: int):
    from tests.observer.observer_flows import make_flow

    namespaces = ("shop", "web", "db", "kube-system", "batch")
    pods = ("cart-5c7b9d8f4-abcde", "frontend-7d9f8c6b5-x2x4z", "redis-0", "coredns-1",
            "worker-9")
    out = []
    for i in range(n):
        proto = ("tcp", "udp", "tcp", "icmpv4")[i % 4]
        ports = {"dport": (8080, 53, 443)[i % 3]} if proto != "icmpv4" else {}
        f = make_flow(i, node=f"node-{'abc'[i % 3]}", proto=proto, **ports,
                      source__namespace=namespaces[i % 5],
                      destination__namespace=namespaces[(i // 5) % 5],
                      source__pod_name=pods[(i // 3) % 5], destination__pod_name=pods[i % 5],
                      verdict=1 + (i % 11 == 0), is_reply=i % 2 == 1)
        out.append(f)
    return out


def _best(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flows", type=int, default=20_000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()

    from agent.filters.engine import compile_filters
    from podflow_api.v1 import observer_pb2
    from tui.filterexpr import parse_filter
    from tui.flowkey import flow_key

    flows = _flows(args.flows)
    n = len(flows)
    print(f"{n:,} flows, best of {args.repeat}; ns per record")
    print("| agent: FlowFilter engine       | ns/flow | selected |")
    print("|--------------------------------|---------|----------|")
    total = 0.0
    for name, allow, deny in ENGINE_CASES:
        pred = compile_filters([observer_pb2.FlowFilter(**a) for a in allow],
                               [observer_pb2.FlowFilter(**d) for d in deny])
        selected = sum(1 for f in flows if pred(f))
        s = _best(lambda: [pred(f) for f in flows], args.repeat)
        total += s
        print(f"| {name:<30} | {s / n * 1e9:>7.0f} | {selected:>8,} |")
    print(f"| {'(all of them, mean)':<30} | {total / len(ENGINE_CASES) / n * 1e9:>7.0f} |          |")

    keys = list(dict.fromkeys(flow_key(f) for f in flows))  # distinct: each one a memo miss
    n = len(keys)
    print(f"\n{n:,} distinct FlowKeys of those flows")
    print("| TUI: `/` over FlowKeys          | miss ns/key | hit ns/key | selected |")
    print("|--------------------------------|-------------|------------|----------|")
    for expr in TUI_CASES:
        def miss(expr=expr):
            flt = parse_filter(expr)  # a fresh memo: every key is new
            for k in keys:
                flt(k)
        flt = parse_filter(expr)
        selected = sum(1 for k in keys if flt(k))
        s_miss = _best(miss, args.repeat)
        s_hit = _best(lambda: [flt(k) for k in keys], args.repeat)
        print(f"| {expr:<30} | {s_miss / n * 1e9:>11.0f} | {s_hit / n * 1e9:>10.0f} | "
              f"{selected:>8,} |")


if __name__ == "__main__":
    main()
