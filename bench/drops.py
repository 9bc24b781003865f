"""Cost of drop tracing and DNS decoding.

1. Drop flood: a pod on a lab node floods UDP at a peer that an iptables DROP rule (shaped
   like a NetworkPolicy) blocks in the node's FORWARD chain. For each mode (no agent, agent
   with --no-drops, agent with drops) and each shape (one flow; 4096 flows, i.e. a new
   drop-map key for most packets at first), it prints the packets/s the pod got dropped,
   the agent's CPU (share of one core, from /proc), the packets the DROP rule matched
   (iptables counter: the truth), the drops the agent reported (sum of DROPPED records in
   its flow log), the datagrams the pod tried to send, and the events reported lost.
2. DNS: messages/s through agent.annotate.dns.decode and through the full DnsTracker path.
3. The annotate stage: flow records/s (20k live connections, batches of 500).

    .venv/bin/python -m bench.drops [--seconds 3] [--skip-flood]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from tests.annotate.dnswire import a, answer, header, name, query, question, rr

_TICKS = os.sysconf("SC_CLK_TCK")

_FLOOD_C = r"""
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
/* flood DST SECONDS NFLOWS: send 18-byte UDP datagrams to DST:9999 from NFLOWS sockets
 * (one source port each) round-robin; print how many were sent. */
int main(int argc, char **argv) {
    struct sockaddr_in dst = {.sin_family = AF_INET, .sin_port = htons(9999)};
    inet_pton(AF_INET, argv[1], &dst.sin_addr);
    double seconds = atof(argv[2]);
    int n = atoi(argv[3]);
    int *fds = calloc(n, sizeof(int));
    for (int i = 0; i < n; i++) fds[i] = socket(AF_INET, SOCK_DGRAM, 0);
    char payload[18] = {0};
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    long sent = 0;
    for (;;) {
        for (int i = 0; i < n; i++)
            if (sendto(fds[i], payload, sizeof(payload), 0, (struct sockaddr *)&dst, sizeof(dst)) > 0)
                sent++;
        clock_gettime(CLOCK_MONOTONIC, &t);
        if ((t.tv_sec - t0.tv_sec) + (t.tv_nsec - t0.tv_nsec) / 1e9 >= seconds) break;
    }
    printf("%ld\n", sent);
    return 0;
}
"""


def _build_flooder(directory: str) -> str:
    """A C sender: a Python loop cannot drop packets fast enough to load the tracepoint."""
    source = os.path.join(directory, "flood.c")
    binary = os.path.join(directory, "flood")
    with open(source, "w", encoding="utf-8") as fh:
        fh.write(_FLOOD_C)
    subprocess.run(["gcc", "-O2", "-o", binary, source], check=True)
    return binary



def _cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def _rule_packets(node) -> int:
    """Packets the FORWARD chain's DROP rule matched: the truth the agent is compared with."""
    out = node.run(["iptables", "-w", "5", "-L", "FORWARD", "-v", "-x", "-n"],
                   capture_output=True, text=True).stdout
    return sum(int(line.split()[0]) for line in out.splitlines()
               if "DROP" in line and "podflow-lab policy" in line)


def _reported_drops(log_path: str, dst: str) -> tuple[int, int]:
    packets = lost = 0
    if not os.path.exists(log_path):
        return 0, 0
    with open(log_path, encoding="utf-8") as fh:
        for line in fh:
            msg = json.loads(line)
            flow = msg.get("flow")
            if flow and flow.get("verdict") == "DROPPED" and flow["ip"]["destination"] == dst:
                packets += int(flow.get("packets", 0))
            if "lost_events" in msg:
                lost += int(msg["lost_events"].get("num_events_lost", 0))
    return packets, lost


def flood(seconds: float) -> list[tuple]:
    from agent.lab import Lab

    rows = []
    with Lab("bdrops") as lab:
        node = lab.add_node("node-a", kind="bridge", pod_cidr="10.244.1.0/24")
        other = lab.add_node("node-b", kind="routed", pod_cidr="10.244.2.0/24")
        client = node.add_pod("bench", "flooder")
        target = other.add_pod("bench", "target")
        # dropped in node-a's FORWARD chain, where the agent runs
        lab.add_drop_rule(client, target, port=9999, protocol="udp", node=node)
        flooder = _build_flooder(lab.run_dir)
        for mode in ("no agent", "agent --no-drops", "agent (drops)"):
            for nflows in (1, 4096):
                agent = None
                log_path = os.path.join(lab.run_dir, f"flows-{len(rows)}.jsonl")
                if mode != "no agent":
                    extra = ["--flow-log", log_path, "--flow-log-max-size-mb", "4000",
                             "--sweep-interval", "0.5"]
                    if mode == "agent --no-drops":
                        extra.append("--no-drops")
                    agent = node.start_agent(*extra)
                    time.sleep(0.5)
                    ticks0, t0 = _cpu_ticks(agent.pid), time.monotonic()
                node.run(["iptables", "-w", "5", "-Z", "FORWARD"])
                out = client.run([flooder, target.ip, str(seconds), str(nflows)],
                                 capture_output=True, text=True)
                sent = int(out.stdout.strip() or 0)
                dropped = _rule_packets(node)
                cpu = reported = lost = None
                if agent is not None:
                    cpu = (_cpu_ticks(agent.pid) - ticks0) / _TICKS / (time.monotonic() - t0)
                    time.sleep(1.5)  # one more sweep
                    agent.stop()
                    reported, lost = _reported_drops(log_path, target.ip)
                rows.append((mode, nflows, dropped / seconds, dropped, sent, cpu, reported, lost))
    return rows


