"""Observer API throughput and the agent's memory with a full store.

A server process (the agent's FlowStore + ObserverServer, pinned to one core) holds 65,535
enriched-looking flows; client processes (on the other core) read them:
  1. history of the full store by GetFlowsBatched, to one client and to four at once, and
     with filters as `observe --namespace shop --from-port 40000-44999 --not --protocol udp`
     sends them (the server runs the FlowFilter engine on every stored flow; a quarter pass);
  2. the same history by plain GetFlows (one flow per message), to one client, for contrast;
  3. the same history through the agent's Hubble API (agent/observer/hubble: Hubble's GetFlows,
     one flow per message, each record mapped to a Hubble flow), to one client, side by side
     with 2 (the ratio is printed: the target is at least 80%);
  4. follow: the server's store is fed at a fixed rate while one / four clients follow.
For each it prints flows delivered per second (summed over clients), flows the clients were
told they lost, and the server's CPU seconds. Then the server's RSS empty and full, and what
FlowStore.extend() costs the datapath's thread per flow.

    .venv/bin/python -m bench.observer [--rate 50000] [--seconds 4]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time


STORE = 65535
HISTORY_UNBATCHED = 10_000  # flows read one per message (podflow's GetFlows, Hubble's)
ROUNDS = 5                  # alternate rounds of the two one-flow-per-message APIs


def _pin(cpu: int) -> None:
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) > 1:
        os.sched_setaffinity(0, {cpus[cpu % len(cpus)]})


def _rss_mib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


# -- server process -----------------------------------------------------------------------------

def serve(listen: str) -> None:
    """Commands on stdin, one JSON answer per line on stdout."""
    _pin(0)
    from tests.observer.observer_flows import make_flow

    from agent.config import ObserverSection, StoreSection
    from agent.flowstore import FlowStore
    from agent.observer.hubble.server import HubbleServer
    from agent.observer.server import ObserverServer
    from agent.stats import AgentStats

    rss_empty = _rss_mib()
    stats = AgentStats(node_name="node-a", version="bench")
    store = FlowStore(StoreSection(capacity=STORE), stats)
    server = ObserverServer(ObserverSection(listen=listen), store, stats)
    server.start()
    hubble = HubbleServer(listen.replace(".sock", ".hubble.sock"), store, stats)
    hubble.start()
    for first in range(0, STORE, 1000):  # as a datapath would: batches, over time
        store.extend([make_flow(i) for i in range(first, min(STORE, first + 1000))])
    print(json.dumps({"address": server.address, "hubble_address": hubble.address,
                      "rss_empty_mib": rss_empty,
                      "rss_full_mib": _rss_mib(), "flow_bytes": store.history(number=1)[0].ByteSize()}),
          flush=True)
    batch = [make_flow(i) for i in range(1000)]
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["op"] == "cpu":
            t = os.times()
            print(json.dumps({"cpu_s": t.user + t.system, "rss_mib": _rss_mib()}), flush=True)
        elif cmd["op"] == "feed":
            # Feed `rate` flows/s for `seconds`, in batches of 1000 as a datapath would.
            rate, seconds = cmd["rate"], cmd["seconds"]
            start = time.monotonic()
            fed = 0
            while time.monotonic() - start < seconds:
                due = int((time.monotonic() - start) * rate)
                if fed < due:
                    store.extend(batch)
                    fed += len(batch)
                else:
                    time.sleep(0.002)
            print(json.dumps({"fed": fed}), flush=True)
        elif cmd["op"] == "extend_cost":
            # extend() runs on the datapath's reader thread: its cost per flow (best of 5).
            best = min(_timed(store.extend, batch) for _ in range(5))
            print(json.dumps({"us_per_flow": best / len(batch) * 1e6}), flush=True)
        elif cmd["op"] == "subscribers":
            print(json.dumps({"n": store.num_subscribers}), flush=True)
        elif cmd["op"] == "quit":
            break
    hubble.stop()
    server.stop()


def _timed(fn, arg) -> float:
    t = time.perf_counter()
    fn(arg)
    return time.perf_counter() - t


# -- client process -----------------------------------------------------------------------------

def read(address: str, mode: str, seconds: float) -> None:
    _pin(1)
    import grpc

    from agent.client import channel as client
    from podflow_api.v1 import observer_pb2, observer_pb2_grpc

    channel = client.open_channel(address)
    stub = observer_pb2_grpc.ObserverStub(channel)
    flows = lost = 0
    start = time.perf_counter()
    if mode == "history":
        for batch in stub.GetFlowsBatched(observer_pb2.GetFlowsRequest()):
            flows += len(batch.responses)
    elif mode == "history-filtered":
        ff = observer_pb2.FlowFilter
        req = observer_pb2.GetFlowsRequest(
            allowlist=[ff(source_namespace=["shop"], source_port=["40000-44999"]),
                       ff(destination_namespace=["shop"], source_port=["40000-44999"])],
            denylist=[ff(protocol=["udp"])])
        for batch in stub.GetFlowsBatched(req):
            flows += len(batch.responses)
    elif mode == "history-unbatched":
        for _resp in stub.GetFlows(observer_pb2.GetFlowsRequest(number=HISTORY_UNBATCHED)):
            flows += 1
    elif mode == "history-hubble":
        from podflow_hubble.observer import observer_pb2 as hubble_pb2
        from podflow_hubble.observer import observer_pb2_grpc as hubble_grpc

        hubble = hubble_grpc.ObserverStub(channel)
        for resp in hubble.GetFlows(hubble_pb2.GetFlowsRequest(number=HISTORY_UNBATCHED)):
            if resp.HasField("flow"):
                flows += 1
    else:
        call = stub.GetFlowsBatched(observer_pb2.GetFlowsRequest(follow=True))
        timer = threading.Timer(seconds, call.cancel)
        timer.start()
        first = None
        try:
            for batch in call:
                for r in batch.responses:
                    if r.HasField("flow"):
                        flows += 1
                        if first is None:
                            first = time.perf_counter()
                    elif r.HasField("lost_events"):
                        lost += r.lost_events.num_events_lost
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                raise
        timer.cancel()
    elapsed = time.perf_counter() - start
    print(json.dumps({"flows": flows, "lost": lost, "seconds": elapsed}), flush=True)


# -- driver ---------------------------------------------------------------------------------------

class Server:
    def __init__(self, listen: str):
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.observer", "--serve", listen],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.info = json.loads(self.proc.stdout.readline())

    def ask(self, **cmd) -> dict:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        try:
            self.proc.stdin.write('{"op": "quit"}\n')
            self.proc.stdin.close()
        except BrokenPipeError:
            pass
        self.proc.wait(timeout=30)


def clients(address: str, mode: str, n: int, seconds: float = 0.0) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-m", "bench.observer", "--read", address, mode,
                              str(seconds)], stdout=subprocess.PIPE, text=True)
            for _ in range(n)]


def collect(procs) -> list[dict]:
    out = []
    for p in procs:
        stdout, _ = p.communicate(timeout=120)
        out.append(json.loads(stdout))
    return out


def measure(srv: Server, address: str, mode: str, n: int) -> tuple[list[dict], float, float]:
    """n clients reading in `mode`: their results, the server's CPU seconds, the wall time
    (the slowest client's own, without process start-up)."""
    cpu0 = srv.ask(op="cpu")["cpu_s"]
    results = collect(clients(address, mode, n))
    return results, srv.ask(op="cpu")["cpu_s"] - cpu0, max(r["seconds"] for r in results)


def row(name: str, n: int, results: list[dict], cpu_s: float, wall_s: float) -> str:
    flows = sum(r["flows"] for r in results)
    lost = sum(r["lost"] for r in results)
    return (f"| {name:<26} | {n:>7} | {flows:>9,} | {flows / wall_s:>12,.0f} | {lost:>9,} "
            f"| {cpu_s:>10.2f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=int, default=50_000, help="follow: flows/s fed to the store")
    ap.add_argument("--seconds", type=float, default=4.0, help="follow: duration")
    ap.add_argument("--serve", metavar="LISTEN", help=argparse.SUPPRESS)
    ap.add_argument("--read", nargs=3, metavar=("ADDR", "MODE", "SECONDS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args.serve)
        return
    if args.read:
        read(args.read[0], args.read[1], float(args.read[2]))
        return

    with tempfile.TemporaryDirectory(prefix="pf-bench-obs-") as d:
        srv = Server(f"unix:{os.path.join(d, 'agent.sock')}")
        addr = srv.info["address"]
        hubble_addr = srv.info["hubble_address"]
        print(f"store: {STORE:,} flows of {srv.info['flow_bytes']} B (protobuf); server pinned "
              f"to one core, clients to the other ({os.cpu_count()} cores)")
        print("| run                        | clients |     flows | flows/s (sum) |      lost "
              "| server CPU s |")
        print("|----------------------------|---------|-----------|---------------|-----------"
              "|--------------|")
        for name, mode, n in (("history, batched", "history", 1),
                              ("history, batched", "history", 4),
                              ("history, filtered", "history-filtered", 1)):
            print(row(name, n, *measure(srv, addr, mode, n)))
        # podflow's GetFlows and Hubble's, one flow per message each, alternately (the machine
        # is shared: rounds side by side, medians compared).
        rates: dict[str, list[float]] = {"history-unbatched": [], "history-hubble": []}
        for round_no in range(ROUNDS):
            for name, mode, target in (("history, 1 flow/message", "history-unbatched", addr),
                                       ("Hubble GetFlows", "history-hubble", hubble_addr)):
                results, cpu_s, wall = measure(srv, target, mode, 1)
                rates[mode].append(sum(r["flows"] for r in results) / wall)
                print(row(f"{name} #{round_no + 1}", 1, results, cpu_s, wall))
        for n in (1, 4):
            procs = clients(addr, "follow", n, args.seconds + 1.0)
            deadline = time.monotonic() + 20
            while srv.ask(op="subscribers")["n"] < n and time.monotonic() < deadline:
                time.sleep(0.05)
            cpu0 = srv.ask(op="cpu")["cpu_s"]
            fed = srv.ask(op="feed", rate=args.rate, seconds=args.seconds)["fed"]
            cpu1 = srv.ask(op="cpu")["cpu_s"]
            results = collect(procs)
            print(row(f"follow, fed {fed / args.seconds:,.0f}/s", n, results, cpu1 - cpu0,
                      args.seconds))
        extend_us = srv.ask(op="extend_cost")["us_per_flow"]
        mem = srv.ask(op="cpu")
        srv.close()
    print(f"\nserver RSS: {srv.info['rss_empty_mib']:.0f} MiB before the store, "
          f"{srv.info['rss_full_mib']:.0f} MiB with {STORE:,} flows held, "
          f"{mem['rss_mib']:.0f} MiB after the runs")
    print(f"FlowStore.extend(): {extend_us:.1f} us per flow (batches of 1000, on the "
          "datapath's thread)")
    podflow_rate = statistics.median(rates["history-unbatched"])
    hubble_rate = statistics.median(rates["history-hubble"])
    first = rates["history-hubble"][0] / rates["history-unbatched"][0]
    print(f"one client, one flow per message, median of {ROUNDS} rounds: podflow GetFlows "
          f"{podflow_rate:,.0f} flows/s, Hubble GetFlows {hubble_rate:,.0f} flows/s: "
          f"{hubble_rate / podflow_rate:.0%} (target: at least 80%); the first round, "
          f"before the mapper's caches knew any of these flows: {first:.0%}")


if __name__ == "__main__":
    main()
