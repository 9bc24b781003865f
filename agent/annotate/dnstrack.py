"""DNS state across packets: query -> answer latency, the DNS record of each port-53 flow, and
which names each pod looked up for which address.

The datapath hands every captured DNS packet to `DnsTracker.packet`; the annotate stage calls
`DnsTracker.annotate(flows)` to set `flow.dns` on port-53 flows and `destination.names`
(`source.names` for the replies) on any later flow between a pod and an address it looked up,
so pod-to-world flows read `api.example.com` and ExternalName Services show their name.
Every table is bounded; malformed messages are counted in `malformed`, never raised.
"""

from __future__ import annotations

import ctypes
import ipaddress
import time
from collections import OrderedDict
from dataclasses import dataclass

from agent.datapath.abi import EVENT_DNS, PF_FAMILY_IPV4, FlowKey
from agent.datapath.extension import DatapathExtension
from agent.annotate.dns import DnsDecodeError, DnsMessage, decode, qtype_name
from podflow_api.v1 import flow_pb2

DNS_PORT = 53
NAME_GRACE_S = 300.0  # clients keep using an address a little after its TTL ran out


@dataclass
class DnsPacket:
    """One captured DNS packet as the datapath decoded its headers."""

    ifindex: int
    proto: str            # "udp" or "tcp"
    src_ip: str
    dst_ip: str
    src_port: int
    dst_port: int
    payload: bytes        # the L4 payload as captured (bounded by the kernel)
    payload_len: int      # the L4 payload length on the wire
    ts_ns: int            # kernel monotonic time of the packet


class DnsEventHeader(ctypes.Structure):
    """struct pf_dns_event (bpf/dns.h) without its payload; the payload follows at
    ctypes.sizeof(DnsEventHeader) and holds `captured` bytes."""

    _fields_ = [
        ("kind", ctypes.c_uint8),
        ("_pad", ctypes.c_uint8 * 7),
        ("key", FlowKey),
        ("payload_len", ctypes.c_uint16),
        ("captured", ctypes.c_uint16),
        ("ts_ns", ctypes.c_uint64),
    ]


DNS_EVENT_HEADER_SIZE = ctypes.sizeof(DnsEventHeader)
_PROTOS = {6: "tcp", 17: "udp"}


def packet_from_event(data: bytes) -> DnsPacket | None:
    """A PF_EVENT_DNS ring-buffer record -> DnsPacket (None when it is not one)."""
    if len(data) < DNS_EVENT_HEADER_SIZE:
        return None
    hdr = DnsEventHeader.from_buffer_copy(data)
    proto = _PROTOS.get(hdr.key.proto)
    if hdr.kind != EVENT_DNS or proto is None:
        return None
    if hdr.key.family == PF_FAMILY_IPV4:
        src = str(ipaddress.IPv4Address(bytes(hdr.key.src_addr[:4])))
        dst = str(ipaddress.IPv4Address(bytes(hdr.key.dst_addr[:4])))
    else:
        src = str(ipaddress.IPv6Address(bytes(hdr.key.src_addr)))
        dst = str(ipaddress.IPv6Address(bytes(hdr.key.dst_addr)))
    captured = min(hdr.captured, len(data) - DNS_EVENT_HEADER_SIZE)
    payload = bytes(data[DNS_EVENT_HEADER_SIZE:DNS_EVENT_HEADER_SIZE + captured])
    return DnsPacket(ifindex=hdr.key.ifindex, proto=proto, src_ip=src, dst_ip=dst,
                     src_port=hdr.key.src_port, dst_port=hdr.key.dst_port, payload=payload,
                     payload_len=hdr.payload_len, ts_ns=hdr.ts_ns)


class _Bounded(OrderedDict):
    """An insertion-ordered dict that forgets its oldest entries past `limit`."""

    def __init__(self, limit: int):
        super().__init__()
        self.limit = limit

    def put(self, key, value) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.limit:
            self.popitem(last=False)


def _merge(old: flow_pb2.DNS | None, new: flow_pb2.DNS) -> flow_pb2.DNS:
    """Resolvers ask for A and AAAA of one name from one socket: one flow, two messages
    each way. Its record then lists both types and every address; otherwise last wins."""
    if old is None or old.query != new.query or old.response != new.response:
        return new
    merged = flow_pb2.DNS()
    merged.CopyFrom(new)
    merged.qtypes[:] = list(dict.fromkeys([*old.qtypes, *new.qtypes]))
    merged.ips[:] = list(dict.fromkeys([*old.ips, *new.ips]))
    if old.ttl and (not new.ttl or old.ttl < new.ttl):
        merged.ttl = old.ttl
    if new.rcode == "NOERROR" and old.rcode not in ("", "NOERROR"):
        merged.rcode = old.rcode  # a failure of either answer is what the user needs to see
    return merged


