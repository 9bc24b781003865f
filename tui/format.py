"""How flows, sizes and rates are written on screen. Pure functions, shared by the views.

The words of a flow (endpoints, Service -> backend, protocol and ports, verdict, direction,
time of day in UTC) are agent.wire.flowtext's and agent.wire.timefmt's, the same `podflow
observe` prints; this module only lays them out in the Flows view's cells (tui.columns cuts
them to the terminal) and adds what only the screen needs: sizes, rates, sparklines.
"""

from __future__ import annotations

from agent.wire import flowtext
from agent.wire.timefmt import clock, long_time, ts_ns
from podflow_api.v1 import flow_pb2

from tui.records import Entry

_BARS = "▁▂▃▄▅▆▇█"


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


FLOW_COLUMNS = ("time", "node", "source", "destination", f"service {flowtext.ARROW} backend",
                "proto/ports", "direction", "verdict", "packets", "bytes")


def flow_row(entry: Entry) -> tuple:
    """The Flows view's cells for one record (cached on the entry: rows are redrawn often)."""
    if entry.row is None:
        f = entry.flow
        entry.row = (clock(entry.time_ns), f.node_name,
                     flowtext.endpoint_text(f.source, f.ip.source),
                     flowtext.endpoint_text(f.destination, f.ip.destination),
                     flowtext.service_text(f, with_ports=False), flowtext.ports_text(f),
                     flowtext.direction_text(f), flowtext.verdict_text(f),
                     f"{f.packets:,}", human_bytes(f.bytes))
    return entry.row


def flow_detail(flow: flow_pb2.Flow) -> str:
    """Every set field of a record, one `path: value` per line; first, in words, the
    NetworkPolicy verdict when the record carries one."""
    lines: list[str] = []
    policy = flowtext.policy_text(flow)
    if policy:
        lines.append(f"NetworkPolicy: {policy}")
    _walk(flow, "", lines)
    return "\n".join(lines)


def _walk(msg, prefix: str, lines: list[str]) -> None:
    for field, value in msg.ListFields():
        path = f"{prefix}{field.name}"
        if field.message_type is not None and field.message_type.full_name == \
                "google.protobuf.Timestamp":
            lines.append(f"{path}: {long_time(ts_ns(value))}")
        elif field.message_type is not None and not field.is_repeated:
            _walk(value, f"{path}.", lines)
        elif field.message_type is not None:
            for index, item in enumerate(value):
                _walk(item, f"{path}[{index}].", lines)
        elif field.is_repeated:
            lines.append(f"{path}: {', '.join(str(v) for v in value)}")
        elif field.enum_type is not None:
            lines.append(f"{path}: {field.enum_type.values_by_number[value].name}"
                         if value in field.enum_type.values_by_number else f"{path}: {value}")
        else:
            lines.append(f"{path}: {value}")
