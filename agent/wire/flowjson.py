"""Fast protobuf -> JSON for flow records, byte for byte what `json_format.MessageToJson(msg,
preserving_proto_field_name=True, indent=None)` writes.

Why it exists: json_format walks every message in pure Python (~85 us for one enriched
GetFlowsResponse here), which would cost the flow log and `observe -o jsonl` more than a whole
core at 20,000 flows/s. This encoder visits only the fields that are set (ListFields), with an
encoder per field descriptor built once, writes the text directly, and remembers the text of
small sub-messages that repeat from record to record (endpoints, Services, interfaces, the
5-tuple), keyed by their wire bytes. Well-known types other than Timestamp are not used in
flows and fall back to json_format.
"""

from __future__ import annotations

import base64
import json
import math
from json.encoder import encode_basestring_ascii as _quote

from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from agent.wire.timefmt import rfc3339, rfc3339_quoted

_INT64_TYPES = {FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_SINT64,
                FieldDescriptor.TYPE_FIXED64, FieldDescriptor.TYPE_SFIXED64}
_FLOAT_TYPES = {FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE}

_encoders: dict = {}  # FieldDescriptor -> value converter


def _float(value: float):
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return value


def _message_converter(descriptor):
    full_name = descriptor.full_name
    if full_name == "google.protobuf.Timestamp":
        return rfc3339
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




# -- direct text encoding ----------------------------------------------------------------------

_CACHE_MAX = 20000
_text_cache: dict[tuple, str] = {}  # (message full name, wire bytes) -> JSON text
# (FieldDescriptor, compact) -> value -> JSON text. Two styles: MessageToJson's (", " and
# ": ") for `observe -o jsonl` and responses, compact ("," and ":") for the agent's flow log,
# whose records rendered from columns (agent/wire/recordcols.py) are compact too.
_text_encoders: dict = {}
_SEPARATORS = {False: (", ", ": "), True: (",", ":")}
# Messages whose text is looked up by their wire bytes: few distinct values that repeat from
# flow to flow (pods, Services, addresses). Messages that carry ports or counters seldom
# repeat, and a miss costs more than encoding them.
_CACHED = {"podflow.v1.Endpoint", "podflow.v1.Service", "podflow.v1.Backend",
           "podflow.v1.Interface", "podflow.v1.IP", "podflow.v1.TCPFlags", "podflow.v1.Workload"}


def _float_text(value: float) -> str:
    return json.dumps(_float(value))


def _message_text_converter(descriptor, compact: bool):
    full_name = descriptor.full_name
    if full_name == "google.protobuf.Timestamp":
        return rfc3339_quoted
    if full_name.startswith("google.protobuf."):
        separators = _SEPARATORS[compact]
        return lambda m: json.dumps(json_format.MessageToDict(m, preserving_proto_field_name=True),
                                    separators=separators)
    encode = to_compact_json if compact else to_json
    if full_name not in _CACHED:
        return encode

    def cached(m, key_prefix=(full_name, compact)):
        key = (key_prefix, m.SerializeToString())
        text = _text_cache.get(key)
        if text is None:
            if len(_text_cache) >= _CACHE_MAX:
                _text_cache.clear()
            text = _text_cache[key] = encode(m)
        return text
    return cached


def _scalar_text_converter(field: FieldDescriptor, compact: bool):
    kind = field.type
    if kind == FieldDescriptor.TYPE_MESSAGE:
        return _message_text_converter(field.message_type, compact)
    if kind == FieldDescriptor.TYPE_ENUM:
        names = {v.number: _quote(v.name) for v in field.enum_type.values}
        return lambda number, names=names: names.get(number) or str(number)
    if kind in _INT64_TYPES:
        return lambda v: '"%d"' % v
    if kind in _FLOAT_TYPES:
        return _float_text
    if kind == FieldDescriptor.TYPE_BYTES:
        return lambda b: '"' + base64.b64encode(b).decode("ascii") + '"'
    if kind == FieldDescriptor.TYPE_STRING:
        return _quote
    if kind == FieldDescriptor.TYPE_BOOL:
        return lambda v: "true" if v else "false"
    return str  # 32-bit integers


def _field_text_encoder(field: FieldDescriptor, compact: bool = False):
    encoder = _text_encoders.get((field, compact))
    if encoder is not None:
        return encoder
    item_sep, key_sep = _SEPARATORS[compact]
    prefix = _quote(field.name) + key_sep
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        key_field = field.message_type.fields_by_name["key"]
        value_conv = _scalar_text_converter(field.message_type.fields_by_name["value"], compact)
        bool_key = key_field.type == FieldDescriptor.TYPE_BOOL

        def encoder(value, prefix=prefix):
            items = []
            for k, v in value.items():
                key = ("true" if k else "false") if bool_key else str(k)
                items.append(_quote(key) + key_sep + value_conv(v))
            return prefix + "{" + item_sep.join(items) + "}"
    else:
        conv = _scalar_text_converter(field, compact)
        if field.is_repeated:
            def encoder(value, prefix=prefix, conv=conv):
                return prefix + "[" + item_sep.join([conv(v) for v in value]) + "]"
        else:
            def encoder(value, prefix=prefix, conv=conv):
                return prefix + conv(value)
    _text_encoders[(field, compact)] = encoder
    return encoder


def to_json(msg: Message) -> str:
    """One line of JSON, identical to MessageToJson(msg, preserving_proto_field_name=True,
    indent=None)."""
    get = _text_encoders.get
    return "{" + ", ".join([(get((field, False)) or _field_text_encoder(field))(value)
                            for field, value in msg.ListFields()]) + "}"


def to_compact_json(msg: Message, skip: frozenset = frozenset()) -> str:
    """to_json without spaces (json.dumps(to_dict(msg), separators=(",", ":"))), leaving
    out the top-level fields named in `skip`."""
    get = _text_encoders.get
    return "{" + ",".join([(get((field, True)) or _field_text_encoder(field, True))(value)
                           for field, value in msg.ListFields()
                           if not skip or field.name not in skip]) + "}"
