"""A pod's "application": answers every TCP connection (or UDP datagram) with a name.

The lab runs this file in a pod's (or outside host's) namespace as
`python -I -S server.py NAME PORT tcp|udp` (the lab's `serve`). An HTTP-looking request gets
an HTTP/1.0 response whose body is NAME, anything else gets NAME back raw, so a test or the
demo sees which backend answered. Standard library only, so it starts fast in any namespace.
"""

from __future__ import annotations

import socket
import sys
import threading

HTTP_METHODS = (b"GET ", b"POST ", b"HEAD ")


def answer(body: bytes, request: bytes) -> bytes:
    if request.startswith(HTTP_METHODS):
        return (b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: "
                + str(len(body)).encode() + b"\r\n\r\n" + body)
    return body


def serve_udp(port: int, body: bytes) -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", port))
    while True:
        data, peer = s.recvfrom(65535)
        s.sendto(answer(body, data), peer)


def handle(conn: socket.socket, body: bytes) -> None:
    """Read the whole request (up to the end of HTTP headers, or until the client shuts its
    side, which is how a bulk sender ends), then answer and close."""
    with conn:
        conn.settimeout(30)
        req = b""
        try:
            while not req.startswith(HTTP_METHODS) or b"\r\n\r\n" not in req:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                if len(req) < 4096:
                    req += chunk
            conn.sendall(answer(body, req))
        except OSError:
            pass


def serve_tcp(port: int, body: bytes) -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.listen(128)
    while True:
        conn, _ = s.accept()
        threading.Thread(target=handle, args=(conn, body), daemon=True).start()


def main(argv: list[str]) -> int:
    name, port, proto = argv[1], int(argv[2]), argv[3]
    body = (name + "\n").encode()
    if proto == "udp":
        serve_udp(port, body)
    else:
        serve_tcp(port, body)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
