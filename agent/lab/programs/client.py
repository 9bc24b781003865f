"""A pod's client: one request, and one JSON line saying what came back.

The lab runs this file in a namespace as
`python -I -S client.py IP PORT tcp|udp TIMEOUT_S PAYLOAD HOLD_S` (the lab's `request`).
TCP: connect, send PAYLOAD, shut the sending side, read to the end; UDP: one datagram and
its answer. Then it prints {"local_port", "reply", "error"} (the source port also when the
request failed, so a test can find that attempt's flow) and keeps the socket open HOLD_S
seconds, so its conntrack entry stays ESTABLISHED meanwhile. Standard library only.
"""

from __future__ import annotations

import json
import socket
import sys
import time


def request(sock: socket.socket, ip: str, port: int, proto: str, payload: bytes,
            received: bytearray) -> None:
    """Send the request and collect the answer in `received` (which keeps what came before
    an error)."""
    if proto == "udp":
        sock.sendto(payload, (ip, port))
        received += sock.recvfrom(65535)[0]
        return
    sock.connect((ip, port))
    sock.sendall(payload)
    sock.shutdown(socket.SHUT_WR)
    while chunk := sock.recv(65536):
        received += chunk


def main(argv: list[str]) -> int:
    ip, port, proto, timeout_s = argv[1], int(argv[2]), argv[3], float(argv[4])
    payload, hold_s = argv[5].encode(), float(argv[6])
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM)
    s.settimeout(timeout_s)
    received, error = bytearray(), ""
    try:
        request(s, ip, port, proto, payload, received)
    except OSError as exc:
        error = f"{type(exc).__name__}: {exc}"
    print(json.dumps({"local_port": s.getsockname()[1],
                      "reply": received.decode(errors="replace"),
                      "error": error}), flush=True)
    time.sleep(hold_s)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
