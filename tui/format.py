"""How flows, sizes and rates are written on screen. Pure functions, shared by the views."""

from __future__ import annotations

import time

from podflow_api.v1 import flow_pb2

from tui.aggregator import Entry

_BARS = "▁▂▃▄▅▆▇█"
_DIRECTIONS = {flow_pb2.FROM_POD: "from-pod", flow_pb2.TO_POD: "to-pod"}


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def human_rate(bytes_per_s: float) -> str:
    return f"{human_bytes(bytes_per_s)}/s"


def sparkline(series: list[int], width: int = 20) -> str:
    """A one-line text sparkline of the last `width` values (a table cell)."""
    values = series[-width:]
    top = max(values, default=0)
    if top <= 0:
        return _BARS[0] * len(values)
    return "".join(_BARS[min(len(_BARS) - 1, int(v * (len(_BARS) - 1) / top + 0.5))] if v else " "
                   for v in values)


def clock(time_ns: int) -> str:
    return time.strftime("%H:%M:%S", time.localtime(time_ns // 1_000_000_000)) + \
        f".{(time_ns // 1_000_000) % 1000:03d}"


def endpoint(ep: flow_pb2.Endpoint, ip: str) -> str:
    if ep.pod_name:
        return f"{ep.namespace}/{ep.pod_name}" if ep.namespace else ep.pod_name
    return ip or "?"


def ports(flow: flow_pb2.Flow) -> str:
    proto = flow.l4.WhichOneof("protocol")
    if proto in ("tcp", "udp", "sctp"):
        l4 = getattr(flow.l4, proto)
        return f"{proto.upper()} {l4.source_port}→{l4.destination_port}"
    if proto in ("icmpv4", "icmpv6"):
        l4 = getattr(flow.l4, proto)
        return f"{proto.upper()} {l4.type}/{l4.code}"
    return "IP"


def service(flow: flow_pb2.Flow) -> str:
    if not (flow.HasField("service") and flow.service.name):
        return ""
    svc = f"{flow.service.namespace}/{flow.service.name}"
    if flow.service.no_endpoints:
        return f"{svc} → (no endpoints)"
    if flow.HasField("backend") and (flow.backend.pod_name or flow.backend.ip):
        return f"{svc} → {flow.backend.pod_name or flow.backend.ip}"
    return svc


def verdict(flow: flow_pb2.Flow) -> str:
    if flow.verdict == flow_pb2.DROPPED:
        return f"DROPPED {flow.drop_reason}".strip()
    if flow.verdict == flow_pb2.FORWARDED:
        return "forwarded"
    return "unknown"


FLOW_COLUMNS = ("time", "node", "source", "destination", "service → backend", "proto/ports",
                "direction", "verdict", "packets", "bytes")


def flow_row(entry: Entry) -> tuple:
    """The Flows view's cells for one record (cached on the entry: rows are redrawn often)."""
    if entry.row is None:
        f = entry.flow
        entry.row = (clock(entry.time_ns), f.node_name, endpoint(f.source, f.ip.source),
                     endpoint(f.destination, f.ip.destination), service(f), ports(f),
                     _DIRECTIONS.get(f.traffic_direction, "?"), verdict(f),
                     f"{f.packets:,}", human_bytes(f.bytes))
    return entry.row


def flow_detail(flow: flow_pb2.Flow) -> str:
    """Every set field of a record, one `path: value` per line."""
    lines: list[str] = []
    _walk(flow, "", lines)
    return "\n".join(lines)


def _walk(msg, prefix: str, lines: list[str]) -> None:
    for field, value in msg.ListFields():
        path = f"{prefix}{field.name}"
        if field.message_type is not None and field.message_type.full_name == \
                "google.protobuf.Timestamp":
            ns = value.seconds * 1_000_000_000 + value.nanos
            lines.append(f"{path}: {time.strftime('%Y-%m-%d', time.localtime(value.seconds))} "
                         f"{clock(ns)}")
        elif field.message_type is not None and not field.is_repeated:
            _walk(value, f"{path}.", lines)
        elif field.is_repeated:
            lines.append(f"{path}: {', '.join(str(v) for v in value)}")
        elif field.enum_type is not None:
            lines.append(f"{path}: {field.enum_type.values_by_number[value].name}"
                         if value in field.enum_type.values_by_number else f"{path}: {value}")
        else:
            lines.append(f"{path}: {value}")
