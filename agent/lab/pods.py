"""Pods: a namespace joined to its node by a veth pair, wired the way the node's CNI would.

The host side is `veth<8 hex>` in the node's namespace, the pod side `eth0`. On a bridge
node (Flannel-like) the host side is a port of `cni0` and the pod routes through the
bridge's address; on a routed node (Calico-like) the node has a /32 route to the pod over
its veth and answers the pod's ARP for a fake gateway (proxy ARP). A host-network pod has
no namespace of its own: it is the node's.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from agent.lab.netns import delete_netns, run_tool
from agent.lab.workloads import InNetns

if TYPE_CHECKING:
    from agent.lab.cluster import Lab
    from agent.lab.nodes import Node

ROUTED_GATEWAY = "169.254.1.1"   # Calico's fake gateway, answered by proxy ARP


@dataclass(eq=False)
class Pod(InNetns):
    """A pod: its own namespace with `eth0`, or the node's namespace when host-network."""

    lab: "Lab"
    node: "Node"
    namespace: str
    name: str
    ip: str
    netns: str
    host_ifname: str | None
    labels: dict[str, str] = field(default_factory=dict)
    owner: tuple[str, str] | None = None
    host_network: bool = False
    uid: str = ""
    resource_version: int = 0
    # (name, port, protocol) the metadata declares as container ports: what a
    # NetworkPolicy's named port resolves to.
    container_ports: list[tuple[str, int, str]] = field(default_factory=list)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def __repr__(self) -> str:
        return f"Pod({self.key} {self.ip} on {self.node.name})"


def veth_name(namespace: str, name: str, taken: set[str | None]) -> str:
    """The host side's name: `veth` + 8 hex of a hash of the pod, like CNI plugins."""
    salt = 0
    while True:
        cand = "veth" + hashlib.sha1(f"{namespace}/{name}/{salt}".encode()).hexdigest()[:8]
        if cand not in taken:
            return cand
        salt += 1


def wire_pod(pod: Pod) -> None:
    """Create the pod's namespace and veth pair and connect it to its node."""
    node, netns, veth, ip = pod.node, pod.netns, pod.host_ifname, pod.ip
    assert veth is not None, "a host-network pod has no veth"
    n = node.netns
    run_tool(["ip", "netns", "add", netns])
    run_tool(["ip", "-n", n, "link", "add", veth, "type", "veth", "peer", "name", "eth0",
              "netns", netns])
    prefix_len = node.pod_cidr.prefixlen if node.kind == "bridge" else 32
    run_tool(["ip", "-n", netns, "link", "set", "lo", "up"])
    run_tool(["ip", "-n", netns, "addr", "add", f"{ip}/{prefix_len}", "dev", "eth0"])
    run_tool(["ip", "-n", netns, "link", "set", "eth0", "up"])
    if node.kind == "bridge":
        run_tool(["ip", "-n", n, "link", "set", veth, "master", "cni0"])
        run_tool(["ip", "-n", n, "link", "set", veth, "type", "bridge_slave", "hairpin", "on"])
        run_tool(["ip", "-n", n, "link", "set", veth, "up"])
        run_tool(["ip", "-n", netns, "route", "add", "default", "via", node.gateway])
        return
    run_tool(["ip", "-n", n, "link", "set", veth, "up"])
    run_tool(["ip", "netns", "exec", n, "sysctl", "-qw",
              f"net.ipv4.conf.{veth}.proxy_arp=1",
              f"net.ipv4.neigh.{veth}.proxy_delay=0",
              f"net.ipv4.conf.{veth}.forwarding=1"])
    run_tool(["ip", "-n", n, "route", "add", f"{ip}/32", "dev", veth, "scope", "link"])
    run_tool(["ip", "-n", netns, "route", "add", ROUTED_GATEWAY, "dev", "eth0", "scope", "link"])
    run_tool(["ip", "-n", netns, "route", "add", "default", "via", ROUTED_GATEWAY,
              "dev", "eth0", "onlink"])


def unwire_pod(pod: Pod) -> None:
    """Delete the pod's veth pair, its namespace and its node's route. The host side is
    deleted first and explicitly: a veth pair does go with its namespace, but the kernel
    tears a namespace down asynchronously, so the node would still list the veth for a
    moment (an agent, or a test, would see a pod that is gone)."""
    run_tool(["ip", "-n", pod.node.netns, "link", "del", pod.host_ifname], check=False,
             quiet=True)
    delete_netns(pod.netns)
    if pod.node.kind == "routed":
        run_tool(["ip", "-n", pod.node.netns, "route", "del", f"{pod.ip}/32"], check=False,
                 quiet=True)
