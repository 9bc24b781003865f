"""Nodes: a namespace with its uplink `eth0` on the underlay, its pods, and its agents.

Two kinds, as two CNIs build them: a bridge node puts its pods' veths on `cni0`, which
holds the first address of the pod CIDR (Flannel-like, with bridge-nf-call-iptables on, as
Kubernetes requires); a routed node has no bridge and routes each pod over its veth
(Calico-like, see agent/lab/pods.py). Nodes reach each other's pod CIDRs through each
other's underlay address, and the underlay knows them all.
"""

from __future__ import annotations

import ipaddress
import os
from typing import TYPE_CHECKING

from agent.errors import LabError
from agent.lab.agents import AgentHandle, spawn_agent
from agent.lab.netns import run_tool
from agent.lab.pods import ROUTED_GATEWAY, Pod, unwire_pod, veth_name, wire_pod
from agent.lab.underlay import bridge_mac
from agent.lab.workloads import InNetns

if TYPE_CHECKING:
    from agent.lab.cluster import Lab

NODE_KINDS = ("bridge", "routed")


class Node(InNetns):
    """A node: a namespace with uplink `eth0` on the underlay and pods on veths."""

    def __init__(self, lab: "Lab", name: str, kind: str, pod_cidr: str, index: int, ip: str):
        self.lab = lab
        self.name = name
        self.kind = kind
        self.pod_cidr = ipaddress.ip_network(pod_cidr)
        self.index = index
        self.ip = ip
        self.netns = f"{lab.prefix}-n{index}"
        self.uplink = f"n{index}"  # its port on the underlay's bridge
        self.pods: list[Pod] = []
        self.agents: list[AgentHandle] = []
        self._next_host = 2  # .1 is the bridge's gateway on bridge nodes
        self.uid = lab.uid("Node", "", name)
        self.bridge = "cni0" if kind == "bridge" else None
        self.gateway = (str(self.pod_cidr.network_address + 1) if kind == "bridge"
                        else ROUTED_GATEWAY)

    def __repr__(self) -> str:
        return f"Node({self.name} {self.kind} {self.ip} {self.pod_cidr})"

    # ---- pods

    def _allocate_ip(self) -> str:
        while True:
            addr = self.pod_cidr.network_address + self._next_host
            self._next_host += 1
            if addr not in self.pod_cidr or addr == self.pod_cidr.broadcast_address:
                raise LabError(f"node {self.name}: pod CIDR {self.pod_cidr} is full")
            if all(p.ip != str(addr) for p in self.pods):
                return str(addr)

    def add_pod(self, namespace: str, name: str, labels: dict[str, str] | None = None,
                owner: tuple[str, str] | None = None, ip: str | None = None,
                host_network: bool = False,
                ports: list[tuple[str, int, str]] | None = None) -> Pod:
        """Create a pod. `owner` is (kind, name), e.g. ("Deployment", "frontend"): the
        metadata then carries Pod -> ReplicaSet -> Deployment owner references. `ports`:
        its container ports (name, port, protocol), for NetworkPolicies' named ports."""
        lab = self.lab
        if any(p.namespace == namespace and p.name == name for p in lab.pods):
            raise LabError(f"pod {namespace}/{name} already exists")
        common = dict(lab=lab, node=self, namespace=namespace, name=name,
                      labels=dict(labels or {}), owner=owner,
                      container_ports=[(n, int(p), proto.upper()) for n, p, proto in ports or ()])
        if host_network:
            pod = Pod(**common, ip=self.ip, netns=self.netns, host_ifname=None,
                      host_network=True, uid=lab.uid("Pod", namespace, name),
                      resource_version=lab.next_resource_version())
            self.pods.append(pod)
            lab.pods.append(pod)
            return pod
        pod = Pod(**common, ip=ip or self._allocate_ip(), netns=lab.next_pod_netns(),
                  host_ifname=veth_name(namespace, name, {p.host_ifname for p in self.pods}),
                  uid=lab.uid("Pod", namespace, name),
                  resource_version=lab.next_resource_version())
        lab.track_netns(pod.netns)
        wire_pod(pod)
        self.pods.append(pod)
        lab.pods.append(pod)
        lab.services_changed()  # a new pod may be a headless Service's DNS answer
        return pod

    def remove_pod(self, pod: Pod) -> None:
        """Delete the pod's namespace (and with it its veth pair) and its metadata."""
        if pod not in self.pods:
            raise LabError(f"{pod} is not on node {self.name}")
        self.pods.remove(pod)
        self.lab.pods.remove(pod)
        for svc in self.lab.services:
            svc.backends = [(p, port) for p, port in svc.backends if p is not pod]
        if not pod.host_network:
            unwire_pod(pod)
            self.lab.untrack_netns(pod.netns)
        self.lab.services_changed()

    # ---- agent

    def start_agent(self, *extra_args: str, metadata_file: str | None = None,
                    timeout_s: float = 120.0, env: dict[str, str] | None = None
                    ) -> AgentHandle:
        """Run `podflow agent` inside this node's namespace and wait until it is ready."""
        seq = len(self.agents)
        base = os.path.join(self.lab.run_dir, self.name if seq == 0 else f"{self.name}.{seq}")
        metadata = ["--metadata", metadata_file] if metadata_file is not None else []
        handle = spawn_agent(base, *metadata, *extra_args, node_name=self.name,
                             netns=self.netns, env=env, node=self)
        self.agents.append(handle)
        handle.wait_ready(timeout_s)
        return handle


def wire_node(node: Node, others: list[Node], underlay: str) -> None:
    """Give a node (its namespace already on the underlay) forwarding, its `cni0` bridge
    when it is a bridge node, and routes between its pod CIDR and every other node's."""
    n = node.netns
    sysctls = ["net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0",
               "net.ipv4.conf.default.rp_filter=0"]
    if node.kind == "bridge":
        run_tool(["ip", "-n", n, "link", "add", "cni0", "address", bridge_mac(n, "cni0"),
                  "type", "bridge"])
        run_tool(["ip", "-n", n, "addr", "add", f"{node.gateway}/{node.pod_cidr.prefixlen}",
                  "dev", "cni0"])
        run_tool(["ip", "-n", n, "link", "set", "cni0", "up"])
        sysctls.append("net.bridge.bridge-nf-call-iptables=1")  # as Kubernetes requires
    run_tool(["ip", "netns", "exec", n, "sysctl", "-qw", *sysctls])
    for other in others:
        run_tool(["ip", "-n", n, "route", "add", str(other.pod_cidr), "via", other.ip])
        run_tool(["ip", "-n", other.netns, "route", "add", str(node.pod_cidr), "via", node.ip])
    run_tool(["ip", "-n", underlay, "route", "add", str(node.pod_cidr), "via", node.ip])
