"""Applying a `flow_update` (GetFlowsResponse field 6) to the records already received: the
one rule every reader of streams and flow logs follows (the TUI, tests, tools).

An update names a flow like its records do: the interface, the direction, the addresses, the
ports (or ICMP type and code) and first_seen, the flow's first packet at that observation
point (the same in every record of the flow). Its flow_end and outcome belong on the flow's
latest record; it is never counted as a record.
"""

from __future__ import annotations

from podflow_api.v1 import flow_pb2

# What a flow log's `flow_update` line holds: what names the flow (identity() below) and
# what the update changes (apply() below), with its time. The names, policy and category are
# on the record it applies to; repeating them would double the bytes of a short flow's log.
LOG_FIELDS = ("time", "node_name", "interface", "traffic_direction", "ip", "l4", "first_seen",
              "last_seen", "flow_end", "outcome")


def log_part(flow: flow_pb2.Flow) -> flow_pb2.Flow:
    """The fields of an update that a flow log writes (LOG_FIELDS)."""
    part = flow_pb2.Flow()
    part.CopyFrom(flow)
    for field, _ in flow.ListFields():
        if field.name not in LOG_FIELDS:
            part.ClearField(field.name)
    return part


def identity(flow: flow_pb2.Flow) -> tuple:
    """What a flow's records and its update share."""
    l4 = flow.l4
    kind = l4.WhichOneof("protocol")
    a = b = 0
    if kind in ("tcp", "udp", "sctp"):
        m = getattr(l4, kind)
        a, b = m.source_port, m.destination_port
    elif kind in ("icmpv4", "icmpv6"):
        m = getattr(l4, kind)
        a, b = m.type, m.code
    fs = flow.first_seen
    return (flow.node_name, flow.interface.index, flow.traffic_direction, flow.ip.source,
            flow.ip.destination, kind, a, b, fs.seconds, fs.nanos)


def identity_of_json(flow: dict, node_name: str = "") -> tuple:
    """identity() of a flow in its JSON mapping (a flow-log line's "flow" or "flow_update"),
    as comparable tuples of strings."""
    l4 = flow.get("l4") or {}
    kind, ports = next(iter(l4.items()), (None, {}))
    a = ports.get("source_port", ports.get("type", 0))
    b = ports.get("destination_port", ports.get("code", 0))
    ip = flow.get("ip") or {}
    return (flow.get("node_name", node_name), (flow.get("interface") or {}).get("index", 0),
            flow.get("traffic_direction", ""), ip.get("source", ""), ip.get("destination", ""),
            kind, a, b, flow.get("first_seen", ""))


def apply(record: flow_pb2.Flow, update: flow_pb2.Flow) -> None:
    """Put an update's end and outcome on the flow's latest record."""
    record.flow_end = True
    if update.outcome:
        record.outcome = update.outcome
    if update.last_seen.seconds or update.last_seen.nanos:
        record.last_seen.CopyFrom(update.last_seen)


def apply_json(record: dict, update: dict) -> None:
    """apply() for the JSON mapping."""
    record["flow_end"] = True
    if update.get("outcome"):
        record["outcome"] = update["outcome"]
    if update.get("last_seen"):
        record["last_seen"] = update["last_seen"]


def records_with_updates(lines: list[dict]) -> list[dict]:
    """The "flow" objects of parsed flow-log lines, each with the updates that came after it
    applied (the updates themselves are not records)."""
    latest: dict[tuple, dict] = {}
    out = []
    node = ""
    for line in lines:
        header = line.get("podflow_flow_log")
        if header is not None:
            node = header.get("node_name", "")
            continue
        if "flow" in line:
            flow = line["flow"]
            latest[identity_of_json(flow, node)] = flow
            out.append(flow)
        elif "flow_update" in line:
            flow = latest.get(identity_of_json(line["flow_update"], node))
            if flow is not None:
                apply_json(flow, line["flow_update"])
    return out
