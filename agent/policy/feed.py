"""Keeps an evaluator's NetworkPolicies in step with the Kubernetes cache.

The enrich stage's cache (agent/enrich/k8s/state.py) stores NetworkPolicy objects as the
watch or the metadata file delivers them and tells its listeners of each change before its
generation moves; PolicyFeed is that listener. It parses each object the way the API server
validated it (strict=False: a field added by a newer server must not make podflow drop a
policy the cluster enforces), upserts or deletes it, and on a relist or a reloaded file
replaces the whole set, learning every pod's address before the new set is used (the
evaluating thread never pays for that).

An object podflow cannot read is reported with its name and the field (a warning, once per
version of the object, and in `problems`), left out, and the rest is evaluated.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from agent.errors import PolicyError
from agent.policy.evaluate import PolicyEvaluator
from agent.policy.model import NetworkPolicy
from agent.policy.parse import parse_policy

log = logging.getLogger("podflow.policy")


class PolicyFeed:
    """A ClusterState listener for kind NetworkPolicy (records with namespace, name, key and
    `object()`: agent.enrich.k8s.objects.NetworkPolicyObject)."""

    def __init__(self, evaluator: PolicyEvaluator,
                 addresses: Callable[[], Iterable[str]] = tuple,
                 on_listed: Callable[[], None] = lambda: None) -> None:
        self._evaluator = evaluator
        self._addresses = addresses
        self._on_listed = on_listed
        self.problems: dict[tuple[str, str], str] = {}   # key -> what is wrong, named
        self._reported: dict[tuple[str, str], object] = {}  # key -> record last warned of
        self.events = 0

    def __call__(self, event: str, objs) -> None:
        self.events += 1
        if event == "REPLACED":
            policies = [p for p in map(self._parse, objs) if p is not None]
            keys = {record.key for record in objs}
            for gone in [k for k in self.problems if k not in keys]:
                self._forget(gone)
            # Every pod's address, learnt by the new set before it is swapped in.
            self._evaluator.replace(policies, warm=self._addresses())
            self._on_listed()
            log.info("NetworkPolicies: %d evaluated, %d unreadable", len(policies),
                     len(self.problems))
        elif event == "DELETED":
            self._forget(objs.key)
            self._evaluator.delete(objs.namespace, objs.name)
        else:
            policy = self._parse(objs)
            if policy is None:
                self._evaluator.delete(objs.namespace, objs.name)
            else:
                self._evaluator.upsert(policy)

    def _parse(self, record) -> NetworkPolicy | None:
        try:
            policy = parse_policy(record.object(), strict=False)
        except PolicyError as exc:
            self.problems[record.key] = str(exc)
            if self._reported.get(record.key) != record:
                self._reported[record.key] = record
                log.warning("ignoring a NetworkPolicy podflow cannot read (its verdicts leave "
                            "it out): %s", exc)
            return None
        self._forget(record.key)
        return policy

    def _forget(self, key: tuple[str, str]) -> None:
        self.problems.pop(key, None)
        self._reported.pop(key, None)
