"""Helpers for the datapath tests: the truth (tcpdump on the same interface and direction,
parsed here), what the agent said (its flow log, its ServerStatus), and traffic with known
packet counts and sizes."""

from __future__ import annotations

import ipaddress
import json
import re
import signal
import struct
import subprocess
import sys
import time

import grpc
import pytest

from podflow_api.v1 import observer_pb2, observer_pb2_grpc

# Fast timeouts so a test's flows end quickly; stopping the agent flushes the rest.
# --flow-log-every-point: these tests hold each veth's records against what it carried
AGENT_ARGS = ("--active-timeout", "1", "--idle-timeout", "2", "--sweep-interval", "0.2",
              "--flow-log-every-point")

L4_NAMES = {6: "tcp", 17: "udp", 132: "sctp", 1: "icmpv4", 58: "icmpv6"}


# ---------------------------------------------------------------------------- the truth

def parse_pcap(path: str) -> list[tuple[tuple, int]]:
    """[(flow key, frame length)] of every packet in a pcap file; keys look like
    flow_key() below: (proto name, src, dst, sport-or-type, dport-or-code, fragment)."""
    with open(path, "rb") as fh:
        data = fh.read()
    if len(data) < 24:
        return []
    endian = "<" if data[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    out = []
    off = 24
    while off + 16 <= len(data):
        _s, _us, incl, orig = struct.unpack_from(endian + "IIII", data, off)
        pkt = data[off + 16: off + 16 + incl]
        off += 16 + incl
        key = _packet_key(pkt)
        if key is not None:
            out.append((key, orig))
    return out


def _packet_key(pkt: bytes):
    ethertype = int.from_bytes(pkt[12:14], "big")
    l3 = 14
    while ethertype in (0x8100, 0x88A8):
        ethertype = int.from_bytes(pkt[l3 + 2:l3 + 4], "big")
        l3 += 4
    if ethertype == 0x0800:
        ihl = (pkt[l3] & 0x0F) * 4
        proto = pkt[l3 + 9]
        src = str(ipaddress.IPv4Address(pkt[l3 + 12:l3 + 16]))
        dst = str(ipaddress.IPv4Address(pkt[l3 + 16:l3 + 20]))
        fragment = (int.from_bytes(pkt[l3 + 6:l3 + 8], "big") & 0x1FFF) != 0
        l4 = l3 + ihl
    elif ethertype == 0x86DD:
        proto = pkt[l3 + 6]
        src = str(ipaddress.IPv6Address(pkt[l3 + 8:l3 + 24]))
        dst = str(ipaddress.IPv6Address(pkt[l3 + 24:l3 + 40]))
        fragment = False
        l4 = l3 + 40
    else:
        return None
    a = b = 0
    if not fragment and proto in (6, 17, 132):
        a, b = int.from_bytes(pkt[l4:l4 + 2], "big"), int.from_bytes(pkt[l4 + 2:l4 + 4], "big")
    elif not fragment and proto in (1, 58):
        a, b = pkt[l4], pkt[l4 + 1]
    return (L4_NAMES.get(proto, str(proto)), src, dst, a, b, fragment)


class Capture:
    """tcpdump on one interface and direction (-Q in / -Q out) inside a node namespace:
    the independent truth the flow records are compared with."""

    def __init__(self, node, ifname: str, direction: str, bpf_filter: str, tmp_path):
        self.path = str(tmp_path / f"{node.name}-{ifname}-{direction}.pcap")
        self.err_path = self.path + ".err"
        self._err = open(self.err_path, "wb")
        self.proc = node.popen(["tcpdump", "-i", ifname, "-Q", direction, "-n", "-U", "-p",
                                "--immediate-mode", "-s",
                                "160", "-B", "8192", "-w", self.path, bpf_filter],
                               stdout=subprocess.DEVNULL, stderr=self._err)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with open(self.err_path, "rb") as fh:
                if b"listening on" in fh.read():
                    return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"tcpdump did not start: {open(self.err_path).read()}")

    def stop(self) -> dict:
        """{key: (packets, bytes)} seen; fails if tcpdump dropped anything."""
        time.sleep(0.3)
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(10)
        self._err.close()
        err = open(self.err_path).read()
        assert re.search(r"^0 packets dropped by kernel", err, re.M), err
        return totals_by_key(parse_pcap(self.path))


def totals_by_key(items) -> dict:
    out: dict = {}
    for key, length in items:
        p, b = out.get(key, (0, 0))
        out[key] = (p + 1, b + length)
    return out


# ---------------------------------------------------------------------------- the agent

