"""podflow records -> Hubble flows as wire bytes, fast enough to stream one per message.

mapping.py says what each Hubble field means for a podflow record; this module writes those
fields as protobuf bytes. A GetFlows stream sends one message per flow, and building each
message through the protobuf API costs several times what gRPC costs to send it, so a flow is
written field by field from cached pieces. Fields may come in any order on the wire; parsing
the bytes gives exactly the message mapping.py's rules describe (`to_hubble`), which the
field tests check (tests/observer/hubble/test_hubble_mapping.py).

What does not change between the records of one flow (everything but time, uuid, Summary
and the counts, last seen and outcome in the extensions) is cached whole by everything it is
made of (mapper.py); a record of a flow seen before costs a lookup and the per-record fields.
A new flow's part is built from smaller pieces cached by their own inputs, so it still hits
most of them:
- the endpoints (source, destination, their DNS names): by the two podflow endpoints;
- verdict, event type, observation point, direction, is_reply: by a handful of enums;
- the Service side, the DNS record, the static extensions: by their podflow messages;
- addresses and ports are podflow's own bytes (the field numbers agree).
The caches are bounded (two generations, see _Bounded) and only ever hold complete values,
so one mapper serves all the threads of a gRPC server.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import struct

from google.protobuf import field_mask_pb2, struct_pb2

from agent.wire.protowire import varint as _varint
from agent.observer.hubble import mapping as rules
from podflow_api.v1 import flow_pb2 as pf
from podflow_hubble.flow import flow_pb2 as hb


def _tag(number: int, wire_type: int) -> bytes:
    return _varint(number << 3 | wire_type)


def _ld(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field (string, bytes, message)."""
    return tag + _varint(len(payload)) + payload


def _str(tag: bytes, text: str) -> bytes:
    if not text:
        return b""
    raw = text.encode()
    return tag + _varint(len(raw)) + raw


def _uint(tag: bytes, value: int) -> bytes:
    return tag + _varint(value) if value else b""


def _field(name: str) -> bytes:
    """The tag of a length-delimited field of flow.Flow."""
    return _tag(hb.Flow.DESCRIPTOR.fields_by_name[name].number, 2)


def _vfield(name: str) -> bytes:
    """The tag of a varint field of flow.Flow."""
    return _tag(hb.Flow.DESCRIPTOR.fields_by_name[name].number, 0)


_T_TIME, _T_UUID, _T_EMITTER = _field("time"), _field("uuid"), _field("emitter")
_T_IP, _T_L4, _T_SOURCE, _T_DESTINATION = (_field("IP"), _field("l4"), _field("source"),
                                           _field("destination"))
_T_NODE, _T_SOURCE_NAMES, _T_DESTINATION_NAMES = (_field("node_name"), _field("source_names"),
                                                  _field("destination_names"))
_T_L7, _T_EVENT_TYPE, _T_SOURCE_SERVICE, _T_DESTINATION_SERVICE = (
    _field("l7"), _field("event_type"), _field("source_service"),
    _field("destination_service"))
_T_IS_REPLY, _T_INTERFACE, _T_SUMMARY, _T_EXTENSIONS = (
    _field("is_reply"), _field("interface"), _field("Summary"), _field("extensions"))
_T_VERDICT, _T_DROP_REASON, _T_TYPE, _T_REPLY = (_vfield("verdict"), _vfield("drop_reason"),
                                                 _vfield("Type"), _vfield("reply"))
_T_DIRECTION, _T_POINT, _T_DROP_REASON_DESC = (
    _vfield("traffic_direction"), _vfield("trace_observation_point"),
    _vfield("drop_reason_desc"))

