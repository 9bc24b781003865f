"""The demo's steady, recognisable traffic, generated from inside one pod.

`podflow demo` runs this file as a script (`python -I -S traffic.py TASKS_JSON`) in each
client pod's namespace: one process per pod, one thread per task, so a handful of pods make
steady traffic without starting a process per request. Standard library only, so it starts
fast in any namespace. A task is a dict:

    {"kind": "http", "ip": "10.96.0.20", "port": 80, "every_s": 1.0}
    {"kind": "dns", "name": "cart.shop.svc.cluster.local", "server": "10.96.0.10", "every_s": 2}
    {"kind": "bulk", "ip": "10.244.2.5", "port": 5432, "bytes": 2000000, "every_s": 5}
    {"kind": "connect", "ip": "10.244.2.5", "port": 5432, "every_s": 3, "timeout_s": 1}

On SIGTERM it prints one JSON line of counters per task kind ({"http": {"ok": 12,
"failed": 0}, ...}) to stdout and exits, so a caller can compare with what the agents saw.

`traffic.py resolve NAME SERVER TIMEOUT_S` makes one A lookup and prints the rcode name
and the addresses (the lab's `Pod.resolve`: a minimal Debian has no dig).
"""

from __future__ import annotations

import json
import random
import signal
import socket
import struct
import sys
import threading
import time

_counts: dict[str, dict[str, int]] = {}
_lock = threading.Lock()
_stop = threading.Event()


def _count(kind: str, ok: bool) -> None:
    with _lock:
        entry = _counts.setdefault(kind, {"ok": 0, "failed": 0})
        entry["ok" if ok else "failed"] += 1


def http_get(ip: str, port: int, timeout_s: float, host: str = "demo") -> bytes:
    """One HTTP/1.0 GET; returns the whole reply."""
    with socket.create_connection((ip, port), timeout=timeout_s) as s:
        s.sendall(f"GET / HTTP/1.0\r\nHost: {host}\r\nUser-Agent: podflow-demo\r\n\r\n".encode())
        s.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


def bulk_send(ip: str, port: int, nbytes: int, timeout_s: float) -> bytes:
    """Send `nbytes` then read the server's answer: a known-size transfer."""
    block = b"x" * 65536
    with socket.create_connection((ip, port), timeout=timeout_s) as s:
        left = nbytes
        while left > 0:
            s.sendall(block[:min(left, len(block))])
            left -= min(left, len(block))
        s.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


def dns_query(name: str, server: str, timeout_s: float) -> tuple[int, list[str]]:
    """One A query over UDP: (rcode, addresses)."""
    qid = random.randrange(65536)
    q = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    q += b"".join(bytes([len(p)]) + p.encode() for p in name.rstrip(".").split(".")) + b"\0"
    q += struct.pack("!HH", 1, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout_s)
        s.sendto(q, (server, 53))
        data = s.recvfrom(4096)[0]
    _rid, flags, qdcount, ancount = struct.unpack("!HHHH", data[:8])
    pos = 12
    for _ in range(qdcount):
        while data[pos]:
            pos += data[pos] + 1
        pos += 5
    ips = []
    for _ in range(ancount):
        if data[pos] & 0xC0 == 0xC0:
            pos += 2
        else:
            while data[pos]:
                pos += data[pos] + 1
            pos += 1
        rtype, _rclass, _ttl, rdlen = struct.unpack("!HHIH", data[pos:pos + 10])
        pos += 10
        if rtype == 1 and rdlen == 4:
            ips.append(socket.inet_ntoa(data[pos:pos + 4]))
        pos += rdlen
    return flags & 0xF, ips


def run_task(task: dict) -> None:
    """Repeat one task until stopped; the first run waits a random part of the period so
    pods do not fire in lockstep."""
    kind = task["kind"]
    every_s = float(task.get("every_s", 1.0))
    timeout_s = float(task.get("timeout_s", 3.0))
    if _stop.wait(random.uniform(0, every_s)):
        return
    while not _stop.is_set():
        started = time.monotonic()
        try:
            if kind == "http":
                ok = http_get(task["ip"], int(task["port"]), timeout_s).startswith(b"HTTP/1.0 200")
            elif kind == "bulk":
                ok = bool(bulk_send(task["ip"], int(task["port"]), int(task["bytes"]), timeout_s))
            elif kind == "connect":
                with socket.create_connection((task["ip"], int(task["port"])), timeout=timeout_s):
                    ok = True
            elif kind == "dns":
                rcode, _ips = dns_query(task["name"], task["server"], timeout_s)
                ok = rcode == int(task.get("expect_rcode", 0))
            else:
                raise ValueError(f"unknown task kind {kind!r}")
        except OSError:
            ok = False
        _count(kind, ok)
        _stop.wait(max(0.0, every_s - (time.monotonic() - started)))


RCODE_NAMES = {0: "NOERROR", 2: "SERVFAIL", 3: "NXDOMAIN", 5: "REFUSED"}


def main(argv: list[str]) -> int:
    if len(argv) == 5 and argv[1] == "resolve":
        rcode, ips = dns_query(argv[2], argv[3], float(argv[4]))
        print(RCODE_NAMES.get(rcode, str(rcode)), *ips)
        return 0
    tasks = json.loads(argv[1])

    def on_term(_signum, _frame):
        _stop.set()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    threads = [threading.Thread(target=run_task, args=(t,), daemon=True) for t in tasks]
    for t in threads:
        t.start()
    while not _stop.wait(0.5):
        pass
    with _lock:
        sys.stdout.write(json.dumps(_counts) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
