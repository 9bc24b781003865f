"""Service address translations read from the kernel's connection tracking over netlink.

kube-proxy (iptables or nftables) DNATs a connection to a ClusterIP or NodePort to one
backend; only conntrack knows which. A pod's veth sees the client's packets before the DNAT
(client -> ClusterIP) and the backend's veth sees them after it (client -> backend), so
each record is matched against both tuples of the conntrack entry, in both directions, to
report the whole connection as one hop.

Two sources, both over NETLINK_NETFILTER (ctnetlink), no `conntrack` CLI:
- events (NEW/DESTROY) of DNATed connections only (a socket filter in the kernel refuses
  the others: agent/enrich/ctfilter.py), read by a thread and drained again at the start of
  every batch, so a connection that is already gone when its flow record arrives is still
  attributed;
- lookups (IPCTNL_MSG_CT_GET by original or reply tuple) for connections opened before the
  listener started or while it lost events, cached per 5-tuple for a short TTL. The
  enrichment asks only for records a Service may be involved in (agent/enrich/batch.py).
Both caches expire from queues in expiry order: no walk over every entry.

The agent runs in the node's network namespace, so this reads that node's table.
"""

from __future__ import annotations

import ctypes
import errno
import ipaddress
import logging
import os
import select
import socket
import struct
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import NamedTuple

from agent.enrich import ctfilter
from agent.errors import ConntrackError

log = logging.getLogger("podflow.conntrack")

NETLINK_NETFILTER = 12
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 1
NFNL_SUBSYS_CTNETLINK = 1
IPCTNL_MSG_CT_NEW = 0
IPCTNL_MSG_CT_GET = 1
IPCTNL_MSG_CT_DELETE = 2
NFNLGRP_CONNTRACK_NEW = 1
NFNLGRP_CONNTRACK_DESTROY = 3
NLA_F_NESTED = 0x8000
NLA_TYPE_MASK = 0x3FFF
CTA_TUPLE_ORIG = 1
CTA_TUPLE_REPLY = 2
CTA_TUPLE_IP = 1
CTA_TUPLE_PROTO = 2
CTA_IP_V4_SRC, CTA_IP_V4_DST, CTA_IP_V6_SRC, CTA_IP_V6_DST = 1, 2, 3, 4
CTA_PROTO_NUM, CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT = 1, 2, 3
SOL_NETLINK = 270

PROTOCOLS_WITH_PORTS = (6, 17, 132)  # TCP, UDP, SCTP

_NLMSGHDR = struct.Struct("=IHHII")
_NFGENMSG = struct.Struct("=BBH")
_NLATTR = struct.Struct("=HH")


class Tuple5(NamedTuple):
    """A connection's 5-tuple in one direction (a NamedTuple: built for every record, so
    it must be cheap to create and hash)."""

    proto: int
    src: str
    sport: int
    dst: str
    dport: int

    def reversed(self) -> "Tuple5":
        return Tuple5(self.proto, self.dst, self.dport, self.src, self.sport)


@dataclass(frozen=True, slots=True)
class Entry:
    """One conntrack entry: the original tuple (as the client sent it) and the reply tuple
    (as the answer comes back, i.e. after DNAT the backend is its source)."""

    orig: Tuple5
    reply: Tuple5

    @property
    def dnat(self) -> bool:
        """The destination was translated: the reply does not come from where the client
        sent its packets."""
        return (self.reply.src, self.reply.sport) != (self.orig.dst, self.orig.dport)


@dataclass(frozen=True, slots=True)
class Match:
    """An entry and how a flow record lines up with it."""

    entry: Entry
    is_reply: bool  # the record's packets travel from the server back to the client


def _attr(attr_type: int, payload: bytes, nested: bool = False) -> bytes:
    length = _NLATTR.size + len(payload)
    flags = NLA_F_NESTED if nested else 0
    return _NLATTR.pack(length, attr_type | flags) + payload + b"\0" * ((4 - length % 4) % 4)


def _encode_tuple(t: Tuple5, family: int) -> bytes:
    src, dst = socket.inet_pton(family, t.src), socket.inet_pton(family, t.dst)
    src_type, dst_type = ((CTA_IP_V4_SRC, CTA_IP_V4_DST) if family == socket.AF_INET
                          else (CTA_IP_V6_SRC, CTA_IP_V6_DST))
    ip = _attr(CTA_TUPLE_IP, _attr(src_type, src) + _attr(dst_type, dst), nested=True)
    proto = _attr(CTA_TUPLE_PROTO,
                  _attr(CTA_PROTO_NUM, struct.pack("B", t.proto))
                  + _attr(CTA_PROTO_SRC_PORT, struct.pack("!H", t.sport))
                  + _attr(CTA_PROTO_DST_PORT, struct.pack("!H", t.dport)), nested=True)
    return ip + proto


