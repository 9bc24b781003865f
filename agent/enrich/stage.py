"""The metadata stage of `podflow agent`: turns IP addresses into Kubernetes names.

It owns the choice of metadata source (`--metadata kubernetes|none|FILE`, MetadataSection in
agent/config) and hands the pipeline one Enricher whose `enrich(flows)` names endpoints,
Services and backends. The lookups themselves live in agent.enrich.names (pure Python), the
sources in agent.enrich.k8s and the kernel's address translations in agent.enrich.conntrack.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from agent.enrich.batch import BatchEnricher
from agent.enrich.conntrack import Conntrack, open_conntrack
from agent.enrich.k8s.filesource import FileSource
from agent.enrich.k8s.state import ClusterState
from agent.enrich.names import ConnectionJudge, FlowEnricher
from agent.errors import PodflowError
from agent.stage import Stage
from agent.stats import AgentStats

if TYPE_CHECKING:
    from agent.config import MetadataSection

class Enricher(Stage):
    """What the pipeline calls for each batch: `enrich_batch(batch)` (and `enrich(flows)`
    for drop records) fills in names in place.

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
        self._judge: ConnectionJudge | None = None
        self._enricher = FlowEnricher(state, None)
        self._batch = BatchEnricher(state, None, stats=stats)

    def use_judge(self, judge: ConnectionJudge) -> None:
        """Give every new connection a NetworkPolicy verdict from `judge` (the policy stage,
        built after this one: stages never import later ones, main.py connects them)."""
        self._judge = judge
        self._enricher = FlowEnricher(self.state, self._conntrack, judge=judge)
        self._batch = BatchEnricher(self.state, self._conntrack, judge=judge, stats=self._stats)

    def start(self) -> None:
        if self._use_conntrack:
            self._conntrack = open_conntrack(event_grace_s=self._conntrack_grace_s)
        self._enricher = FlowEnricher(self.state, self._conntrack, judge=self._judge)
        self._batch = BatchEnricher(self.state, self._conntrack, judge=self._judge,
                                    stats=self._stats)
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

    def failure(self) -> str | None:
        """The metadata source's verdict (the Kubernetes watch gives up waiting for RBAC)."""
        failure = getattr(self._source, "failure", None)
        return failure() if failure is not None else None

    def enrich(self, flows: list) -> None:
        """Flow objects (drop records), one by one."""
        self._enricher.enrich(flows)

    def enrich_batch(self, batch) -> None:
        """A batch of records (agent/datapath/batch.py): names per identity."""
        self._batch.enrich(batch)

    def ready_info(self) -> dict:
        return {"metadata": self._stats.metadata_source,
                "conntrack": self._conntrack is not None}

    @classmethod
    def from_config(cls, config: MetadataSection, stats: AgentStats,
                    flow_idle_timeout_s: float) -> Enricher:
        """The Enricher for `config.source`. A connection's last record can come an idle
        timeout (the datapath's) after its last packet: conntrack translations of destroyed
        connections are kept at least twice that long."""
        options = {"use_conntrack": config.use_conntrack,
                   "conntrack_grace_s": max(30.0, 2 * flow_idle_timeout_s)}
        if config.source == "none":
            return cls(stats, "none", **options)
        state = ClusterState()
        if config.source == "kubernetes":
            from agent.enrich.k8s.kubesource import KubeSource  # noqa: PLC0415 (kubernetes client)

            return cls(stats, "kubernetes", state,
                       KubeSource(state, stats, kubeconfig=config.kubeconfig,
                                  context=config.context, rbac_wait_s=config.rbac_wait_s),
                       **options)
        return cls(stats, f"file:{config.source}", state,
                   FileSource(config.source, state, stats), **options)
