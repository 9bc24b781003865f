"""Count each packet once: the one rule every aggregate follows (the TUI's Top and Services
views and totals, the agent's Prometheus flow metrics).

The same packet can be reported by several observation points: the sending pod's veth
(FROM_POD), the receiving pod's veth on the same or another node (TO_POD), a CNI bridge, and
the host stack when it is dropped. Exactly one record is counted:

* a drop (verdict DROPPED, e.g. HOST_STACK records traced at skb:kfree_skb): always. It says
  where the packet died, which no other record says. A packet dropped after it left a pod
  was also counted as forwarded at the veth: TC runs before the stack and cannot know; the
  two say different things (sent, then dropped).
* POD_VETH, FROM_POD: always. Every packet a pod sends is seen here once.
* POD_VETH, TO_POD: only when the sender is not a pod with a veth of its own (the world, a
  node, a host-network pod, an untranslated Service IP); otherwise the sender's FROM_POD
  record, on this node or another, counts the packet. So the sum over every agent (a
  Prometheus `sum`, the TUI's cluster view) counts each packet once.
* BRIDGE: only when neither end is a pod with a veth (those are counted at the veth); this
  keeps node-to-node or host traffic crossing a bridge visible.
* any other observation point: counted, there is nothing to prefer.

Whether an end "is a pod with a veth" comes from its metadata (kind POD or a pod name, not
host network). An agent without metadata (`--metadata none`) knows no pods; it may pass
`veth_senders`, the source addresses it has seen leaving its pod veths (`veth_sender`), and
an unnamed end at one of them counts as such a pod.

A node whose agent is missing takes the packets only it saw with it: the views say how many
nodes are connected, so the picture never looks complete when it is not.
"""

from __future__ import annotations

from collections.abc import Container

from podflow_api.v1 import flow_pb2

_POD = flow_pb2.POD
_POD_VETH = flow_pb2.POD_VETH
_BRIDGE = flow_pb2.BRIDGE
_TO_POD = flow_pb2.TO_POD
_FROM_POD = flow_pb2.FROM_POD
_DROPPED = flow_pb2.DROPPED


def _has_veth(ep: flow_pb2.Endpoint, ip: str, veth_senders: Container[str] | None) -> bool:
    if ep.kind == _POD or ep.pod_name:
        return not ep.host_network
    return veth_senders is not None and ip in veth_senders


def counts_once(flow: flow_pb2.Flow, veth_senders: Container[str] | None = None) -> bool:
    """Whether this record is the one that counts its packets (see the module docstring).
    Runs for every record a view or the metrics see, so it reads as little as it can."""
    point = flow.observation_point
    if point == _POD_VETH:
        if flow.traffic_direction != _TO_POD or flow.verdict == _DROPPED:
            return True
        return not _has_veth(flow.source, flow.ip.source, veth_senders)
    if point == _BRIDGE and flow.verdict != _DROPPED:
        return not (_has_veth(flow.source, flow.ip.source, veth_senders)
                    or _has_veth(flow.destination, flow.ip.destination, veth_senders))
    return True


def veth_sender(flow: flow_pb2.Flow) -> str:
    """The source address of a record taken leaving a pod at its veth ("" for any other
    record): what an agent without metadata learns its pods' addresses from."""
    if flow.observation_point == _POD_VETH and flow.traffic_direction == _FROM_POD:
        return flow.ip.source
    return ""
