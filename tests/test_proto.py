"""The generated protobuf modules are checked in: this fails when they no longer match the
.proto files (run `make proto`), so the wire API and the code never drift apart."""

from __future__ import annotations

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Every .proto `make proto` compiles: podflow's own API and the Hubble-compatible one.
PROTOS = ["podflow_api/v1/flow.proto", "podflow_api/v1/observer.proto",
          "podflow_hubble/flow/flow.proto", "podflow_hubble/relay/relay.proto",
          "podflow_hubble/peer/peer.proto", "podflow_hubble/observer/observer.proto"]


def test_generated_modules_are_current(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{ROOT / 'proto'}",
         f"--python_out={tmp_path}", f"--pyi_out={tmp_path}", f"--grpc_python_out={tmp_path}",
         *PROTOS],
        check=True, cwd=ROOT / "proto")
    stale = []
    for generated in sorted(p for p in tmp_path.rglob("*") if p.is_file()):
        relative = generated.relative_to(tmp_path)
        checked_in = ROOT / "proto" / relative
        if not checked_in.exists() or checked_in.read_bytes() != generated.read_bytes():
            stale.append(str(relative))
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


def test_hubble_modules_speak_hubbles_wire_names():
    """The Python package is ours (podflow_hubble); the proto packages, services and the
    field numbers clients rely on are Hubble's, since that is what travels on the wire."""
    from podflow_hubble.flow import flow_pb2
    from podflow_hubble.observer import observer_pb2
    from podflow_hubble.peer import peer_pb2

    assert flow_pb2.Flow.DESCRIPTOR.full_name == "flow.Flow"
    service = observer_pb2.DESCRIPTOR.services_by_name["Observer"]
    assert service.full_name == "observer.Observer"
    assert [m.name for m in service.methods] == [
        "GetFlows", "GetAgentEvents", "GetDebugEvents", "GetNodes", "GetNamespaces",
        "ServerStatus"]
    assert peer_pb2.DESCRIPTOR.services_by_name["Peer"].full_name == "peer.Peer"
    numbers = {f.name: f.number for f in flow_pb2.Flow.DESCRIPTOR.fields}
    assert numbers["is_reply"] == 26 and numbers["Summary"] == 100000
    assert numbers["extensions"] == 150000
    response = {f.name: f.number for f in observer_pb2.GetFlowsResponse.DESCRIPTOR.fields}
    assert response["node_name"] == 1000 and response["lost_events"] == 3
