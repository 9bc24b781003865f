"""DNS message decoding (RFC 1035 wire format), for the DNS packets the datapath captures.

The input is whatever a pod put on the wire, cut at the capture bound: it can be malformed,
hostile (compression loops, pointers past the end, counts that lie) or simply truncated by
the capture. `decode` never raises anything but `DnsDecodeError`, and a message cut by the
capture (`complete=False`) yields what could be read instead of an error.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field

from agent.errors import DnsDecodeError

QTYPES = {1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 12: "PTR", 13: "HINFO", 15: "MX", 16: "TXT",
          28: "AAAA", 33: "SRV", 35: "NAPTR", 39: "DNAME", 41: "OPT", 43: "DS", 46: "RRSIG",
          47: "NSEC", 48: "DNSKEY", 64: "SVCB", 65: "HTTPS", 252: "AXFR", 255: "ANY", 257: "CAA"}
RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED",
          6: "YXDOMAIN", 7: "YXRRSET", 8: "NXRRSET", 9: "NOTAUTH", 10: "NOTZONE"}
TYPE_A, TYPE_CNAME, TYPE_AAAA = 1, 5, 28

MAX_NAME_BYTES = 255     # RFC 1035 2.3.4
MAX_POINTER_JUMPS = 64   # far more than any honest message needs; stops loops early
MAX_RECORDS = 512        # per section: a 64 KiB message cannot hold more real records


class _Truncated(DnsDecodeError):
    """Ran out of bytes: malformed if the message was complete, else cut by the capture."""


def qtype_name(code: int) -> str:
    return QTYPES.get(code, f"TYPE{code}")


def rcode_name(code: int) -> str:
    return RCODES.get(code, f"RCODE{code}")


@dataclass
class Record:
    name: str
    rtype: int
    ttl: int
    data: str | None  # the address (A/AAAA) or target name (CNAME); None for other types


@dataclass
class DnsMessage:
    id: int
    response: bool
    opcode: int
    rcode: int
    truncated_flag: bool  # TC bit: the server truncated the answer (client retries over TCP)
    questions: list[tuple[str, int]] = field(default_factory=list)  # (name, qtype)
    answers: list[Record] = field(default_factory=list)
    partial: bool = False  # the capture cut the message; sections may be incomplete

    @property
    def query(self) -> str:
        return self.questions[0][0] if self.questions else ""

    @property
    def rcode_name(self) -> str:
        return rcode_name(self.rcode)

    def addresses(self) -> list[str]:
        return [r.data for r in self.answers if r.rtype in (TYPE_A, TYPE_AAAA) and r.data]

    def min_ttl(self) -> int:
        ttls = [r.ttl for r in self.answers]
        return min(ttls) if ttls else 0

    def names_for(self, address: str) -> list[str]:
        """The names a client asked for that lead to `address`: the question, then each
        CNAME target in the chain, in order (e.g. an ExternalName Service's name first)."""
        owners = {r.name.lower() for r in self.answers if r.data == address
                  and r.rtype in (TYPE_A, TYPE_AAAA)}
        if not owners:
            return []
        cnames = {r.name.lower(): r.data for r in self.answers if r.rtype == TYPE_CNAME and r.data}
        chain: list[str] = []
        seen: set[str] = set()
        name = self.query
        while name and name.lower() not in seen:  # `seen`: a CNAME loop ends the walk
            seen.add(name.lower())
            chain.append(name)
            if name.lower() in owners:
                return chain
            name = cnames.get(name.lower(), "")
        # The address does not hang off the question: the question is still what was asked.
        return [self.query] if self.query else sorted(owners)


def _read_name(buf: bytes, offset: int) -> tuple[str, int]:
    """Read a possibly compressed name at `offset`; return it and the offset after it."""
    labels: list[str] = []
    total = 0
    jumps = 0
    end_offset = -1
    pos = offset
    while True:
        if pos >= len(buf):
            raise _Truncated(f"name at {offset} runs past the end")
        length = buf[pos]
        kind = length & 0xC0
        if kind == 0xC0:
            if pos + 1 >= len(buf):
                raise _Truncated(f"compression pointer at {pos} cut")
            target = ((length & 0x3F) << 8) | buf[pos + 1]
            if end_offset < 0:
                end_offset = pos + 2
            # Pointers must go backwards: this alone rules out loops.
            if target >= pos:
                raise DnsDecodeError(f"compression pointer at {pos} does not point backwards")
            jumps += 1
            if jumps > MAX_POINTER_JUMPS:
                raise DnsDecodeError(f"too many compression pointers in name at {offset}")
            pos = target
            continue
        if kind != 0:
            raise DnsDecodeError(f"reserved label type {length:#x} at {pos}")
        if length == 0:
            if end_offset < 0:
                end_offset = pos + 1
            break
        if pos + 1 + length > len(buf):
            raise _Truncated(f"label at {pos} runs past the end")
        total += length + 1
        if total > MAX_NAME_BYTES:
            raise DnsDecodeError(f"name at {offset} longer than {MAX_NAME_BYTES} bytes")
        labels.append(buf[pos + 1:pos + 1 + length].decode("ascii", errors="backslashreplace"))
        pos += 1 + length
    return ".".join(labels), end_offset


def _read_record(buf: bytes, pos: int) -> tuple[Record, int]:
    name, pos = _read_name(buf, pos)
    if pos + 10 > len(buf):
        raise _Truncated(f"record header at {pos} cut")
    rtype, _rclass, ttl, rdlength = struct.unpack_from("!HHIH", buf, pos)
    pos += 10
    if pos + rdlength > len(buf):
        raise _Truncated(f"record data at {pos} cut ({rdlength} bytes announced)")
    data: str | None = None
    if rtype == TYPE_A:
        if rdlength != 4:
            raise DnsDecodeError(f"A record with {rdlength} bytes of data at {pos}")
        data = str(ipaddress.IPv4Address(buf[pos:pos + 4]))
    elif rtype == TYPE_AAAA:
        if rdlength != 16:
            raise DnsDecodeError(f"AAAA record with {rdlength} bytes of data at {pos}")
        data = str(ipaddress.IPv6Address(buf[pos:pos + 16]))
    elif rtype == TYPE_CNAME:
        data, _ = _read_name(buf, pos)
    return Record(name, rtype, ttl, data), pos + rdlength


def decode(payload: bytes, tcp: bool = False, complete: bool = True) -> DnsMessage:
    """Decode one DNS message. `tcp`: the payload starts with the 2-byte length prefix.
    `complete=False`: the capture may have cut the message; return what was read."""
    buf = bytes(payload)
    if tcp:
        if len(buf) < 2:
            raise DnsDecodeError("TCP DNS payload shorter than its length prefix")
        (length,) = struct.unpack_from("!H", buf)
        body = buf[2:2 + length]
        if len(body) < length and complete:
            raise DnsDecodeError(f"TCP DNS message announces {length} bytes, has {len(body)}")
        complete = complete and len(body) == length
        buf = body
    if len(buf) < 12:
        raise DnsDecodeError(f"DNS header needs 12 bytes, got {len(buf)}")
    msg_id, flags, qdcount, ancount, _nscount, _arcount = struct.unpack_from("!6H", buf)
    if qdcount > MAX_RECORDS or ancount > MAX_RECORDS:
        raise DnsDecodeError(f"implausible counts: {qdcount} questions, {ancount} answers")
    msg = DnsMessage(id=msg_id, response=bool(flags & 0x8000), opcode=(flags >> 11) & 0xF,
                     rcode=flags & 0xF, truncated_flag=bool(flags & 0x0200))
    pos = 12
    try:
        for _ in range(qdcount):
            name, pos = _read_name(buf, pos)
            if pos + 4 > len(buf):
                raise _Truncated(f"question at {pos} cut")
            qtype, _qclass = struct.unpack_from("!HH", buf, pos)
            pos += 4
            msg.questions.append((name, qtype))
        for _ in range(ancount):
            record, pos = _read_record(buf, pos)
            msg.answers.append(record)
    except _Truncated:
        if complete:
            raise
        msg.partial = True
    if not msg.questions and not msg.partial and msg.opcode == 0 and not msg.response:
        raise DnsDecodeError("standard query without a question")
    return msg
