"""`podflow demo`: a small Kubernetes-shaped cluster on this machine, with podflow on it.

A newcomer sees podflow work in one command, without a cluster: the lab (agent/lab/)
builds the nodes, pods, Services, DNS and a NetworkPolicy-like drop out of network
namespaces; one real agent runs inside each node's namespace; steady traffic of every kind
flows; and the TUI opens on all agents. Headless (`--no-tui`), it prints what the agents saw
instead, for scripts and CI. Everything it made is removed when it ends, on Ctrl-C, or by
`podflow demo --down` after a crash.
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

from agent.errors import PodflowError
from agent.lab import POD_TRAFFIC_SCRIPT as TRAFFIC_SCRIPT

DEFAULT_LAB_ID = "demo"
CART_IP, STOREFRONT_IP, DNS_IP = "10.96.0.20", "10.96.0.30", "10.96.0.10"
NODE_PORT = 30080
APP_PORT, DB_PORT, WORLD_PORT = 8080, 5432, 443
REQUIRED_TOOLS = ("ip", "iptables", "iptables-restore", "sysctl", "ss", "ping", "dnsmasq")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-tui", action="store_true",
                        help="run headless for --duration seconds and print a summary of what "
                             "the agents saw (for scripts and CI)")
    parser.add_argument("--duration", type=float, default=None, metavar="SECONDS",
                        help="stop after SECONDS (default: 30 with --no-tui; with the TUI, "
                             "until you quit it)")
    parser.add_argument("--nodes", type=int, default=2, metavar="N",
                        help="nodes to build, alternately bridge (Flannel-like) and routed "
                             "(Calico-like) (default 2)")
    parser.add_argument("--pods-per-node", type=int, default=0, metavar="N",
                        help="extra load-generator pods per node calling the cart Service "
                             "and DNS, to scale the traffic up (default 0)")
    parser.add_argument("--down", action="store_true",
                        help="remove everything a crashed or still running demo left "
                             "(namespaces, links, rules, processes, files) and exit")
    parser.add_argument("--flow-log-dir", metavar="DIR",
                        help="keep each agent's flow log here (<node>.jsonl); by default they "
                             "live in the demo's run directory and are removed at the end")
    parser.add_argument("--summary-json", metavar="PATH",
                        help="also write the headless summary as JSON to PATH")
    parser.add_argument("--lab-id", default=DEFAULT_LAB_ID, help=argparse.SUPPRESS)


# ----------------------------------------------------------------------------- the cluster

@dataclass
class Cluster:
    """What the demo built, by role, so traffic, the summary and the tests agree."""

    lab: object
    pods: dict[str, object] = field(default_factory=dict)         # role -> Pod
    carts: list = field(default_factory=list)                     # cart Service backends
    load_pods: list = field(default_factory=list)
    services: dict[str, object] = field(default_factory=dict)
    outside: object = None
    world: object = None
    agents: list = field(default_factory=list)
    flow_logs: dict[str, str] = field(default_factory=dict)
    traffic: list = field(default_factory=list)                   # (name, Popen)


def _pod_name(deployment: str, n: int) -> str:
    from agent.lab import replicaset_name

    alphabet = "bcdfghjklmnpqrstvwxz2456789"
    seed = sum(ord(c) for c in deployment) * 31 + n * 7919
    suffix = "".join(alphabet[(seed // (27 ** i)) % 27] for i in range(5))
    return f"{replicaset_name(deployment)}-{suffix}"


def build_cluster(lab, nodes: int, pods_per_node: int) -> Cluster:
    """Nodes, namespaces, Deployments' pods, the Services, DNS, the outside world, the drop."""
    c = Cluster(lab=lab)
    names = [f"node-{chr(ord('a') + i)}" if i < 26 else f"node-{i}" for i in range(nodes)]
    node_objs = [lab.add_node(name, kind="bridge" if i % 2 == 0 else "routed",
                              pod_cidr=f"10.244.{i + 1}.0/24") for i, name in enumerate(names)]
    a, b = node_objs[0], node_objs[1 % nodes]

    def pod(role, node, ns, deploy, labels, n=0, kind="Deployment"):
        name = _pod_name(deploy, n) if kind == "Deployment" else (
            f"{deploy}-{n}" if kind == "StatefulSet" else f"{deploy}-{_pod_name(deploy, n)[-5:]}")
        p = node.add_pod(ns, name, labels={**labels}, owner=(kind, deploy))
        c.pods[role] = p
        return p

    lab.add_dns_server(node=a, cluster_ip=DNS_IP, pod_name=_pod_name("coredns", 0))
    c.pods["dns"] = lab.dns.pod
    frontend = pod("frontend", a, "shop", "frontend", {"app": "frontend", "tier": "web"})
    pod("checkout", b, "shop", "checkout", {"app": "checkout", "tier": "backend"})
    for i, node in enumerate(node_objs):
        cart = pod(f"cart-{i}", node, "shop", "cart", {"app": "cart", "tier": "backend"}, n=i)
        c.carts.append(cart)
    storefront = pod("storefront", b, "web", "storefront", {"app": "storefront"})
    db = pod("db", b, "data", "db", {"app": "db"}, kind="StatefulSet")
    pod("reporter", a, "batch", "reporter", {"app": "reporter", "job-name": "reporter"},
        kind="Job")
    pod("prober", b, "monitoring", "prober", {"app": "prober"}, kind="DaemonSet")
    for node in node_objs:
        for j in range(pods_per_node):
            p = node.add_pod("load", _pod_name(f"loadgen-{node.name}", j),
                             labels={"app": "loadgen"}, owner=("Deployment", "loadgen"))
            c.load_pods.append(p)

    for p in c.carts + [storefront]:
        p.serve(APP_PORT)
    db.serve(DB_PORT)
    c.services["cart"] = lab.add_service("shop", "cart", cluster_ip=CART_IP, port=80,
                                         backends=[(p, APP_PORT) for p in c.carts],
                                         port_name="http")
    c.services["storefront"] = lab.add_service("web", "storefront", cluster_ip=STOREFRONT_IP,
                                               port=80, backends=[(storefront, APP_PORT)],
                                               node_port=NODE_PORT, port_name="http")
    c.services["db"] = lab.add_service("data", "db", headless=True, port=DB_PORT,
                                       backends=[(db, DB_PORT)], port_name="postgres")
    c.services["dns"] = lab.dns.service
    c.outside = lab.add_outside_host("laptop")
    c.world = lab.add_outside_host("internet")
    c.world.serve(WORLD_PORT, name="internet")
    # NetworkPolicy-like: the frontend may not talk to the database.
    lab.add_drop_rule(frontend, db, port=DB_PORT)
    return c


