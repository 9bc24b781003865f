"""What the datapath costs the node, and whether it counts every packet at that cost.

Two pods on a bridge node (agent/lab.py). Each round runs iperf3 twice without the agent and
twice with `podflow agent` attached to both pod veths and the bridge, side by side:
  - TCP throughput (iperf3, default sizes, GSO on);
  - 64-byte UDP packets/s (iperf3 -u -l 18 -b 0: 18 B payload = 60 B frame + FCS), counted
    at the receiver;
  - with the agent: the agent's CPU (utime+stime from /proc/<pid>/stat, share of one core)
    during the traffic, the packets its flow records counted on each veth and direction
    against the veth's own counters (IPv6 off and static neighbours in the pods, so every
    frame is an IPv4 flow), and the events it reported lost (ServerStatus).
Medians of the rounds (baseline and agent runs alternate in ABBA order); ratios are
agent / baseline. On a shared machine the iperf3 figures move with other jobs' load; the TC
program cost (kernel run-time stats, ns per packet) is the steadier figure.

    .venv/bin/python -m bench.datapath [--rounds 3] [--seconds 3]

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
AGENT_ARGS = (*os.environ.get("PF_BENCH_AGENT_ARGS", "").split(),
              "--active-timeout", "1", "--idle-timeout", "2")


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
    """Gbit/s (TCP) or received packets/s (UDP)."""
    cmd = ["iperf3", "-c", server_ip, "-t", str(seconds), "-J"]
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


def _record_packets(path: str, ifname: str, direction: str) -> int:
    total = 0
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            flow = json.loads(line).get("flow")
            if (flow and flow.get("interface", {}).get("name") == ifname
                    and flow.get("observation_point") in ("POD_VETH", "BRIDGE")
                    and flow.get("traffic_direction") == direction):
                total += int(flow.get("packets", 0))
    return total


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


def run(rounds: int, seconds: float) -> int:
    from agent.lab import Lab

    results: dict[str, list[float]] = {k: [] for k in
                                       ("tcp_base", "tcp_agent", "udp_base", "udp_agent",
                                        "cpu_tcp", "cpu_udp")}
    accounting: list[tuple[str, int, int]] = []
    lost_total = 0
    prog_ns = prog_runs = 0
    stats_fd = _enable_bpf_stats()
    with Lab("benchdp") as lab, tempfile.TemporaryDirectory() as tmp:
        node = lab.add_node("node-a", kind="bridge", pod_cidr="10.244.1.0/24")
        client = node.add_pod("bench", "client-1")
        server = node.add_pod("bench", "server-1")
        _quiet_pods(client, server, node.gateway)
        server.popen(["iperf3", "-s"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        veths = [client.host_ifname, server.host_ifname]
        for r in range(rounds):
            # baseline before the agent in even rounds, after it in odd ones, so a trend in
            # the machine's load (other jobs) does not favour either side
            if r % 2 == 0:
                results["tcp_base"].append(_iperf(client, server.ip, seconds, udp=False))
                results["udp_base"].append(_iperf(client, server.ip, seconds, udp=True))

            log = os.path.join(tmp, f"flows-{r}.jsonl")
            agent = node.start_agent("--flow-log", log, *AGENT_ARGS)
            assert set(veths + ["cni0"]) <= set(agent.ready.get("interfaces", [])), agent.ready
            before = {v: _link_counters(node, v) for v in veths}
            ids = _prog_ids(agent.pid)
            ns0, runs0 = _prog_run_stats(ids)
            for proto in ("tcp", "udp"):
                cpu0, t0 = _cpu_s(agent.pid), time.monotonic()
                results[f"{proto}_agent"].append(_iperf(client, server.ip, seconds,
                                                        udp=proto == "udp"))
                results[f"cpu_{proto}"].append((_cpu_s(agent.pid) - cpu0)
                                                / (time.monotonic() - t0))
            time.sleep(0.5)  # quiet: nothing moves between reading counters and detaching
            after = {v: _link_counters(node, v) for v in veths}
            ns1, runs1 = _prog_run_stats(ids)
            prog_ns, prog_runs = prog_ns + ns1 - ns0, prog_runs + runs1 - runs0
            status = _status(agent.address)
            lost_total += sum(c.count for c in status.lost)
            lost_total += sum(n for k, n in status.datapath_errors.items() if "full" in k)
            if agent.stop() != 0:
                raise RuntimeError(agent.stderr_text())
            for v in veths:
                rx = after[v][0] - before[v][0]  # host side rx = frames from the pod
                tx = after[v][1] - before[v][1]
                accounting.append((f"{v} FROM_POD", rx, _record_packets(log, v, "FROM_POD")))
                accounting.append((f"{v} TO_POD", tx, _record_packets(log, v, "TO_POD")))
            if r % 2 == 1:
                results["tcp_base"].append(_iperf(client, server.ip, seconds, udp=False))
                results["udp_base"].append(_iperf(client, server.ip, seconds, udp=True))

    if stats_fd >= 0:
        os.close(stats_fd)
    med = {k: statistics.median(v) for k, v in results.items()}
    print(f"podflow datapath benchmark: {rounds} rounds x {seconds:g}s, medians "
          f"(bridge node, 2 pods, agent on both veths + cni0); load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"{'measure':<34}{'baseline':>12}{'agent':>12}{'ratio':>8}")
    print(f"{'TCP throughput (Gbit/s)':<34}{med['tcp_base']:>12.2f}{med['tcp_agent']:>12.2f}"
          f"{med['tcp_agent'] / med['tcp_base']:>8.3f}")
    print(f"{'UDP 64-byte frames (kpps recv)':<34}{med['udp_base'] / 1e3:>12.1f}"
          f"{med['udp_agent'] / 1e3:>12.1f}{med['udp_agent'] / med['udp_base']:>8.3f}")
    print(f"agent CPU during TCP: {med['cpu_tcp'] * 100:.1f}% of a core; "
          f"during UDP: {med['cpu_udp'] * 100:.1f}%")
    if prog_runs:
        print(f"TC program cost (kernel run-time stats): {prog_ns / prog_runs:.0f} ns per "
              f"packet over {prog_runs} runs")
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
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args(argv)
    return run(args.rounds, args.seconds)


if __name__ == "__main__":
    sys.exit(main())
