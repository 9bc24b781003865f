"""The flow table: what user space remembers of every live flow between the kernel's interval
counts, as numpy columns, so a sweep costs a few array operations and no Python object per
flow.

The kernel hands over per-interval deltas (bpf/maps.h: each drained half of the flow map
holds one interval's packets, read and deleted with no program writing it), and the new-flow
events of the fast path. The table turns them into records:

  - a flow's first packet, announced by an event, is a record at once (the fast first
    record); its packet is subtracted when the drained entry that holds it arrives;
  - packets not yet reported are held, and reported as ONE record when the flow ends (no
    packet for the idle timeout, or a TCP connection closed and quiet), or when the oldest
    of them is an active timeout old while the flow is still busy (it had packets in the
    latest drained interval). A quiet flow's packets wait for its end, so a short flow is one
    record per observation point, carrying `flow_end`;
  - a flow that ends with nothing left to report (its last record went out while it was
    busy, or it was announced) gets an end notice instead: no new row, the end is applied to
    the flow (`FlowBatch.update`).

It also pairs each flow with its reverse direction at the same interface (the reply
5-tuple, the other TC hook), so connection outcomes can be judged from both sides whatever
the order in which their records go out (agent/annotate/outcome.py judges; this keeps the
sides' flags, packets and first packet, also after the other side ended).

Rows are kept sorted by a 64-bit hash of the kernel key (the full key is compared too). The
table is bounded (`max_flows`): beyond it the flows seen longest ago are ended early, their
records sent (`ended_early` counts them), so memory never follows a flood.

Clock: every *_ns here is the kernel's (bpf_ktime_get_ns, CLOCK_MONOTONIC). Plain numpy, no
bcc: tests drive it with arrays.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from agent.datapath import abi

KEY_SIZE = abi.KEY_SIZE
_WORDS = KEY_SIZE // 4
_U64 = np.uint64
TCP_FIN, TCP_RST = 0x01, 0x04
CLOSE_QUIET_NS = 1_000_000_000  # a closed TCP connection ends after this long without packets

# Offsets in struct pf_flow_key (bpf/types.h; abi.FlowKey).
_DIRECTION = 4
_PROTO = 6
_FLAGS = 7
_SRC, _DST, _SPORT, _DPORT = slice(8, 24), slice(24, 40), slice(40, 42), slice(42, 44)


def key_hash(keys: np.ndarray) -> np.ndarray:
    """A 64-bit hash per key ((n, 44) uint8): FNV-1a over the 32-bit words, then a final
    mix so that keys differing in one port spread over the whole range."""
    words = np.ascontiguousarray(keys).view("<u4").reshape(len(keys), _WORDS).astype(_U64)
    h = np.full(len(keys), 0xCBF29CE484222325, dtype=_U64)
    prime = _U64(0x100000001B3)
    for i in range(_WORDS):
        h ^= words[:, i]
        h *= prime
    h ^= h >> _U64(33)
    h *= _U64(0xFF51AFD7ED558CCD)
    h ^= h >> _U64(33)
    return h


def reverse_keys(keys: np.ndarray) -> np.ndarray:
    """The key of the other direction of each flow at the same interface: addresses and
    ports swapped, the other TC hook."""
    rev = keys.copy()
    rev[:, _SRC], rev[:, _DST] = keys[:, _DST], keys[:, _SRC]
    rev[:, _SPORT], rev[:, _DPORT] = keys[:, _DPORT], keys[:, _SPORT]
    rev[:, _DIRECTION] ^= 1
    return rev


def pairable(keys: np.ndarray) -> np.ndarray:
    """TCP and UDP flows with ports (not a non-first fragment): those that have a reverse."""
    proto = keys[:, _PROTO]
    return ((proto == abi.IPPROTO_TCP) | (proto == abi.IPPROTO_UDP)) & (
        (keys[:, _FLAGS] & abi.PF_KEY_FRAGMENT) == 0)


@dataclass
class Emitted:
    """Records (and end notices) a table step produced, as columns.

    `update` marks end notices: a flow already fully reported that ended (no packets, no
    new row). `own_*` is the flow's side of its connection so far and `rev_*` the reverse
    side's (zeros when never seen), for the outcome judge."""

    keys: np.ndarray           # (n, 44) uint8
    packets: np.ndarray        # uint64, this record's
    bytes: np.ndarray          # uint64
    first_ns: np.ndarray       # uint64 ktime: the flow's first packet
    last_ns: np.ndarray        # uint64 ktime: its latest packet so far
    tcp_flags: np.ndarray      # uint8: union since the flow's first packet
    flow_end: np.ndarray       # bool
    update: np.ndarray         # bool
    own_packets: np.ndarray    # uint64: packets of the flow since its first
    rev_packets: np.ndarray    # uint64
    rev_flags: np.ndarray      # uint8
    rev_first_ns: np.ndarray   # uint64 ktime, 0 when never seen

    def __len__(self) -> int:
        return len(self.packets)

    @classmethod
    def empty(cls) -> Emitted:
        z64 = np.zeros(0, _U64)
        z8 = np.zeros(0, np.uint8)
        zb = np.zeros(0, bool)
        return cls(np.zeros((0, KEY_SIZE), np.uint8), z64, z64, z64, z64, z8, zb, zb, z64,
                   z64, z8, z64)


