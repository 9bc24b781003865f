"""agent.wire.flowjson must write exactly what json_format.MessageToJson writes, faster."""

from __future__ import annotations

import json

import pytest
from google.protobuf import json_format

from agent.wire import flowjson
from podflow_api.v1 import flow_pb2, observer_pb2
from tests.export.conftest import make_flow


def _with_time(nanos: int) -> observer_pb2.GetFlowsResponse:
    resp = observer_pb2.GetFlowsResponse(node_name="n")
    resp.time.seconds = 1_700_000_000
    resp.time.nanos = nanos
    resp.flow.packets = 2**63 + 5  # uint64 beyond double precision: a string in JSON
    return resp


def _dns() -> flow_pb2.Flow:
    f = make_flow(1)
    f.dns.query = "db.shop.svc.cluster.local"
    f.dns.qtypes.extend(["A", "AAAA"])
    f.dns.ips.extend(["10.0.0.1"])
    f.dns.latency_ns = 123456
    f.dns.response = True
    return f


def _status() -> observer_pb2.ServerStatusResponse:
    s = observer_pb2.ServerStatusResponse(num_flows=3, flows_per_second=12.5, node_name="n")
    s.datapath_errors["parse_error"] = 4
    s.datapath_errors["ringbuf_full"] = 0
    s.lost.add(stage=observer_pb2.EXPORTER_WRITE, count=9)
    s.interfaces.add(index=3, name="cni0")
    return s


def _lost() -> observer_pb2.GetFlowsResponse:
    r = observer_pb2.GetFlowsResponse(node_name="n")
    r.lost_events.stage = observer_pb2.EXPORTER_QUEUE
    r.lost_events.num_events_lost = 17
    r.lost_events.first.FromNanoseconds(1_700_000_000_000_000_000)
    return r


def _icmp_unknown_enum() -> flow_pb2.Flow:
    f = flow_pb2.Flow(verdict=99)  # an enum number this build does not know
    f.l4.icmpv6.type = 0  # set oneof member with only default values
    return f


CASES = {
    "enriched-flow": lambda: observer_pb2.GetFlowsResponse(node_name="n", flow=make_flow(3, service="shop/db")),
    "time-whole-second": lambda: _with_time(0),
    "time-millis": lambda: _with_time(120_000_000),
    "time-micros": lambda: _with_time(120_300_000),
    "time-nanos": lambda: _with_time(120_300_004),
    "dns": _dns,
    "server-status-map-double": _status,
    "lost-events": _lost,
    "node-status": lambda: observer_pb2.GetFlowsResponse(
        node_status=observer_pb2.NodeStatusEvent(state=observer_pb2.NODE_UNAVAILABLE,
                                                 node_names=["a", "b"], message="down")),
    "empty-oneof-and-unknown-enum": _icmp_unknown_enum,
    "empty": flow_pb2.Flow,
}


@pytest.mark.parametrize("build", CASES.values(), ids=CASES.keys())
def test_identical_to_message_to_json(build):
    msg = build()
    expected = json_format.MessageToJson(msg, preserving_proto_field_name=True, indent=None)
    assert flowjson.to_json(msg) == expected


@pytest.mark.parametrize("build", CASES.values(), ids=CASES.keys())
def test_compact_identical_to_message_to_dict_without_spaces(build):
    msg = build()
    expected = json.dumps(json_format.MessageToDict(msg, preserving_proto_field_name=True),
                          separators=(",", ":"))
    assert flowjson.to_compact_json(msg) == expected
    assert flowjson.to_json(msg) == json_format.MessageToJson(  # the two styles kept apart
        msg, preserving_proto_field_name=True, indent=None)


@pytest.mark.parametrize("build", CASES.values(), ids=CASES.keys())
def test_dict_identical_to_message_to_dict(build):
    msg = build()
    assert flowjson.to_dict(msg) == json_format.MessageToDict(msg, preserving_proto_field_name=True)


def test_repeated_sub_messages_come_from_the_cache_unchanged():
    a, b = make_flow(1, service="shop/db"), make_flow(2, service="shop/db")
    b.source.pod_name = "other"
    for msg in (a, b, a, b):
        assert flowjson.to_json(msg) == json_format.MessageToJson(
            msg, preserving_proto_field_name=True, indent=None)
