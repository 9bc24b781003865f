"""New-flow churn from inside a pod, for bench/churn.py: one UDP packet per new 5-tuple at a
steady rate, and the sink that receives them in the server pod.

Runs as a script in the pods' namespaces (`python -I -S churn_traffic.py send|sink ...`):
standard library only, so it starts fast in any namespace.

send DST_IP SRC_IP RATE SECONDS [PORT_BASE PORTS PAYLOAD_BYTES]
    Sends RATE packets per second for SECONDS, flow i from source port 1024 + i // PORTS to
    destination port PORT_BASE + i % PORTS: 64,512 x PORTS distinct 5-tuples (4.1 M with
    the default 64 ports, more than 60 s at 50,000/s), each used once. A new 5-tuple per
    packet cannot come from ordinary sockets cheaply (each new source port costs a
    socket(), a bind and a close), so the packets are built whole and sent from one raw
    socket (IPPROTO_RAW: the kernel still routes them, fills the IP checksum and resolves
    the neighbour) in batches of up to 256 with one sendmmsg(2) each (one syscall per
    batch instead of per packet; what remains is the kernel's path of each packet, which
    runs in the sender's context and is most of its CPU).
    Pacing: every millisecond or so, the packets due since the start (RATE x elapsed) are
    sent; the schedule never runs ahead, and how far it ever fell behind is reported. UDP
    checksum 0 (none, allowed for IPv4). Prints one JSON line when done:
    {"sent": N, "seconds": ELAPSED, "max_lag_packets": L, "batches": B, "cpu_s": CPU}.

sink PORT_BASE PORTS
    Binds PORTS UDP sockets and reads everything that arrives on them (recvmmsg, in
    batches) until SIGTERM, then prints {"received": N, "cpu_s": CPU}. A socket must be
    listening: a datagram to a closed port is freed as a drop (kfree_skb, reason
    NO_SOCKET) and answered with ICMP, which would load the agents' drop tracing and add
    reverse flows that are not part of the churn. Prints {"ready": true} once every socket
    is bound.
"""

from __future__ import annotations

import ctypes
import errno
import json
import resource
import selectors
import signal
import socket
import struct
import sys
import time

BATCH_MAX = 256
SPORT_FIRST = 1024
SPORTS = 65536 - SPORT_FIRST
IP_UDP_HEADER_BYTES = 28


class _IoVec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class _MsgHdr(ctypes.Structure):
    _fields_ = [("msg_name", ctypes.c_void_p), ("msg_namelen", ctypes.c_uint32),
                ("msg_iov", ctypes.POINTER(_IoVec)), ("msg_iovlen", ctypes.c_size_t),
                ("msg_control", ctypes.c_void_p), ("msg_controllen", ctypes.c_size_t),
                ("msg_flags", ctypes.c_int)]


class _MMsgHdr(ctypes.Structure):
    _fields_ = [("msg_hdr", _MsgHdr), ("msg_len", ctypes.c_uint32)]


class _SockaddrIn(ctypes.Structure):
    _fields_ = [("sin_family", ctypes.c_uint16), ("sin_port", ctypes.c_uint16),
                ("sin_addr", ctypes.c_uint8 * 4), ("sin_zero", ctypes.c_uint8 * 8)]


def _packet_template(src_ip: str, dst_ip: str, payload_bytes: int) -> bytes:
    total = IP_UDP_HEADER_BYTES + payload_bytes
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 0, 0x4000, 64, socket.IPPROTO_UDP, 0,
                     socket.inet_aton(src_ip), socket.inet_aton(dst_ip))
    udp = struct.pack("!HHHH", 0, 0, 8 + payload_bytes, 0)
    return ip + udp + b"podflow-churn!!!!!"[:payload_bytes].ljust(payload_bytes, b".")


