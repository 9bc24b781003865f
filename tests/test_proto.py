"""The generated protobuf modules are checked in: this fails when they no longer match the
.proto files (run `make proto`), so the wire API and the code never drift apart."""

from __future__ import annotations

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
PROTOS = ["podflow_api/v1/flow.proto", "podflow_api/v1/observer.proto"]


def test_generated_modules_are_current(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{ROOT / 'proto'}",
         f"--python_out={tmp_path}", f"--pyi_out={tmp_path}", f"--grpc_python_out={tmp_path}",
         *PROTOS],
        check=True, cwd=ROOT / "proto")
    stale = []
    for generated in sorted((tmp_path / "podflow_api" / "v1").iterdir()):
        checked_in = ROOT / "proto" / "podflow_api" / "v1" / generated.name
        if not checked_in.exists() or checked_in.read_bytes() != generated.read_bytes():
            stale.append(generated.name)
    assert not stale, f"stale generated protobuf modules {stale}: run `make proto`"


def test_flow_json_uses_proto_field_names():
    from google.protobuf import json_format

    from podflow_api.v1 import flow_pb2, observer_pb2

    resp = observer_pb2.GetFlowsResponse(
        node_name="node-a",
        flow=flow_pb2.Flow(traffic_direction=flow_pb2.FROM_POD, packets=3,
                           ip=flow_pb2.IP(source="10.0.0.1", ip_version=flow_pb2.IPV4)))
    text = json_format.MessageToJson(resp, preserving_proto_field_name=True, indent=None)
    assert '"traffic_direction": "FROM_POD"' in text and '"node_name": "node-a"' in text
