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

Rows are columns in buffers with room to grow, in no particular order: a drain's new flows
are appended, and the holes that ended flows leave are filled with live rows from the tail,
so under churn the columns move by the rows that come and go, not by the whole table. A
sorted index of each row's 64-bit key hash finds them (the full key is compared too);
records come out in index order. The table is bounded (`max_flows`): beyond it the flows
seen longest ago are ended early, their records sent (`ended_early` counts them), so memory
never follows a flood. bench/flowtable.py measures what it costs under new-flow churn.

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
    """A 64-bit hash per key ((n, 44) uint8): row_hash of the key."""
    return row_hash(keys)


def row_hash(rows: np.ndarray) -> np.ndarray:
    """A 64-bit hash per row of bytes ((n, w) uint8, w a multiple of 4): FNV-1a over the
    32-bit words, then a final mix so that rows differing in one port spread over the whole
    range. Numpy sorts these far faster than the rows themselves (np.unique of raw bytes)."""
    width = rows.shape[1] // 4
    words = np.ascontiguousarray(rows).view("<u4").reshape(len(rows), width).astype(_U64)
    h = np.full(len(rows), 0xCBF29CE484222325, dtype=_U64)
    prime = _U64(0x100000001B3)
    for i in range(width):
        h ^= words[:, i]
        h *= prime
    h ^= h >> _U64(33)
    h *= _U64(0xFF51AFD7ED558CCD)
    h ^= h >> _U64(33)
    return h


