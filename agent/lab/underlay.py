"""The underlay: the L2 segment nodes and outside hosts meet on, and the hosts on it.

One namespace (`pf<lab>-underlay`) holds a bridge `br0` with the gateway address; a node or
an outside host is a namespace whose `eth0` is a veth port of that bridge, with the default
route through the gateway ("the world" to the cluster). Outside hosts are machines that
are not nodes: a laptop calling a NodePort, an internet server.
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass
from typing import TYPE_CHECKING

from agent.lab.netns import run_tool
from agent.lab.workloads import InNetns

if TYPE_CHECKING:
    from agent.lab.cluster import Lab

UNDERLAY_CIDR = ipaddress.ip_network("172.18.0.0/24")
UNDERLAY_GATEWAY = "172.18.0.1"  # the underlay namespace's own address: "the world" to nodes


def bridge_mac(netns: str, bridge: str) -> str:
    """A fixed, locally administered MAC for a lab bridge. Without one, Linux gives a bridge
    the lowest MAC among its ports and changes it whenever a port with a lower one joins (a
    new pod's veth, a new outside host). Neighbours whose ARP entry still holds the old
    address, another port's, keep sending there: the bridge passes such frames up as not
    addressed to it and IP drops them, until the entry is probed again (seconds to a
    minute). A pod's first connection after a pod was added timed out that way. The kernel
    never changes an address set by the user."""
    digest = hashlib.sha256(f"{netns}/{bridge}".encode()).digest()
    return ":".join(f"{b:02x}" for b in (0x02, *digest[:5]))


def create_underlay(netns: str) -> None:
    """The underlay namespace and its bridge, a plain L2 segment (no netfilter on it)."""
    run_tool(["ip", "netns", "add", netns])
    run_tool(["ip", "-n", netns, "link", "set", "lo", "up"])
    run_tool(["ip", "-n", netns, "link", "add", "br0", "address", bridge_mac(netns, "br0"),
              "type", "bridge"])
    run_tool(["ip", "-n", netns, "addr", "add",
              f"{UNDERLAY_GATEWAY}/{UNDERLAY_CIDR.prefixlen}", "dev", "br0"])
    run_tool(["ip", "-n", netns, "link", "set", "br0", "up"])
    run_tool(["ip", "netns", "exec", netns, "sysctl", "-qw", "net.ipv4.ip_forward=1",
              "net.bridge.bridge-nf-call-iptables=0",
              "net.bridge.bridge-nf-call-ip6tables=0"])


def add_underlay_host(underlay: str, netns: str, port: str, ip: str) -> None:
    """A new namespace `netns` whose `eth0` (address `ip`) is port `port` of the underlay's
    bridge, with the default route through the underlay's gateway."""
    run_tool(["ip", "netns", "add", netns])
    run_tool(["ip", "-n", netns, "link", "set", "lo", "up"])
    run_tool(["ip", "-n", underlay, "link", "add", port, "type", "veth", "peer", "name", "eth0",
              "netns", netns])
    run_tool(["ip", "-n", underlay, "link", "set", port, "master", "br0"])
    run_tool(["ip", "-n", underlay, "link", "set", port, "up"])
    run_tool(["ip", "-n", netns, "addr", "add", f"{ip}/{UNDERLAY_CIDR.prefixlen}", "dev", "eth0"])
    run_tool(["ip", "-n", netns, "link", "set", "eth0", "up"])
    run_tool(["ip", "-n", netns, "route", "add", "default", "via", UNDERLAY_GATEWAY])


@dataclass(eq=False)
class OutsideHost(InNetns):
    """A machine on the underlay that is not a node (a NodePort client, "the world")."""

    lab: "Lab"
    name: str
    ip: str
    netns: str
