"""The DNS decoder on well-formed, hostile and truncated messages (no root needed)."""

from __future__ import annotations

import random

import pytest

from agent.annotate.dns import DnsDecodeError, decode
from tests.annotate.dnswire import a, answer, header, name, query, question, rr, tcp

CNAME_CHAIN = (header(7, True, an=3) + question("ext.shop.svc.cluster.local")
               + rr(b"\xc0\x0c", 5, 60, name("api.example.com"))
               + rr(name("api.example.com"), 5, 60, b"\x04edge\xc0\x3c")   # edge + pointer to "example.com"
               + a(name("edge.example.com"), "203.0.113.7", ttl=20))

GOOD = [
    # id, wire, tcp, (query, qtypes, response, rcode, addresses)
    ("query-a", query("cart.shop.svc.cluster.local"), False,
     ("cart.shop.svc.cluster.local", [1], False, "NOERROR", [])),
    ("query-aaaa", query("cart.shop", qtype=28), False, ("cart.shop", [28], False, "NOERROR", [])),
    ("answer-a-compressed", answer("cart.shop.svc.cluster.local", ["10.96.0.12"]), False,
     ("cart.shop.svc.cluster.local", [1], True, "NOERROR", ["10.96.0.12"])),
    ("answer-two-a", answer("web", ["10.244.1.5", "10.244.2.6"]), False,
     ("web", [1], True, "NOERROR", ["10.244.1.5", "10.244.2.6"])),
    ("answer-aaaa", answer("web", ["fd00::5"], qtype=28), False, ("web", [28], True, "NOERROR", ["fd00::5"])),
    ("nxdomain", answer("nope.shop.svc.cluster.local", rcode=3), False,
     ("nope.shop.svc.cluster.local", [1], True, "NXDOMAIN", [])),
    ("servfail", answer("x", rcode=2), False, ("x", [1], True, "SERVFAIL", [])),
    ("unknown-rcode", answer("x", rcode=12), False, ("x", [1], True, "RCODE12", [])),
    ("cname-chain", CNAME_CHAIN, False,
     ("ext.shop.svc.cluster.local", [1], True, "NOERROR", ["203.0.113.7"])),
    ("tcp-length-prefix", tcp(answer("db.shop", ["10.96.0.20"])), True,
     ("db.shop", [1], True, "NOERROR", ["10.96.0.20"])),
    ("root-name", header() + b"\x00" + b"\x00\x02\x00\x01", False, ("", [2], False, "NOERROR", [])),
]


@pytest.mark.parametrize("wire,is_tcp,expected", [g[1:] for g in GOOD], ids=[g[0] for g in GOOD])
def test_decodes(wire, is_tcp, expected):
    msg = decode(wire, tcp=is_tcp)
    assert (msg.query, [t for _, t in msg.questions], msg.response, msg.rcode_name,
            msg.addresses()) == expected


def test_cname_chain_names_and_ttl():
    msg = decode(CNAME_CHAIN)
    assert msg.names_for("203.0.113.7") == ["ext.shop.svc.cluster.local", "api.example.com",
                                            "edge.example.com"]
    assert msg.min_ttl() == 20 and msg.id == 7


BAD = [
    ("empty", b"", False),
    ("short-header", b"\x12\x34\x01", False),
    ("pointer-loop-self", header() + b"\xc0\x0c" + b"\x00\x01\x00\x01", False),
    ("pointer-forward", header() + b"\xc0\x20" + b"\x00" * 30, False),
    ("pointer-ping-pong", header(qd=2) + b"\x00\x00\x01\x00\x01" + b"\xc0\x13\x00\x01\x00\x01"
     + b"\xc0\x11", False),
    ("pointer-cut", header() + b"\xc0", False),
    ("label-past-end", header() + b"\x3fabc", False),
    ("reserved-label-bits", header() + b"\x80abc\x00\x00\x01\x00\x01", False),
    ("name-too-long", header() + b"\x3f" + b"a" * 63 + b"\x3f" + b"b" * 63 + b"\x3f" + b"c" * 63
     + b"\x3f" + b"d" * 63 + b"\x00\x00\x01\x00\x01", False),
    ("question-count-lies", header(qd=5) + question("a.b"), False),
    ("answer-count-lies", header(response=True, an=3) + question("a") + a(b"\xc0\x0c", "1.2.3.4"), False),
    ("implausible-counts", header(qd=65535, an=65535), False),
    ("a-record-bad-length", header(response=True, an=1) + question("a") + rr(b"\xc0\x0c", 1, 5, b"\x01\x02"), False),
    ("rdata-past-end", header(response=True, an=1) + question("a") + b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x05\x00\x04\x01", False),
    ("query-without-question", header(qd=0), False),
    ("tcp-no-prefix", b"\x00", True),
    ("tcp-prefix-longer-than-data", b"\x01\x00" + query("a"), True),
]


@pytest.mark.parametrize("wire,is_tcp", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_rejects(wire, is_tcp):
    with pytest.raises(DnsDecodeError):
        decode(wire, tcp=is_tcp)


def test_cut_by_capture_keeps_what_was_read():
    wire = answer("cart.shop.svc.cluster.local", ["10.96.0.12", "10.96.0.13"])
    msg = decode(wire[:-6], complete=False)
    assert msg.partial and msg.query == "cart.shop.svc.cluster.local"
    assert msg.addresses() == ["10.96.0.12"]
    with pytest.raises(DnsDecodeError):
        decode(wire[:-6], complete=True)


def test_random_garbage_never_raises_anything_else():
    rnd = random.Random(9)
    seeds = [g[1] for g in GOOD]
    for _ in range(20000):
        wire = bytearray(rnd.choice(seeds))
        for _ in range(rnd.randint(1, 6)):
            wire[rnd.randrange(len(wire))] = rnd.randrange(256)
        wire = bytes(wire[:rnd.randint(0, len(wire))])
        for is_tcp in (False, True):
            for complete in (False, True):
                try:
                    decode(wire, tcp=is_tcp, complete=complete)
                except DnsDecodeError:
                    pass
