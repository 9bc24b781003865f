"""Protobuf wire bytes written by hand, for the few shapes the agent emits at high rates:
varints, Timestamps, and the framing of a serialized Flow as a GetFlowsBatch entry holding a
GetFlowsResponse (`flow`, or `flow_update`: an end applied to a flow already sent).

Why: building a message object per record to serialize it costs more than the record's
whole path through the agent; these bytes are what the message would serialize to (a test
holds them to it), made from parts that are cached or computed once per batch.
"""

from __future__ import annotations

_NS = 1_000_000_000


def _varint_slow(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


# Lengths of flows and responses are almost always below 16 KiB: one lookup instead of a loop.
_VARINTS = [_varint_slow(n) for n in range(1 << 14)]


def varint(n: int) -> bytes:
    return _VARINTS[n] if n < 16384 else _varint_slow(n)


def timestamp_bytes(t_ns: int) -> bytes:
    """A google.protobuf.Timestamp's bytes (fields 1 seconds, 2 nanos; zeros omitted)."""
    seconds, nanos = divmod(t_ns, _NS)
    out = b""
    if seconds:
        out += b"\x08" + _varint_slow(seconds)
    if nanos:
        out += b"\x10" + _varint_slow(nanos)
    return out


def node_prefix(node: str) -> bytes:
    """GetFlowsResponse field 1 (node_name)."""
    raw = node.encode()
    return b"\n" + varint(len(raw)) + raw if raw else b""


RESPONSE_FLOW = b"\x1a"         # GetFlowsResponse.flow (field 3, length-delimited)
RESPONSE_FLOW_UPDATE = b"\x32"  # GetFlowsResponse.flow_update (field 6)


def frame_flow(prefix: bytes, ts: bytes, data: bytes,
               kind: bytes = RESPONSE_FLOW) -> tuple[bytes, int, int]:
    """(framed, response_offset, flow_offset) for a serialized Flow and its serialized time:
    GetFlowsBatch field 1 holding GetFlowsResponse{node_name, time, flow (or flow_update)},
    built without any message object."""
    head = prefix + b"\x12" + _VARINTS[len(ts)] + ts + kind + varint(len(data))
    resp_len = len(head) + len(data)
    frame = b"\n" + varint(resp_len)
    return frame + head + data, len(frame), len(frame) + len(head)
