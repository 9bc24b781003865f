"""Flow records kept as columns (agent/datapath/batch.py FlowBatch) rendered to the wire: the
flow log's JSON lines and the Observer's protobuf bytes, without a Flow object per record.

What records of one identity share (interface, direction, addresses, names: an Ident) is
rendered once, in two parts around the per-record fields: the fields numbered below `l4`
(the head) and those after `flow_end` (the tail). A record's own fields (ports, TCP flags,
counts, times, flow_end, outcome) are written between them: a JSON line is one %-format of
a template with the parts as strings, a Flow's bytes a join of the parts. Records of an
unusual shape (no ports, ICMP, a DNS payload, a time on a whole microsecond) take the slow
path through a Flow object, so the text is always what the JSON mapping of the record says.

JSON lines are compact (no spaces) and name neither the node nor the response time: the flow
log's header says the node (agent.wire.logformat), and a record's `time` is in the flow.
"""

from __future__ import annotations

import time

import numpy as np

from agent.wire import flowjson, flowupdate, logformat
from agent.wire.protowire import (RESPONSE_FLOW, RESPONSE_FLOW_UPDATE, frame_flow,
                                  timestamp_bytes, varint)
from agent.wire.timefmt import rfc3339_ns
from podflow_api.v1 import flow_pb2

_NS = 1_000_000_000
_L4_FIRST, _L4_AFTER_END = 10, 16  # Flow field numbers: l4 .. flow_end are per record
_L4_NAMES = {6: "tcp", 17: "udp", 132: "sctp"}
_L4_FIELD = {6: 1, 17: 2, 132: 3, 1: 4, 58: 5}  # Layer4 oneof field numbers
_TCP_FLAG_NAMES = ("FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR")
_OUTCOME_JSON = {v.number: f',"outcome":"{v.name}"' for v in
                 flow_pb2.ConnectionOutcome.DESCRIPTOR.values}
_OUTCOME_JSON[0] = ""
_OUTCOME_PROTO = {n: (b"\xc0\x01" + varint(n) if n else b"") for n in range(256)}


def _flags_json(bits: int) -> str:
    names = [name for i, name in enumerate(_TCP_FLAG_NAMES) if bits & (1 << i)]
    if not names:
        return ""
    return ',"flags":{' + ",".join(f'"{n}":true' for n in names) + "}"


def _flags_proto(bits: int) -> bytes:
    body = b"".join(bytes(((i + 1) << 3, 1)) for i in range(8) if bits & (1 << i))
    return b"\x1a" + varint(len(body)) + body if body else b""


_FLAGS_JSON = [_flags_json(b) for b in range(256)]
_FLAGS_PROTO = [_flags_proto(b) for b in range(256)]


def _part(flow: flow_pb2.Flow, lo: int, hi: int) -> flow_pb2.Flow:
    part = flow_pb2.Flow()
    part.CopyFrom(flow)
    for field, _ in flow.ListFields():
        if not lo <= field.number <= hi:
            part.ClearField(field.name)
    return part


class IdentRender:
    """An identity's Flow (only the fields its records share) and its renderings. The tail
    comes in variants by the record's policy enforcement (Policy.enforcement, inside the
    identity's `policy`)."""

    __slots__ = ("flow", "_proto", "_json", "_update_json", "_tails")

    def __init__(self, flow: flow_pb2.Flow):
        self.flow = flow
        self._proto: tuple[bytes, bytes] | None = None
        self._json: tuple[str, str] | None = None
        self._update_json: str | None = None
        self._tails: dict[tuple[bool, int], bytes | str] = {}

    def proto_parts(self) -> tuple[bytes, bytes]:
        """(fields 1..9, fields 16..) serialized."""
        if self._proto is None:
            self._proto = (_part(self.flow, 1, _L4_FIRST - 1).SerializeToString(),
                           _part(self.flow, _L4_AFTER_END, 1 << 29).SerializeToString())
        return self._proto

    def json_parts(self) -> tuple[str, str]:
        """(fields 3..9, ",fields 16.." or "") as compact JSON members, node_name left out."""
        if self._json is None:
            head = flowjson.to_compact_json(_part(self.flow, 3, _L4_FIRST - 1))[1:-1]
            tail = flowjson.to_compact_json(_part(self.flow, _L4_AFTER_END, 1 << 29))[1:-1]
            self._json = (head, "," + tail if tail else "")
        return self._json

    def json_update_head(self) -> str:
        """The head of a flow-log `flow_update` line: only what names the flow
        (flowupdate.LOG_FIELDS among fields 3..9); an update line has no tail."""
        if self._update_json is None:
            part = _part(flowupdate.log_part(self.flow), 3, _L4_FIRST - 1)
            self._update_json = flowjson.to_compact_json(part)[1:-1]
        return self._update_json

    def tail(self, enforcement: int, as_json: bool):
        """The tail of a record whose policy enforcement is `enforcement` (0: none)."""
        if not enforcement:
            return self.json_parts()[1] if as_json else self.proto_parts()[1]
        key = (as_json, enforcement)
        found = self._tails.get(key)
        if found is None:
            part = _part(self.flow, _L4_AFTER_END, 1 << 29)
            part.policy.enforcement = enforcement
            found = self._tails[key] = (("," + flowjson.to_compact_json(part)[1:-1]) if as_json
                                        else part.SerializeToString())
        return found


