"""What the datapath costs the node, and whether it counts every packet at that cost.

Two bridge nodes of the lab (agent/lab/), each with a client and a server pod. The agent
runs on node-a only, attached to both pod veths and the bridge; node-b is the untraced
baseline. Samples alternate between the two pairs back to back (ABBA order), so both sides
of each ratio see the same moment of a shared machine's load, which moves iperf3 by +-20 %
from one run to the next here:
  - TCP throughput (iperf3, default sizes, GSO on);
  - 64-byte UDP packets/s (iperf3 -u -l 18 -b 0: 18 B payload = 60 B frame + FCS), counted
    at the receiver;
  - first without any agent (the two pairs should match: that ratio is the method's own
    error), then with the agent on node-a: its CPU (utime+stime from /proc/<pid>/stat, share
    of one core) during node-a's samples, the packets its flow records counted on each veth
    and direction against the veth's own counters (IPv6 off and static neighbours in the
    pods, so every frame is an IPv4 flow), and the events it reported lost (ServerStatus).
Ratios are medians over the back-to-back pairs of traced / untraced. The kernel's run-time
stats give the TC programs' cost per packet, the steadiest figure; they slow every program
run, so they are on only for one extra TCP and UDP run at the end.

    .venv/bin/python -m bench.datapath [--pairs 8] [--seconds 2]

PF_BENCH_AGENT_ARGS="--attach-mode tc --no-drops" adds agent flags, to price each feature.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import grpc

from podflow_api.v1 import observer_pb2, observer_pb2_grpc

_TICKS = os.sysconf("SC_CLK_TCK")
# --flow-log-every-point: each veth's records are held against its own counters (by default
# the flow log writes a pod-to-pod flow once, as the sender's record).
AGENT_ARGS = (*os.environ.get("PF_BENCH_AGENT_ARGS", "").split(),
              "--active-timeout", "1", "--idle-timeout", "2", "--flow-log-every-point")


def _cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def _link_counters(node, ifname: str) -> tuple[int, int]:
    """Frames that passed the TC ingress and egress hooks of a host-side veth, from its
    counters: rx_packets (the pod's frames the veth accepted; what it refused never reached
    ingress), tx_packets + tx_dropped (the egress hook runs before the veth can refuse)."""
    out = node.run(["ip", "-j", "-s", "link", "show", "dev", ifname], capture_output=True,
                   text=True).stdout
    stats = json.loads(out)[0]["stats64"]
    return stats["rx"]["packets"], stats["tx"]["packets"] + stats["tx"]["dropped"]


def _enable_bpf_stats() -> int:
    """BPF_ENABLE_STATS(BPF_STATS_RUN_TIME): the kernel times every program run while the
    returned fd is open (closed at the end, or when this process exits)."""
    attr = ctypes.c_uint32(0)  # enable_stats.type = BPF_STATS_RUN_TIME
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.syscall(321, 32, ctypes.byref(attr), ctypes.sizeof(attr))
    return fd if fd >= 0 else -1


def _prog_ids(pid: int) -> list[int]:
    """The eBPF programs one process holds (its fds' prog_id in /proc/<pid>/fdinfo)."""
    ids = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") != "anon_inode:bpf-prog":
                continue
            with open(f"/proc/{pid}/fdinfo/{fd}", encoding="ascii") as fh:
                for line in fh:
                    if line.startswith("prog_id:"):
                        ids.append(int(line.split()[1]))
        except OSError:
            continue
    return ids


def _prog_run_stats(ids: list[int]) -> tuple[int, int]:
    """(run_time_ns, run_cnt) summed over programs named podflow_* among `ids`."""
    ns = cnt = 0
    for prog_id in ids:
        out = subprocess.run(["bpftool", "prog", "show", "id", str(prog_id), "-j"],
                             capture_output=True, text=True).stdout
        info = json.loads(out or "{}")
        if str(info.get("name", "")).startswith("podflow"):
            ns += info.get("run_time_ns", 0)
            cnt += info.get("run_cnt", 0)
    return ns, cnt


def _iperf(client, server_ip: str, seconds: float, udp: bool) -> float:
    """Gbit/s (TCP) or received packets/s (UDP). Client on CPU 0, server on CPU 1 (iperf3
    -A), the same for every sample, so the scheduler's placement is not part of the noise."""
    cmd = ["iperf3", "-c", server_ip, "-t", str(seconds), "-J", "-A", "0,1"]
    if udp:
        cmd += ["-u", "-l", "18", "-b", "0"]
    res = client.run(cmd, capture_output=True, text=True, check=False)
    data = json.loads(res.stdout)
    if "error" in data:
        raise RuntimeError(f"iperf3: {data['error']}")
    end = data["end"]
    if udp:
        s = end["sum"]
        return (s["packets"] - s["lost_packets"]) / s["seconds"]
    return end["sum_received"]["bits_per_second"] / 1e9


def _status(address: str) -> observer_pb2.ServerStatusResponse:
    with grpc.insecure_channel(address) as channel:
        return observer_pb2_grpc.ObserverStub(channel).ServerStatus(
            observer_pb2.ServerStatusRequest(), timeout=5)


def _record_packets(path: str) -> dict[tuple[str, str], int]:
    """Packets in the flow log's records, per (interface name, traffic direction), read in
    one pass."""
    totals: dict[tuple[str, str], int] = {}
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            flow = json.loads(line).get("flow")
            if flow and flow.get("observation_point") in ("POD_VETH", "BRIDGE"):
                key = (flow.get("interface", {}).get("name"), flow.get("traffic_direction"))
                totals[key] = totals.get(key, 0) + int(flow.get("packets", 0))
    return totals


def _quiet_pods(client, server, gateway_ip: str) -> None:
    """No traffic but the benchmark's: IPv6 off (no ND/MLD) and permanent neighbours (no
    ARP), so the veth counters and the IPv4 flow records must agree exactly."""
    for pod, peer in ((client, server), (server, client)):
        pod.run(["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1",
                 "net.ipv6.conf.default.disable_ipv6=1"])
        for ip in (peer.ip, gateway_ip):
            mac = _mac_of(peer if ip == peer.ip else None, pod, ip)
            pod.run(["ip", "neigh", "replace", ip, "lladdr", mac, "dev", "eth0",
                     "nud", "permanent"])


def _mac_of(peer, pod, ip: str) -> str:
    if peer is not None:
        out = peer.run(["ip", "-j", "link", "show", "dev", "eth0"], capture_output=True,
                       text=True).stdout
        return json.loads(out)[0]["address"]
    pod.run(["ping", "-c", "1", "-W", "1", ip], stdout=subprocess.DEVNULL, check=False)
    out = pod.run(["ip", "-j", "neigh", "show", ip], capture_output=True, text=True).stdout
    return json.loads(out)[0]["lladdr"]


def _pods(node, suffix: str) -> tuple:
    """A quiet client and server pod on `node`, iperf3 listening in the server."""
    client = node.add_pod("bench", f"client-{suffix}")
    server = node.add_pod("bench", f"server-{suffix}")
    _quiet_pods(client, server, node.gateway)
    server.popen(["iperf3", "-s"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return client, server


def _paired_samples(traced: tuple, plain: tuple, count: int, seconds: float, udp: bool,
                    agent_pid: int | None = None) -> tuple[list[tuple[float, float]], float]:
    """`count` back-to-back (traced, untraced) measurements, alternating which goes first;
    and the agent's CPU share during the traced ones."""
    pairs, cpu_s, busy_s = [], 0.0, 0.0
    for i in range(count):
        values = {}
        for side in (("traced", "plain") if i % 2 == 0 else ("plain", "traced")):
            client, server = traced if side == "traced" else plain
            cpu0, t0 = (_cpu_s(agent_pid) if agent_pid else 0.0), time.monotonic()
            values[side] = _iperf(client, server.ip, seconds, udp)
            if agent_pid and side == "traced":
                cpu_s += _cpu_s(agent_pid) - cpu0
                busy_s += time.monotonic() - t0
        pairs.append((values["traced"], values["plain"]))
    return pairs, (cpu_s / busy_s if busy_s else 0.0)


def _row(name: str, calibration: list, measured: list, scale: float, fmt: str) -> str:
    base = statistics.median(p for _, p in measured) / scale
    traced = statistics.median(t for t, _ in measured) / scale
    ratios = [t / p for t, p in measured]
    calib = statistics.median(t / p for t, p in calibration)
    return (f"{name:<32}{base:>10{fmt}}{traced:>10{fmt}}{statistics.median(ratios):>8.3f}"
            f"{min(ratios):>7.3f}-{max(ratios):.3f}{calib:>12.3f}")


def run(pairs: int, seconds: float) -> int:
    from agent.lab import Lab

    calibration, measured, cpu = {}, {}, {}
    accounting: list[tuple[str, int, int]] = []
    with Lab("benchdp") as lab, tempfile.TemporaryDirectory() as tmp:
        node = lab.add_node("node-a", kind="bridge", pod_cidr="10.244.1.0/24")
        plain_node = lab.add_node("node-b", kind="bridge", pod_cidr="10.244.2.0/24")
        traced, plain = _pods(node, "a"), _pods(plain_node, "b")
        time.sleep(0.5)
        for proto in ("tcp", "udp"):
            calibration[proto], _ = _paired_samples(traced, plain, max(2, pairs // 2), seconds,
                                                    udp=proto == "udp")

        log = os.path.join(tmp, "flows.jsonl")
        agent = node.start_agent("--flow-log", log, *AGENT_ARGS)
        veths = [pod.host_ifname for pod in traced]
        assert set(veths + ["cni0"]) <= set(agent.ready.get("interfaces", [])), agent.ready
        before = {v: _link_counters(node, v) for v in veths}
        for proto in ("tcp", "udp"):
            measured[proto], cpu[proto] = _paired_samples(traced, plain, pairs, seconds,
                                                          udp=proto == "udp",
                                                          agent_pid=agent.pid)
        # The kernel's run-time stats time every program run (two clock reads each), so
        # they are on only for this last pair of runs, not for the ratios above.
        stats_fd = _enable_bpf_stats()
        ids = _prog_ids(agent.pid)
        ns0, runs0 = _prog_run_stats(ids)
        for udp in (False, True):
            _iperf(traced[0], traced[1].ip, seconds, udp)
        ns1, runs1 = _prog_run_stats(ids)
        if stats_fd >= 0:
            os.close(stats_fd)
        time.sleep(0.5)  # quiet: nothing moves between reading counters and detaching
        after = {v: _link_counters(node, v) for v in veths}
        status = _status(agent.address)
        lost_total = sum(c.count for c in status.lost)
        lost_total += sum(n for k, n in status.datapath_errors.items() if "full" in k)
        if agent.stop() != 0:
            raise RuntimeError(agent.stderr_text())
        counted = _record_packets(log)
        for v in veths:
            rx = after[v][0] - before[v][0]  # host side rx = frames from the pod
            tx = after[v][1] - before[v][1]
            accounting.append((f"{v} FROM_POD", rx, counted.get((v, "FROM_POD"), 0)))
            accounting.append((f"{v} TO_POD", tx, counted.get((v, "TO_POD"), 0)))
    print(f"podflow datapath benchmark: {pairs} back-to-back pairs x {seconds:g}s per protocol "
          f"(bridge nodes, agent on node-a's veths + cni0, node-b untraced); load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; agent flags: "
          f"{' '.join(AGENT_ARGS)}")
    print(f"{'measure':<32}{'untraced':>10}{'traced':>10}{'ratio':>8}{'range':>13}"
          f"{'no agent':>12}")
    print(_row("TCP throughput (Gbit/s)", calibration["tcp"], measured["tcp"], 1, ".2f"))
    print(_row("UDP 64-byte frames (kpps recv)", calibration["udp"], measured["udp"], 1e3,
               ".1f"))
    print("(ratio: median of traced/untraced over the pairs; no agent: the same ratio before "
          "the agent started, the method's own error)")
    print(f"agent CPU during TCP: {cpu['tcp'] * 100:.1f}% of a core; "
          f"during UDP: {cpu['udp'] * 100:.1f}%")
    if runs1 > runs0:
        print(f"TC program cost (kernel run-time stats): {(ns1 - ns0) / (runs1 - runs0):.0f} ns "
              f"per packet over {runs1 - runs0} runs (one more TCP and UDP run with the stats on)")
    exact = all(truth == counted for _, truth, counted in accounting)
    total_truth = sum(t for _, t, _ in accounting)
    total_counted = sum(c for _, _, c in accounting)
    print(f"packets: interface counters {total_truth}, flow records {total_counted} "
          f"({'exact' if exact else 'MISMATCH'}); events lost: {lost_total}")
    if not exact:
        for name, truth, counted in accounting:
            if truth != counted:
                print(f"  {name}: counters {truth}, records {counted}")
    return 0 if exact and lost_total == 0 else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=8,
                        help="back-to-back traced/untraced measurements per protocol")
    parser.add_argument("--seconds", type=float, default=2.0, help="length of each iperf3 run")
    args = parser.parse_args(argv)
    return run(args.pairs, args.seconds)


if __name__ == "__main__":
    sys.exit(main())