_IS_REPLY = {True: _ld(_T_IS_REPLY, b"\x08\x01"), False: _ld(_T_IS_REPLY, b"")}
_REPLY = {True: _T_REPLY + b"\x01", False: b""}
_ANY_STRUCT_URL = _ld(b"\x0a", b"type.googleapis.com/google.protobuf.Struct")
_IP_VERSIONS = {pf.IPV4: hb.IPv4, pf.IPV6: hb.IPv6}
# Layer4's oneof field numbers. Inside them podflow's TCP/UDP/SCTP/ICMPv4/ICMPv6 messages
# (and TCPFlags) have Hubble's field numbers and types, so their bytes are Hubble's as they
# are; and so are podflow's IP bytes but for `fragment` (field 4, Hubble's `encrypted`).
# tests/observer/hubble/test_hubble_mapping.py holds both declarations to this.
_L4_TAGS = {"tcp": _tag(1, 2), "udp": _tag(2, 2), "icmpv4": _tag(3, 2), "icmpv6": _tag(4, 2),
            "sctp": _tag(5, 2)}

# google.protobuf.Struct / Value encodings (Struct.fields = 1, a map of string -> Value;
# Value: number_value = 2 (double), string_value = 3, bool_value = 4, struct_value = 5).


def _sv_number(value: float) -> bytes:
    return b"\x11" + struct.pack("<d", value)


def _sv_string(text: str) -> bytes:
    return _ld(b"\x1a", text.encode())


def _sv_bool(value: bool) -> bytes:
    return b"\x20\x01" if value else b"\x20\x00"


def _sv_struct(payload: bytes) -> bytes:
    return _ld(b"\x2a", payload)


_ENTRY_KEYS: dict[str, bytes] = {}


def _entry(key: str, value: bytes) -> bytes:
    """One map entry of Struct.fields: key (1) and Value (2)."""
    encoded = _ENTRY_KEYS.get(key)
    if encoded is None:
        encoded = _ENTRY_KEYS.setdefault(key, _ld(b"\x0a", key.encode()))
    body = encoded + b"\x12" + _varint(len(value)) + value
    return b"\x0a" + _varint(len(body)) + body


@functools.lru_cache(maxsize=4096)
def _sub_struct(kind: str, raw: bytes) -> bytes:
    """The Struct entry for a Service, backend or translation (they repeat: cached by the
    podflow message's bytes)."""
    if kind == "service":
        svc = pf.Service.FromString(raw)
        fields = (("namespace", _sv_string(svc.namespace)), ("name", _sv_string(svc.name)),
                  ("type", _sv_string(svc.type)), ("ip", _sv_string(svc.ip)),
                  ("port", _sv_number(svc.port)), ("no_endpoints", _sv_bool(svc.no_endpoints)))
    elif kind == "backend":
        be = pf.Backend.FromString(raw)
        fields = (("ip", _sv_string(be.ip)), ("port", _sv_number(be.port)),
                  ("namespace", _sv_string(be.namespace)),
                  ("pod_name", _sv_string(be.pod_name)),
                  ("node_name", _sv_string(be.node_name)))
    else:
        tr = pf.Translation.FromString(raw)
        fields = (("original_ip", _sv_string(tr.original_ip)),
                  ("original_port", _sv_number(tr.original_port)),
                  ("translated_ip", _sv_string(tr.translated_ip)),
                  ("translated_port", _sv_number(tr.translated_port)))
    return _entry(kind, _sv_struct(b"".join(_entry(k, v) for k, v in fields)))


@functools.lru_cache(maxsize=1024)
def _enum_entry(key: str, value: int) -> bytes:
    return _entry(key, _sv_string(rules.ENUM_NAMES[key](value)))


@functools.lru_cache(maxsize=4096)
def _string_entry(key: str, value: str) -> bytes:
    return _entry(key, _sv_string(value))


_FLOW_END = {True: _entry("flow_end", _sv_bool(True)), False: _entry("flow_end", _sv_bool(False))}
_FRAGMENT = _entry("fragment", _sv_bool(True))


def rfc3339(ts) -> str:
    """A Timestamp as protobuf's JSON writes it (0, 3, 6 or 9 fraction digits, "Z"), without
    its per-call datetime work: the part up to the second is cached."""
    nanos = ts.nanos
    if nanos == 0:
        frac = ""
    elif nanos % 1_000_000 == 0:
        frac = f".{nanos // 1_000_000:03d}"
    elif nanos % 1000 == 0:
        frac = f".{nanos // 1000:06d}"
    else:
        frac = f".{nanos:09d}"
    return f"{_second(ts.seconds)}{frac}Z"


