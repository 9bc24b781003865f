"""What the agents saw, as the headless demo prints it: connections per category, Services
and the backends that answered, drops with the kernel's reason, DNS names and answers, and
per NetworkPolicy the connections it allowed and denied, enforced or not.

A connection is counted once (its 5-tuple) whatever records and observation points saw it;
the summary also carries what the demo expects (backends, the blocked pair) and the traffic
generators' own counts, so tests compare one with the other.
"""

from __future__ import annotations

import collections
import sys

from agent.demo.cluster import Cluster


def read_flows(address: str, timeout_s: float = 20.0) -> list:
    """Every flow the agent still holds (GetFlows history, no follow)."""
    import grpc

    from podflow_api.v1 import observer_pb2, observer_pb2_grpc

    with grpc.insecure_channel(address, options=[("grpc.max_receive_message_length",
                                                  64 << 20)]) as channel:
        stub = observer_pb2_grpc.ObserverStub(channel)
        return [r.flow for r in stub.GetFlows(observer_pb2.GetFlowsRequest(number=1 << 20),
                                              timeout=timeout_s)
                if r.WhichOneof("response_types") == "flow"]


def summarize(c: Cluster, flows_by_node: dict[str, list], traffic: dict | None = None) -> dict:
    """What the agents saw: connections per category, Services and their backends, drops,
    DNS names. A connection is counted once (its 5-tuple), whatever the records and
    observation points that saw it."""
    from podflow_api.v1 import flow_pb2

    def l4(f):
        kind = f.l4.WhichOneof("protocol") or "other"
        m = getattr(f.l4, kind) if kind != "other" else None
        sport = getattr(m, "source_port", 0) if m is not None else 0
        dport = getattr(m, "destination_port", 0) if m is not None else 0
        return kind, sport, dport

    from agent.wire.flowtext import endpoint_text as ep  # the words every printer uses

    categories: dict[str, set] = collections.defaultdict(set)
    services: dict[str, dict] = {}
    drops: dict[tuple, int] = collections.Counter()
    dns: dict[tuple, int] = collections.Counter()
    per_node = {}
    for node, flows in flows_by_node.items():
        per_node[node] = len(flows)
        for f in flows:
            proto, sport, dport = l4(f)
            a, b = (f.ip.source, sport), (f.ip.destination, dport)
            conn = (proto,) + tuple(sorted([a, b]))
            if f.verdict == flow_pb2.DROPPED:
                key = (ep(f.source, f.ip.source), ep(f.destination, f.ip.destination),
                       f"{proto}/{dport}" if dport else proto, f.drop_reason or "?")
                drops[key] += f.packets or 1
                continue
            if f.category:
                categories[flow_pb2.FlowCategory.Name(f.category)].add(conn)
            if f.service.name:
                svc_key = f"{f.service.namespace}/{f.service.name}"
                s = services.setdefault(svc_key, {"type": f.service.type, "ip": f.service.ip,
                                                  "port": f.service.port, "backends": {},
                                                  "_conns": set()})
                s["_conns"].add(conn)
                if f.backend.pod_name:
                    be = f"{f.backend.namespace}/{f.backend.pod_name}"
                    s["backends"].setdefault(be, {"node": f.backend.node_name, "_conns": set()})
                    s["backends"][be]["_conns"].add(conn)
            if f.dns.query:
                dns[(f.dns.query, f.dns.rcode or "query")] += 1
    for s in services.values():
        s["connections"] = len(s.pop("_conns"))
        for be in s["backends"].values():
            be["connections"] = len(be.pop("_conns"))
    policies = _policy_verdicts(flow for flows in flows_by_node.values() for flow in flows)
    return {
        "nodes": per_node,
        "categories": {k: len(v) for k, v in sorted(categories.items())},
        "services": dict(sorted(services.items())),
        "drops": [{"source": k[0], "destination": k[1], "port": k[2], "reason": k[3],
                   "packets": n} for k, n in sorted(drops.items())],
        "dns": [{"query": q, "rcode": r, "records": n} for (q, r), n in sorted(dns.items())],
        "policies": policies,
        "expected": {
            "cart_backends": sorted(f"{p.namespace}/{p.name}" for p in c.carts),
            "storefront_backends": [f"web/{c.pods['storefront'].name}"],
            "blocked": [f"shop/{c.pods['frontend'].name}", f"data/{c.pods['db'].name}"],
            "policies": {f"{p.namespace}/{p.name}": "enforced" if p.enforce else "not enforced"
                         for p in c.lab.policies},
        },
        "traffic": traffic or {},
    }


