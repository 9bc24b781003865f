"""What the demo cluster costs to build and what the agents cost while it runs, as it scales.

For each scale (extra load pods per node), builds the demo's cluster with the lab, starts one
agent per node and the demo's traffic, and measures: seconds to build the namespaces and
rules, seconds until every agent is ready, requests/s the traffic generators completed, each
agent's CPU (utime+stime from /proc, share of one core) over the steady window, flow records
seen and events lost (ServerStatus), and seconds to clean everything up.

    .venv/bin/python -m bench.demo [--scales 0,8] [--seconds 10]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import grpc

from agent.demo.cluster import build_cluster, start_agents
from agent.demo.traffic import start_traffic, stop_traffic
from agent.lab import Lab
from podflow_api.v1 import observer_pb2, observer_pb2_grpc

_TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def _status(address: str) -> observer_pb2.ServerStatusResponse:
    with grpc.insecure_channel(address) as channel:
        return observer_pb2_grpc.ObserverStub(channel).ServerStatus(
            observer_pb2.ServerStatusRequest(), timeout=10)


def one_scale(pods_per_node: int, seconds: float) -> dict:
    t0 = time.monotonic()
    lab = Lab("benchdemo")
    try:
        c = build_cluster(lab, 2, pods_per_node)
        t_built = time.monotonic()
        start_agents(c, lab.run_dir, None)
        t_agents = time.monotonic()
        start_traffic(c)
        time.sleep(2)  # let every generator get going
        cpu0 = {a.node.name: _cpu_s(a.pid) for a in c.agents}
        w0 = time.monotonic()
        time.sleep(seconds)
        window = time.monotonic() - w0
        cpu = {a.node.name: (_cpu_s(a.pid) - cpu0[a.node.name]) / window for a in c.agents}
        traffic = stop_traffic(c)
        statuses = {a.node.name: _status(a.address) for a in c.agents}
        requests = sum(t["ok"] + t["failed"] for k, t in traffic.items() if k != "bulk")
        pods = len(lab.pods)
    finally:
        t_clean0 = time.monotonic()
        lab.cleanup()
        t_clean = time.monotonic() - t_clean0
    return {
        "pods": pods, "build_s": t_built - t0, "agents_s": t_agents - t_built,
        "req_per_s": requests / (window + 2), "cpu": cpu,
        "seen": {n: s.seen_flows for n, s in statuses.items()},
        "lost": {n: sum(lc.count for lc in s.lost) for n, s in statuses.items()},
        "cleanup_s": t_clean,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scales", default="0,8", help="extra load pods per node, comma list")
    parser.add_argument("--seconds", type=float, default=10.0, help="steady window per scale")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench.demo: needs root", file=sys.stderr)
        return 2
    rows = [one_scale(int(s), args.seconds) for s in args.scales.split(",")]
    print(f"{'pods':>5} {'build s':>8} {'agents s':>9} {'req/s':>7} {'cpu a':>7} {'cpu b':>7} "
          f"{'records a':>10} {'records b':>10} {'lost':>5} {'cleanup s':>10}")
    for r in rows:
        cpu = list(r["cpu"].values())
        seen = list(r["seen"].values())
        print(f"{r['pods']:>5} {r['build_s']:>8.1f} {r['agents_s']:>9.1f} {r['req_per_s']:>7.1f} "
              f"{cpu[0]:>6.1%} {cpu[1]:>6.1%} {seen[0]:>10,} {seen[1]:>10,} "
              f"{sum(r['lost'].values()):>5} {r['cleanup_s']:>10.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