def dns_rate(seconds: float = 1.0) -> list[tuple[str, float]]:
    from agent.annotate.dns import decode
    from agent.annotate.dnstrack import DnsPacket
    from agent.annotate.stage import Annotator
    from agent.config import AnnotateSection
    from agent.stats import AgentStats

    messages = [
        query("cart.shop.svc.cluster.local"),
        answer("cart.shop.svc.cluster.local", ["10.96.0.12"]),
        answer("web.shop.svc.cluster.local", ["10.244.1.5", "10.244.2.6", "10.244.3.7"]),
        header(3, True, an=2) + question("ext.shop.svc.cluster.local")
        + rr(b"\xc0\x0c", 5, 60, name("api.example.com")) + a(name("api.example.com"), "203.0.113.7"),
        answer("nope.shop.svc.cluster.local", rcode=3),
    ]
    rows = []
    n = 0
    end = time.perf_counter() + seconds
    start = time.perf_counter()
    while time.perf_counter() < end:
        for m in messages:
            decode(m)
        n += len(messages)
    rows.append(("agent.annotate.dns.decode", n / (time.perf_counter() - start)))

    ann = Annotator(AnnotateSection(), AgentStats("bench", "0"))
    packets = [DnsPacket(5, "udp", "10.244.1.2" if i % 2 == 0 else "10.96.0.10",
                         "10.96.0.10" if i % 2 == 0 else "10.244.1.2", 40000 + i, 53, m, len(m), i)
               for i, m in enumerate(messages)]
    n = 0
    end = time.perf_counter() + seconds
    start = time.perf_counter()
    while time.perf_counter() < end:
        for p in packets:
            ann.dns_packet(p)
        n += len(packets)
    rows.append(("Annotator.dns_packet (decode + track)", n / (time.perf_counter() - start)))
    return rows


def annotate_rate(seconds: float = 1.0, connections: int = 20000) -> float:
    """Flow records/s through Annotator.annotate (outcomes, DNS names, drop scope) in
    batches of 500, with `connections` live connections tracked."""
    from agent.annotate.stage import Annotator
    from agent.config import AnnotateSection
    from agent.stats import AgentStats
    from podflow_api.v1 import flow_pb2

    ann = Annotator(AnnotateSection(), AgentStats("bench", "0"))
    records = []
    for i in range(connections):
        for forward in (True, False):
            f = flow_pb2.Flow(packets=3, bytes=400, verdict=flow_pb2.FORWARDED,
                              observation_point=flow_pb2.POD_VETH,
                              traffic_direction=flow_pb2.FROM_POD if forward else flow_pb2.TO_POD)
            f.interface.index = 10 + i % 50
            pod, peer = f"10.244.1.{i % 50 + 2}", f"10.244.2.{i % 200 + 2}"
            f.ip.source, f.ip.destination = (pod, peer) if forward else (peer, pod)
            ports = (30000 + i % 30000, 80) if forward else (80, 30000 + i % 30000)
            f.l4.tcp.source_port, f.l4.tcp.destination_port = ports
            f.l4.tcp.flags.SYN = f.l4.tcp.flags.ACK = True
            records.append(f)
    n = 0
    start = time.perf_counter()
    end = start + seconds
    while time.perf_counter() < end:
        for i in range(0, len(records), 500):
            ann.annotate(records[i:i + 500])
            n += 500
    return n / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--skip-flood", action="store_true", help="DNS decoding only (no root)")
    args = parser.parse_args(argv)
    if not args.skip_flood:
        rows = flood(args.seconds)
        print(f"{'mode':<18} {'flows':>5} {'dropped pkt/s':>13} {'agent CPU':>9} "
              f"{'dropped':>9} {'reported':>9} {'sent':>9} {'lost':>5}")
        for mode, nflows, rate, dropped, sent, cpu, reported, lost in rows:
            print(f"{mode:<18} {nflows:>5} {rate:>13,.0f} "
                  f"{'-' if cpu is None else f'{cpu:.0%}':>9} {dropped:>9} "
                  f"{'-' if reported is None else reported:>9} {sent:>9} "
                  f"{'-' if lost is None else lost:>5}")
    print(f"\n{'DNS path':<40} {'messages/s':>12}")
    for label, rate in dns_rate():
        print(f"{label:<40} {rate:>12,.0f}")
    print(f"\n{'annotate (outcomes + names + scope)':<40} {annotate_rate():>12,.0f} records/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
