"""The demo's steady traffic: who talks to whom, started in the pods and stopped with counts.

Each client pod (and the outside laptop) runs agent/lab/programs/traffic.py with its list of
tasks, one process per pod; the prober also pings. Stopping returns the generators' own
counts per task kind, so the summary can set what was sent beside what the agents saw.
"""

from __future__ import annotations

import json
import subprocess

from agent.demo.cluster import (APP_PORT, CART_IP, DB_PORT, DNS_IP, NODE_PORT, WORLD_PORT,
                                Cluster)
from agent.lab import POD_TRAFFIC_SCRIPT, pod_program


def traffic_plan(c: Cluster) -> list[tuple[object, list[dict]]]:
    """Who talks to whom: (pod or host, tasks)."""
    p, dns = c.pods, DNS_IP
    db_ip = p["db"].ip
    plan = [
        (p["frontend"], [
            {"kind": "dns", "name": "cart.shop.svc.cluster.local", "server": dns, "every_s": 2},
            {"kind": "http", "ip": CART_IP, "port": 80, "every_s": 1},
            {"kind": "dns", "name": "payments.shop.svc.cluster.local", "server": dns,
             "every_s": 6, "expect_rcode": 3},
            {"kind": "connect", "ip": db_ip, "port": DB_PORT, "every_s": 3, "timeout_s": 1},
            {"kind": "http", "ip": c.world.ip, "port": WORLD_PORT, "every_s": 4},
        ]),
        (p["checkout"], [
            {"kind": "http", "ip": CART_IP, "port": 80, "every_s": 1.5},
            {"kind": "dns", "name": "db.data.svc.cluster.local", "server": dns, "every_s": 3},
            {"kind": "http", "ip": db_ip, "port": DB_PORT, "every_s": 2},
        ]),
        (p["reporter"], [
            {"kind": "bulk", "ip": db_ip, "port": DB_PORT, "bytes": 2_000_000, "every_s": 5,
             "timeout_s": 10},
        ]),
        (p["prober"], [  # health checks straight to pod IPs, no Service: same node, cross node
            {"kind": "http", "ip": p["storefront"].ip, "port": APP_PORT, "every_s": 2},
            {"kind": "http", "ip": c.carts[0].ip, "port": APP_PORT, "every_s": 3},
        ]),
        (c.outside, [
            {"kind": "http", "ip": node.ip, "port": NODE_PORT, "every_s": 2}
            for node in c.lab.nodes[:2]
        ]),
    ]
    for lp in c.load_pods:
        plan.append((lp, [
            {"kind": "http", "ip": CART_IP, "port": 80, "every_s": 1},
            {"kind": "dns", "name": "cart.shop.svc.cluster.local", "server": dns, "every_s": 5},
        ]))
    return plan


def start_traffic(c: Cluster) -> None:
    """Start every generator of the plan, each in its own session (a Ctrl-C meant for the
    demo does not cut its counts short; `stop_traffic` ends them in order)."""
    for who, tasks in traffic_plan(c):
        proc = who.popen(pod_program(POD_TRAFFIC_SCRIPT, json.dumps(tasks)),
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, start_new_session=True, text=True)
        c.traffic.append((getattr(who, "name", "?"), proc))
    prober = c.pods["prober"]
    for target in (c.pods["frontend"], c.pods["checkout"]):  # cross node, then same node
        proc = prober.popen(["ping", "-q", "-i", "2", target.ip], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
        c.traffic.append(("ping", proc))


def stop_traffic(c: Cluster) -> dict[str, dict[str, int]]:
    """Stop the generators; returns their own counters, summed per task kind."""
    totals: dict[str, dict[str, int]] = {}
    for _name, proc in c.traffic:
        if proc.poll() is None:
            proc.terminate()
    for _name, proc in c.traffic:
        try:
            out, _ = proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        for line in (out or "").splitlines():
            try:
                counts = json.loads(line)
            except json.JSONDecodeError:
                continue
            for kind, entry in counts.items():
                t = totals.setdefault(kind, {"ok": 0, "failed": 0})
                t["ok"] += entry.get("ok", 0)
                t["failed"] += entry.get("failed", 0)
    c.traffic.clear()
    return totals