# -- protobuf ------------------------------------------------------------------------------

def _ts_field(tag: bytes, ns: int) -> bytes:
    body = timestamp_bytes(ns)
    return tag + varint(len(body)) + body


def _l4_proto(proto: int, sport: int, dport: int, flags: int) -> bytes:
    field = _L4_FIELD.get(proto)
    if field is None:
        return b""
    body = b""
    if sport:
        body += b"\x08" + varint(sport)
    if dport:
        body += b"\x10" + varint(dport)
    if proto == 6:
        body += _FLAGS_PROTO[flags]
    inner = bytes(((field << 3) | 2,)) + varint(len(body)) + body
    return b"\x52" + varint(len(inner)) + inner


def record_proto(batch, i: int, enforcement: int | None = None) -> bytes:
    """Record i of a FlowBatch as a serialized Flow (`enforcement`: its policy finding
    instead of the batch's)."""
    ident = batch.idents[batch.ident[i]]
    head, _ = ident.proto_parts()
    if enforcement is None:
        enforcement = int(batch.enforcement[i])
    tail = ident.tail(enforcement, as_json=False)
    packets, nbytes = int(batch.packets[i]), int(batch.bytes[i])
    parts = [_ts_field(b"\x0a", batch.time_ns), head,
             _l4_proto(int(batch.proto[i]), int(batch.sport[i]), int(batch.dport[i]),
                       int(batch.tcp_flags[i]))]
    if packets:
        parts.append(b"\x58" + varint(packets))
    if nbytes:
        parts.append(b"\x60" + varint(nbytes))
    if batch.first_ns[i]:
        parts.append(_ts_field(b"\x6a", int(batch.first_ns[i])))
    if batch.last_ns[i]:
        parts.append(_ts_field(b"\x72", int(batch.last_ns[i])))
    if batch.flow_end[i]:
        parts.append(b"\x78\x01")
    parts.append(tail)
    extra = batch.extras.get(i)
    if extra:
        parts.append(extra)
    parts.append(_OUTCOME_PROTO[int(batch.outcome[i])])
    return b"".join(parts)


def framed(batch, prefix: bytes) -> list[tuple[int, bytes, int, int]]:
    """Every record of a batch framed as a GetFlowsBatch entry (StoredFlow tuples: time,
    framed bytes, response offset, flow offset), end notices as flow_update responses."""
    cached = batch._cache.get(("framed", prefix))
    if cached is not None:
        return cached
    ts = timestamp_bytes(batch.time_ns)
    t_ns = batch.time_ns
    update = batch.update
    out = []
    for i in range(len(batch)):
        kind = RESPONSE_FLOW_UPDATE if update[i] else RESPONSE_FLOW
        out.append((t_ns, *frame_flow(prefix, ts, record_proto(batch, i), kind)))
    batch._cache[("framed", prefix)] = out
    return out


# -- JSON lines ----------------------------------------------------------------------------

# A record's line: the prefix (the line's start, time and the identity's head, which ends
# inside l4 at '"source_port":'), the record's own fields, then the suffix (flow_end, the
# identity's tail for the record's policy finding, the outcome, the closing braces), made
# once per distinct (identity, end, finding, outcome) of a batch.
_RECORD = ('%s%d,"destination_port":%d%s}},"packets":"%d","bytes":"%d",'
           '"first_seen":"%s.%09dZ","last_seen":"%s.%09dZ"%s')
_UPDATE = '%s%d,"destination_port":%d%s}},"first_seen":"%s.%09dZ","last_seen":"%s.%09dZ"%s'
_END = ("", ',"flow_end":true')
_second_text: dict[int, str] = {}


def _second(sec: int) -> str:
    text = _second_text.get(sec)
    if text is None:
        if len(_second_text) > 4096:
            _second_text.clear()
        text = _second_text[sec] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
    return text


