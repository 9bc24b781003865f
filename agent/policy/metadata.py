"""The cluster as `podflow policy` reads it: objects and current NetworkPolicies from
`--metadata kubernetes|FILE|none`, through the agent's own sources (agent/enrich/k8s), read
once: a one-shot list of the API server, or the file.

What the tools need from it: the current policies (what-if's "before"), namespace labels and
container ports for the recorded connections (what-if), and every backend of a Service a
connection went to (advise selects them all, not only the one that answered).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace

import urllib3

from agent.enrich.k8s.filesource import FileSource
from agent.enrich.k8s.state import ClusterState
from agent.errors import MetadataError, PolicyError
from agent.policy.cluster import ClusterStatePolicyView
from agent.policy.facts import ConnectionFact, Endpoint, endpoint_of
from agent.policy.load import LoadResult, load_policies, load_policy_file
from agent.policy.model import NetworkPolicy
from agent.policy.parse import parse_policy
from agent.policy.view import PolicyCluster
from agent.stats import AgentStats

KIND = "NetworkPolicy"


@dataclass
class ClusterInfo:
    """What --metadata gave: `state` None with `none`."""

    source: str
    state: ClusterState | None = None
    policies: tuple[NetworkPolicy, ...] = ()
    problems: tuple[PolicyError, ...] = ()
    policies_known: bool = False       # NetworkPolicies were listed (else: unknown, not none)
    warnings: list[str] = field(default_factory=list)

    def view(self) -> PolicyCluster | None:
        return None if self.state is None else ClusterStatePolicyView(self.state)

    def backends(self, namespace: str, name: str) -> tuple[Endpoint, ...]:
        """Every ready backend of a Service, as Endpoints with their labels and workload."""
        if self.state is None:
            return ()
        return tuple(endpoint_of(ip, self.state.peer(ip).endpoint)
                     for ip in self.state.service_backends(namespace, name))

    def with_backends(self, facts: list[ConnectionFact]) -> list[ConnectionFact]:
        """Facts whose Service carries all its backends (advise allows them all)."""
        out = []
        for fact in facts:
            svc = fact.service
            if svc is not None and not svc.backends:
                backends = self.backends(svc.namespace, svc.name)
                if backends:
                    fact = replace(fact, service=replace(svc, backends=backends))
            out.append(fact)
        return out


def load_cluster(source: str, kubeconfig: str | None = None, context: str | None = None,
                 timeout_s: float = 10.0) -> ClusterInfo:
    """Read the cluster once. MetadataError names what could not be read (a file, the API
    server, an RBAC permission the tools cannot do without)."""
    if source == "none":
        return ClusterInfo(source)
    state, stats = ClusterState(), AgentStats(node_name="", version="")
    info = ClusterInfo(source, state)
    if source == "kubernetes":
        from agent.enrich.k8s.kubesource import KubeSource  # noqa: PLC0415 (kubernetes client)

        kube = KubeSource(state, stats, kubeconfig=kubeconfig, context=context,
                          sync_timeout_s=timeout_s)
        kube.start()   # raises MetadataError for a missing permission it cannot do without
        kube.stop()
        if stats.metadata_error:
            info.warnings.append(f"--metadata kubernetes: {stats.metadata_error}")
    else:
        FileSource(source, state, stats).load()
    info.policies_known = state.listed(KIND)
    policies, problems = [], []
    for record in state.objects(KIND):
        try:
            policies.append(parse_policy(record.object(), strict=False))
        except PolicyError as exc:
            problems.append(exc)
    info.policies = tuple(sorted(policies, key=lambda p: p.key))
    info.problems = tuple(problems)
    if not info.policies_known:
        info.warnings.append(f"--metadata {source}: the cluster's NetworkPolicies could not be "
                             "listed")
    return info


def require_policies(info: ClusterInfo) -> None:
    """what-if compares with the current policies: without them it would call every
    connection the candidates deny "newly denied"."""
    if info.state is not None and not info.policies_known:
        raise MetadataError(f"--metadata {info.source}: the current NetworkPolicies could not "
                            "be listed (" + "; ".join(info.warnings) + "); use --metadata none "
                            "to compare with no policies at all")


def list_policies(source: str, kubeconfig: str | None = None, context: str | None = None
                  ) -> LoadResult:
    """Only the NetworkPolicies of --metadata kubernetes|FILE (what a screen listing them
    needs: one list call, and only `list networkpolicies` of RBAC). MetadataError names
    what could not be read; malformed objects are the result's problems."""
    if source != "kubernetes":
        try:
            return load_policy_file(source, strict=False)
        except PolicyError as exc:
            raise MetadataError(f"--metadata {exc}") from exc
    from kubernetes import client  # noqa: PLC0415 (the kubernetes client: only when asked)
    from kubernetes.client.exceptions import ApiException  # noqa: PLC0415

    from agent.enrich.k8s.kubesource import (RESOURCES, load_api_client,  # noqa: PLC0415
                                             rbac_message)

    spec = next(r for r in RESOURCES if r.kind == KIND)
    api_client = load_api_client(kubeconfig, context)
    try:
        resp = getattr(getattr(client, spec.api)(api_client), spec.list_method)(
            _preload_content=False, _request_timeout=(5, 30))
        body = json.loads(resp.data)
    except ApiException as exc:
        if exc.status == 403:
            raise MetadataError(rbac_message("list", spec.resource)) from exc
        raise MetadataError(f"API server answered {exc.status} {exc.reason}") from exc
    except (urllib3.exceptions.HTTPError, ValueError) as exc:
        raise MetadataError(f"API server unreachable: {exc}") from exc
    finally:
        api_client.close()
    items = [dict(item, kind=KIND) for item in body.get("items") or []]
    return load_policies(items, strict=False)