@functools.lru_cache(maxsize=4096)
def _second(seconds: int) -> str:
    return (datetime.datetime(1970, 1, 1) + datetime.timedelta(seconds=seconds)).isoformat()


def _number_entry_prefix(key: str) -> bytes:
    """The bytes of a number entry before its 8-byte double: the entry's length is fixed."""
    return _entry(key, _sv_number(0.0))[:-8]


_PACKETS, _BYTES = _number_entry_prefix("packets"), _number_entry_prefix("bytes")
_DOUBLE = struct.Struct("<d").pack


_TEXT_ENTRY_PREFIXES: dict[tuple[str, int], bytes] = {}


def _text_entry(key: str, text: str) -> bytes:
    """_entry(key, _sv_string(text)), whose bytes before the text only depend on the key and
    the text's length (an RFC 3339 time has one of four lengths)."""
    raw = text.encode()
    prefix = _TEXT_ENTRY_PREFIXES.get((key, len(raw)))
    if prefix is None:
        prefix = _entry(key, _sv_string(text))[:-len(raw)]
        _TEXT_ENTRY_PREFIXES[(key, len(raw))] = prefix
    return prefix + raw


def _first_seen_entry(flow: pf.Flow) -> bytes:
    """The same in every record of a flow (its first packet at this observation point)."""
    return _text_entry("first_seen", rfc3339(flow.first_seen))


def _dynamic_extensions(flow: pf.Flow) -> bytes:
    """The Struct entries that change from one interval of a flow to the next."""
    out = (_PACKETS + _DOUBLE(flow.packets) + _BYTES + _DOUBLE(flow.bytes) +
           _FLOW_END[flow.flow_end])
    if flow.HasField("last_seen"):
        out += _text_entry("last_seen", rfc3339(flow.last_seen))
    if flow.outcome:
        out += _enum_entry("outcome", flow.outcome)
    return out


def _static_extensions(flow: pf.Flow, subs: tuple) -> bytes:
    """The Struct entries that stay the same for every interval of a flow; `subs` are the
    serialized service, backend and translation (None where absent)."""
    parts = []
    if flow.observation_point:
        parts.append(_enum_entry("observation_point", flow.observation_point))
    if flow.traffic_direction:
        parts.append(_enum_entry("direction", flow.traffic_direction))
    if flow.category:
        parts.append(_enum_entry("category", flow.category))
    if flow.verdict == pf.DROPPED:
        parts.append(_string_entry("drop_reason", flow.drop_reason))
        parts.append(_entry("drop_reason_code", _sv_number(flow.drop_reason_code)))
    if flow.ip.fragment:
        parts.append(_FRAGMENT)
    if flow.source.node_name:
        parts.append(_string_entry("source_node", flow.source.node_name))
    if flow.destination.node_name:
        parts.append(_string_entry("destination_node", flow.destination.node_name))
    for kind, raw in zip(("service", "backend", "translation"), subs):
        if raw is not None:
            parts.append(_sub_struct(kind, raw))
    return b"".join(parts)


def _subs(flow: pf.Flow) -> tuple:
    """The serialized service, backend and translation (None where absent)."""
    return (flow.service.SerializeToString() if flow.HasField("service") else None,
            flow.backend.SerializeToString() if flow.HasField("backend") else None,
            flow.translation.SerializeToString() if flow.HasField("translation") else None)


def extensions(flow: pf.Flow) -> struct_pb2.Struct:
    """Everything podflow knows that Hubble has no field for, in podflow's own words (what
    the flow's `extensions` Any holds)."""
    first_seen = _first_seen_entry(flow) if flow.HasField("first_seen") else b""
    return struct_pb2.Struct.FromString(_dynamic_extensions(flow) + first_seen +
                                        _static_extensions(flow, _subs(flow)))


