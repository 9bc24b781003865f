"""`podflow demo`: a small Kubernetes-shaped cluster on this machine, with podflow on it.

A newcomer sees podflow work in one command, without a cluster: the lab (agent/lab/)
builds the nodes, pods, Services, DNS and NetworkPolicies (one enforced, one not) out of
network namespaces (agent/demo/cluster.py); one real agent runs inside each node's namespace;
steady traffic of every kind flows (agent/demo/traffic.py); and the TUI opens on all agents.
Headless (`--no-tui`), it prints what the agents saw instead (agent/demo/summary.py), for
scripts and CI. Everything it made is removed when it ends, on Ctrl-C, or by
`podflow demo --down` after a crash. This module is the command: flags, checks, the run and
its cleanup.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time

from agent.demo.cluster import Cluster, build_cluster, start_agents
from agent.demo.summary import print_summary, read_flows, summarize
from agent.demo.traffic import start_traffic, stop_traffic
from agent.errors import LabBusyError, LabError, PodflowError
from agent.lab import Lab, missing_tools

DEFAULT_LAB_ID = "demo"
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


class _Interrupted(Exception):
    """SIGTERM / SIGHUP: end the demo the same way Ctrl-C does."""


def _preflight(args) -> str | None:
    """A clear message when the demo cannot run here, else None."""
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
            say(f"agent {agent.node.name}: {agent.address}, Hubble API "
                f"{agent.ready.get('hubble_listen', 'off')}, flow log "
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
    except PodflowError as exc:  # LabError among them
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
    cmd = [sys.executable, "-m", "agent.cli", "tui", "--ctrl-c-quits", "--metadata",
           c.metadata_file]
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