class DnsTracker:
    def __init__(self, max_entries: int = 65536, clock=time.monotonic):
        self._clock = clock
        self._queries = _Bounded(max_entries)   # (client ip, port, server ip, id) -> query ts_ns
        self._latency = _Bounded(max_entries)   # same key -> latency_ns once answered
        self._by_tuple = _Bounded(max_entries)  # (proto, src ip, sport, dst ip, dport) -> DNS
        self._names = _Bounded(max_entries)     # (client ip, answered ip) -> (names, expiry s)
        self.messages = 0
        self.malformed = 0

    def packet(self, pkt: DnsPacket) -> DnsMessage | None:
        """Decode one packet and learn from it; None (and counted) when malformed."""
        try:
            msg = decode(pkt.payload, tcp=pkt.proto == "tcp",
                         complete=len(pkt.payload) >= pkt.payload_len)
        except DnsDecodeError:
            self.malformed += 1
            return None
        self.messages += 1
        record = flow_pb2.DNS(query=msg.query, qtypes=[qtype_name(t) for _, t in msg.questions],
                              response=msg.response, id=msg.id)
        if msg.response:
            key = (pkt.dst_ip, pkt.dst_port, pkt.src_ip, msg.id)
            record.rcode = msg.rcode_name
            record.ips.extend(msg.addresses())
            record.ttl = msg.min_ttl()
            latency = self._latency.get(key)
            if latency is None:
                asked = self._queries.get(key)
                if asked is not None and pkt.ts_ns >= asked:
                    latency = pkt.ts_ns - asked
                    self._latency.put(key, latency)
            record.latency_ns = latency or 0
            self._learn_names(pkt.dst_ip, msg)
        else:
            key = (pkt.src_ip, pkt.src_port, pkt.dst_ip, msg.id)
            # The same query seen at a second observation point keeps its first timestamp.
            if key not in self._queries:
                self._queries.put(key, pkt.ts_ns)
        tuple_key = (pkt.proto, pkt.src_ip, pkt.src_port, pkt.dst_ip, pkt.dst_port)
        self._by_tuple.put(tuple_key, _merge(self._by_tuple.get(tuple_key), record))
        return msg

    def _learn_names(self, client_ip: str, msg: DnsMessage) -> None:
        expiry = self._clock() + NAME_GRACE_S
        for record in msg.answers:
            if record.data is None or record.rtype not in (1, 28):
                continue
            names = msg.names_for(record.data)
            if names:
                self._names.put((client_ip, record.data),
                                (names, max(expiry, self._clock() + record.ttl)))

    def names(self, client_ip: str, address: str) -> list[str]:
        entry = self._names.get((client_ip, address))
        if entry is None:
            return []
        names, expiry = entry
        if self._clock() > expiry:
            del self._names[(client_ip, address)]
            return []
        return names

    def annotate_batch(self, batch) -> None:
        """A batch of records (agent/datapath/batch.py): the DNS message of each port-53
        record (as extra Flow bytes), the looked-up names of each address pair."""
        groups = batch.groups
        port53 = ((batch.sport == DNS_PORT) | (batch.dport == DNS_PORT)) & (
            (batch.proto == 6) | (batch.proto == 17))
        if port53.any():
            rows = port53.nonzero()[0]
            for i, g, proto, sport, dport in zip(rows.tolist(), batch.group[rows].tolist(),
                                                 batch.proto[rows].tolist(),
                                                 batch.sport[rows].tolist(),
                                                 batch.dport[rows].tolist()):
                group = groups[g]
                record = self._by_tuple.get((_PROTOS[proto], group.source, sport,
                                             group.destination, dport))
                if record is not None:
                    batch.extras[i] = flow_pb2.Flow(dns=record).SerializeToString()
        if not self._names:
            return
        names = {}
        for g, group in enumerate(groups):
            src_names = self.names(group.destination, group.source)
            dst_names = self.names(group.source, group.destination)
            if src_names or dst_names:
                names[g] = (tuple(src_names), tuple(dst_names))
        batch.group_names = names

    def annotate(self, flows: list[flow_pb2.Flow]) -> None:
        for flow in flows:
            kind = flow.l4.WhichOneof("protocol")
            if kind in ("udp", "tcp"):
                l4 = getattr(flow.l4, kind)
                if DNS_PORT in (l4.source_port, l4.destination_port):
                    record = self._by_tuple.get((kind, flow.ip.source, l4.source_port,
                                                 flow.ip.destination, l4.destination_port))
                    if record is not None:
                        flow.dns.CopyFrom(record)
                    continue
            if not self._names:
                continue
            names = self.names(flow.ip.source, flow.ip.destination)
            if names:
                flow.destination.names[:] = names
            names = self.names(flow.ip.destination, flow.ip.source)
            if names:
                flow.source.names[:] = names


ERR_DNS_LOST = 24  # bpf/dns.h PF_ERR_DNS_LOST


class DnsExtension(DatapathExtension):
    """The datapath extension (agent/datapath/extension.py) for DNS: compiles dns.h into the
    TC programs and hands every captured packet to `sink` (the annotator's dns_packet). It
    runs inside the TC programs the datapath attaches: nothing to attach, detach or sweep."""

    def __init__(self, sink, capture_bytes: int = 512):
        self.sink = sink
        self.capture_bytes = capture_bytes

    def cflags(self) -> list[str]:
        return ["-DPODFLOW_DNS", f"-DPODFLOW_DNS_CAPTURE={self.capture_bytes}"]

    def error_names(self) -> dict[int, str]:
        return {ERR_DNS_LOST: "ringbuf_full_dns"}

    def event_handlers(self) -> dict:
        return {EVENT_DNS: self._on_event}

    def _on_event(self, _datapath, raw: bytes) -> None:
        packet = packet_from_event(raw)
        if packet is not None:
            self.sink(packet)