def _l4_bytes(flow: pf.Flow) -> bytes:
    """The `l4` field: Layer4 holding the record's protocol message as podflow wrote it."""
    kind = flow.l4.WhichOneof("protocol")
    if kind is None:
        return b""
    return _ld(_T_L4, _ld(_L4_TAGS[kind], getattr(flow.l4, kind).SerializeToString()))


def _ip_bytes(ip: pf.IP) -> bytes:
    """The `IP` field: podflow's IP as it is, unless it marks a fragment (Hubble's field 4
    says `encrypted`): then written field by field."""
    if not ip.source and not ip.destination:
        return b""
    if not ip.fragment:
        return _ld(_T_IP, ip.SerializeToString())
    return _ld(_T_IP, _str(b"\x0a", ip.source) + _str(b"\x12", ip.destination) +
               _uint(b"\x18", _IP_VERSIONS.get(ip.ip_version, 0)))


_UUID_VARIANT = {c: "89ab"[int(c, 16) & 0x3] for c in "0123456789abcdef"}


def record_uuid(flow: pf.Flow) -> str:
    """A UUID (version 8: derived, not random) from the record's bytes: stable for one
    record, different for any two records that differ in anything. flow_end and outcome are
    left out: the store applies a flow's end to its latest record after it was first served
    (agent/flowstore.py), and the record stays the same record (no two records differ in
    those alone)."""
    if flow.flow_end or flow.outcome:
        stable = pf.Flow()
        stable.CopyFrom(flow)
        stable.ClearField("flow_end")
        stable.ClearField("outcome")
        flow = stable
    h = hashlib.blake2b(flow.SerializeToString(deterministic=True), digest_size=16).hexdigest()
    # version 8 in the 13th hex digit, RFC 4122's variant (10xx) in the 17th
    return f"{h[:8]}-{h[8:12]}-8{h[13:16]}-{_UUID_VARIANT[h[16]]}{h[17:20]}-{h[20:]}"


class _Bounded:
    """A bounded cache in two generations: when the newer one is full it becomes the older
    one (the previous older one is forgotten), and a hit in the older one moves back to the
    newer. So what is still being asked for survives a turnover, at the cost of a second
    lookup on a miss, instead of an LRU's bookkeeping on every hit. At most 2 x max_entries.
    Values are only ever complete: threads may share one."""

    def __init__(self, max_entries: int):
        self.max_entries = max(1, max_entries)
        self._new: dict = {}
        self._old: dict = {}

    def get(self, key, default=None):
        hit = self._new.get(key)
        if hit is None:
            hit = self._old.get(key)
            if hit is None:
                return default
            self.put(key, hit)
        return hit

    def put(self, key, value):
        if len(self._new) >= self.max_entries:
            self._old, self._new = self._new, {}
        self._new[key] = value
        return value

    def __len__(self) -> int:
        return len(self._new) + len(self._old)


class FlowMask:
    """A GetFlowsRequest field mask compiled for the encoder: which top-level fields of
    flow.Flow to send and, for message fields, which of their sub-fields. Paths naming
    fields podflow does not declare (the hubble CLI's default mask asks for "ethernet" and
    "ip_trace_id") are ignored: podflow would send nothing there anyway; they are listed
    in `ignored`."""

    def __init__(self, paths):
        fields = hb.Flow.DESCRIPTOR.fields_by_name
        self.top: dict[str, tuple[str, ...] | None] = {}
        self.ignored: list[str] = []
        for path in paths:
            head, _, rest = path.partition(".")
            if head not in fields:
                self.ignored.append(path)
                continue
            if not rest or fields[head].message_type is None:
                self.top[head] = None
            elif head not in self.top or self.top[head] is not None:
                self.top[head] = tuple(sorted({*(self.top.get(head) or ()), rest}))


def _masked(message_class, payload: bytes, subpaths: tuple[str, ...]) -> bytes:
    source = message_class.FromString(payload)
    out = message_class()
    mask = field_mask_pb2.FieldMask(paths=list(subpaths))
    mask.MergeMessage(source, out)
    return out.SerializeToString()


_R_FLOW = _tag(1, 2)
_R_NODE = _tag(1000, 2)
_R_TIME = _tag(1001, 2)