def _attrs(data: bytes, offset: int, end: int):
    while offset + 4 <= end:
        length, attr_type = _NLATTR.unpack_from(data, offset)
        if length < 4:
            return
        yield attr_type & NLA_TYPE_MASK, offset + 4, offset + length
        offset += (length + 3) & ~3


def _decode_tuple(data: bytes, start: int, end: int) -> Tuple5 | None:
    src = dst = None
    proto = sport = dport = 0
    for attr_type, a_start, a_end in _attrs(data, start, end):
        if attr_type == CTA_TUPLE_IP:
            for ip_type, i_start, i_end in _attrs(data, a_start, a_end):
                raw = data[i_start:i_end]
                if ip_type in (CTA_IP_V4_SRC, CTA_IP_V6_SRC):
                    src = str(ipaddress.ip_address(raw))
                elif ip_type in (CTA_IP_V4_DST, CTA_IP_V6_DST):
                    dst = str(ipaddress.ip_address(raw))
        elif attr_type == CTA_TUPLE_PROTO:
            for p_type, p_start, _p_end in _attrs(data, a_start, a_end):
                if p_type == CTA_PROTO_NUM:
                    proto = data[p_start]
                elif p_type == CTA_PROTO_SRC_PORT:
                    sport = struct.unpack_from("!H", data, p_start)[0]
                elif p_type == CTA_PROTO_DST_PORT:
                    dport = struct.unpack_from("!H", data, p_start)[0]
    if src is None or dst is None:
        return None
    return Tuple5(proto, src, sport, dst, dport)


def decode_entry(data: bytes, offset: int, end: int) -> Entry | None:
    """Decode the attributes of one ctnetlink message (after nlmsghdr and nfgenmsg)."""
    orig = reply = None
    for attr_type, a_start, a_end in _attrs(data, offset, end):
        if attr_type == CTA_TUPLE_ORIG:
            orig = _decode_tuple(data, a_start, a_end)
        elif attr_type == CTA_TUPLE_REPLY:
            reply = _decode_tuple(data, a_start, a_end)
    if orig is None or reply is None:
        return None
    return Entry(orig, reply)


def _open_socket(groups: int = 0, netns: str | None = None) -> socket.socket:
    """A ctnetlink socket; with `netns` (a /run/netns path) one bound to that namespace's
    table, opened from a short-lived thread that enters it (tests read a lab node's table
    this way without moving the whole process)."""
    if netns is not None:
        result: list = []

        def opener() -> None:
            try:
                fd = os.open(netns, os.O_RDONLY)
                try:
                    if _libc().setns(fd, 0x40000000) != 0:  # CLONE_NEWNET
                        raise OSError(ctypes.get_errno(), f"setns {netns}")
                finally:
                    os.close(fd)
                result.append(_open_socket(groups))
            except OSError as exc:
                result.append(exc)

        thread = threading.Thread(target=opener, name="conntrack-netns")
        thread.start()
        thread.join()
        if isinstance(result[0], OSError):
            exc = result[0]
            raise ConntrackError(exc.errno, f"cannot open conntrack in {netns}: {exc}") from exc
        return result[0]
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        sock.bind((0, groups))
    except OSError as exc:
        raise ConntrackError(exc.errno, f"cannot open the conntrack netlink socket: {exc.strerror}") from exc
    return sock


def _libc():
    return ctypes.CDLL(None, use_errno=True)