# column name -> dtype; "key" is (n, 44) uint8
_COLUMNS = {
    "h": _U64, "first_ns": _U64, "last_ns": _U64, "flags": np.uint8, "packets": _U64,
    "pend_packets": _U64, "pend_bytes": _U64, "pend_first_ns": _U64, "reported": bool,
    "ann_first_ns": _U64, "ann_packets": _U64, "ann_bytes": _U64,
    "rev_packets": _U64, "rev_flags": np.uint8, "rev_first_ns": _U64,
}


class FlowTable:
    """See the module docstring. Not thread-safe: the datapath's reader thread owns it."""

    def __init__(self, active_timeout_ns: int, idle_timeout_ns: int,
                 max_flows: int = 1 << 18):
        self.active_timeout_ns = active_timeout_ns
        self.idle_timeout_ns = idle_timeout_ns
        self.max_flows = max_flows
        self.key = np.zeros((0, KEY_SIZE), np.uint8)
        self.cols = {name: np.zeros(0, dtype) for name, dtype in _COLUMNS.items()}
        self.busy_since_ns = 0      # complete_until of the previous step: "the latest interval"
        self.ended_early = 0        # flows ended because the table was full
        self.collisions = 0         # drained entries whose hash matched another key
        # Flows announced since the last drain, joined to the table with the next one: the
        # fast path runs ten times a second and must not move the whole table each time.
        self._announced: list[tuple[np.ndarray, np.ndarray, dict]] = []
        self._announced_h: set[int] = set()

    def __len__(self) -> int:
        return len(self.key) + len(self._announced_h)

    # -- lookups ----------------------------------------------------------------------------

    def _find(self, h: np.ndarray, keys: np.ndarray) -> np.ndarray:
        """Row index of each key, -1 when absent."""
        table_h = self.cols["h"]
        if not len(table_h) or not len(h):
            return np.full(len(h), -1, np.int64)
        idx = np.searchsorted(table_h, h)
        idx[idx >= len(table_h)] = 0
        hit = table_h[idx] == h
        if hit.any():
            same = (self.key[idx[hit]] == keys[hit]).all(axis=1)
            if not same.all():
                self.collisions += int((~same).sum())
                hit[np.flatnonzero(hit)[~same]] = False
        return np.where(hit, idx, -1)

    def _insert(self, keys: np.ndarray, h: np.ndarray, values: dict) -> None:
        """Add rows (keys not in the table, distinct), keeping the hash order."""
        order = np.argsort(h, kind="stable")
        h = h[order]
        at = np.searchsorted(self.cols["h"], h)
        self.key = np.insert(self.key, at, keys[order], axis=0)
        for name, dtype in _COLUMNS.items():
            new = h if name == "h" else values.get(name)
            if new is None:
                new = np.zeros(len(h), dtype)
            elif np.ndim(new) == 0:
                new = np.full(len(h), new, dtype)
            else:
                new = np.asarray(new, dtype)[order] if name != "h" else new
            self.cols[name] = np.insert(self.cols[name], at, new)

    def _keep(self, keep: np.ndarray) -> None:
        self.key = self.key[keep]
        for name in _COLUMNS:
            self.cols[name] = self.cols[name][keep]

    # -- input ------------------------------------------------------------------------------

    def announce(self, keys: np.ndarray, pkt_len: np.ndarray, ts_ns: np.ndarray,
                 tcp_flags: np.ndarray) -> Emitted:
        """New-flow events: a record now for each flow the table does not know (an event for
        a known flow is only a hint: its packet comes with the drained entry)."""
        if not len(keys):
            return Emitted.empty()
        keys = np.ascontiguousarray(keys, np.uint8)
        h = key_hash(keys)
        h, first = np.unique(h, return_index=True)  # one event per key (a CPU race)
        keys, pkt_len, ts_ns = keys[first], pkt_len[first].astype(_U64), ts_ns[first].astype(_U64)
        flags = tcp_flags[first].astype(np.uint8)
        pending = self._announced_h
        new = (self._find(h, keys) < 0) & np.fromiter((x not in pending for x in h.tolist()),
                                                      bool, len(h))
        if not new.any():
            return Emitted.empty()
        keys, h, pkt_len, ts_ns, flags = keys[new], h[new], pkt_len[new], ts_ns[new], flags[new]
        one = np.ones(len(h), _U64)
        rev = self._reverse_state(keys)
        ok = pairable(keys)
        if ok.any():  # both sides announced together (a quick answer)
            rh = key_hash(reverse_keys(keys))
            at = np.searchsorted(h, rh).clip(0, len(h) - 1)
            both = ok & (h[at] == rh)
            rev[0][both] = 1
            rev[1][both] |= flags[at[both]]
            rev[2][both] = ts_ns[at[both]]
        self._announced.append((keys, h, {
            "first_ns": ts_ns, "last_ns": ts_ns, "flags": flags, "packets": one,
            "reported": True, "ann_first_ns": ts_ns, "ann_packets": one, "ann_bytes": pkt_len}))
        pending.update(h.tolist())
        return Emitted(keys, one, pkt_len, ts_ns, ts_ns, flags, np.zeros(len(h), bool),
                       np.zeros(len(h), bool), one, *rev)

    def _join_announced(self) -> None:
        """The flows announced since the last drain join the table (one insert)."""
        if not self._announced:
            return
        parts, self._announced = self._announced, []
        self._announced_h.clear()
        keys = np.concatenate([p[0] for p in parts])
        h = np.concatenate([p[1] for p in parts])
        values = {name: np.concatenate([np.broadcast_to(p[2][name], len(p[1])) for p in parts])
                  for name in parts[0][2]}
        self._insert(keys, h, values)

    def ingest(self, keys: np.ndarray, values: np.ndarray) -> None:
        """Entries drained from one half of the flow map (each key once): their packets join
        the flows' held packets. `values`: structured array (bpfsys.VALUE_DTYPE)."""
        self._join_announced()
        if not len(keys):
            return
        keys = np.ascontiguousarray(keys, np.uint8)
        h = key_hash(keys)
        row = self._find(h, keys)
        packets = values["packets"].astype(_U64)
        nbytes = values["bytes"].astype(_U64)
        first = values["first_seen_ns"].astype(_U64)
        last = values["last_seen_ns"].astype(_U64)
        flags = values["tcp_flags"].astype(np.uint8)
        found = row >= 0
        if found.any():
            r = row[found]
            c = self.cols
            p, b, f = packets[found], nbytes[found], first[found]
            # The announced first packet is in the entry that starts with it: counted once.
            ann = (c["ann_packets"][r] > 0) & (c["ann_first_ns"][r] == f)
            p = p - np.where(ann, c["ann_packets"][r], 0)
            b = b - np.where(ann, c["ann_bytes"][r], 0)
            c["ann_packets"][r[ann]] = 0
            c["ann_bytes"][r[ann]] = 0
            c["ann_first_ns"][r[ann]] = 0
            starts = (c["pend_packets"][r] == 0) & (p > 0)
            c["pend_first_ns"][r[starts]] = f[starts]
            c["pend_packets"][r] += p
            c["pend_bytes"][r] += b
            c["packets"][r] += p
            c["last_ns"][r] = np.maximum(c["last_ns"][r], last[found])
            c["flags"][r] |= flags[found]
        if not found.all():
            new = ~found
            self._insert(keys[new], h[new], {
                "first_ns": first[new], "last_ns": last[new], "flags": flags[new],
                "packets": packets[new], "pend_packets": packets[new],
                "pend_bytes": nbytes[new], "pend_first_ns": first[new]})

    # -- output -----------------------------------------------------------------------------

    def step(self, now_ns: int, complete_until_ns: int, final: bool = False) -> Emitted:
        """The records and end notices due now. `complete_until_ns`: every packet timed
        before it has been ingested (the flip that started the interval not yet drained).
        `final`: end every flow (the agent stops; every half was drained)."""
        self._join_announced()
        c = self.cols
        if not len(self.key):
            self.busy_since_ns = complete_until_ns
            return Emitted.empty()
        last = c["last_ns"]
        quiet_ns = np.uint64(complete_until_ns) - np.minimum(last, _U64(complete_until_ns))
        ended = quiet_ns >= _U64(self.idle_timeout_ns)
        closed = ((c["flags"] | c["rev_flags"]) & (TCP_FIN | TCP_RST)) != 0
        ended |= closed & (quiet_ns >= _U64(CLOSE_QUIET_NS)) & (
            self.key[:, _PROTO] == abi.IPPROTO_TCP)
        if final:
            ended[:] = True
        pending = c["pend_packets"] > 0
        busy = last >= _U64(self.busy_since_ns)
        age = np.uint64(now_ns) - np.minimum(c["pend_first_ns"], _U64(now_ns))
        due = pending & (ended | (busy & (age >= _U64(self.active_timeout_ns))))
        notice = ended & ~pending & c["reported"]
        over = len(self.key) - int(ended.sum()) - self.max_flows
        if over > 0:
            # Table full: end the flows seen longest ago, sending what they hold.
            alive = np.flatnonzero(~ended)
            oldest = alive[np.argsort(last[alive], kind="stable")[:over]]
            ended[oldest] = True
            due[oldest] = pending[oldest]
            notice[oldest] = ~pending[oldest] & c["reported"][oldest]
            self.ended_early += len(oldest)
        self.busy_since_ns = complete_until_ns
        out = self._emit(due | notice, ended, notice)
        c["pend_packets"][due] = 0
        c["pend_bytes"][due] = 0
        c["pend_first_ns"][due] = 0
        c["reported"][due] = True
        if ended.any():
            self._propagate(ended)
            self._keep(~ended)
        return out

    def _emit(self, rows_mask: np.ndarray, ended: np.ndarray, notice: np.ndarray) -> Emitted:
        rows = np.flatnonzero(rows_mask)
        if not len(rows):
            return Emitted.empty()
        c = self.cols
        keys = self.key[rows]
        is_notice = notice[rows]
        packets = np.where(is_notice, _U64(0), c["pend_packets"][rows])
        nbytes = np.where(is_notice, _U64(0), c["pend_bytes"][rows])
        rev = self._reverse_state(keys, rows)
        return Emitted(keys, packets, nbytes, c["first_ns"][rows].copy(),
                       c["last_ns"][rows].copy(), c["flags"][rows].copy(), ended[rows],
                       is_notice, c["packets"][rows].copy(), *rev)

    def _reverse_state(self, keys: np.ndarray, rows: np.ndarray | None = None):
        """(packets, flags, first_ns) of each flow's reverse side: the live reverse row,
        merged into what `rows` remembered of it (sticky: it may have ended since)."""
        c = self.cols
        n = len(keys)
        if rows is None:
            rp, rf, rfirst = np.zeros(n, _U64), np.zeros(n, np.uint8), np.zeros(n, _U64)
        else:
            rp, rf, rfirst = (c["rev_packets"][rows].copy(), c["rev_flags"][rows].copy(),
                              c["rev_first_ns"][rows].copy())
        ok = pairable(keys)
        if ok.any():
            rkeys = reverse_keys(keys[ok])
            other = self._find(key_hash(rkeys), rkeys)
            hit = other >= 0
            sel = np.flatnonzero(ok)[hit]
            o = other[hit]
            rp[sel] = np.maximum(rp[sel], c["packets"][o])
            rf[sel] |= c["flags"][o]
            rfirst[sel] = np.where(rfirst[sel] == 0, c["first_ns"][o], rfirst[sel])
            if rows is not None:
                r = rows[sel]
                c["rev_packets"][r], c["rev_flags"][r], c["rev_first_ns"][r] = (
                    rp[sel], rf[sel], rfirst[sel])
        return rp, rf, rfirst

    def _propagate(self, ended: np.ndarray) -> None:
        """Before ending rows, leave what they saw with their reverse rows, so the other
        side's outcome still knows a reply came (or a request went)."""
        rows = np.flatnonzero(ended)
        keys = self.key[rows]
        ok = pairable(keys)
        if not ok.any():
            return
        rows = rows[ok]
        rkeys = reverse_keys(keys[ok])
        other = self._find(key_hash(rkeys), rkeys)
        hit = (other >= 0)
        hit[hit] = ~ended[other[hit]]
        if not hit.any():
            return
        c = self.cols
        o, r = other[hit], rows[hit]
        c["rev_packets"][o] = np.maximum(c["rev_packets"][o], c["packets"][r])
        c["rev_flags"][o] |= c["flags"][r]
        c["rev_first_ns"][o] = np.where(c["rev_first_ns"][o] == 0, c["first_ns"][r],
                                        c["rev_first_ns"][o])
