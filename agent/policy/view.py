"""What the evaluator must know about the cluster, as a small protocol, and a static
implementation of it.

A NetworkPolicy verdict depends on little: for an address, whether it is a pod on the pod
network (its namespace, labels, node and container ports) or a node (its own address, the
CNI gateway on it, a host-network pod); and the labels of namespaces. Keeping that behind
three methods lets the agent answer from its Kubernetes cache (agent/policy/cluster.py), the
`podflow policy` commands from a metadata file or from the identities recorded in flows
(StaticCluster), and the tests from a table.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from agent.policy.model import NAMESPACE_NAME_LABEL


@dataclass(frozen=True, slots=True)
class ContainerPort:
    """One spec.containers[].ports[] entry: what a named port in a policy resolves to."""

    name: str
    port: int
    protocol: str = "TCP"


@dataclass(frozen=True, slots=True)
class PodInfo:
    """A pod as policy sees it. `container_ports` None means unknown (named ports in policies
    then cannot be resolved, and verdicts say so); () means the pod declares none."""

    namespace: str
    name: str
    labels: Mapping[str, str] = field(default_factory=dict, hash=False)
    node_name: str = ""
    container_ports: tuple[ContainerPort, ...] | None = None
    host_network: bool = False

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)


@runtime_checkable
class PolicyCluster(Protocol):
    """The cluster, as NetworkPolicy evaluation reads it.

    `generation` changes whenever any answer below may have changed (any object event); the
    evaluator forgets what it learnt about addresses when it moves. Readers are called from
    the pipeline thread while a watch thread writes: each call must return a consistent
    answer without blocking for long."""

    generation: int

    def pod_at(self, ip: str) -> PodInfo | None:
        """The pod that owns `ip` on the pod network (not a host-network pod), or None."""

    def node_at(self, ip: str) -> str | None:
        """The node whose address `ip` is (an InternalIP/ExternalIP, the CNI gateway on the
        node, a host-network pod's IP), or None."""

    def namespace_labels(self, namespace: str) -> Mapping[str, str] | None:
        """The namespace's labels, or None when the namespace is unknown."""


def namespace_labels_with_name(cluster: PolicyCluster, namespace: str) -> dict[str, str]:
    """A namespace's labels including kubernetes.io/metadata.name, which the API server sets
    on every namespace (so a metadata source that lacks Namespace objects still lets a
    namespaceSelector pick a namespace by name)."""
    labels = dict(cluster.namespace_labels(namespace) or {})
    labels[NAMESPACE_NAME_LABEL] = namespace
    return labels


class StaticCluster:
    """A PolicyCluster from plain tables; `update` merges entries and bumps `generation`.
    Host-network pods are given as node addresses (`nodes`), as the evaluator treats them.
    `external` lists addresses known to be neither pod nor node (recorded as the world), so
    a LayeredCluster does not ask its fallback about them."""

    def __init__(self, pods: Mapping[str, PodInfo] | None = None,
                 nodes: Mapping[str, str] | None = None,
                 namespaces: Mapping[str, Mapping[str, str]] | None = None,
                 external: Iterable[str] = ()) -> None:
        self._pods: dict[str, PodInfo] = dict(pods or {})
        self._nodes: dict[str, str] = dict(nodes or {})
        self._namespaces: dict[str, dict[str, str]] = {
            name: dict(labels) for name, labels in (namespaces or {}).items()}
        self._external: set[str] = set(external)
        self.generation = 0

    def pod_at(self, ip: str) -> PodInfo | None:
        return self._pods.get(ip)

    def node_at(self, ip: str) -> str | None:
        return self._nodes.get(ip)

    def namespace_labels(self, namespace: str) -> Mapping[str, str] | None:
        return self._namespaces.get(namespace)

    def knows(self, ip: str) -> bool:
        """Whether this table says what `ip` is (a pod, a node, or the world)."""
        return ip in self._pods or ip in self._nodes or ip in self._external

    def update(self, pods: Mapping[str, PodInfo | None] | None = None,
               nodes: Mapping[str, str] | None = None,
               namespaces: Mapping[str, Mapping[str, str]] | None = None,
               external: Iterable[str] = ()) -> None:
        """Merge entries (a pod of None removes that IP)."""
        for ip, pod in (pods or {}).items():
            if pod is None:
                self._pods.pop(ip, None)
            else:
                self._pods[ip] = pod
        self._nodes.update(nodes or {})
        for name, labels in (namespaces or {}).items():
            self._namespaces[name] = dict(labels)
        self._external.update(external)
        self.generation += 1


class LayeredCluster:
    """Answers about an address from `first` when it knows the address, else from `second`:
    what-if judges a recorded connection with the identities recorded with it, and falls back
    to the live cluster for what was not recorded (namespace labels, container ports)."""

    def __init__(self, first: StaticCluster, second: PolicyCluster | None) -> None:
        self.first, self.second = first, second

    @property
    def generation(self) -> int:
        return self.first.generation + (self.second.generation if self.second is not None else 0)

    def pod_at(self, ip: str) -> PodInfo | None:
        if not self.first.knows(ip):
            return self.second.pod_at(ip) if self.second is not None else None
        pod = self.first.pod_at(ip)
        if pod is not None and pod.container_ports is None and self.second is not None:
            live = self.second.pod_at(ip)
            if live is not None and live.key == pod.key and live.container_ports is not None:
                return PodInfo(pod.namespace, pod.name, pod.labels, pod.node_name,
                               live.container_ports, pod.host_network)
        return pod

    def node_at(self, ip: str) -> str | None:
        if not self.first.knows(ip):
            return self.second.node_at(ip) if self.second is not None else None
        return self.first.node_at(ip)

    def namespace_labels(self, namespace: str) -> Mapping[str, str] | None:
        labels = self.first.namespace_labels(namespace)
        if labels is None and self.second is not None:
            labels = self.second.namespace_labels(namespace)
        return labels
