"""Fast protobuf -> JSON for flow records, byte for byte what `json_format.MessageToJson(msg,
preserving_proto_field_name=True, indent=None)` writes.

Why it exists: json_format walks every message in pure Python (~85 us for one enriched
GetFlowsResponse here), which would cost the flow log and `observe -o jsonl` more than a whole
core at 20,000 flows/s. This encoder visits only the fields that are set (ListFields), with a
converter per field descriptor built once, and lets the C json module do the text.
Messages other than Timestamp/Duration among the well-known types are not used in flows and
fall back to json_format.
"""

from __future__ import annotations

import base64
import json
import math
import time

from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

_INT64_TYPES = {FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_SINT64,
                FieldDescriptor.TYPE_FIXED64, FieldDescriptor.TYPE_SFIXED64}
_FLOAT_TYPES = {FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE}

_encoders: dict = {}  # FieldDescriptor -> value converter
_second_prefix: dict[int, str] = {}  # epoch second -> "YYYY-MM-DDTHH:MM:SS"


def _timestamp(msg) -> str:
    seconds, nanos = msg.seconds, msg.nanos
    prefix = _second_prefix.get(seconds)
    if prefix is None:
        if len(_second_prefix) > 4096:
            _second_prefix.clear()
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
        _second_prefix[seconds] = prefix
    if nanos == 0:
        return prefix + "Z"
    if nanos % 1_000_000 == 0:
        return "%s.%03dZ" % (prefix, nanos // 1_000_000)
    if nanos % 1000 == 0:
        return "%s.%06dZ" % (prefix, nanos // 1000)
    return "%s.%09dZ" % (prefix, nanos)


timestamp_str = _timestamp  # Timestamp message -> RFC 3339 string


def timestamp_ns_str(ns: int) -> str:
    """Epoch nanoseconds -> the same RFC 3339 form as a Timestamp field."""
    return _timestamp(_Ts(ns // 1_000_000_000, ns % 1_000_000_000))


class _Ts:
    __slots__ = ("seconds", "nanos")

    def __init__(self, seconds: int, nanos: int):
        self.seconds, self.nanos = seconds, nanos


def _float(value: float):
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return value


def _message_converter(descriptor):
    full_name = descriptor.full_name
    if full_name == "google.protobuf.Timestamp":
        return _timestamp
    if full_name.startswith("google.protobuf."):
        return lambda m: json_format.MessageToDict(m, preserving_proto_field_name=True)
    return to_dict


def _scalar_converter(field: FieldDescriptor):
    kind = field.type
    if kind == FieldDescriptor.TYPE_MESSAGE:
        return _message_converter(field.message_type)
    if kind == FieldDescriptor.TYPE_ENUM:
        values = field.enum_type.values_by_number

        def enum_name(number, values=values):
            value = values.get(number)
            return value.name if value is not None else number
        return enum_name
    if kind in _INT64_TYPES:
        return str
    if kind in _FLOAT_TYPES:
        return _float
    if kind == FieldDescriptor.TYPE_BYTES:
        return lambda b: base64.b64encode(b).decode("ascii")
    return None  # int32, bool, string: already JSON-ready


def _field_encoder(field: FieldDescriptor):
    encoder = _encoders.get(field)
    if encoder is not None:
        return encoder
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        key_field = field.message_type.fields_by_name["key"]
        value_conv = _scalar_converter(field.message_type.fields_by_name["value"])
        bool_key = key_field.type == FieldDescriptor.TYPE_BOOL

        def encode_map(value):
            out = {}
            for k, v in value.items():
                key = ("true" if k else "false") if bool_key else str(k)
                out[key] = value_conv(v) if value_conv else v
            return out
        encoder = encode_map
    else:
        conv = _scalar_converter(field)
        if field.is_repeated:
            encoder = (lambda value, conv=conv: [conv(v) for v in value]) if conv else list
        else:
            encoder = conv or (lambda value: value)
    _encoders[field] = encoder
    return encoder


def to_dict(msg: Message) -> dict:
    """The JSON-mapping dict of `msg` (proto field names, defaults omitted)."""
    out = {}
    for field, value in msg.ListFields():
        out[field.name] = _field_encoder(field)(value)
    return out


def to_json(msg: Message) -> str:
    """One line of JSON, identical to MessageToJson(msg, preserving_proto_field_name=True,
    indent=None)."""
    return json.dumps(to_dict(msg))
