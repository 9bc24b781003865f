"""The flow-log format (agent.wire.logformat): what every writer writes is what the one
reader reads, headers old and new, gzip or not, torn lines counted, not fatal."""

from __future__ import annotations

import gzip
import json

import pytest
from google.protobuf import json_format

from agent.wire import flowjson, flowupdate, logformat
from podflow_api.v1 import flow_pb2, observer_pb2

LINES = [
    ("flow", '{"node_name": "n", "flow": {"node_name": "n", "packets": "3"}}', "flow"),
    ("lost", '{"node_name": "n", "lost_events": {"stage": "CLIENT_QUEUE", "num_events_lost": "2"}}',
     "lost_events"),
    ("node status", '{"node_status": {"state": "NODE_UNAVAILABLE"}}', "node_status"),
    ("header", '{"podflow_flow_log": {"node_name": "n"}}', False),
    ("old export header", '{"podflow_export": {"filter": "", "flows": 2}}', False),
    ("other object", '{"hello": 1}', False),
    ("not json", '{"flow": ', None),
    ("array", "[1, 2]", None),
    ("bad field type", '{"flow": {"packets": "many"}}', None),
]


@pytest.mark.parametrize("line,expected", [c[1:] for c in LINES], ids=[c[0] for c in LINES])
def test_parse_response_line(line, expected):
    got = logformat.parse_response_line(line)
    if expected in (None, False):
        assert got is expected
    else:
        assert got.WhichOneof("response_types") == expected


def _flow(i: int) -> flow_pb2.Flow:
    f = flow_pb2.Flow(node_name="node-a", packets=i, bytes=100 * i, summary=f"seq={i}")
    f.time.FromNanoseconds(1_700_000_000_000_000_000 + i * 1000)
    f.source.namespace, f.source.pod_name = "shop", "cart-1"
    return f


def test_flow_line_is_the_response_json_without_the_node(tmp_path):
    """The agent's flow log writes `{"flow":...}` compactly, the node only in the header;
    the reader puts the node back."""
    flow = _flow(3)
    line = logformat.flow_line(flow)
    without_node = flow_pb2.Flow()
    without_node.CopyFrom(flow)
    without_node.ClearField("node_name")
    assert json.loads(line) == json_format.MessageToDict(
        observer_pb2.GetFlowsResponse(flow=without_node), preserving_proto_field_name=True)
    assert b" " not in line and line.endswith(b"\n")
    update = json.loads(logformat.flow_line(flow, key="flow_update"))["flow_update"]
    # an end notice names the flow and says what changes; the names are on its record
    assert set(update) <= set(flowupdate.LOG_FIELDS) and "packets" not in update
    assert flowupdate.identity_of_json(update) == flowupdate.identity_of_json(
        json.loads(line)["flow"])
    path = tmp_path / "f.jsonl"
    path.write_bytes(logformat.header_line(logformat.header_fields(node_name="node-b")) + line)
    (resp,) = logformat.FlowLogReader(str(path))
    assert resp.node_name == "node-b" and resp.flow.node_name == "node-b"


def test_header_names_what_the_file_holds():
    allow = [observer_pb2.FlowFilter(source_pod=["shop/"])]
    fields = logformat.header_fields(node_name="node-a", agent_version="9", allowlist=allow,
                                     field_mask=["source"], servers=["a:1"])
    line = logformat.header_line(fields, now_ns=1_700_000_000_000_000_000)
    header = json.loads(line)["podflow_flow_log"]
    assert header == {"node_name": "node-a", "agent_version": "9",
                      "allowlist": [flowjson.to_dict(allow[0])], "denylist": [],
                      "field_mask": ["source"], "aggregate": "", "format": logformat.FORMAT,
                      "servers": ["a:1"], "start_time": "2023-11-14T22:13:20Z"}


def _write(path, lines, compress=False):
    opener = gzip.open if compress else open
    with opener(path, "wt", encoding="utf-8") as fh:
        fh.write("".join(line + "\n" for line in lines))


def _resp_json(flow) -> str:
    resp = observer_pb2.GetFlowsResponse(node_name=flow.node_name, time=flow.time, flow=flow)
    return json_format.MessageToJson(resp, preserving_proto_field_name=True, indent=None)


HEADERS = {
    "new": logformat.header_line(logformat.header_fields(node_name="node-a")).decode().strip(),
    "old export": json.dumps({"podflow_export": {"filter": "ns=shop", "flows": 3,
                                                  "written": "2023-11-14T22:13:20Z"}}),
    "none": None,
}


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize("header", HEADERS.values(), ids=HEADERS.keys())
def test_reader_reads_every_header_form(tmp_path, header, compress):
    path = tmp_path / "log.jsonl"  # a compressed file need not say so in its name
    lines = ([header] if header else []) + [_resp_json(_flow(i)) for i in range(3)]
    lines.insert(2, '{"flow": {"packets": ')  # a torn line
    _write(path, lines, compress)
    reader = logformat.FlowLogReader(str(path))
    got = list(reader)
    assert [r.flow.summary for r in got] == ["seq=0", "seq=1", "seq=2"]
    assert reader.malformed == 1
    assert reader.skipped == (1 if header else 0)
    assert len(reader.headers) == (1 if header else 0)
    if header:
        assert reader.headers[0]["format"] == logformat.FORMAT
    if header == HEADERS["old export"]:
        assert reader.headers[0]["filter"] == "ns=shop"
        assert reader.headers[0]["start_time"] == "2023-11-14T22:13:20Z"


def test_a_truncated_gzip_file_is_an_error_after_what_could_be_read(tmp_path):
    path = tmp_path / "cut.jsonl.gz"
    _write(path, [_resp_json(_flow(i)) for i in range(2000)], compress=True)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    reader = logformat.FlowLogReader(str(path))
    got = []
    with pytest.raises(EOFError):
        for resp in reader:
            got.append(resp)
    assert got, "the part before the cut is read"
