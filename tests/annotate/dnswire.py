"""Builds DNS wire messages for the tests (queries, answers, CNAME chains, compression)."""

from __future__ import annotations

import ipaddress
import struct


def name(n: str) -> bytes:
    out = b""
    for label in filter(None, n.split(".")):
        out += bytes([len(label)]) + label.encode()
    return out + b"\0"


def header(msg_id=0x1234, response=False, rcode=0, qd=1, an=0, ns=0, ar=0, tc=False) -> bytes:
    flags = (0x8000 if response else 0) | 0x0100 | (0x0080 if response else 0) | rcode
    flags |= 0x0200 if tc else 0
    return struct.pack("!6H", msg_id, flags, qd, an, ns, ar)


def question(n: str, qtype=1) -> bytes:
    return name(n) + struct.pack("!HH", qtype, 1)


def rr(owner: bytes, rtype: int, ttl: int, rdata: bytes) -> bytes:
    return owner + struct.pack("!HHIH", rtype, 1, ttl, len(rdata)) + rdata


def a(owner: bytes, ip: str, ttl=30) -> bytes:
    packed = ipaddress.ip_address(ip).packed
    return rr(owner, 1 if len(packed) == 4 else 28, ttl, packed)


def query(n: str, qtype=1, msg_id=0x1234) -> bytes:
    return header(msg_id) + question(n, qtype)


def answer(n: str, ips=(), qtype=1, msg_id=0x1234, rcode=0, ttl=30) -> bytes:
    """A response whose answers point back at the question name (pointer 0xc00c)."""
    body = b"".join(a(b"\xc0\x0c", ip, ttl) for ip in ips)
    return header(msg_id, True, rcode, an=len(ips)) + question(n, qtype) + body


def tcp(msg: bytes) -> bytes:
    return struct.pack("!H", len(msg)) + msg
