"""`podflow observe`'s printer (agent.client.printer): compact lines and table rows of whole
flows, the warning lines of notices, and what it keeps for the exit status. Times are UTC
whatever the machine's zone."""

from __future__ import annotations

import io

import pytest

from agent.client import printer
from podflow_api.v1 import flow_pb2, observer_pb2
from tests.observer.observer_flows import customize, make_flow

T0 = 1_700_000_000_123_000_000  # Nov 14 22:13:20.123 UTC
F = flow_pb2


def _world_flow():
    f = make_flow(3, time_ns=T0, dst="93.184.216.34", dport=443)
    f.destination.Clear()
    f.destination.kind = F.WORLD
    f.ClearField("service")
    f.ClearField("backend")
    return f


COMPACT = [
    ("pod to service", make_flow(3, time_ns=T0),
     "Nov 14 22:13:20.123 [node-a] shop/frontend-7d9f8c6b5-x2x4z:40003 -> "
     "shop/cart-5c7b9d8f4-abcde:8080 svc shop/cart:80 -> shop/cart-5c7b9d8f4-abcde:8080 "
     "TCP from-pod FORWARDED 4 pkts 103 B SYN,ACK"),
    ("to the world", _world_flow(),
     "Nov 14 22:13:20.123 [node-a] shop/frontend-7d9f8c6b5-x2x4z:40003 -> "
     "93.184.216.34:443 (world) TCP from-pod FORWARDED 4 pkts 103 B SYN,ACK"),
    ("dropped", customize(make_flow(3, time_ns=T0), verdict=F.DROPPED,
                          drop_reason="NETFILTER_DROP", traffic_direction=F.TO_POD),
     "Nov 14 22:13:20.123 [node-a] shop/frontend-7d9f8c6b5-x2x4z:40003 -> "
     "shop/cart-5c7b9d8f4-abcde:8080 svc shop/cart:80 -> shop/cart-5c7b9d8f4-abcde:8080 "
     "TCP to-pod DROPPED (NETFILTER_DROP) 4 pkts 103 B SYN,ACK"),
    ("dns over udp", customize(make_flow(3, time_ns=T0, proto="udp"), dns__query="db.shop",
                               dns__rcode="NXDOMAIN"),
     "Nov 14 22:13:20.123 [node-a] shop/frontend-7d9f8c6b5-x2x4z:40003 -> "
     "shop/cart-5c7b9d8f4-abcde:8080 svc shop/cart:80 -> shop/cart-5c7b9d8f4-abcde:8080 "
     "UDP DNS db.shop NXDOMAIN from-pod FORWARDED 4 pkts 103 B"),
]


@pytest.mark.parametrize("flow,line", [c[1:] for c in COMPACT], ids=[c[0] for c in COMPACT])
def test_compact_line(flow, line, monkeypatch):
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    assert printer.format_compact(flow) == line


def test_table_has_the_same_words():
    header = printer.format_table_header()
    assert header.split()[:6] == ["TIME", "NODE", "SOURCE", "DESTINATION", "SERVICE", "->"]
    row = printer.format_table_row(printer.flow_columns(make_flow(3, time_ns=T0)))
    assert row.startswith("Nov 14 22:13:20.123  node-a")
    assert "shop/cart:80 -> shop/cart-5c7b9d8f4-abcde:8080" in row
    assert row.endswith("SYN,ACK")


def _lost():
    resp = observer_pb2.GetFlowsResponse(node_name="node-a")
    resp.lost_events.stage = observer_pb2.CLIENT_QUEUE
    resp.lost_events.num_events_lost = 12
    resp.lost_events.first.FromNanoseconds(T0)
    resp.lost_events.last.FromNanoseconds(T0 + 2_000_000_000)
    return resp


def _status(state, names=("node-b",)):
    return observer_pb2.GetFlowsResponse(node_status=observer_pb2.NodeStatusEvent(
        state=state, node_names=list(names), message="unix:/b.sock: UNAVAILABLE: gone"))


def test_notice_lines():
    assert printer.format_notice(_lost()) == (
        "WARNING: node node-a: 12 flows LOST at CLIENT_QUEUE (this client read too slowly) "
        "between Nov 14 22:13:20.123 and Nov 14 22:13:22.123")
    assert printer.format_notice(_status(observer_pb2.NODE_UNAVAILABLE)) == (
        "WARNING: node node-b: NODE_UNAVAILABLE: unix:/b.sock: UNAVAILABLE: gone")


@pytest.mark.parametrize("output", ["compact", "table", "jsonl"])
def test_printer_keeps_what_the_exit_status_needs(output):
    out, err = io.StringIO(), io.StringIO()
    p = printer.FlowPrinter(output, printer.StreamSink(out), stderr=err)
    for resp in (observer_pb2.GetFlowsResponse(flow=make_flow(1)), _lost(),
                 _status(observer_pb2.NODE_UNAVAILABLE),
                 _status(observer_pb2.NODE_UNAVAILABLE, ("node-c",)),
                 _status(observer_pb2.NODE_CONNECTED)):
        p.write(resp)
    assert (p.flows, p.lost, p.unavailable) == (1, 12, {"node-c"})
    assert err.getvalue().count("WARNING") == 4
    lines = out.getvalue().splitlines()
    assert len(lines) == {"compact": 1, "table": 2, "jsonl": 5}[output]


def test_an_end_notice_is_printed_as_one_and_not_counted():
    from io import StringIO

    from agent.client.printer import FlowPrinter, StreamSink
    from podflow_api.v1 import flow_pb2, observer_pb2

    update = flow_pb2.Flow(node_name="node-a", flow_end=True, outcome=flow_pb2.NO_REPLY)
    update.ip.source, update.ip.destination = "10.0.0.1", "10.0.0.2"
    update.l4.udp.source_port, update.l4.udp.destination_port = 40000, 53
    resp = observer_pb2.GetFlowsResponse(node_name="node-a", flow_update=update)
    for output, want in (("compact", "ended no-reply"), ("jsonl", '"flow_update"')):
        out, err = StringIO(), StringIO()
        printer = FlowPrinter(output, StreamSink(out), stderr=err)
        printer.write(resp)
        assert want in out.getvalue() and not err.getvalue()
        assert printer.flows == 0 and printer.lost == 0
