"""Count each packet once: the one rule of the TUI's views and the agent's metrics
(agent.wire.counting), one case per observation point and sender."""

from __future__ import annotations

import pytest

from agent.wire.counting import counts_once, veth_sender
from podflow_api.v1 import flow_pb2

F = flow_pb2


def _ep(kind, ns="", pod="", host_network=False):
    return F.Endpoint(kind=kind, namespace=ns, pod_name=pod, host_network=host_network)


POD_A = _ep(F.POD, "shop", "cart-1")
POD_B = _ep(F.POD, "shop", "redis-0")
HOSTNET = _ep(F.POD, "kube-system", "kube-proxy-x", host_network=True)
WORLD = _ep(F.WORLD)
NODE = _ep(F.NODE)
NO_DIR = F.TRAFFIC_DIRECTION_UNKNOWN

COUNTING = [
    # (id, observation point, direction, source, destination, verdict, counted)
    ("sender veth counts", F.POD_VETH, F.FROM_POD, POD_A, POD_B, F.FORWARDED, True),
    ("receiver veth of pod traffic does not", F.POD_VETH, F.TO_POD, POD_A, POD_B, F.FORWARDED,
     False),
    ("receiver veth of world traffic counts", F.POD_VETH, F.TO_POD, WORLD, POD_B, F.FORWARDED,
     True),
    ("receiver veth of node traffic counts", F.POD_VETH, F.TO_POD, NODE, POD_B, F.FORWARDED, True),
    ("receiver veth of host-network pod counts", F.POD_VETH, F.TO_POD, HOSTNET, POD_B,
     F.FORWARDED, True),
    ("receiver veth drop counts", F.POD_VETH, F.TO_POD, POD_A, POD_B, F.DROPPED, True),
    ("bridge record of pod traffic does not", F.BRIDGE, NO_DIR, POD_A, POD_B, F.FORWARDED, False),
    ("bridge record of pod to world does not", F.BRIDGE, NO_DIR, POD_A, WORLD, F.FORWARDED,
     False),
    ("bridge record of world to pod does not", F.BRIDGE, NO_DIR, WORLD, POD_B, F.FORWARDED,
     False),
    ("bridge record of node traffic counts", F.BRIDGE, NO_DIR, NODE, WORLD, F.FORWARDED, True),
    ("bridge drop counts", F.BRIDGE, NO_DIR, POD_A, POD_B, F.DROPPED, True),
    ("host stack drop counts", F.HOST_STACK, F.FROM_POD, POD_A, POD_B, F.DROPPED, True),
    ("unknown point counts", F.OBSERVATION_POINT_UNKNOWN, NO_DIR, POD_A, POD_B, F.FORWARDED,
     True),
]


@pytest.mark.parametrize("point,direction,src,dst,verdict,counted", [c[1:] for c in COUNTING],
                         ids=[c[0] for c in COUNTING])
def test_one_record_counts_each_packet(point, direction, src, dst, verdict, counted):
    flow = F.Flow(observation_point=point, traffic_direction=direction, source=src,
                  destination=dst, verdict=verdict, packets=1, bytes=100)
    assert counts_once(flow) is counted


def _bare(point, direction, src_ip, dst_ip):
    """A record of an agent without metadata: addresses only."""
    flow = F.Flow(observation_point=point, traffic_direction=direction, verdict=F.FORWARDED)
    flow.ip.source, flow.ip.destination = src_ip, dst_ip
    return flow


WITHOUT_METADATA = [
    # (id, record, counted) with 10.0.0.1 known to leave a pod veth here
    ("sender veth", _bare(F.POD_VETH, F.FROM_POD, "10.0.0.1", "10.0.0.2"), True),
    ("receiver veth from a known pod", _bare(F.POD_VETH, F.TO_POD, "10.0.0.1", "10.0.0.2"),
     False),
    ("receiver veth from elsewhere", _bare(F.POD_VETH, F.TO_POD, "10.0.9.9", "10.0.0.2"), True),
    ("bridge, known pod sender", _bare(F.BRIDGE, F.FROM_POD, "10.0.0.1", "10.0.0.2"), False),
    ("bridge, known pod receiver", _bare(F.BRIDGE, F.TO_POD, "10.0.9.9", "10.0.0.1"), False),
    ("bridge, no pod", _bare(F.BRIDGE, F.TO_POD, "10.0.9.9", "10.0.9.8"), True),
]


@pytest.mark.parametrize("flow,counted", [c[1:] for c in WITHOUT_METADATA],
                         ids=[c[0] for c in WITHOUT_METADATA])
def test_without_metadata_learned_veth_senders_are_pods(flow, counted):
    senders = {veth_sender(_bare(F.POD_VETH, F.FROM_POD, "10.0.0.1", "10.0.0.2"))}
    assert senders == {"10.0.0.1"}
    assert counts_once(flow, senders) is counted


def test_only_records_leaving_a_pod_at_its_veth_teach_a_sender():
    assert veth_sender(_bare(F.POD_VETH, F.TO_POD, "10.0.0.1", "10.0.0.2")) == ""
    assert veth_sender(_bare(F.BRIDGE, F.FROM_POD, "10.0.0.1", "10.0.0.2")) == ""
