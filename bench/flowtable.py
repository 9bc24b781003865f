"""What the flow table (agent/datapath/flowtable.py) costs the reader thread under new-flow
churn: CPU-ms per simulated second and CPU-us per new flow, no kernel and no root.

It replays the reader's calls (agent/datapath/reader.py) on a simulated clock, as bench.churn
drives the real agent: one UDP packet per new 5-tuple at a steady rate, each packet seen at
two observation points (the client's veth ingress and the server's veth egress), so two rows
per flow, and no reply. The kernel side is simulated with plain arrays built like the real
ones (keys (n, 44) uint8 per abi.FlowKey, values bpfsys.VALUE_DTYPE):
  - every poll (min(0.1 s, the sweep interval)) the new-flow events of the ring are
    announced: at most --new-flow-events per second and CPU (the kernel's budget, spent per
    100 ms window; flows alternate over --cpus CPUs), the rest only come with the drain;
  - every sweep interval the half of the flow map written before the previous flip is
    ingested (rows past --flow-map-size are lost, as in the kernel), the halves flip and the
    table steps; the interval follows the churn as FlowReader._follow_churn does;
  - defaults are the agent's: active and idle timeout 5 s, sweep 1 s, 65,536 entries a
    half, --max-flows 262,144.
Only the table's calls are timed (time.process_time around announce, ingest and step); the
first --warmup seconds fill the table to its steady size and are not counted.

    .venv/bin/python -m bench.flowtable [--rates 2000,10000,50000] [--seconds 20]
                                        [--compare main] [--rounds 3]

--compare REV also runs the flow table of git revision REV (`git show REV:agent/datapath/
flowtable.py`, loaded as its own module) on the same calls, round by round in turns, and
checks that both return the same records in the same order.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from agent.config import DatapathSection
from agent.datapath import abi, bpfsys
from agent.datapath import flowtable as current
from agent.datapath.reader import EMPTIER, FLIP_MARGIN_NS, FULLER, MIN_INTERVAL_SHARE

S = 1_000_000_000
EVENT_WINDOW_S = 0.1        # the kernel's new-flow event budget is spent per window
START_NS = 1_000 * S        # ktime at the start: values as large as a running node's
PORTS = 64                  # destination ports of the churn (bench/churn_traffic.py)
POINTS = ((3, abi.PF_DIR_INGRESS), (5, abi.PF_DIR_EGRESS))  # (ifindex, direction) per row


def churn_keys(first: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Keys of flows first..first+n (both observation points, flow-major) and the flow index
    of each row. Flow i: 10.0.x.y -> 10.1.0.2 UDP, source port 1024 + i // PORTS,
    destination port 5000 + i % PORTS, a new source address every 64,512 x PORTS flows."""
    i = np.arange(first, first + n, dtype=np.int64)
    one = np.zeros((n, abi.KEY_SIZE), np.uint8)
    one[:, 5] = 4
    one[:, 6] = abi.IPPROTO_UDP
    block = i // (64_512 * PORTS)
    one[:, 8], one[:, 9], one[:, 10], one[:, 11] = 10, 0, block // 250, block % 250 + 2
    one[:, 24], one[:, 25], one[:, 26], one[:, 27] = 10, 1, 0, 2
    one[:, 40:42] = ((1024 + (i // PORTS) % 64_512).astype("<u2")).view(np.uint8).reshape(n, 2)
    one[:, 42:44] = ((5000 + i % PORTS).astype("<u2")).view(np.uint8).reshape(n, 2)
    keys = np.repeat(one, len(POINTS), axis=0)
    for p, (ifindex, direction) in enumerate(POINTS):
        keys[p::len(POINTS), 0:4] = np.frombuffer(ifindex.to_bytes(4, "little"), np.uint8)
        keys[p::len(POINTS), 4] = direction
    return keys, np.repeat(i, len(POINTS))


class Kernel:
    """The programs' side: the two halves of the flow map and the ring's new-flow events."""

    def __init__(self, rate: int, cpus: int, events_per_s: int, half_entries: int):
        self.rate, self.cpus, self.half_entries = rate, cpus, half_entries
        self.per_window = max(1, round(events_per_s * EVENT_WINDOW_S)) if events_per_s else 0
        self.active: list[tuple[np.ndarray, np.ndarray]] = []
        self.inactive: list[tuple[np.ndarray, np.ndarray]] = []
        self.active_rows = 0
        self.events: list[tuple[np.ndarray, np.ndarray]] = []
        self.flows = 0
        self.lost = 0

    def run_until(self, t_s: float) -> None:
        """The packets of every flow due by t_s (one per flow, at each point)."""
        upto = int(t_s * self.rate)
        n = upto - self.flows
        if n <= 0:
            return
        keys, flow = churn_keys(self.flows, n)
        ts = (START_NS + flow * S // self.rate).astype(np.uint64)
        self.flows = upto
        room = max(0, self.half_entries - self.active_rows)
        if len(keys) > room:  # the half is full: the kernel counts the rest as lost
            self.lost += len(keys) - room
            keys, flow, ts = keys[:room], flow[:room], ts[:room]
        if not len(keys):
            return
        values = np.zeros(len(keys), bpfsys.VALUE_DTYPE)
        values["packets"], values["bytes"] = 1, 60
        values["first_seen_ns"] = values["last_seen_ns"] = ts
        self.active.append((keys, values))
        self.active_rows += len(keys)
        if self.per_window:
            # Each CPU's budget of this window goes to its first new entries.
            cpu = flow % self.cpus
            rank = np.zeros(len(flow), np.int64)
            for c in range(self.cpus):
                mine = np.flatnonzero(cpu == c)
                rank[mine] = np.arange(len(mine))
            sent = rank < self.per_window
            self.events.append((keys[sent], ts[sent]))

    def take_events(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        parts, self.events = self.events, []
        if not parts:
            z = np.zeros(0, np.uint32)
            return np.zeros((0, abi.KEY_SIZE), np.uint8), z, z.astype(np.uint64), z
        keys = np.concatenate([p[0] for p in parts])
        ts = np.concatenate([p[1] for p in parts])
        return keys, np.full(len(keys), 60, np.uint32), ts, np.zeros(len(keys), np.uint32)

    def drain_inactive(self) -> tuple[np.ndarray, np.ndarray]:
        parts, self.inactive = self.inactive, []
        if not parts:
            return np.zeros((0, abi.KEY_SIZE), np.uint8), np.zeros(0, bpfsys.VALUE_DTYPE)
        return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))

    def flip(self) -> None:
        self.inactive, self.active, self.active_rows = self.active, [], 0


class Timed:
    """One table fed the reader's calls, with the CPU each kind of call took."""

    def __init__(self, module, config: DatapathSection, warmup_s: float):
        self.table = module.FlowTable(int(config.active_timeout_s * S),
                                      int(config.idle_timeout_s * S),
                                      max_flows=config.max_flows)
        self.warmup_s = warmup_s
        self.cpu = {"announce": 0.0, "ingest": 0.0, "step": 0.0}
        self.rows: list[int] = []
        self.records = 0

    def call(self, kind: str, now_s: float, *args):
        t0 = time.process_time()
        out = getattr(self.table, kind)(*args)
        spent = time.process_time() - t0
        if now_s >= self.warmup_s:
            self.cpu[kind] += spent
            self.records += len(out) if out is not None else 0
            if kind == "step":
                self.rows.append(len(self.table))
        return out


def run(modules: list, rate: int, args, config: DatapathSection) -> list[Timed]:
    """Simulate args.warmup + args.seconds at `rate` new flows/s with one table per module,
    all fed the same calls (FlowReader.run, _announce, _sweep, _follow_churn); the first
    table's records are checked against the others'."""
    kernel = Kernel(rate, args.cpus, config.new_flow_events, config.flow_map_size)
    tables = [Timed(m, config, args.warmup) for m in modules]
    base = config.sweep_interval_s
    interval_s = base
    next_sweep = 0.0
    flipped_ns = START_NS
    end_s = args.warmup + args.seconds
    now_s = 0.0

    def each(kind: str, *call_args) -> None:
        outs = [t.call(kind, now_s, *call_args) for t in tables]
        if kind != "ingest" and not all(same_records(outs[0], o) for o in outs[1:]):
            raise SystemExit(f"{kind} records differ at {now_s:.1f} s, {rate} flows/s")

    while now_s < end_s:
        kernel.run_until(now_s)
        keys, pkt_len, ts, flags = kernel.take_events()
        if len(keys):
            each("announce", keys, pkt_len, ts, flags)
        if now_s >= next_sweep:
            keys, values = kernel.drain_inactive()
            fill = len(keys) / config.flow_map_size
            if fill > FULLER:
                interval_s = max(interval_s / 2, base * MIN_INTERVAL_SHARE)
            elif fill < EMPTIER:
                interval_s = min(interval_s * 2, base)
            each("ingest", keys, values)
            now_ns = START_NS + round(now_s * S)
            before, flipped_ns = flipped_ns, now_ns
            kernel.flip()
            each("step", now_ns, before - FLIP_MARGIN_NS)
            next_sweep = now_s + interval_s
        now_s = round(now_s + min(config.poll_interval_s, interval_s), 6)
    return tables


def load_revision(rev: str):
    """The flow table module as it is at git revision `rev`, under its own name."""
    root = Path(__file__).resolve().parent.parent
    text = subprocess.run(["git", "-C", str(root), "show", f"{rev}:agent/datapath/flowtable.py"],
                          check=True, capture_output=True, text=True).stdout
    with tempfile.TemporaryDirectory(prefix="pf-bench-flowtable-") as tmp:
        path = Path(tmp) / "flowtable_at_rev.py"
        path.write_text(text, encoding="utf-8")
        spec = importlib.util.spec_from_file_location(f"flowtable_at_{rev}", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    return module


def same_records(a, b) -> bool:
    fields = ("keys", "packets", "bytes", "first_ns", "last_ns", "tcp_flags", "flow_end",
              "update", "own_packets", "rev_packets", "rev_flags", "rev_first_ns")
    return len(a) == len(b) and all(np.array_equal(getattr(a, f), getattr(b, f))
                                    for f in fields)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="2000,10000,50000",
                        help="new flows per second, comma-separated")
    parser.add_argument("--seconds", type=float, default=20.0, help="simulated seconds timed")
    parser.add_argument("--warmup", type=float, default=10.0,
                        help="simulated seconds first, not timed (the table fills up)")
    parser.add_argument("--cpus", type=int, default=2, help="CPUs the new-flow budget is per")
    parser.add_argument("--rounds", type=int, default=1,
                        help="runs per rate and table (medians are shown)")
    parser.add_argument("--compare", metavar="REV",
                        help="also time the flow table of this git revision (e.g. main)")
    args = parser.parse_args()
    config = DatapathSection()
    tables = [("this tree", current)]
    if args.compare:
        tables.append((args.compare, load_revision(args.compare)))
    header = (f"{'table':<12} {'flows/s':>8} {'rows':>8} {'records/s':>9} {'ms/s':>7} "
              f"{'us/flow':>7} {'announce':>9} {'ingest':>7} {'step':>7}")
    print(header)
    print("-" * len(header))
    for rate in (int(r) for r in args.rates.split(",")):
        cpu: dict[str, list[dict]] = {name: [] for name, _ in tables}
        last: list[Timed] = []
        for rnd in range(args.rounds):
            # Alternate which table runs first: both see the cache and allocator state
            # the other left about as often.
            order = tables if rnd % 2 == 0 else tables[::-1]
            last = run([m for _, m in order], rate, args, config)
            for (name, _), timed in zip(order, last):
                cpu[name].append(timed.cpu)
        rows = statistics.mean(last[0].rows) if last[0].rows else 0
        records = last[0].records / args.seconds
        for name, _ in tables:
            med = {k: statistics.median(c[k] for c in cpu[name]) * 1000 / args.seconds
                   for k in ("announce", "ingest", "step")}
            total = sum(med.values())
            print(f"{name:<12} {rate:>8} {rows:>8.0f} {records:>9.0f} {total:>7.1f} "
                  f"{total * 1000 / rate:>7.2f} {med['announce']:>9.1f} {med['ingest']:>7.1f} "
                  f"{med['step']:>7.1f}")
    print("ms/s: CPU-ms per simulated second (the reader thread's share of one core x 1000); "
          "us/flow: CPU-us per new flow; rows: live table rows at the sweeps (mean)")


if __name__ == "__main__":
    main()
