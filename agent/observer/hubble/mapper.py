"""HubbleMapper: one agent's podflow records -> serialized Hubble flows and GetFlowsResponses.

The rules (what each Hubble field says) are mapping.py's, the byte writing encode.py's; the
mapper keeps the caches that make a record cheap to write (see encode.py for which piece is
cached by what) and is what a server shares between its streams.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.observer.hubble import mapping as rules
from agent.observer.hubble.encode import (_ANY_STRUCT_URL, _IS_REPLY, _R_FLOW, _R_NODE, _R_TIME,
                                          _REPLY, _T_DESTINATION, _T_DESTINATION_NAMES,
                                          _T_DESTINATION_SERVICE, _T_DIRECTION, _T_DROP_REASON,
                                          _T_DROP_REASON_DESC, _T_EMITTER, _T_EVENT_TYPE,
                                          _T_EXTENSIONS, _T_INTERFACE, _T_L7, _T_NODE, _T_POINT,
                                          _T_SOURCE, _T_SOURCE_NAMES, _T_SOURCE_SERVICE,
                                          _T_SUMMARY, _T_TIME, _T_TYPE, _T_UUID, _T_VERDICT,
                                          FlowMask, _Bounded, _dynamic_extensions, _field,
                                          _ip_bytes, _l4_bytes, _ld, _masked, _static_extensions,
                                          _str, _first_seen_entry, _subs, _uint, _varint,
                                          record_uuid)
from podflow_api.v1 import flow_pb2 as pf
from podflow_hubble.flow import flow_pb2 as hb

@dataclass(frozen=True)
class _Static:
    """The fields of a record's Hubble flow that its flow's other records share."""

    joined: bytes       # the fields, encoded and concatenated
    parts: dict         # the same, by Hubble field name (for field masks)
    head: str           # the Summary's first part ("TCP Flags: SYN, ACK")
    extensions: bytes   # the Struct entries that do not change between intervals


_TRACE, _DROP, _L7 = (_varint(rules.EVENT_TRACE), _varint(rules.EVENT_DROP),
                      _varint(rules.EVENT_L7))


class HubbleMapper:
    """podflow records -> serialized Hubble flows for one agent. Thread-safe."""

    def __init__(self, version: str = "", max_cached: int = 16384):
        """max_cached: entries per generation of each cache (see encode._Bounded)."""
        self.version = version
        self._emitter = _ld(_T_EMITTER, _str(b"\x0a", rules.EMITTER_NAME) +
                            _str(b"\x12", version))
        small = min(max_cached, 4096)
        # Everything that does not change between a flow's records -> _Static: the largest
        # entries (~1.5 KB), half as many per generation as the others.
        self._statics = _Bounded(max_cached // 2)
        # The pieces a new flow's _Static is built from, each by its own inputs.
        self._nodes = _Bounded(small)            # node -> parts
        self._endpoint_cache = _Bounded(max_cached)  # (Endpoint bytes, node) -> payload
        self._ends = _Bounded(max_cached)        # (source, destination, node) -> parts
        self._events = _Bounded(small)           # enums of the record -> parts
        self._services = _Bounded(small)         # (namespace, name, reply) -> parts
        self._dns = _Bounded(max_cached)         # DNS bytes -> (l7 field, Summary head)
        self._interfaces = _Bounded(small)       # (index, name) -> field
        self._policies = _Bounded(small)         # policy verdict bytes -> parts
        self._extensions = _Bounded(max_cached)  # static Struct entries, by their inputs
        self._masked = _Bounded(max_cached)

    # -- cached pieces --------------------------------------------------------------------

    def _node(self, node: str) -> dict:
        hit = self._nodes.get(node)
        if hit is None:
            hit = self._nodes.put(node, {"emitter": self._emitter,
                                         "node_name": _str(_T_NODE, node)})
        return hit

    def _endpoint(self, ep: pf.Endpoint, raw: bytes, node: str) -> bytes:
        key = (raw, node)
        hit = self._endpoint_cache.get(key)
        if hit is None:
            hit = self._endpoint_cache.put(key, rules.endpoint(ep, node).SerializeToString())
        return hit

    def _both_ends(self, flow: pf.Flow, src_raw: bytes, dst_raw: bytes, node: str) -> dict:
        src, dst = flow.source, flow.destination
        key = (src_raw, dst_raw, node)
        hit = self._ends.get(key)
        if hit is None:
            parts = {"source": _ld(_T_SOURCE, self._endpoint(src, src_raw, node)),
                     "destination": _ld(_T_DESTINATION, self._endpoint(dst, dst_raw, node))}
            if src.names:
                parts["source_names"] = b"".join(_str(_T_SOURCE_NAMES, n) for n in src.names)
            if dst.names:
                parts["destination_names"] = b"".join(_str(_T_DESTINATION_NAMES, n)
                                                      for n in dst.names)
            hit = self._ends.put(key, parts)
        return hit

    def _event(self, flow: pf.Flow, reply: bool, direction: int, l7: bool) -> dict:
        """verdict, drop reasons, Type, event_type, observation point, direction, reply."""
        dropped = flow.verdict == pf.DROPPED
        reason = rules.drop_reason(flow) if dropped else 0
        key = (flow.verdict, reason, flow.observation_point, flow.traffic_direction, reply, l7)
        hit = self._events.get(key)
        if hit is not None:
            return hit
        parts = {"is_reply": _IS_REPLY[reply], "reply": _REPLY[reply],
                 "traffic_direction": _uint(_T_DIRECTION, direction)}
        if dropped:
            parts["verdict"] = _uint(_T_VERDICT, hb.DROPPED)
            parts["drop_reason_desc"] = _uint(_T_DROP_REASON_DESC, reason)
            parts["drop_reason"] = _uint(_T_DROP_REASON, reason)
            parts["Type"] = _uint(_T_TYPE, hb.L3_L4)
            parts["event_type"] = _ld(_T_EVENT_TYPE, b"\x08" + _DROP + _uint(b"\x10", reason))
        else:
            parts["verdict"] = _uint(_T_VERDICT, hb.FORWARDED if flow.verdict == pf.FORWARDED
                                     else hb.VERDICT_UNKNOWN)
            if l7:
                parts["Type"] = _uint(_T_TYPE, hb.L7)
                parts["event_type"] = _ld(_T_EVENT_TYPE, b"\x08" + _L7)
            else:
                point, code = rules.trace_point(flow)
                parts["trace_observation_point"] = _uint(_T_POINT, point)
                parts["Type"] = _uint(_T_TYPE, hb.L3_L4)
                parts["event_type"] = _ld(_T_EVENT_TYPE, b"\x08" + _TRACE + _uint(b"\x10", code))
        return self._events.put(key, parts)

    def _service(self, flow: pf.Flow, reply: bool) -> dict:
        svc = flow.service
        key = (svc.namespace, svc.name, reply)
        hit = self._services.get(key)
        if hit is None:
            payload = _str(b"\x0a", svc.name) + _str(b"\x12", svc.namespace)
            name = "source_service" if reply else "destination_service"
            field = _ld(_T_SOURCE_SERVICE if reply else _T_DESTINATION_SERVICE, payload)
            hit = self._services.put(key, {name: field})
        return hit

    def _dns_part(self, flow: pf.Flow) -> tuple[bytes, str]:
        raw = flow.dns.SerializeToString()
        hit = self._dns.get(raw)
        if hit is None:
            field = _ld(_T_L7, rules.dns_message(flow.dns).SerializeToString())
            hit = self._dns.put(raw, (field, rules.dns_summary(flow.dns)))
        return hit

    def _interface(self, flow: pf.Flow) -> bytes:
        iface = flow.interface
        key = (iface.index, iface.name)
        hit = self._interfaces.get(key)
        if hit is None:
            hit = self._interfaces.put(key, _ld(_T_INTERFACE, _uint(b"\x08", iface.index) +
                                                _str(b"\x12", iface.name)))
        return hit

    def _policy(self, flow: pf.Flow, raw: bytes) -> dict:
        """The *_allowed_by / *_denied_by fields of the record's NetworkPolicy verdict."""
        hit = self._policies.get(raw)
        if hit is None:
            hit = self._policies.put(raw, {
                name: b"".join(_ld(_field(name), p.SerializeToString()) for p in policies)
                for name, policies in rules.policy_fields(flow)})
        return hit

    # -- a record ---------------------------------------------------------------------------

    def _static(self, flow: pf.Flow) -> _Static:
        """The fields that do not change between intervals of a flow, by everything they
        are made of: one lookup for the records of a flow already seen; built from the
        cached pieces otherwise."""
        has = flow.HasField
        subs = _subs(flow)
        key = (flow.node_name, flow.verdict, flow.drop_reason, flow.drop_reason_code,
               flow.observation_point, flow.traffic_direction, flow.category, flow.is_reply,
               flow.source.SerializeToString(), flow.destination.SerializeToString(),
               flow.ip.SerializeToString(), flow.l4.SerializeToString(),
               (flow.interface.index, flow.interface.name) if has("interface") else None,
               flow.dns.SerializeToString() if has("dns") else None, subs,
               flow.policy.SerializeToString() if has("policy") else None,
               # the same in every record of a flow: written once, with the static parts
               (flow.first_seen.seconds, flow.first_seen.nanos) if has("first_seen") else None)
        hit = self._statics.get(key)
        if hit is None:
            hit = self._statics.put(key, self._build_static(flow, key[8], key[9], subs))
        return hit

    def _build_static(self, flow: pf.Flow, src_raw: bytes, dst_raw: bytes,
                      subs: tuple) -> _Static:
        node = flow.node_name
        reply = rules.is_reply(flow)
        direction = rules.traffic_direction(flow, reply)
        l7 = (flow.verdict != pf.DROPPED and flow.HasField("dns")
              and rules.is_l7(flow, reply, direction))
        parts: dict[str, bytes] = {}
        parts.update(self._node(node))
        parts.update(self._both_ends(flow, src_raw, dst_raw, node))
        parts.update(self._event(flow, reply, direction, l7))
        if flow.HasField("service") and flow.service.name:
            parts.update(self._service(flow, reply))
        if flow.HasField("policy"):
            parts.update(self._policy(flow, flow.policy.SerializeToString()))
        for name, field in (("IP", _ip_bytes(flow.ip)), ("l4", _l4_bytes(flow)),
                            ("interface", self._interface(flow)
                             if flow.HasField("interface") else b"")):
            if field:
                parts[name] = field
        if l7:
            parts["l7"], head = self._dns_part(flow)
        else:
            head = rules.l4_summary(flow)
        extensions = self._static_extensions(flow, subs)
        if flow.HasField("first_seen"):
            extensions += _first_seen_entry(flow)
        return _Static(b"".join(parts.values()), parts, head, extensions)

    def _static_extensions(self, flow: pf.Flow, subs: tuple) -> bytes:
        key = (flow.observation_point, flow.traffic_direction, flow.category, flow.verdict,
               flow.drop_reason, flow.drop_reason_code, flow.ip.fragment,
               flow.source.node_name, flow.destination.node_name, subs)
        hit = self._extensions.get(key)
        if hit is None:
            hit = self._extensions.put(key, _static_extensions(flow, subs))
        return hit

    @staticmethod
    def _dynamic(flow: pf.Flow, static: _Static, time_field: bytes) -> list[bytes]:
        """time, uuid, Summary, extensions: written for every record."""
        return [time_field, _str(_T_UUID, record_uuid(flow)),
                _str(_T_SUMMARY, rules.summary_from(static.head, flow)),
                _ld(_T_EXTENSIONS, _ANY_STRUCT_URL + _ld(
                    b"\x12", _dynamic_extensions(flow) + static.extensions))]

    def flow_bytes(self, flow: pf.Flow, mask: FlowMask | None = None) -> bytes:
        """The serialized flow.Flow of a record, only the fields of `mask` when one is set."""
        time_field = (_ld(_T_TIME, flow.time.SerializeToString())
                      if flow.HasField("time") else b"")
        return self._flow_bytes(flow, mask, time_field)

    def _flow_bytes(self, flow: pf.Flow, mask: FlowMask | None, time_field: bytes) -> bytes:
        static = self._static(flow)
        if mask is None:
            return static.joined + b"".join(self._dynamic(flow, static, time_field))
        parts = dict(static.parts)
        top = mask.top
        if "uuid" in top or "Summary" in top or "extensions" in top:
            parts.update(zip(("time", "uuid", "Summary", "extensions"),
                             self._dynamic(flow, static, time_field)))
        elif time_field:
            parts["time"] = time_field
        chosen = []
        for name, subpaths in top.items():
            part = parts.get(name)
            if not part:
                continue
            if subpaths is not None:
                part = self._mask_part(name, part, subpaths)
            chosen.append(part)
        return b"".join(chosen)

    def static_flow(self, flow: pf.Flow) -> hb.Flow:
        """The Hubble flow without the fields that change between intervals (time, uuid,
        Summary, extensions): what Hubble's filters read, all but `uuid`."""
        return hb.Flow.FromString(self._static(flow).joined)

    def _mask_part(self, name: str, part: bytes, subpaths: tuple[str, ...]) -> bytes:
        key = (name, part, subpaths)
        hit = self._masked.get(key)
        if hit is None:
            sub = getattr(hb.Flow.FromString(part), name)
            payload = _masked(type(sub), sub.SerializeToString(), subpaths)
            hit = self._masked.put(key, _ld(_field(name), payload))
        return hit

    def response_bytes(self, flow: pf.Flow, mask: FlowMask | None = None) -> bytes:
        """A serialized observer.GetFlowsResponse carrying the record (flow, node_name and
        time, as Hubble's servers fill them), ready for a bytes-passing gRPC handler."""
        if flow.HasField("time"):
            ts = flow.time.SerializeToString()
            time_field, response_time = _ld(_T_TIME, ts), _ld(_R_TIME, ts)
        else:
            time_field = response_time = b""
        return (_ld(_R_FLOW, self._flow_bytes(flow, mask, time_field)) +
                _str(_R_NODE, flow.node_name) + response_time)

    def to_hubble(self, flow: pf.Flow) -> hb.Flow:
        return hb.Flow.FromString(self.flow_bytes(flow))


def to_hubble(flow: pf.Flow, version: str = "") -> hb.Flow:
    """One podflow record -> one Hubble flow message (see mapping.py for each field).
    `version`: the agent's version, reported as the flow's emitter. A server maps with one
    HubbleMapper (cached pieces, bytes out) instead."""
    return HubbleMapper(version).to_hubble(flow)
