"""How `podflow tui` holds up under load: 20,000 flows/s from several agents for ~60 s.

Agents are real Observer servers (agent.observer.server over agent.flowstore) in subprocesses, each
fed synthetic cluster traffic at its share of the rate. The TUI is the real app, headless,
driven by Pilot in this process, with its engine in a child process as `podflow tui` runs
it. All of it shares this machine's cores with the agents. Reported:

  * key press latency: Pilot press -> the app's next screen update (App._display) after the
    key's action ran (median / p99 / max over view switches, pivot and sort changes), press
    -> action done, and for pivot/sort the time until the new rows are on screen (they are
    computed by the engine);
  * CPU of the UI process and of the engine process (stream readers, aggregator, view
    snapshots), as fractions of one core;
  * flows received per second and anything lost (agent client queues, TUI inbox);
  * RSS of both processes, sampled every `--sample-s` seconds: the samples themselves
    (thinned to ~40 for long runs), the peak, and the least-squares trend over the LAST
    half of the run only, after the warm-up in which the engine's 60-s rate windows, its
    flow ring and Python's own caches fill. "Flat over an hour" is answered by
    `--seconds 3600`: the trend over its last 30 minutes.

    .venv/bin/python -m bench.tui [--rate 20000] [--agents 3] [--seconds 60] [--engine process]
                                  [--sample-s 5] [--filter 'ns=shop !proto=udp']
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time

import psutil


def run_agent(node: str, listen: str, rate: float, ready_file: str) -> None:
    """Subprocess body: one agent serving synthetic flows at `rate` per second."""
    from agent.config import ObserverSection, StoreSection
    from agent.flowstore import FlowStore
    from agent.observer.server import ObserverServer
    from agent.stats import AgentStats
    from podflow_api.v1 import flow_pb2
    from tui.synthetic import Cluster

    stats = AgentStats(node_name=node, version="bench")
    store = FlowStore(StoreSection(capacity=65_535), stats)
    server = ObserverServer(ObserverSection(listen=listen), store, stats)
    server.start()
    pool = Cluster(["node-a", "node-b", "node-c"], seed=hash(node) & 0xFFFF).flows(
        4000, node=node)
    with open(ready_file, "w", encoding="utf-8") as fh:
        fh.write(server.address)
    tick_s = 0.05
    i = 0
    next_t = time.monotonic()
    carry = 0.0
    while True:
        carry += rate * tick_s
        n, carry = int(carry), carry - int(carry)
        now = time.time_ns()
        batch = []
        for k in range(n):
            f = flow_pb2.Flow()
            f.CopyFrom(pool[i % len(pool)])
            i += 1
            t = now - (n - k) * 1000
            f.time.seconds, f.time.nanos = divmod(t, 1_000_000_000)
            batch.append(f)
        store.extend(batch)
        next_t += tick_s
        delay = next_t - time.monotonic()
        if delay > 0:
            time.sleep(delay)


def _start_agents(count: int, rate: float, tmp: str) -> tuple[list, list[str]]:
    procs, addresses = [], []
    for n in range(count):
        node = f"node-{chr(ord('a') + n)}"
        ready = os.path.join(tmp, f"{node}.ready")
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "bench.tui", "--agent", node, f"unix:{tmp}/{node}.sock",
             str(rate / count), ready]))
        addresses.append(ready)
    deadline = time.monotonic() + 30
    out = []
    for ready in addresses:
        while not os.path.exists(ready) or not open(ready, encoding="utf-8").read():
            if time.monotonic() > deadline:
                raise RuntimeError("agents did not start")
            time.sleep(0.05)
        out.append(open(ready, encoding="utf-8").read())
    return procs, out


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


async def _drive(args, addresses: list[str]) -> dict:
    from tui.app import create_app

    app = create_app(servers=addresses, history=0, engine=args.engine,
                     initial_filter=args.filter)
    handled: list[float] = []
    for action in ("action_view", "action_pivot", "action_sort"):
        def timed_action(*a, _orig=getattr(app, action), **kw):
            _orig(*a, **kw)
            handled.append(time.perf_counter())
        setattr(app, action, timed_action)
    displays: list[float] = []
    original_display = app._display

    def timed_display(screen, renderable):
        original_display(screen, renderable)
        if renderable is not None:
            displays.append(time.perf_counter())

    app._display = timed_display
    ui = psutil.Process()
    latencies: list[float] = []
    handle_lat: list[float] = []
    data_lat: list[float] = []   # pivot/sort: until the Top table shows the new choice
    rss: list[tuple[float, int, int]] = []
    keys = [("2", "top"), ("p", "top"), ("3", "services"), ("4", "nodes"), ("1", "flows"),
            ("2", "top"), ("o", "top"), ("1", "flows")]
    async with app.run_test(size=(200, 50)) as pilot:
        engine = psutil.Process(app.engine.pid)
        warm_s = min(10.0, args.seconds / 4)
        await pilot.pause(warm_s)

        def cpu(p):
            t = p.cpu_times()
            return t.user + t.system

        def sample(elapsed):
            rss.append((elapsed, ui.memory_info().rss, engine.memory_info().rss
                        if engine is not ui else 0))
            if os.environ.get("PF_BENCH_DEBUG") and app.snapshot is not None:
                print(f"  t={elapsed:.0f}s backlog={app.snapshot.summary.backlog}", flush=True)

        t_start = time.monotonic()
        ui_cpu0 = cpu(ui)
        engine_cpu0 = cpu(engine) if engine is not ui else 0.0
        seen0 = app.snapshot.summary.flows_seen if app.snapshot else 0
        sample(0.0)
        i = 0
        while time.monotonic() - t_start < args.seconds:
            key, view = keys[i % len(keys)]
            i += 1
            t0 = time.perf_counter()
            n_handled, n_displays = len(handled), len(displays)
            press = asyncio.ensure_future(pilot.press(key))
            shown = None
            while time.perf_counter() - t0 < 10:
                if len(handled) > n_handled:
                    after = [d for d in displays[n_displays:] if d >= handled[n_handled]]
                    if after:
                        shown = after[0]
                        break
                await asyncio.sleep(0.001)
            if shown is None:
                raise RuntimeError(f"key {key!r}: no screen update within 10 s")
            handle_lat.append((handled[n_handled] - t0) * 1000)
            latencies.append((shown - t0) * 1000)
            if os.environ.get("PF_BENCH_DEBUG"):
                print(f"  key {key!r} -> {view}: action {handle_lat[-1]:.0f} ms, "
                      f"screen {latencies[-1]:.0f} ms", flush=True)
            if key in ("p", "o"):
                top = app.query_one("#top")
                while time.perf_counter() - t0 < 10:
                    snap = app.snapshot
                    if snap is not None and (snap.state.pivot, snap.state.sort) == (
                            top.pivot, top.sort) and "updating" not in str(
                            app.query_one("#top-header").content):
                        data_lat.append((time.perf_counter() - t0) * 1000)
                        break
                    await asyncio.sleep(0.001)
            await press
            assert app.current_view == view
            await pilot.pause(0.5)
            elapsed = time.monotonic() - t_start
            if elapsed - rss[-1][0] >= args.sample_s:
                sample(elapsed)
        wall = time.monotonic() - t_start
        ui_cpu = (cpu(ui) - ui_cpu0) / wall
        engine_cpu = (cpu(engine) - engine_cpu0) / wall if engine is not ui else 0.0
        snap = app.snapshot
        sample(wall)
    summary = snap.summary
    lost: dict[str, int] = {}
    for n in snap.nodes:
        for stage, count in n.lost.items():
            lost[stage] = lost.get(stage, 0) + count

    late = [p for p in rss if p[0] >= wall / 2]  # the last half: after warm-up

    def slope(col):
        """MB/min, least-squares line through the samples of the run's last half: RSS
        moves with the engine's backlog, so two end points alone would mostly measure
        noise, and the first minutes are the warm-up (windows, ring and caches filling)."""
        xs = [p[0] / 60 for p in late]
        ys = [p[col] / 1e6 for p in late]
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        var = sum((x - mx) ** 2 for x in xs) or 1e-9
        return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var

    return {
        "wall_s": wall, "keys": len(latencies),
        "lat_median_ms": statistics.median(latencies), "lat_p99_ms": _pct(latencies, 0.99),
        "lat_max_ms": max(latencies),
        "handled_median_ms": statistics.median(handle_lat),
        "handled_p99_ms": _pct(handle_lat, 0.99),
        "data_median_ms": statistics.median(data_lat) if data_lat else 0.0,
        "data_max_ms": max(data_lat) if data_lat else 0.0,
        "flows_per_s": (summary.flows_seen - seen0) / wall,
        "ui_cpu": ui_cpu, "engine_cpu": engine_cpu,
        "ui_rss": (rss[0][1] / 1e6, late[0][1] / 1e6, rss[-1][1] / 1e6,
                   max(p[1] for p in rss) / 1e6, slope(1)),
        "engine_rss": (rss[0][2] / 1e6, late[0][2] / 1e6, rss[-1][2] / 1e6,
                       max(p[2] for p in rss) / 1e6, slope(2)),
        "late_s": (round(late[0][0]), round(wall)),
        "lost": lost, "connected": f"{summary.connected}/{summary.known}",
        "rss_series": [(round(t), round(u / 1e6), round(e / 1e6)) for t, u, e in rss],
    }


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--agent":
        run_agent(sys.argv[2], sys.argv[3], float(sys.argv[4]), sys.argv[5])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=20_000, help="flows/s, all agents together")
    parser.add_argument("--agents", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--engine", choices=["process", "thread"], default="process",
                        help="where streams are read and aggregated (podflow tui: process)")
    parser.add_argument("--sample-s", type=float, default=5.0,
                        help="seconds between RSS samples")
    parser.add_argument("--filter", default="", metavar="EXPR",
                        help="a `/` filter in force for the whole run, e.g. 'ns=shop !proto=udp'")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pf-bench-tui-") as tmp:
        procs, addresses = _start_agents(args.agents, args.rate, tmp)
        try:
            r = asyncio.run(_drive(args, addresses))
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                p.wait(timeout=10)
    print(f"podflow tui under load: {args.rate:,.0f} flows/s offered by {args.agents} agent "
          f"subprocesses, {r['wall_s']:.0f} s measured after warm-up, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}")
    late_from, late_to = r["late_s"]

    def mem(name, v):
        first, late_start, end, peak, per_min = v
        return [(f"{name} RSS at {0} s / {late_from} s / end, peak",
                 f"{first:.0f} / {late_start:.0f} / {end:.0f} MB, peak {peak:.0f} MB"),
                (f"{name} RSS trend {late_from}-{late_to} s (least squares)",
                 f"{per_min:+.2f} MB/min = {per_min * 60:+.0f} MB/h")]
    rows = [
        ("engine", args.engine),
        ("filter", args.filter or "(none)"),
        ("flows received /s", f"{r['flows_per_s']:,.0f}"),
        ("nodes connected", r["connected"]),
        ("lost events (by stage)", ", ".join(f"{k}={v:,}" for k, v in r["lost"].items()) or "0"),
        ("key presses measured", str(r["keys"])),
        ("key -> screen update median", f"{r['lat_median_ms']:.1f} ms"),
        ("key -> screen update p99", f"{r['lat_p99_ms']:.1f} ms"),
        ("key -> screen update max", f"{r['lat_max_ms']:.1f} ms"),
        ("key -> action done median", f"{r['handled_median_ms']:.1f} ms"),
        ("key -> action done p99", f"{r['handled_p99_ms']:.1f} ms"),
        ("pivot/sort -> new rows median/max", f"{r['data_median_ms']:.0f} / {r['data_max_ms']:.0f} ms"),
        ("UI process CPU", f"{r['ui_cpu'] * 100:.0f}% of a core"),
        ("engine process CPU (readers, aggregator, snapshots)",
         f"{r['engine_cpu'] * 100:.0f}% of a core" if args.engine == "process" else "(in UI process)"),
        *mem("UI", r["ui_rss"]),
        *(mem("engine", r["engine_rss"]) if args.engine == "process" else []),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"  {k:<{width}}  {v}")
    series = r["rss_series"]
    step = max(1, len(series) // 40)
    shown = series[::step] + ([series[-1]] if (len(series) - 1) % step else [])
    print(f"  RSS samples every {args.sample_s:g} s{f' (every {step}th shown)' if step > 1 else ''}"
          " (s:UI MB/engine MB): " + " ".join(f"{t}:{u}/{e}" for t, u, e in shown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