# What became of a policy's connections, from the best evidence any record gave.
_EVIDENCE = {"enforced": 2, "not-enforced": 2, "dropped-otherwise": 1, "": 0}


def _policy_verdicts(flows) -> dict[str, dict[str, int]]:
    """Per NetworkPolicy the connections (each counted once) its rules allowed and the ones
    it denied, by what was seen of them: dropped (enforced), delivered (NOT enforced), or
    nothing yet; and allowed ones something else dropped."""
    from agent.wire.flowtext import denying_policies, policy_finding_word, policy_names

    seen: dict[tuple, tuple[bool, str]] = {}   # (policy, connection) -> (denied, finding)
    for f in flows:
        if not f.HasField("policy"):
            continue
        kind = f.l4.WhichOneof("protocol") or "ip"
        ports = getattr(f.l4, kind) if kind in ("tcp", "udp", "sctp") else None
        ends = sorted([(f.ip.source, ports.source_port if ports else 0),
                       (f.ip.destination, ports.destination_port if ports else 0)])
        finding = policy_finding_word(f)
        denying = denying_policies(f)
        for name in policy_names(f):
            key = (name, kind, *ends)
            old = seen.get(key)
            if old is None or _EVIDENCE[finding] > _EVIDENCE[old[1]]:
                seen[key] = (name in denying, finding)
    out: dict[str, dict[str, int]] = {}
    for (name, *_conn), (denied, finding) in seen.items():
        row = out.setdefault(name, {"allowed": 0, "allowed_dropped": 0, "denied": 0,
                                    "denied_dropped": 0, "denied_delivered": 0})
        row["denied" if denied else "allowed"] += 1
        if denied and finding in ("enforced", "not-enforced"):
            row["denied_dropped" if finding == "enforced" else "denied_delivered"] += 1
        if not denied and finding == "dropped-otherwise":
            row["allowed_dropped"] += 1
    return dict(sorted(out.items()))


def print_summary(summary: dict, duration_s: float, out=sys.stdout) -> None:
    w = out.write
    w(f"\npodflow demo: what the agents saw in {duration_s:.0f} s\n")
    w("\nAgents (flow records held):\n")
    for node, n in summary["nodes"].items():
        w(f"  {node:<12} {n:>7,}\n")
    w("\nConnections per category:\n")
    for cat, n in summary["categories"].items() or [("(none)", 0)]:
        w(f"  {cat:<24} {n:>6,}\n")
    w("\nServices (connections, per backend):\n")
    if not summary["services"]:
        w("  (none resolved)\n")
    for name, s in summary["services"].items():
        w(f"  {name:<22} {s['type'] or '?':<10} {s['ip']}:{s['port']}  {s['connections']:>5,}\n")
        for be, info in sorted(s["backends"].items()):
            w(f"    └ {be:<34} on {info['node'] or '?':<8} {info['connections']:>5,}\n")
    w("\nDrops (packets):\n")
    if not summary["drops"]:
        w("  (none)\n")
    for d in summary["drops"]:
        w(f"  {d['source']} -> {d['destination']} {d['port']}  {d['reason']}  {d['packets']:,}\n")
    w("\nDNS (records):\n")
    if not summary["dns"]:
        w("  (none)\n")
    for d in summary["dns"]:
        w(f"  {d['query']:<40} {d['rcode']:<9} {d['records']:>5,}\n")
    w("\nNetworkPolicy verdicts (connections):\n")
    if not summary["policies"]:
        w("  (none)\n")
    for name, p in summary["policies"].items():
        line = f"  {name:<28} allowed {p['allowed']:>5,}"
        if p["allowed_dropped"]:
            line += f" (dropped otherwise {p['allowed_dropped']:,})"
        line += f"  denied {p['denied']:>5,}"
        if p["denied_dropped"]:
            line += f": dropped {p['denied_dropped']:,} (enforced)"
        if p["denied_delivered"]:
            line += (f": delivered {p['denied_delivered']:,} (NOT ENFORCED: the CNI lets "
                     "this policy's denied traffic through)")
        w(line + "\n")
    if summary["traffic"]:
        w("\nTraffic generators (their own count):\n")
        for kind, t in sorted(summary["traffic"].items()):
            w(f"  {kind:<8} ok {t['ok']:>6,}  failed {t['failed']:>6,}\n")
    out.flush()