def _traffic_plan(c: Cluster) -> list[tuple[object, list[dict]]]:
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
    for who, tasks in _traffic_plan(c):
        proc = who.popen([sys.executable, "-I", "-S", TRAFFIC_SCRIPT, json.dumps(tasks)],
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


def start_agents(c: Cluster, run_dir: str, flow_log_dir: str | None) -> None:
    """One agent per node, in parallel (each compiles its eBPF programs)."""
    from agent.lab import LabError

    meta = c.lab.write_metadata(os.path.join(run_dir, "metadata.json"))
    log_dir = flow_log_dir or run_dir
    errors: list[LabError] = []

    def start(node):
        path = os.path.join(log_dir, f"{node.name}.jsonl")
        c.flow_logs[node.name] = path
        try:
            c.agents.append(node.start_agent("--flow-log", path, "--drop-cidr",
                                             str(c.lab.cluster_cidr), metadata_file=meta,
                                             timeout_s=180))
        except LabError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(n,)) for n in c.lab.nodes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    c.agents.sort(key=lambda a: a.node.name)


# ----------------------------------------------------------------------------- summary

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
    return {
        "nodes": per_node,
        "categories": {k: len(v) for k, v in sorted(categories.items())},
        "services": dict(sorted(services.items())),
        "drops": [{"source": k[0], "destination": k[1], "port": k[2], "reason": k[3],
                   "packets": n} for k, n in sorted(drops.items())],
        "dns": [{"query": q, "rcode": r, "records": n} for (q, r), n in sorted(dns.items())],
        "expected": {
            "cart_backends": sorted(f"{p.namespace}/{p.name}" for p in c.carts),
            "storefront_backends": [f"web/{c.pods['storefront'].name}"],
            "blocked": [f"shop/{c.pods['frontend'].name}", f"data/{c.pods['db'].name}"],
        },
        "traffic": traffic or {},
    }


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
    if summary["traffic"]:
        w("\nTraffic generators (their own count):\n")
        for kind, t in sorted(summary["traffic"].items()):
            w(f"  {kind:<8} ok {t['ok']:>6,}  failed {t['failed']:>6,}\n")
    out.flush()