def record_json(batch, i: int, enforcement: int | None = None) -> str:
    """Record i as a flow-log line through a Flow object (the slow path, any shape)."""
    flow = flow_pb2.Flow.FromString(record_proto(batch, i, enforcement))
    return logformat.flow_line(flow, key="flow_update" if batch.update[i] else "flow").decode()


def json_lines(batch, lo: int = 0, hi: int | None = None, rows=None,
               enforcement: np.ndarray | None = None) -> str:
    """Records [lo, hi) of a batch (or the record indexes `rows`) as flow-log lines.
    `enforcement` (one per row) replaces the records' policy findings (the flow log's merge
    of a receiver's finding into the sender's record: FlowBatch.receiver_repeats)."""
    if rows is None:
        rows = np.arange(lo, len(batch) if hi is None else hi)
    if not len(rows):
        return ""
    proto = batch.proto[rows]
    sport, dport = batch.sport[rows], batch.dport[rows]
    first, last = batch.first_ns[rows], batch.last_ns[rows]
    fast = (((proto == 6) | (proto == 17) | (proto == 132)) & (sport > 0) & (dport > 0)
            & (first % 1000 != 0) & (last % 1000 != 0))
    if batch.extras:
        fast &= ~np.isin(rows, np.fromiter(batch.extras, np.int64))
    if enforcement is None:
        enforcement = batch.enforcement[rows]
    out: list[str] = []
    time_json = '"' + rfc3339_ns(batch.time_ns) + '"'
    idents = batch.idents
    protos = _ident_protos(batch)
    update = batch.update[rows]
    for is_update, sel in ((False, fast & ~update), (True, fast & update)):
        chosen = rows[sel]
        if not len(chosen):
            continue
        start = '{"flow_update":{"time":' if is_update else '{"flow":{"time":'
        prefixes = [start + time_json + "," + _l4_head(
            ident.json_update_head() if is_update else ident.json_parts()[0], p)
            for ident, p in zip(idents, protos)]
        ids = batch.ident[chosen]
        f_sec, f_ns = np.divmod(first[sel], _NS)
        l_sec, l_ns = np.divmod(last[sel], _NS)
        seconds = np.concatenate([f_sec, l_sec])
        base = int(seconds.min())
        span = int(seconds.max()) - base + 1
        if span <= 4096:  # a batch's records span seconds to minutes: index, no sort
            texts = [_second(base + j) for j in range(span)]
            sec_text = [texts[j] for j in (seconds - base).tolist()]
        else:
            uniq, inv = np.unique(seconds, return_inverse=True)
            texts = [_second(x) for x in uniq.tolist()]
            sec_text = [texts[j] for j in inv.tolist()]
        k = len(chosen)
        tcp = proto[sel] == 6
        flags = ([_FLAGS_JSON[b] for b in np.where(tcp, batch.tcp_flags[chosen], 0).tolist()]
                 if tcp.any() else [""] * k)
        # What follows the record's own fields, by (identity, end, finding, outcome).
        ends = np.ones(k, np.int64) if is_update else batch.flow_end[chosen].astype(np.int64)
        tail_key = ((ids.astype(np.int64) * 2 + ends) * 256
                    + enforcement[sel].astype(np.int64)) * 256 + batch.outcome[chosen]
        kinds, which = np.unique(tail_key, return_inverse=True)
        suffixes = []
        for key in kinds.tolist():
            rest, outcome = divmod(key, 256)
            rest, finding = divmod(rest, 256)
            g, end = divmod(rest, 2)
            tail = "" if is_update else idents[g].tail(finding, True)
            suffixes.append(_END[end] + tail + _OUTCOME_JSON.get(outcome, "") + "}}\n")
        columns = [[prefixes[g] for g in ids.tolist()], sport[sel].tolist(),
                   dport[sel].tolist(), flags]
        if not is_update:
            columns += [batch.packets[chosen].tolist(), batch.bytes[chosen].tolist()]
        columns += [sec_text[:k], f_ns.tolist(), sec_text[k:], l_ns.tolist(),
                    [suffixes[j] for j in which.ravel().tolist()]]
        template = _UPDATE if is_update else _RECORD
        out.extend([template % args for args in zip(*columns)])
    slow = ~fast
    if slow.any():
        out.extend(record_json(batch, i, e) for i, e in
                   zip(rows[slow].tolist(), enforcement[slow].tolist()))
    return "".join(out)


def _ident_protos(batch) -> list[int]:
    """The IP protocol of each identity (one per identity: groups split by protocol)."""
    protos = np.zeros(len(batch.idents), np.int64)
    protos[batch.ident] = batch.proto
    return protos.tolist()


def _l4_head(head: str, proto: int) -> str:
    name = _L4_NAMES.get(proto)
    return f'{head},"l4":{{"{name}":{{"source_port":' if name else head