def read_flow_log(path) -> list[dict]:
    flows = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            obj = json.loads(line)
            if "flow" in obj:
                flows.append(obj["flow"])
    return flows


def flow_key(flow: dict) -> tuple:
    l4 = flow.get("l4") or {}
    name = next(iter(l4), None)
    body = l4.get(name, {}) if name else {}
    if name in ("icmpv4", "icmpv6"):
        a, b = body.get("type", 0), body.get("code", 0)
    else:
        a, b = body.get("source_port", 0), body.get("destination_port", 0)
    return (name or "?", flow["ip"]["source"], flow["ip"]["destination"], a, b,
            bool(flow["ip"].get("fragment", False)))


def record_totals(flows: list[dict], ifname: str, direction: str) -> dict:
    """{key: (packets, bytes)} summed over the TC records (not drop records, which the drops
    extension reports at HOST_STACK) of one interface and pod direction."""
    return totals_by_key_weighted(
        (flow_key(f), int(f.get("packets", 0)), int(f.get("bytes", 0))) for f in flows
        if f.get("interface", {}).get("name") == ifname
        and f.get("observation_point") in ("POD_VETH", "BRIDGE")
        and f.get("traffic_direction") == direction)


def totals_by_key_weighted(items) -> dict:
    out: dict = {}
    for key, packets, nbytes in items:
        p, b = out.get(key, (0, 0))
        out[key] = (p + packets, b + nbytes)
    return out


def server_status(address: str) -> observer_pb2.ServerStatusResponse:
    with grpc.insecure_channel(address) as channel:
        stub = observer_pb2_grpc.ObserverStub(channel)
        return stub.ServerStatus(observer_pb2.ServerStatusRequest(), timeout=5)


TCX_QUERY = """
import socket, sys
from agent.datapath.tc import tcx_programs
try:
    index = socket.if_nametoindex(sys.argv[1])
except OSError:
    sys.exit(0)
for hook in ("ingress", "egress"):
    for name in tcx_programs(index, hook):
        print(f"tcx-{hook}: {name}")
"""


def podflow_filters(node, ifname: str) -> list[str]:
    """What is attached to one interface's hooks: `tc filter show` lines of its clsact
    ingress/egress, then its tcx programs as "tcx-<hook>: <name>"."""
    lines = []
    for hook in ("ingress", "egress"):
        res = node.run(["tc", "filter", "show", "dev", ifname, hook], check=False,
                       capture_output=True, text=True)
        lines += [f"{hook}: {line}" for line in res.stdout.splitlines() if "handle" in line]
    res = node.run([sys.executable, "-c", TCX_QUERY, ifname], capture_output=True, text=True)
    return lines + res.stdout.splitlines()


# ---------------------------------------------------------------------------- traffic

UDP_SEND = """
import socket, sys
dst, port, count, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[5])))
for _ in range(count):
    s.sendto(b"x" * size, (dst, port))
"""

TCP_SINK = """
import socket, sys
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", int(sys.argv[1]))); srv.listen(1)
print("ready", flush=True)
conn, _ = srv.accept(); total = 0
while True:
    data = conn.recv(65536)
    if not data:
        break
    total += len(data)
conn.close(); print(total, flush=True)
"""

TCP_SEND = """
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
left = int(sys.argv[3]); chunk = b"y" * 65536
while left:
    n = s.send(chunk[:min(left, len(chunk))]); left -= n
s.shutdown(socket.SHUT_WR); s.recv(1); s.close()
"""


def send_udp(pod, dst: str, port: int, count: int, size: int, sport: int = 40000) -> None:
    pod.run([sys.executable, "-c", UDP_SEND, dst, str(port), str(count), str(size), str(sport)])


def tcp_transfer(src_pod, dst_pod, port: int, nbytes: int) -> int:
    sink = dst_pod.popen([sys.executable, "-c", TCP_SINK, str(port)], stdout=subprocess.PIPE,
                         text=True)
    assert sink.stdout.readline().strip() == "ready"
    src_pod.run([sys.executable, "-c", TCP_SEND, dst_pod.ip, str(port), str(nbytes)])
    received = int(sink.stdout.readline())
    sink.wait(10)
    return received


@pytest.fixture
def lab_factory():
    """Labs that are always cleaned up, even when the test fails."""
    from agent.lab import Lab

    labs = []

    def make(lab_id: str) -> Lab:
        lab = Lab(lab_id)
        labs.append(lab)
        return lab.__enter__()

    yield make
    for lab in labs:
        lab.__exit__(None, None, None)