def send(dst_ip: str, src_ip: str, rate: float, seconds: float, port_base: int = 40000,
         ports: int = 64, payload_bytes: int = 18) -> dict:
    libc = ctypes.CDLL(None, use_errno=True)
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    template = _packet_template(src_ip, dst_ip, payload_bytes)
    size = len(template)
    buf = ctypes.create_string_buffer(template * BATCH_MAX, size * BATCH_MAX)
    base = ctypes.addressof(buf)
    addr = _SockaddrIn(socket.AF_INET, 0, (ctypes.c_uint8 * 4)(*socket.inet_aton(dst_ip)))
    iovs = (_IoVec * BATCH_MAX)()
    msgs = (_MMsgHdr * BATCH_MAX)()
    for i in range(BATCH_MAX):
        iovs[i].iov_base = base + i * size
        iovs[i].iov_len = size
        hdr = msgs[i].msg_hdr
        hdr.msg_name = ctypes.addressof(addr)
        hdr.msg_namelen = ctypes.sizeof(addr)
        hdr.msg_iov = ctypes.pointer(iovs[i])
        hdr.msg_iovlen = 1
    view = memoryview(buf).cast("B")
    pack_ports = struct.Struct("!HH").pack_into
    total = int(rate * seconds)
    fd = sock.fileno()
    sent = batches = max_lag = 0
    start = time.monotonic()
    while sent < total:
        due = min(total, int((time.monotonic() - start) * rate))
        if due <= sent:
            time.sleep(0.0005)
            continue
        max_lag = max(max_lag, due - sent)
        n = min(due - sent, BATCH_MAX)
        for j in range(n):
            i = sent + j
            pack_ports(view, j * size + 20, SPORT_FIRST + (i // ports) % SPORTS,
                       port_base + i % ports)
        done = libc.sendmmsg(fd, msgs, n, 0)
        if done < 0:
            err = ctypes.get_errno()
            if err in (errno.ENOBUFS, errno.EAGAIN):  # the qdisc or socket is full: retry
                time.sleep(0.0002)
                continue
            raise OSError(err, f"sendmmsg: {errno.errorcode.get(err, err)}")
        sent += done
        batches += 1
    return {"sent": sent, "seconds": round(time.monotonic() - start, 3),
            "max_lag_packets": max_lag, "batches": batches, "cpu_s": _cpu_s()}


def _cpu_s() -> float:
    """This process's CPU time: the sender's includes the kernel's whole path of each
    packet (veth, bridge, netfilter, the agents' TC programs), which runs in its context."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return round(usage.ru_utime + usage.ru_stime, 3)


def sink(port_base: int, ports: int) -> None:
    """Reads with recvmmsg(2), up to BATCH_MAX datagrams per call (their first 64 bytes: the
    content does not matter), so reading 50,000/s costs little CPU next to the agents."""
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    libc = ctypes.CDLL(None, use_errno=True)
    sel = selectors.DefaultSelector()
    socks = []
    for port in range(port_base, port_base + ports):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            s.setsockopt(socket.SOL_SOCKET, 33, 4 << 20)  # SO_RCVBUFFORCE (root)
        except OSError:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        s.bind(("0.0.0.0", port))
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
        socks.append(s)
    size = 64
    buf = ctypes.create_string_buffer(size * BATCH_MAX)
    iovs = (_IoVec * BATCH_MAX)()
    msgs = (_MMsgHdr * BATCH_MAX)()
    for i in range(BATCH_MAX):
        iovs[i].iov_base = ctypes.addressof(buf) + i * size
        iovs[i].iov_len = size
        msgs[i].msg_hdr.msg_iov = ctypes.pointer(iovs[i])
        msgs[i].msg_hdr.msg_iovlen = 1
    msg_dontwait = 0x40

    def drain(fd: int) -> int:
        got = 0
        while True:
            n = libc.recvmmsg(fd, msgs, BATCH_MAX, msg_dontwait, None)
            if n <= 0:
                return got
            got += n

    print(json.dumps({"ready": True}), flush=True)
    received = 0
    while not stopping:
        try:
            events = sel.select(0.2)
        except InterruptedError:
            continue
        for key, _ in events:
            received += drain(key.fileobj.fileno())
        time.sleep(0.002)  # let a few hundred datagrams queue: fewer wake-ups
    # What is still queued arrived before the stop: count it too.
    for s in socks:
        received += drain(s.fileno())
    print(json.dumps({"received": received, "cpu_s": _cpu_s()}), flush=True)


def main(argv: list[str]) -> int:
    if len(argv) >= 5 and argv[0] == "send":
        extra = [int(a) for a in argv[5:8]]
        print(json.dumps(send(argv[1], argv[2], float(argv[3]), float(argv[4]), *extra)),
              flush=True)
        return 0
    if len(argv) == 3 and argv[0] == "sink":
        sink(int(argv[1]), int(argv[2]))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
