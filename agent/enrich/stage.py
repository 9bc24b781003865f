"""The metadata stage of `podflow agent`: turns IP addresses into Kubernetes names.

It owns the choice of metadata source (`--metadata kubernetes|none|FILE`) and hands the
pipeline one Enricher whose `enrich(flows)` names endpoints, Services and backends. The
lookups themselves live in agent.enrich.names (pure Python), the sources in agent.enrich.k8s and the
kernel's address translations in agent.enrich.conntrack.
"""

from __future__ import annotations

import argparse
import logging
import os

from agent.enrich.conntrack import Conntrack, open_conntrack
from agent.enrich.names import FlowEnricher
from agent.errors import ConfigError, PodflowError
from agent.enrich.k8s.filesource import FileSource
from agent.enrich.k8s.state import ClusterState
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
    """What the pipeline calls for each batch: `enrich(flows)` fills in names in place.

    It owns the pieces it starts: the metadata source (a file poller or the API watch),
    and the conntrack reader used for Service translations."""

    def __init__(self, stats: AgentStats, source_name: str, state: ClusterState | None = None,
                 source=None, use_conntrack: bool = True, conntrack_grace_s: float = 30.0) -> None:
        self._stats = stats
        self._stats.metadata_source = source_name
        self.state = state
        self._source = source
        self._use_conntrack = use_conntrack
        self._conntrack_grace_s = conntrack_grace_s
        self._conntrack: Conntrack | None = None
        self._enricher = FlowEnricher(state, None)

    def start(self) -> None:
        if self._use_conntrack:
            self._conntrack = open_conntrack(event_grace_s=self._conntrack_grace_s)
        self._enricher = FlowEnricher(self.state, self._conntrack)
        if self._source is not None:
            try:
                self._source.start()
            except PodflowError:
                self.stop()
                raise

    def stop(self) -> None:
        if self._source is not None:
            self._source.stop()
        if self._conntrack is not None:
            self._conntrack.stop()
            self._conntrack = None

    def enrich(self, flows: list) -> None:
        self._enricher.enrich(flows)

    def ready_info(self) -> dict:
        return {"metadata": self._stats.metadata_source,
                "conntrack": self._conntrack is not None}


def from_args(args: argparse.Namespace, stats: AgentStats) -> Enricher:
    source = args.metadata
    # A connection's last record can come an idle timeout after its last packet: keep the
    # translations of destroyed connections at least twice that long.
    options = {"use_conntrack": getattr(args, "conntrack", True),
               "conntrack_grace_s": max(30.0, 2 * float(getattr(args, "idle_timeout", 15.0) or 0))}
    if source == "none":
        return Enricher(stats, "none", **options)
    state = ClusterState()
    if source == "kubernetes":
        from agent.enrich.k8s.kubesource import KubeSource

        return Enricher(stats, "kubernetes", state,
                        KubeSource(state, stats, kubeconfig=args.kubeconfig, context=args.context),
                        **options)
    if args.kubeconfig or args.context:
        raise ConfigError(f"--kubeconfig/--context need --metadata kubernetes, not {source!r}")
    if not os.path.isfile(source):
        raise ConfigError(f"--metadata {source}: not `kubernetes`, `none` or an existing file")
    return Enricher(stats, f"file:{source}", state, FileSource(source, state, stats), **options)
