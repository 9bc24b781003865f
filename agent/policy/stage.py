"""The policy stage of `podflow agent`: a NetworkPolicy verdict on every record.

It owns the evaluator (agent/policy/evaluate.py) over the enrich stage's Kubernetes cache,
keeps it in step with the cache's NetworkPolicy objects (agent/policy/feed.py), and hands
enrichment the judge it calls for each new connection (agent/policy/judge.py): the verdict
is computed where enrichment already holds the connection's orientation, its backend after
DNAT and its per-5-tuple cache, so it costs little (bench/enrich.py, with 500 policies).
Nothing runs on its own: starting subscribes to the cache (the policies listed so far are
replayed at once and every pod's address learnt), stopping lets go.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from agent.enrich.k8s.state import ClusterState
from agent.policy.cluster import ClusterStatePolicyView
from agent.policy.evaluate import PolicyEvaluator
from agent.policy.feed import PolicyFeed
from agent.policy.judge import RecordJudge, derive
from agent.stage import Stage
from agent.stats import AgentStats

if TYPE_CHECKING:
    from agent.config import PolicySection

log = logging.getLogger("podflow.policy")

KIND = "NetworkPolicy"


class PolicyStage(Stage):
    """`judge` is what the enrich stage calls (Enricher.use_judge)."""

    def __init__(self, state: ClusterState, stats: AgentStats, max_cached: int = 65536) -> None:
        self._state = state
        self._stats = stats
        self.evaluator = PolicyEvaluator(ClusterStatePolicyView(state), max_cached=max_cached,
                                         derive=derive)
        self.judge = RecordJudge(self.evaluator)
        self.feed = PolicyFeed(self.evaluator, addresses=lambda: list(state.pod_by_ip),
                               on_listed=self._listed)
        self._subscribed = False

    def start(self) -> None:
        if not self._subscribed:
            self._state.subscribe(KIND, self.feed)
            self._subscribed = True
        if not self._state.listed(KIND):
            log.info("NetworkPolicies not listed yet: records carry no policy verdict until "
                     "they are")

    def _listed(self) -> None:
        """The NetworkPolicies are known (listed once): records get verdicts from now on."""
        self.judge.known = True

    def stop(self) -> None:
        """Nothing to release: the cache stops with the enrich stage."""

    def ready_info(self) -> dict:
        return {"policies": len(self.evaluator.policies),
                "policy_problems": sorted(self.feed.problems.values())}

    @classmethod
    def from_config(cls, config: PolicySection, state: ClusterState | None,
                    stats: AgentStats) -> PolicyStage | None:
        """The stage, or None when policy is off or there is no metadata (--metadata none:
        nothing to know pods or policies by)."""
        if not config.enabled or state is None:
            return None
        return cls(state, stats, max_cached=config.max_cached)