# ----------------------------------------------------------------------------- run

class _Interrupted(Exception):
    """SIGTERM / SIGHUP: end the demo the same way Ctrl-C does."""


def _preflight(args) -> str | None:
    """A clear message when the demo cannot run here, else None."""
    from agent.lab import missing_tools

    if os.geteuid() != 0:
        return ("needs root: it creates network namespaces, veths and iptables rules and loads "
                "eBPF programs. Run it with sudo (e.g. `sudo .venv/bin/podflow demo`).")
    missing = missing_tools(REQUIRED_TOOLS)
    if missing:
        return ("missing tools: " + ", ".join(missing) +
                ". Install them with apt-get (or run `make demo`, which does).")
    if args.nodes < 1 or args.nodes > 200:
        return f"--nodes must be between 1 and 200, got {args.nodes}"
    if args.pods_per_node < 0 or args.pods_per_node > 200:
        return f"--pods-per-node must be between 0 and 200, got {args.pods_per_node}"
    if args.duration is not None and args.duration <= 0:
        return f"--duration must be > 0, got {args.duration}"
    if args.no_tui is False and not sys.stdout.isatty():
        return "the TUI needs a terminal; use --no-tui for a headless run"
    if args.no_tui is False and importlib.util.find_spec("textual") is None:
        return "the TUI is not installed (Textual); use --no-tui"
    return None


def down(lab_id: str) -> int:
    from agent.lab import Lab

    removed = Lab.cleanup_leftovers(lab_id, force=True)
    if removed:
        print(f"podflow demo: removed the demo's namespaces, links, rules, processes and files "
              f"({', '.join(removed)})")
    else:
        print("podflow demo: nothing to remove")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.down:
        if os.geteuid() != 0:
            print("podflow demo: --down needs root", file=sys.stderr)
            return 2
        return down(args.lab_id)
    problem = _preflight(args)
    if problem:
        print(f"podflow demo: {problem}", file=sys.stderr)
        return 2
    from agent.lab import Lab, LabBusyError, LabError

    leftovers = Lab.leftovers(args.lab_id)
    if leftovers:
        print("podflow demo: a previous demo did not end cleanly (namespaces "
              f"{', '.join(sum(leftovers.values(), [])) or 'none'}); removing its leftovers "
              "(`podflow demo --down` does the same)", file=sys.stderr)
    if args.flow_log_dir:
        os.makedirs(args.flow_log_dir, exist_ok=True)

    def on_signal(signum, _frame):
        raise _Interrupted(signal.Signals(signum).name)

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGHUP)}
    lab = None
    started = time.monotonic()
    try:
        try:
            lab = Lab(args.lab_id)
        except LabBusyError as exc:
            print(f"podflow demo: another demo is running (process {exc.owner_pid}); stop it "
                  "first, or remove it with `podflow demo --down`", file=sys.stderr)
            return 2
        say = (lambda msg: print(f"podflow demo: {msg}", file=sys.stderr))
        say(f"building {args.nodes} node(s) from network namespaces ...")
        c = build_cluster(lab, args.nodes, args.pods_per_node)
        say(f"{len(lab.pods)} pods, {len(lab.services)} Services; starting one agent per node ...")
        try:
            start_agents(c, lab.run_dir, args.flow_log_dir)
        except LabError as exc:
            say(f"an agent could not start, so the demo cannot run here:\n{exc}\n"
                "podflow needs eBPF (Linux with BTF, root or CAP_BPF + CAP_NET_ADMIN + "
                "CAP_PERFMON) and kernel headers for bcc; `make demo` installs what is missing.")
            return 1
        start_traffic(c)
        for agent in c.agents:
            say(f"agent {agent.node.name}: {agent.address}, flow log "
                f"{c.flow_logs[agent.node.name]}")
        if args.no_tui:
            return _headless(c, args.duration or 30.0, args.summary_json, say)
        return _with_tui(c, args.duration)
    except KeyboardInterrupt:
        _say_safely("\npodflow demo: interrupted")
        return 130
    except _Interrupted as exc:
        _say_safely(f"podflow demo: {exc}: stopping")
        return 143
    except (LabError, PodflowError) as exc:
        _say_safely(f"podflow demo: {exc}")
        return 1
    finally:
        # Ctrl-C during cleanup must not leave half a cluster behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        for s, h in old.items():
            signal.signal(s, signal.SIG_IGN)
        if lab is not None:
            lab.cleanup()
            _say_safely(f"podflow demo: cleaned up after {time.monotonic() - started:.0f} s "
                        "(namespaces, links, rules, processes, files)")
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for s, h in old.items():
            signal.signal(s, h)


