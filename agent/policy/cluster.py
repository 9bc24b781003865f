"""The enrich stage's Kubernetes cache (ClusterState) seen as a PolicyCluster.

The only module of agent.policy that imports the Kubernetes cache (agent.enrich.k8s), so the
evaluator stays testable from plain tables and a move of the cache changes one import here.
It reads the same lock-free indexes the enricher reads.

Container ports: the cache's Pod records do not keep spec.containers[].ports yet. When a
Pod record grows a `container_ports` attribute (a tuple of (name, port, protocol)), named
ports in policies resolve; until then pods report their container ports as unknown and
verdicts that a named port might change say so (DirectionVerdict.unresolved).
"""

from __future__ import annotations

from collections.abc import Mapping

from agent.enrich.k8s.state import ClusterState
from agent.policy.view import ContainerPort, PodInfo


def _container_ports(pod) -> tuple[ContainerPort, ...] | None:
    raw = getattr(pod, "container_ports", None)
    if raw is None:
        return None
    out = []
    for entry in raw:
        if isinstance(entry, ContainerPort):
            out.append(entry)
        else:
            name, port, protocol = entry
            out.append(ContainerPort(name=name, port=int(port), protocol=protocol or "TCP"))
    return tuple(out)


class ClusterStatePolicyView:
    """PolicyCluster over a ClusterState (agent.enrich.k8s.state)."""

    def __init__(self, state: ClusterState) -> None:
        self._state = state
        # Pod record -> PodInfo, reused while the cache holds the very same record.
        self._infos: dict[tuple[str, str], tuple[object, PodInfo]] = {}

    @property
    def generation(self) -> int:
        return self._state.generation

    def _info(self, pod) -> PodInfo:
        cached = self._infos.get(pod.key)
        if cached is not None and cached[0] is pod:
            return cached[1]
        info = PodInfo(namespace=pod.namespace, name=pod.name, labels=dict(pod.label_map),
                       node_name=pod.node_name, container_ports=_container_ports(pod),
                       host_network=pod.host_network)
        if len(self._infos) > 100_000:
            self._infos.clear()
        self._infos[pod.key] = (pod, info)
        return info

    def pod_at(self, ip: str) -> PodInfo | None:
        pod = self._state.pod_by_ip.get(ip)
        return None if pod is None else self._info(pod)

    def node_at(self, ip: str) -> str | None:
        state = self._state
        node = state.node_by_ip.get(ip) or state.node_gateway_by_ip.get(ip)
        if node is not None:
            return node.name
        host_pod = state.host_pod_by_ip.get(ip)
        if host_pod is not None and ip not in state.pod_by_ip:
            return host_pod.node_name or None
        return None

    def namespace_labels(self, namespace: str) -> Mapping[str, str] | None:
        ns = self._state.get("Namespace", "", namespace)
        if ns is None:
            return None
        return dict(pair.split("=", 1) for pair in ns.labels)