def unique_rows(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(index of each distinct row's first occurrence, in row_hash order; the distinct row of
    every row) for (n, w) uint8 rows, like np.unique(..., return_index, return_inverse) on
    the rows as bytes, but sorting their 64-bit hashes (checked: rows that share a hash and
    differ fall back to the byte sort)."""
    digest = row_hash(rows)
    _, first, inverse = np.unique(digest, return_index=True, return_inverse=True)
    inverse = inverse.ravel()
    if not (rows == rows[first[inverse]]).all():
        raw = np.ascontiguousarray(rows).view(f"V{rows.shape[1]}").ravel()
        _, first, inverse = np.unique(raw, return_index=True, return_inverse=True)
        inverse = inverse.ravel()
    return first, inverse


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


# column name -> dtype, one value per row; the key is a (rows, 44) uint8 array beside them
_COLUMNS = {
    "first_ns": _U64, "last_ns": _U64, "flags": np.uint8, "packets": _U64,
    "pend_packets": _U64, "pend_bytes": _U64, "pend_first_ns": _U64, "reported": bool,
    "ann_first_ns": _U64, "ann_packets": _U64, "ann_bytes": _U64,
    "rev_packets": _U64, "rev_flags": np.uint8, "rev_first_ns": _U64,
}
_MIN_CAPACITY = 1024
_BUCKETED_MIN = 4096  # index size from which lookups go through buckets (_positions)


def same_keys(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Whether each row of `a` equals the same row of `b` ((n, 44) uint8 both): word by
    word, a third of the time of comparing the bytes and reducing them."""
    a = np.ascontiguousarray(a).view("<u4")
    b = np.ascontiguousarray(b).view("<u4")
    eq = a[:, 0] == b[:, 0]
    for i in range(1, _WORDS):
        eq &= a[:, i] == b[:, i]
    return eq


class FlowTable:
    """See the module docstring. Not thread-safe: the datapath's reader thread owns it."""

    def __init__(self, active_timeout_ns: int, idle_timeout_ns: int,
                 max_flows: int = 1 << 18):
        self.active_timeout_ns = active_timeout_ns
        self.idle_timeout_ns = idle_timeout_ns
        self.max_flows = max_flows
        # Rows live in buffers with room to grow; `key` and `cols` are views of the live
        # rows 0..n-1 (in no particular order), renewed whenever n or a buffer changes.
        self._n = 0
        self._key_buf = np.zeros((_MIN_CAPACITY, KEY_SIZE), np.uint8)
        self._col_buf = {name: np.zeros(_MIN_CAPACITY, dtype) for name, dtype in _COLUMNS.items()}
        self._views()
        # The hash index: every row's key hash, sorted, and the row of each.
        self._h = np.zeros(0, _U64)
        self._row = np.zeros(0, np.intp)
        self._buckets: tuple[np.uint64, np.ndarray] | None = None  # see _positions
        self.busy_since_ns = 0      # complete_until of the previous step: "the latest interval"
        self.ended_early = 0        # flows ended because the table was full
        self.collisions = 0         # lookups whose hash matched another key
        # Flows announced since the last drain, joined to the table with the next one: the
        # fast path runs ten times a second and must not touch the whole index each time.
        self._announced: list[tuple[np.ndarray, np.ndarray, dict]] = []
        self._announced_h: set[int] = set()

    def __len__(self) -> int:
        return self._n + len(self._announced_h)

    # -- storage ----------------------------------------------------------------------------

    def _views(self) -> None:
        n = self._n
        self.key = self._key_buf[:n]
        self.cols = {name: buf[:n] for name, buf in self._col_buf.items()}

    def _resize(self, capacity: int) -> None:
        n = self._n
        key = np.zeros((capacity, KEY_SIZE), np.uint8)
        key[:n] = self._key_buf[:n]
        self._key_buf = key
        for name, buf in self._col_buf.items():
            new = np.zeros(capacity, buf.dtype)
            new[:n] = buf[:n]
            self._col_buf[name] = new

    def _append(self, keys: np.ndarray, values: dict) -> np.ndarray:
        """Store rows (their columns from `values`, arrays or scalars, zero when missing)
        after the live ones, not yet in the index; returns their row numbers."""
        n, k = self._n, len(keys)
        if n + k > len(self._key_buf):
            # A quarter more than needed: a full table grows by about a drain at each sweep
            # and would keep twice its rows with doubling.
            self._resize((n + k) * 5 // 4)
        self._key_buf[n:n + k] = keys
        for name, buf in self._col_buf.items():
            buf[n:n + k] = values.get(name, 0)
        self._n = n + k
        self._views()
        return np.arange(n, n + k)

    def _index(self, h: np.ndarray, rows: np.ndarray) -> None:
        """Add rows to the index. Among equal hashes the new rows go first, in their given
        order: a lookup finds the first row of its hash, so the latest key of a colliding
        hash is the one found (and an older one is taken as new again)."""
        order = np.argsort(h, kind="stable")
        h = h[order]
        at = self._positions(h)
        self._h = np.insert(self._h, at, h)
        self._row = np.insert(self._row, at, rows[order])
        self._buckets = None

    def _insert(self, keys: np.ndarray, h: np.ndarray, values: dict) -> None:
        """Add rows (keys not in the table, distinct)."""
        self._index(h, self._append(keys, values))

    def _remove(self, gone: np.ndarray) -> None:
        """Drop the rows of mask `gone`: live rows of the tail fill their holes, so the
        columns move by the rows removed, not by the rows kept; the index drops their
        positions and follows the moved rows."""
        n = self._n
        keep_pos = ~gone[self._row]
        self._h = self._h[keep_pos]
        self._buckets = None
        rows = self._row[keep_pos]
        n_new = len(rows)
        holes = np.flatnonzero(gone[:n_new])
        if len(holes):
            movers = n_new + np.flatnonzero(~gone[n_new:])
            self._key_buf[holes] = self._key_buf.take(movers, axis=0)
            for buf in self._col_buf.values():
                buf[holes] = buf.take(movers)
            moved = np.empty(n - n_new, np.intp)
            moved[movers - n_new] = holes
            tail = rows >= n_new
            rows[tail] = moved[rows[tail] - n_new]
        self._row = rows
        self._n = n_new
        if len(self._key_buf) > _MIN_CAPACITY and n_new < len(self._key_buf) // 4:
            self._resize(max(_MIN_CAPACITY, 2 * n_new))  # a flood's room is given back
        self._views()

    # -- lookups ----------------------------------------------------------------------------

    def _positions(self, h: np.ndarray) -> np.ndarray:
        """np.searchsorted(self._h, h): where each hash is or would go. In a big index a
        binary search costs each hash a cache miss per level, most of what a drain's
        lookups cost; so hashes go to a bucket of the index by their top bits instead (where
        each bucket starts is counted at the first lookup of an index state: the announces
        between two drains and the next drain share it), then step over the few indexed
        hashes of their bucket that are smaller."""
        table_h = self._h
        n = len(table_h)
        if n < _BUCKETED_MIN:
            return np.searchsorted(table_h, h)
        if self._buckets is None:
            bits = n.bit_length() - 2                      # 2 to 4 hashes a bucket
            shift = _U64(64 - bits)
            starts = np.empty((1 << bits) + 1, np.intp)
            starts[0] = 0
            np.cumsum(np.bincount((table_h >> shift).astype(np.intp), minlength=1 << bits),
                      out=starts[1:])
            self._buckets = (shift, starts)
        shift, starts = self._buckets
        bucket = (h >> shift).astype(np.intp)
        pos = starts[bucket]
        end = starts[bucket + 1]
        todo = np.flatnonzero(pos < end)
        todo = todo[table_h[pos[todo]] < h[todo]]
        while len(todo):
            pos[todo] += 1
            todo = todo[pos[todo] < end[todo]]
            todo = todo[table_h[pos[todo]] < h[todo]]
        return pos

    def _lookup(self, h: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row of each key, -1 when absent; whether its hash met another key). Each hash's
        first row in the index is compared: when its key is another one (a collision), the
        key is taken as absent."""
        table_h = self._h
        if not len(table_h) or not len(h):
            return np.full(len(h), -1, np.intp), np.zeros(len(h), bool)
        idx = self._positions(h)
        idx[idx >= len(table_h)] = 0
        hit = table_h[idx] == h
        row = self._row[idx]
        collided = np.zeros(len(h), bool)
        if hit.any():
            at = np.flatnonzero(hit)
            same = same_keys(self.key.take(row[at], axis=0), keys[at])
            if not same.all():
                collided[at[~same]] = True
                hit &= ~collided
        return np.where(hit, row, -1), collided

    def _find(self, h: np.ndarray, keys: np.ndarray) -> np.ndarray:
        """Row of each key, -1 when absent; collisions counted."""
        row, collided = self._lookup(h, keys)
        self.collisions += int(collided.sum())
        return row

    def _find_with(self, h: np.ndarray, keys: np.ndarray, new_h: np.ndarray,
                   new_rows: np.ndarray) -> np.ndarray:
        """`_find` as if rows `new_rows` (hashes `new_h`, distinct) were indexed first: they
        would go before the indexed rows of their hash, so a hash of theirs is theirs."""
        if not len(new_h):
            return self._find(h, keys)
        order = np.argsort(new_h)
        sorted_h = new_h[order]
        at = np.searchsorted(sorted_h, h).clip(0, len(sorted_h) - 1)
        theirs = sorted_h[at] == h
        if not theirs.any():
            return self._find(h, keys)
        row = np.full(len(h), -1, np.intp)
        i = np.flatnonzero(theirs)
        r = new_rows[order[at[i]]]
        same = same_keys(self.key.take(r, axis=0), keys[i])
        self.collisions += int((~same).sum())
        row[i[same]] = r[same]
        rest = np.flatnonzero(~theirs)
        row[rest] = self._find(h[rest], keys[rest])
        return row

    def _reverse_rows(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`_lookup` of the reverse side of each of `rows` (live rows); -1 for flows that have
        none (not TCP or UDP, or a fragment)."""
        other = np.full(len(rows), -1, np.intp)
        collided = np.zeros(len(rows), bool)
        keys = self.key.take(rows, axis=0)
        ok = pairable(keys)
        if ok.any():
            rkeys = reverse_keys(keys[ok])
            other[ok], collided[ok] = self._lookup(key_hash(rkeys), rkeys)
        return other, collided

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
        ok = pairable(keys)
        other = np.full(len(h), -1, np.intp)
        if ok.any():
            rkeys = reverse_keys(keys)
            rh = key_hash(rkeys)
            other[ok] = self._find(rh[ok], rkeys[ok])
        rev = self._reverse_state(other)
        if ok.any():  # both sides announced together (a quick answer)
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

    def _store_announced(self) -> tuple[np.ndarray, np.ndarray]:
        """Store the flows announced since the last drain as rows, not indexed yet:
        (their hashes, their rows)."""
        if not self._announced:
            return np.zeros(0, _U64), np.zeros(0, np.intp)
        parts, self._announced = self._announced, []
        self._announced_h.clear()
        keys = np.concatenate([p[0] for p in parts])
        h = np.concatenate([p[1] for p in parts])
        values = {name: np.concatenate([np.broadcast_to(p[2][name], len(p[1])) for p in parts])
                  for name in parts[0][2]}
        return h, self._append(keys, values)

    def _join_announced(self) -> None:
        """The flows announced since the last drain join the table."""
        h, rows = self._store_announced()
        if len(h):
            self._index(h, rows)

    def ingest(self, keys: np.ndarray, values: np.ndarray) -> None:
        """Entries drained from one half of the flow map (each key once): their packets join
        the flows' held packets. `values`: structured array (bpfsys.VALUE_DTYPE). The flows
        announced since the last drain join the table first; they and the drained flows it
        did not know enter the index together (one merge of the index per drain)."""
        ann_h, ann_rows = self._store_announced()
        if not len(keys):
            if len(ann_h):
                self._index(ann_h, ann_rows)
            return
        keys = np.ascontiguousarray(keys, np.uint8)
        h = key_hash(keys)
        row = self._find_with(h, keys, ann_h, ann_rows)
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
        if found.all():
            if len(ann_h):
                self._index(ann_h, ann_rows)
            return
        new = ~found
        rows = self._append(keys[new], {
            "first_ns": first[new], "last_ns": last[new], "flags": flags[new],
            "packets": packets[new], "pend_packets": packets[new],
            "pend_bytes": nbytes[new], "pend_first_ns": first[new]})
        # The drained rows go before the announced ones of an equal hash, as if indexed after.
        self._index(np.concatenate([h[new], ann_h]), np.concatenate([rows, ann_rows]))

    # -- output -----------------------------------------------------------------------------

    def step(self, now_ns: int, complete_until_ns: int, final: bool = False) -> Emitted:
        """The records and end notices due now. `complete_until_ns`: every packet timed
        before it has been ingested (the flip that started the interval not yet drained).
        `final`: end every flow (the agent stops; every half was drained)."""
        self._join_announced()
        c = self.cols
        if not self._n:
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
        over = self._n - int(ended.sum()) - self.max_flows
        if over > 0:
            # Table full: end the flows seen longest ago, sending what they hold.
            alive = self._row[np.flatnonzero(~ended[self._row])]  # in index order
            oldest = oldest_first(alive, last[alive], over)
            ended[oldest] = True
            due[oldest] = pending[oldest]
            notice[oldest] = ~pending[oldest] & c["reported"][oldest]
            self.ended_early += len(oldest)
        self.busy_since_ns = complete_until_ns
        # The rows emitted and the rows ending (mostly the same) look up their reverse side
        # once; a collision counts for each of the two uses, as two lookups would.
        emit = due | notice
        looked = np.flatnonzero(emit | ended)
        other = np.full(self._n, -1, np.intp)
        other[looked], collided = self._reverse_rows(looked)
        self.collisions += int(collided.sum() + (collided & emit[looked] & ended[looked]).sum())
        out = self._emit(emit, ended, notice, other)
        c["pend_packets"][due] = 0
        c["pend_bytes"][due] = 0
        c["pend_first_ns"][due] = 0
        c["reported"][due] = True
        if ended.any():
            self._propagate(ended, other)
            self._remove(ended)
        return out

    def _emit(self, rows_mask: np.ndarray, ended: np.ndarray, notice: np.ndarray,
              other: np.ndarray) -> Emitted:
        """The records of the rows of `rows_mask`, in index order (by key hash)."""
        rows = self._row[np.flatnonzero(rows_mask[self._row])]
        if not len(rows):
            return Emitted.empty()
        c = self.cols
        keys = self.key.take(rows, axis=0)
        is_notice = notice[rows]
        packets = np.where(is_notice, _U64(0), c["pend_packets"][rows])
        nbytes = np.where(is_notice, _U64(0), c["pend_bytes"][rows])
        rev = self._reverse_state(other[rows], rows)
        return Emitted(keys, packets, nbytes, c["first_ns"][rows], c["last_ns"][rows],
                       c["flags"][rows], ended[rows], is_notice, c["packets"][rows], *rev)

    def _reverse_state(self, other: np.ndarray, rows: np.ndarray | None = None):
        """(packets, flags, first_ns) of each flow's reverse side: its live reverse row
        `other` (-1: none), merged into what `rows` remembered of it (sticky: it may have
        ended since)."""
        c = self.cols
        n = len(other)
        if rows is None:
            rp, rf, rfirst = np.zeros(n, _U64), np.zeros(n, np.uint8), np.zeros(n, _U64)
        else:
            rp, rf, rfirst = c["rev_packets"][rows], c["rev_flags"][rows], c["rev_first_ns"][rows]
        sel = np.flatnonzero(other >= 0)
        if len(sel):
            o = other[sel]
            rp[sel] = np.maximum(rp[sel], c["packets"][o])
            rf[sel] |= c["flags"][o]
            rfirst[sel] = np.where(rfirst[sel] == 0, c["first_ns"][o], rfirst[sel])
            if rows is not None:
                r = rows[sel]
                c["rev_packets"][r], c["rev_flags"][r], c["rev_first_ns"][r] = (
                    rp[sel], rf[sel], rfirst[sel])
        return rp, rf, rfirst

    def _propagate(self, ended: np.ndarray, other: np.ndarray) -> None:
        """Before ending rows, leave what they saw with their reverse rows (`other`: each
        row's, -1 for none), so the other side's outcome still knows a reply came (or a
        request went). In index order, as the records: with a hash's colliding keys indexed
        more than once, the same reverse row may be met twice, and the later one wins."""
        rows = self._row[np.flatnonzero(ended[self._row])]
        o = other[rows]
        hit = o >= 0
        hit[hit] = ~ended[o[hit]]
        if not hit.any():
            return
        c = self.cols
        o, r = o[hit], rows[hit]
        c["rev_packets"][o] = np.maximum(c["rev_packets"][o], c["packets"][r])
        c["rev_flags"][o] |= c["flags"][r]
        c["rev_first_ns"][o] = np.where(c["rev_first_ns"][o] == 0, c["first_ns"][r],
                                        c["rev_first_ns"][o])


def oldest_first(rows: np.ndarray, last: np.ndarray, count: int) -> np.ndarray:
    """The `count` of `rows` with the smallest `last`, ties to the earlier: what a stable sort
    by `last` would put first, in linear time (a partition, not a sort)."""
    if count >= len(rows):
        return rows
    cut = np.partition(last, count - 1)[count - 1]
    pick = last < cut
    ties = np.flatnonzero(last == cut)[:count - int(pick.sum())]
    pick[ties] = True
    return rows[pick]