def _say_safely(message: str) -> None:
    """Print to stderr unless the terminal is gone (closed window): cleanup must go on."""
    try:
        print(message, file=sys.stderr, flush=True)
    except OSError:
        pass


def _headless(c: Cluster, duration_s: float, summary_json: str | None, say) -> int:
    say(f"traffic running; collecting for {duration_s:.0f} s ...")
    deadline = time.monotonic() + duration_s
    while time.monotonic() < deadline:
        time.sleep(min(1.0, deadline - time.monotonic()))
        dead = [a for a in c.agents if a.process.poll() is not None]
        if dead:
            say(f"agent on {dead[0].node.name} exited ({dead[0].process.returncode}):\n"
                f"{dead[0].stderr_text()[-2000:]}")
            return 1
    traffic = stop_traffic(c)
    time.sleep(1.5)  # one more sweep so the last records reach the stores
    flows_by_node = {a.node.name: read_flows(a.address) for a in c.agents}
    summary = summarize(c, flows_by_node, traffic)
    print_summary(summary, duration_s)
    if summary_json:
        with open(summary_json, "w", encoding="utf-8") as fh:
            json.dump(summary, fh, indent=1)
    return 0


def _with_tui(c: Cluster, duration_s: float | None) -> int:
    """`podflow tui` on every agent, in a child process: if the terminal goes away (SIGHUP) or
    the TUI hangs, this process still ends it and cleans up. Ctrl-C quits it (a plain
    `podflow tui` asks for ctrl+q), so quitting the demo works the way a newcomer expects."""
    cmd = [sys.executable, "-m", "agent.cli", "tui", "--ctrl-c-quits"]
    for agent in c.agents:
        cmd += ["--server", agent.address]
    tui = subprocess.Popen(cmd)
    try:
        tui.wait(timeout=duration_s)
    except subprocess.TimeoutExpired:
        pass
    finally:
        if tui.poll() is None:
            tui.terminate()
            try:
                tui.wait(5)
            except subprocess.TimeoutExpired:
                tui.kill()
                tui.wait()
        if tui.returncode != 0:
            _restore_terminal()
    stop_traffic(c)
    return 0 if tui.returncode in (0, -signal.SIGTERM) else tui.returncode


def _restore_terminal() -> None:
    """A TUI that was stopped by a signal cannot restore the terminal itself: leave the
    alternate screen, show the cursor, undo raw mode and mouse reporting."""
    if not sys.stdout.isatty():
        return
    try:
        sys.stdout.write("\x1b[?1000l\x1b[?1003l\x1b[?1006l\x1b[?1049l\x1b[?25h\n")
        sys.stdout.flush()
        subprocess.run(["stty", "sane"], stdin=sys.stdin, check=False, timeout=5)
    except (OSError, subprocess.SubprocessError):
        pass  # the terminal is gone
