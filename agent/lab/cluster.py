"""The Lab: a Kubernetes-shaped cluster built from network namespaces, for tests, benchmarks
and the demo.

No cluster can run here, but the kernel is real: a node is a network namespace, a pod is a
namespace joined to its node by a veth pair, nodes meet on an "underlay" namespace holding
a bridge, and Services are kube-proxy-shaped iptables rules in every node's namespace.
`metadata()` returns the Kubernetes objects that match, shaped like `kubectl get ... -o json`.
This class is the lab's one entry point and owns its life; each part lives in its module:
namespaces and processes (netns), the underlay and outside hosts (underlay), nodes, pods,
Services and drop rules (services), DNS (dns), agents (agents), metadata (metadata), and
ownership and leftovers (state).

Nothing is created in the root namespace except files under /run/podflow-lab/<lab>. Every
namespace is named `pf<lab id>-...`, and each lab records its owner process, so
`Lab.cleanup_leftovers()` removes what a crashed run left without touching a lab that is
still running in another process.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import subprocess
import time
from typing import Sequence

from agent.errors import LabBusyError, LabError
from agent.lab import state
from agent.lab.dns import DnsServer
from agent.lab.metadata import cluster_metadata, object_uid, write_json_atomically
from agent.lab.netns import delete_netns, list_netns, missing_tools, run_tool
from agent.lab.nodes import NODE_KINDS, Node, wire_node
from agent.lab.pods import Pod
from agent.lab.policies import LabPolicy, check_cidrs, sync_policies
from agent.lab.services import (Service, ServicePort, common_labels, drop_rule,
                                kube_proxy_nat, sync_nat)
from agent.lab.underlay import (UNDERLAY_CIDR, OutsideHost, add_underlay_host,
                                create_underlay)
from agent.lab.workloads import DEFAULT_DNS_IP

log = logging.getLogger("podflow.lab")

DEFAULT_CLUSTER_CIDR = "10.244.0.0/16"


class Lab:
    """Context manager building a cluster from namespaces; cleanup is complete and
    idempotent, also after exceptions."""

    def __init__(self, lab_id: str = "lab", cluster_cidr: str = DEFAULT_CLUSTER_CIDR):
        if os.geteuid() != 0:
            raise LabError("the lab needs root (network namespaces, veths, iptables)")
        missing = missing_tools()
        if missing:
            raise LabError("missing tools: " + ", ".join(missing))
        self.id = state.sanitize_id(lab_id)
        self.prefix = f"pf{self.id}"
        self.cluster_cidr = ipaddress.ip_network(cluster_cidr)
        self.run_dir = state.run_dir(self.id)
        self.underlay = f"{self.prefix}-underlay"
        self.nodes: list[Node] = []
        self.pods: list[Pod] = []
        self.services: list[Service] = []
        self.outside_hosts: list[OutsideHost] = []
        self.dns: DnsServer | None = None
        self.drop_rules: list[tuple[Node, list[str]]] = []
        self.policies: list[LabPolicy] = []                 # NetworkPolicies (policies.py)
        self.namespace_labels: dict[str, dict[str, str]] = {}
        self._processes: list[subprocess.Popen] = []
        self._netns: list[str] = []
        self._pod_seq = 0
        self._rv = 1000
        self._next_underlay_host = 10
        self._next_outside_host = 100
        self._created = False
        self._closed = False
        self._setup()

    # ---- lifecycle

    def __enter__(self) -> "Lab":
        return self

    def __exit__(self, *exc_info) -> None:
        self.cleanup()

    def _setup(self) -> None:
        owner = state.owner_alive(self.id)
        if owner:
            raise LabBusyError(f"lab {self.id!r} is in use by live process {owner}; "
                               "pick another lab id", owner)
        if state.leftovers(self.id):
            log.warning("removing leftovers of a crashed lab %r", self.id)
            state.cleanup_leftovers(self.id)
        state.claim(self.id)
        self._created = True
        try:
            self.track_netns(self.underlay)
            create_underlay(self.underlay)
        except BaseException:
            self.cleanup()
            raise

    def cleanup(self) -> None:
        """Stop agents and processes, delete every namespace (with its links, qdiscs,
        filters and iptables rules) and the run directory. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        for node in self.nodes:
            for agent in node.agents:
                try:
                    agent.stop(timeout_s=15)
                except OSError as exc:
                    log.warning("stopping agent on %s: %s", node.name, exc)
        if self.dns is not None:
            self.dns.stop()
        for proc in self._processes:
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + 3
        for proc in self._processes:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        # Pods first, then nodes, then the underlay: each deletion takes its veth peers along.
        for netns in reversed(list(self._netns)):
            delete_netns(netns)
        for netns in list_netns():
            if netns.startswith(self.prefix + "-"):
                delete_netns(netns)
        self._netns.clear()
        if self._created:
            state.release(self.id)

    @staticmethod
    def leftovers(lab_id: str | None = None) -> dict[str, list[str]]:
        """Labs left by processes that are gone: {lab id: [its namespaces]} (see
        agent.lab.state)."""
        return state.leftovers(lab_id)

    @staticmethod
    def cleanup_leftovers(lab_id: str | None = None, force: bool = False) -> list[str]:
        """Remove what crashed labs left (every lab whose owner is gone, or only `lab_id`;
        with force, also a live one). Returns the lab ids removed."""
        return state.cleanup_leftovers(lab_id, force)

    # ---- bookkeeping shared with the lab's parts (nodes, pods, workloads)

    def track_netns(self, name: str) -> None:
        """A namespace this lab is about to create: recorded first, so a crash midway
        still leaves it findable by lab id."""
        self._netns.append(name)
        state.save(self.id, self._netns)

    def untrack_netns(self, name: str) -> None:
        if name in self._netns:
            self._netns.remove(name)
            state.save(self.id, self._netns)

    def track_process(self, proc: subprocess.Popen) -> None:
        """A process started in one of the lab's namespaces: stopped at cleanup."""
        self._processes.append(proc)

    def next_pod_netns(self) -> str:
        self._pod_seq += 1
        return f"{self.prefix}-p{self._pod_seq}"

    def uid(self, kind: str, namespace: str, name: str) -> str:
        return object_uid(self.id, kind, namespace, name)

    def next_resource_version(self) -> int:
        self._rv += 1
        return self._rv

    # ---- nodes and hosts

    def add_node(self, name: str, kind: str = "bridge", pod_cidr: str | None = None) -> Node:
        """A node namespace: `eth0` on the underlay with the default route, routes to the
        other nodes' pod CIDRs, and a `cni0` bridge (kind="bridge") or none ("routed")."""
        if kind not in NODE_KINDS:
            raise LabError(f"node kind {kind!r}: expected 'bridge' or 'routed'")
        if any(n.name == name for n in self.nodes):
            raise LabError(f"node {name} already exists")
        index = len(self.nodes)
        pod_cidr = pod_cidr or f"10.244.{index + 1}.0/24"
        ip = str(UNDERLAY_CIDR.network_address + self._next_underlay_host)
        self._next_underlay_host += 1
        node = Node(self, name, kind, pod_cidr, index, ip)
        for other in self.nodes:
            if other.pod_cidr.overlaps(node.pod_cidr):
                raise LabError(f"pod CIDR {pod_cidr} of {name} overlaps {other.name}'s")
        self.track_netns(node.netns)
        add_underlay_host(self.underlay, node.netns, node.uplink, ip)
        wire_node(node, self.nodes, self.underlay)
        self.nodes.append(node)
        self._sync_iptables(node)
        return node

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise LabError(f"no node {name}")

    def pod(self, namespace: str, name: str) -> Pod:
        for p in self.pods:
            if p.namespace == namespace and p.name == name:
                return p
        raise LabError(f"no pod {namespace}/{name}")

    def add_outside_host(self, name: str) -> OutsideHost:
        """A namespace on the underlay that is not a node: reaches nodes' IPs (NodePort)."""
        ip = str(UNDERLAY_CIDR.network_address + self._next_outside_host)
        self._next_outside_host += 1
        seq = len(self.outside_hosts)
        netns = f"{self.prefix}-o{seq}"
        self.track_netns(netns)
        add_underlay_host(self.underlay, netns, f"o{seq}", ip)
        host = OutsideHost(lab=self, name=name, ip=ip, netns=netns)
        self.outside_hosts.append(host)
        return host

    # ---- services

    def add_service(self, namespace: str, name: str, cluster_ip: str | None = None,
                    port: int = 80, backends: Sequence[tuple[Pod, int]] = (),
                    protocol: str = "tcp", node_port: int | None = None,
                    headless: bool = False, selector: dict[str, str] | None = None,
                    port_name: str | None = None,
                    extra_ports: Sequence[ServicePort] = ()) -> Service:
        """A Service over `backends` [(pod, target port)]: kube-proxy-shaped iptables DNAT on
        every node (none when headless) and its EndpointSlice in the metadata.
        `extra_ports` adds more ports (e.g. kube-dns's udp and tcp 53)."""
        protocol = protocol.lower()
        if protocol not in ("tcp", "udp", "sctp"):
            raise LabError(f"service {namespace}/{name}: protocol {protocol!r}")
        if headless:
            if node_port:
                raise LabError(f"service {namespace}/{name}: headless with a node_port")
            cluster_ip = None
        elif cluster_ip is None:
            raise LabError(f"service {namespace}/{name}: cluster_ip is required unless headless")
        if any(s.namespace == namespace and s.name == name for s in self.services):
            raise LabError(f"service {namespace}/{name} already exists")
        backends = list(backends)
        if selector is None:
            selector = common_labels([p for p, _ in backends])
        ports = [ServicePort(port_name or "", port, protocol, None, node_port)]
        ports += list(extra_ports)
        if len(ports) > 1:
            for sp in ports:
                if not sp.name:
                    sp.name = f"{sp.protocol}-{sp.port}"
        svc = Service(namespace=namespace, name=name, cluster_ip=cluster_ip, ports=ports,
                      backends=backends, selector=selector,
                      uid=self.uid("Service", namespace, name),
                      resource_version=self.next_resource_version())
        self.services.append(svc)
        self.services_changed()
        return svc

    def services_changed(self) -> None:
        """Services or pods changed: every node's nat table and the DNS records follow."""
        for node in self.nodes:
            self._sync_iptables(node)
        if self.dns is not None:
            self.dns.reload()

    def _sync_iptables(self, node: Node) -> None:
        sync_nat(node.netns, kube_proxy_nat(self.services, str(self.cluster_cidr)))
        if self.policies:
            sync_policies(self, node)

    # ---- NetworkPolicy

    def label_namespace(self, namespace: str, **labels: str) -> None:
        """The Namespace object's labels (namespaceSelectors read them); policies follow."""
        self.namespace_labels.setdefault(namespace, {}).update(labels)
        if self.policies:
            for node in self.nodes:
                sync_policies(self, node)

    def add_network_policy(self, manifest: dict, enforce: bool = True) -> LabPolicy:
        """A NetworkPolicy (its manifest, as `kubectl apply` takes it): in the metadata, and
        enforced in every node's iptables as a CNI would, unless `enforce` is False (a CNI
        that ignores it: podflow should call it NOT enforced). A policy of the same
        namespace/name is replaced."""
        check_cidrs(manifest)
        policy = LabPolicy(manifest, enforce)
        self.policies = [p for p in self.policies
                         if (p.namespace, p.name) != (policy.namespace, policy.name)]
        self.policies.append(policy)
        for node in self.nodes:
            sync_policies(self, node)
        return policy

    def remove_network_policy(self, namespace: str, name: str) -> None:
        before = len(self.policies)
        self.policies = [p for p in self.policies if (p.namespace, p.name) != (namespace, name)]
        if len(self.policies) == before:
            raise LabError(f"no NetworkPolicy {namespace}/{name}")
        for node in self.nodes:
            sync_policies(self, node)

    def add_drop_rule(self, src_pod: Pod, dst_pod: Pod, port: int | None = None,
                      protocol: str = "tcp", node: Node | None = None) -> list[str]:
        """A NetworkPolicy-like DROP in the FORWARD chain of the destination pod's node
        (or `node`): packets from src_pod to dst_pod (on `port`) are dropped by netfilter.
        Returns the rule (iptables arguments)."""
        node = node or dst_pod.node
        rule = drop_rule(src_pod, dst_pod, port, protocol)
        run_tool(["ip", "netns", "exec", node.netns, "iptables", "-w", "5", "-I", "FORWARD",
                  *rule])
        self.drop_rules.append((node, rule))
        return rule

    def remove_drop_rule(self, rule: list[str]) -> None:
        for node, r in list(self.drop_rules):
            if r == rule:
                run_tool(["ip", "netns", "exec", node.netns, "iptables", "-w", "5", "-D",
                          "FORWARD", *rule])
                self.drop_rules.remove((node, r))
                return
        raise LabError("no such drop rule")

    # ---- DNS

    def add_dns_server(self, node: Node | None = None, cluster_ip: str = DEFAULT_DNS_IP,
                       namespace: str = "kube-system", pod_name: str = "coredns-0"
                       ) -> DnsServer:
        """dnsmasq in a kube-system pod on `node` (default: the first), behind the kube-dns
        Service at `cluster_ip` (udp and tcp 53), answering the lab's Service names."""
        if self.dns is not None:
            raise LabError("the lab already has a DNS server")
        if not self.nodes:
            raise LabError("add a node before the DNS server")
        self.dns = DnsServer.start_on(self, node or self.nodes[0], cluster_ip, namespace,
                                      pod_name)
        return self.dns

    # ---- Kubernetes metadata

    def metadata(self) -> dict:
        """`kubectl get pods,services,endpointslices,nodes,namespaces,networkpolicies -A -o
        json` for this lab, plus the ReplicaSets that own Deployments' pods (see
        agent.lab.metadata)."""
        return cluster_metadata(self)

    def write_metadata(self, path: str) -> str:
        """Write `metadata()` as JSON, atomically (an agent watching the file never reads
        half of it). Returns the path."""
        return write_json_atomically(self.metadata(), path)
