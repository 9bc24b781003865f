"""Field masks (agent.wire.fieldmask): one validation for `observe --fields`,
`--flow-log-fields` and GetFlowsRequest.field_mask, and the JSON trimming of the flow log
agreeing with protobuf's own FieldMask.MergeMessage."""

from __future__ import annotations

import pytest
from google.protobuf import field_mask_pb2

from agent.errors import ConfigError
from agent.wire import fieldmask, flowjson
from podflow_api.v1 import flow_pb2

VALID = [
    ("one", "source", ["source"]),
    ("spaces and empties", " source , ,l4 ", ["source", "l4"]),
    ("nested", "destination.pod_name,service.name", ["destination.pod_name", "service.name"]),
    ("none", "", []),
]


@pytest.mark.parametrize("text,paths", [c[1:] for c in VALID], ids=[c[0] for c in VALID])
def test_valid_paths(text, paths):
    assert fieldmask.parse_field_mask(text, "--fields") == paths


INVALID = [
    ("unknown field", "source,sauce", r"--fields: 'sauce' is not a field path of Flow"),
    ("two unknown", "nope,l5", r"--fields: 'nope', 'l5' are not field paths of Flow"),
    ("below a scalar", "packets.count", r"'packets.count' is not"),
    ("unknown sub-field", "source.colour", r"'source.colour' is not"),
]


@pytest.mark.parametrize("text,message", [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
def test_invalid_paths_are_named(text, message):
    with pytest.raises(ConfigError, match=message):
        fieldmask.parse_field_mask(text, "--fields")


def _flow() -> flow_pb2.Flow:
    f = flow_pb2.Flow(node_name="node-a", packets=3, bytes=300)
    f.source.namespace, f.source.pod_name = "shop", "cart-1"
    f.destination.pod_name = "db-0"
    f.l4.tcp.source_port, f.l4.tcp.destination_port = 40000, 5432
    f.service.name = "db"
    return f


@pytest.mark.parametrize("paths", [["source"], ["source.pod_name", "l4"],
                                   ["source", "source.pod_name"], ["packets", "service.port"],
                                   ["destination.namespace"]])
def test_json_trim_matches_merge_message(paths):
    flow = _flow()
    expected = flow_pb2.Flow()
    field_mask_pb2.FieldMask(paths=paths).MergeMessage(flow, expected)
    trimmed = fieldmask.apply_mask(flowjson.to_dict(flow), fieldmask.mask_tree(paths))
    # the same fields; a message the mask leaves empty is left out instead of written as {}
    assert trimmed == {k: v for k, v in flowjson.to_dict(expected).items() if v != {}}
