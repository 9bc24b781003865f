"""The metadata stage of `podflow agent`: turns IP addresses into Kubernetes names.

It owns the choice of metadata source (`--metadata kubernetes|none|FILE`) and hands the
pipeline one Enricher whose `enrich(flows)` names endpoints, Services and backends. The
lookups themselves live in agent.enrich (pure Python), the sources in agent.k8s and the
kernel's address translations in agent.conntrack.
"""

from __future__ import annotations

import argparse
import logging
import os

from agent.errors import ConfigError
from agent.stats import AgentStats

log = logging.getLogger("podflow.metadata")


def _default_source() -> str:
    """In a pod (the API server's env vars are set) read Kubernetes, else nothing."""
    return "kubernetes" if os.environ.get("KUBERNETES_SERVICE_HOST") else "none"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("metadata (Kubernetes names for flows)")
    group.add_argument("--metadata", default=_default_source(), metavar="kubernetes|none|FILE",
                       help="where pod, Service and node names come from: the Kubernetes API "
                            "(list+watch), `none`, or a FILE with the JSON/YAML printed by "
                            "`kubectl get pods,services,endpointslices,nodes -A -o json`, "
                            "reloaded when it changes (default: kubernetes inside a cluster, "
                            "else none)")
    group.add_argument("--kubeconfig", metavar="PATH", default=None,
                       help="kubeconfig for --metadata kubernetes outside a cluster "
                            "(default: in-cluster config, else $KUBECONFIG or ~/.kube/config)")
    group.add_argument("--context", default=None,
                       help="kubeconfig context to use (default: the current context)")
    group.add_argument("--no-conntrack", dest="conntrack", action="store_false",
                       help="do not read Service address translations from the kernel's "
                            "connection tracking")


class Enricher:
    """What the pipeline calls for each batch: `enrich(flows)` fills in names in place."""

    def __init__(self, stats: AgentStats, source_name: str) -> None:
        self._stats = stats
        self._stats.metadata_source = source_name

    def start(self) -> None:
        """Nothing to start without a metadata source."""

    def stop(self) -> None:
        """Nothing to stop without a metadata source."""

    def enrich(self, flows: list) -> None:
        """Without metadata there is nothing to name."""

    def ready_info(self) -> dict:
        return {"metadata": self._stats.metadata_source}


def from_args(args: argparse.Namespace, stats: AgentStats) -> Enricher:
    source = args.metadata
    if source == "none":
        return Enricher(stats, "none")
    raise ConfigError(f"--metadata {source}: not supported yet")