class Conntrack:
    """Answers "which conntrack entry does this flow record belong to?" for DNATed
    connections; `lookup` returns None for connections that were not translated."""

    def __init__(self, event_grace_s: float = 30.0, lookup_ttl_s: float = 10.0,
                 max_entries: int = 200_000, netns: str | None = None) -> None:
        self._netns = netns
        self._event_grace_ns = int(event_grace_s * 1e9)
        self._lookup_ttl_ns = int(lookup_ttl_s * 1e9)
        self._max_entries = max_entries
        self._query_sock: socket.socket | None = None
        self._event_sock: socket.socket | None = None
        self._seq = 0
        self._query_lock = threading.Lock()
        self._event_lock = threading.Lock()
        # 5-tuple as a record sees it -> (Match, expires_ns or 0 while the entry lives)
        self._events: dict[Tuple5, tuple[Match, int]] = {}
        self._lookups: dict[Tuple5, tuple[Match | None, int]] = {}
        # (expires_ns, 5-tuple) in expiry order: destroyed entries' grace, lookups' TTL
        self._event_expiry: deque = deque()
        self._lookup_expiry: deque = deque()
        self._listening_since_ns = 0   # events cover connections confirmed after this
        self._events_lost_at_ns = 0    # the last time the kernel dropped events (ENOBUFS)
        self.events_lost = 0
        self.lookups = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_sweep_ns = 0

    # ---- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        self._query_sock = _open_socket(netns=self._netns)
        self._query_sock.settimeout(1.0)
        groups = (1 << (NFNLGRP_CONNTRACK_NEW - 1)) | (1 << (NFNLGRP_CONNTRACK_DESTROY - 1))
        self._event_sock = _open_socket(groups, self._netns)
        try:
            ctfilter.attach(self._event_sock)
        except OSError as exc:  # every event is then read (and checked) here
            log.warning("conntrack events are not filtered in the kernel: %s", exc)
        try:  # a large buffer: bursts of short connections must not overflow it
            self._event_sock.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)  # SO_RCVBUFFORCE
        except OSError:
            self._event_sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self._event_sock.setblocking(False)
        self._listening_since_ns = time.time_ns()
        self._thread = threading.Thread(target=self._listen, name="conntrack-events", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        for sock in (self._query_sock, self._event_sock):
            if sock is not None:
                sock.close()
        self._query_sock = self._event_sock = None

    # ---- events ------------------------------------------------------------------------

    def _listen(self) -> None:
        while not self._stop.is_set():
            sock = self._event_sock
            if sock is None:
                return
            try:
                readable, _, _ = select.select([sock], [], [], 0.5)
            except (OSError, ValueError):
                return
            if readable:
                self.drain()

    def drain(self) -> None:
        """Read every pending event now (also called before each batch is enriched, so a
        connection confirmed before its flow record was read is always known)."""
        sock = self._event_sock
        if sock is None:
            return
        with self._event_lock:
            while True:
                try:
                    data = sock.recv(1 << 16)
                except BlockingIOError:
                    break
                except OSError as exc:
                    if exc.errno == errno.ENOBUFS:
                        self.events_lost += 1
                        self._events_lost_at_ns = time.time_ns()
                        log.warning("conntrack events were lost (socket buffer full); "
                                    "falling back to lookups")
                        continue
                    return
                self._on_events(data)
            now = time.monotonic_ns()
            if now - self._last_sweep_ns > 1_000_000_000:
                self._sweep(now)

    def _on_events(self, data: bytes) -> None:
        offset = 0
        now = time.monotonic_ns()
        while offset + _NLMSGHDR.size <= len(data):
            length, msg_type, _flags, _seq, _pid = _NLMSGHDR.unpack_from(data, offset)
            if length < _NLMSGHDR.size:
                break
            if msg_type >> 8 == NFNL_SUBSYS_CTNETLINK:
                entry = decode_entry(data, offset + _NLMSGHDR.size + _NFGENMSG.size, offset + length)
                if entry is not None and entry.dnat:
                    expires = now + self._event_grace_ns if (msg_type & 0xFF) == IPCTNL_MSG_CT_DELETE else 0
                    self._remember(entry, expires)
            offset += (length + 3) & ~3

    def _remember(self, entry: Entry, expires_ns: int) -> None:
        if len(self._events) >= self._max_entries * 4:
            self._sweep(time.monotonic_ns(), force=True)
        request, reply = Match(entry, False), Match(entry, True)
        # The four ways a record can line up with the entry: client->VIP (before DNAT),
        # client->backend (after DNAT), backend->client and VIP->client.
        keys = (entry.orig, entry.reply.reversed(), entry.reply, entry.orig.reversed())
        events = self._events
        for key, match in zip(keys, (request, request, reply, reply)):
            events[key] = (match, expires_ns)
        if expires_ns:
            self._event_expiry.append((expires_ns, keys))

    def _sweep(self, now_ns: int, force: bool = False) -> None:
        """Forget what expired, from the queues (oldest first)."""
        self._last_sweep_ns = now_ns
        events, queue = self._events, self._event_expiry
        while queue and queue[0][0] < now_ns:
            expires, keys = queue.popleft()
            for key in keys:
                held = events.get(key)
                if held is not None and held[1] == expires:  # not renewed by a later event
                    del events[key]
        lookups, queue = self._lookups, self._lookup_expiry
        while queue and queue[0][0] < now_ns:
            expires, key = queue.popleft()
            held = lookups.get(key)
            if held is not None and held[1] == expires:
                del lookups[key]
        if force and len(self._events) >= self._max_entries * 4:
            # Still full of live entries (or lost DESTROY events): forget the oldest half;
            # lookups cover whatever is still in the kernel.
            for key in list(self._events)[: len(self._events) // 2]:
                self._events.pop(key, None)
            self._events_lost_at_ns = time.time_ns()

    # ---- lookups -----------------------------------------------------------------------

    def lookup(self, t: Tuple5, first_seen=0, opening: bool = False,
               query: bool = True) -> Match | None:
        """The DNATed connection a record with 5-tuple `t` belongs to, or None.

        A record that holds its connection's opening packet (`opening`: TCP SYN) and whose
        `first_seen` (wall clock ns, or the record's Timestamp, read only when needed) is
        after the event listener started, with no event lost since, skips the netlink
        round trips: that connection's NEW event was received. Any other record (UDP, or
        a connection older than the agent) is looked up in the kernel, cached per 5-tuple,
        unless `query` is false (only what the events said)."""
        hit = self._events.get(t)
        if hit is not None:
            return hit[0]
        if not query or t.proto not in PROTOCOLS_WITH_PORTS or self._query_sock is None:
            return None
        if opening and self._listening_since_ns:
            if not isinstance(first_seen, int):
                first_seen = first_seen.seconds * 1_000_000_000 + first_seen.nanos
            margin_ns = 1_000_000_000
            if (first_seen - margin_ns > self._listening_since_ns
                    and first_seen - margin_ns > self._events_lost_at_ns):
                return None
        now = time.monotonic_ns()
        cached = self._lookups.get(t)
        if cached is not None and cached[1] > now:
            return cached[0]
        match = self._query(t)
        if len(self._lookups) >= self._max_entries:
            self._sweep(now)
            if len(self._lookups) >= self._max_entries:
                self._lookups.clear()
                self._lookup_expiry.clear()
        expires = now + self._lookup_ttl_ns
        self._lookups[t] = (match, expires)
        self._lookup_expiry.append((expires, t))
        return match

    def _query(self, t: Tuple5) -> Match | None:
        """Ask the kernel for the entry `t` or its reverse belongs to. The kernel's hash
        finds an entry by either of its tuples, so the orientation is read off the answer."""
        for key in (t, t.reversed()):
            entry = self.get(CTA_TUPLE_ORIG, key)
            if entry is None:
                continue
            if not entry.dnat:
                return None
            # t is client->VIP (orig) or client->backend (reversed reply): a request.
            is_reply = not (t == entry.orig or t == entry.reply.reversed())
            return Match(entry, is_reply)
        return None

    def get(self, direction: int, t: Tuple5) -> Entry | None:
        """One IPCTNL_MSG_CT_GET by original (CTA_TUPLE_ORIG) or reply tuple; None if absent."""
        sock = self._query_sock
        if sock is None:
            return None
        family = socket.AF_INET6 if ":" in t.src else socket.AF_INET
        payload = _NFGENMSG.pack(family, 0, 0) + _attr(direction, _encode_tuple(t, family), nested=True)
        with self._query_lock:
            self._seq += 1
            seq = self._seq
            msg_type = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET
            sock.send(_NLMSGHDR.pack(_NLMSGHDR.size + len(payload), msg_type, NLM_F_REQUEST, seq, 0)
                      + payload)
            self.lookups += 1
            while True:
                try:
                    data = sock.recv(1 << 16)
                except TimeoutError:
                    log.warning("conntrack lookup timed out")
                    return None
                offset = 0
                while offset + _NLMSGHDR.size <= len(data):
                    length, reply_type, _flags, reply_seq, _pid = _NLMSGHDR.unpack_from(data, offset)
                    if length < _NLMSGHDR.size:
                        break
                    if reply_seq == seq:
                        if reply_type == NLMSG_ERROR:
                            error = -struct.unpack_from("=i", data, offset + _NLMSGHDR.size)[0]
                            if error and error != errno.ENOENT:
                                log.debug("conntrack lookup: %s", os.strerror(error))
                            return None
                        if reply_type >> 8 == NFNL_SUBSYS_CTNETLINK:
                            return decode_entry(data, offset + _NLMSGHDR.size + _NFGENMSG.size,
                                                offset + length)
                    offset += (length + 3) & ~3


def open_conntrack(**kwargs) -> Conntrack | None:
    """A started Conntrack, or None (logged) where the table cannot be read."""
    conntrack = Conntrack(**kwargs)
    try:
        conntrack.start()
    except ConntrackError as exc:
        log.warning("no Service translations: %s", exc)
        conntrack.stop()
        return None
    return conntrack
