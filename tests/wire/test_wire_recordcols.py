"""Records kept as columns, rendered without a Flow object per record: the flow-log lines are
the JSON mapping of the records, the bytes parse into the same Flows, end notices are
`flow_update` responses (no root needed)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from google.protobuf import json_format

from agent.datapath.decode import InterfaceInfo, InterfaceKind
from agent.wire import flowupdate, recordcols
from podflow_api.v1 import flow_pb2, observer_pb2
from tests import batches
from tests.batches import T0, rec

CASES = {
    "udp": rec("10.244.1.2", "10.244.1.3", 40000, 53),
    "tcp-flags": rec("10.244.1.2", "10.96.0.1", 41000, 443, "tcp", flags="SYN,ACK,PSH",
                     packets=12, nbytes=9000, last_ns=T0 + 123_456_789),
    "tcp-no-flags": rec("10.244.1.2", "10.96.0.1", 41001, 443, "tcp"),
    "ended": rec("10.244.1.2", "10.244.1.3", 40001, 80, end=True, hook=1),
    "update": rec("10.244.1.2", "10.244.1.3", 40002, 80, update=True),
    "ipv6": rec("fd00::2", "fd00::3", 40003, 8080, "tcp", flags="ACK"),
    "icmp": rec("10.244.1.2", "10.244.1.9", 8, 0, "icmp"),
    "zero-port": rec("10.244.1.2", "10.244.1.3", 0, 80),
    "whole-microsecond": rec("10.244.1.2", "10.244.1.3", 40004, 80, first_ns=T0 + 5_000),
    "whole-second": rec("10.244.1.2", "10.244.1.3", 40005, 80, first_ns=T0),
    "sctp": rec("10.244.1.2", "10.244.1.3", 40006, 9000, "sctp"),
}
IFACES = {5: InterfaceInfo(5, "veth5", InterfaceKind.POD_VETH)}


@pytest.fixture
def batch():
    b = batches.batch(*CASES.values(), time_ns=T0 + 7_000_000_123, interfaces=IFACES)
    b.outcome[:] = flow_pb2.NO_REPLY
    b.outcome[2] = 0
    b.extras[0] = flow_pb2.Flow(dns=flow_pb2.DNS(query="cart.shop", id=7)).SerializeToString()
    return b


def test_lines_are_the_json_mapping_of_each_record(batch):
    lines = recordcols.json_lines(batch).splitlines()
    assert len(lines) == len(CASES)
    want = set()
    for i in range(len(batch)):
        flow = batch.flow(i)
        flow.ClearField("node_name")
        key = "flow_update" if batch.update[i] else "flow"
        if batch.update[i]:  # an end notice names the flow and says what changes
            flow = flowupdate.log_part(flow)
        want.add(json.dumps({key: json_format.MessageToDict(
            flow, preserving_proto_field_name=True)}, separators=(",", ":")))
    assert set(lines) == want


@pytest.mark.parametrize("name", list(CASES))
def test_fast_path_equals_the_slow_path(batch, name):
    i = list(CASES).index(name)
    fast = recordcols.json_lines(batch, rows=np.array([i]))
    assert fast == recordcols.record_json(batch, i)


def test_records_parse_back_and_updates_are_framed_as_such(batch):
    flow = batch.flow(1)
    assert (flow.node_name, flow.interface.name, flow.traffic_direction) == \
        ("node-a", "veth5", flow_pb2.FROM_POD)
    assert (flow.l4.tcp.destination_port, flow.l4.tcp.flags.PSH, flow.packets) == (443, True, 12)
    assert flow.last_seen.ToNanoseconds() == T0 + 123_456_789
    assert batch.flow(0).dns.query == "cart.shop"
    framed = batch.stored_items(b"\n\x06node-a")
    responses = [observer_pb2.GetFlowsBatch.FromString(f[1]).responses[0] for f in framed]
    kinds = [r.WhichOneof("response_types") for r in responses]
    assert kinds == ["flow_update" if name == "update" else "flow" for name in CASES]
    update = responses[list(CASES).index("update")].flow_update
    assert (update.flow_end, update.packets, update.outcome) == (True, 0, flow_pb2.NO_REPLY)
    assert all(r.node_name == "node-a" and r.time.ToNanoseconds() == T0 + 7_000_000_123
               for r in responses)
    for (t_ns, data, resp_off, flow_off), r in zip(framed, responses):
        assert observer_pb2.GetFlowsResponse.FromString(data[resp_off:]) == r
        assert t_ns == T0 + 7_000_000_123


def test_patched_end_is_rendered_anew(batch):
    before = recordcols.json_lines(batch, rows=np.array([0]))
    assert '"flow_end"' not in before
    batch.patch_end(np.array([0]), np.array([flow_pb2.ESTABLISHED], np.uint8))
    after = json.loads(recordcols.json_lines(batch, rows=np.array([0])))["flow"]
    assert (after["flow_end"], after["outcome"]) == (True, "ESTABLISHED")
    assert batch.flow(0).flow_end
