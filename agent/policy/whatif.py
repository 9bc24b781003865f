"""What would change if these policies were applied? Current policies plus candidates
(added, or replacing the current policy of the same namespace/name), evaluated against
recorded connections: which would newly be denied, which newly allowed, how many
connections of each and when the last one was seen.

Each recorded connection is judged with the identities recorded with it (a pod's labels,
namespace, node at the time), falling back to the live cluster only for what the record
does not say (namespace labels, container ports for named ports).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

from agent.errors import PolicyError
from agent.policy.evaluate import PolicyEvaluator
from agent.policy.facts import ConnectionFact, cluster_of_facts, merge_facts
from agent.policy.model import NetworkPolicy
from agent.policy.verdict import ConnectionVerdict, Verdict
from agent.policy.view import LayeredCluster, PolicyCluster


@dataclass(frozen=True, slots=True)
class Change:
    """Connections of one shape whose verdict would change."""

    fact: ConnectionFact             # the shape (merged; count and last_seen_s are totals)
    before: ConnectionVerdict
    after: ConnectionVerdict

    @property
    def count(self) -> int:
        return self.fact.count

    @property
    def last_seen_s(self) -> float:
        return self.fact.last_seen_s

    def describe(self) -> str:
        f = self.fact
        port = f"{f.protocol}/{f.dst_port}" if f.dst_port else f.protocol
        via = f" via Service {f.service.ref}" if f.service is not None else ""
        if self.after.denied:
            sides = []
            for name, side in (("egress", self.after.egress), ("ingress", self.after.ingress)):
                if side.verdict == Verdict.DENIED:
                    sides.append(f"{name} denied by {', '.join(side.policies)}")
            why = "; ".join(sides)
        else:
            why = "allowed by " + (", ".join(str(r) for r in self.after.allowing_rules)
                                   or "isolation lifted")
        last = (time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(f.last_seen_s))
                if f.last_seen_s else "unknown")
        return (f"{f.src.display()} -> {f.dst.display()} {port}{via}: {f.count} connection"
                f"{'s' if f.count != 1 else ''}, last seen {last}; {why}")


@dataclass(frozen=True, slots=True)
class WhatIfResult:
    newly_denied: tuple[Change, ...]
    newly_allowed: tuple[Change, ...]
    evaluated: int                    # connection shapes judged
    added: tuple[str, ...]            # candidate policies that are new
    replaced: tuple[str, ...]         # candidate policies that replace a current one
    problems: tuple[PolicyError, ...] = ()   # candidates that could not be read

    @property
    def any_newly_denied(self) -> bool:
        return bool(self.newly_denied)

    @property
    def exit_status(self) -> int:
        """`podflow policy what-if`: 1 when any recorded connection would be denied."""
        return 1 if self.newly_denied else 0

    def report(self) -> str:
        lines = [f"what-if: {len(self.added)} policies added, {len(self.replaced)} replaced; "
                 f"{self.evaluated} recorded connection shapes evaluated"]
        for problem in self.problems:
            lines.append(f"ERROR: {problem}")
        for title, changes in (("newly DENIED", self.newly_denied),
                               ("newly allowed", self.newly_allowed)):
            total = sum(c.count for c in changes)
            lines.append(f"{title}: {len(changes)} shapes, {total} connections")
            lines.extend(f"  {c.describe()}" for c in changes)
        return "\n".join(lines) + "\n"


def merged_policies(current: Iterable[NetworkPolicy], candidates: Iterable[NetworkPolicy]
                    ) -> tuple[list[NetworkPolicy], list[str], list[str]]:
    """(current with candidates applied, refs added, refs replaced)."""
    merged = {p.key: p for p in current}
    added, replaced = [], []
    for policy in candidates:
        (replaced if policy.key in merged else added).append(policy.ref)
        merged[policy.key] = policy
    return list(merged.values()), added, replaced


def _order(change: Change) -> tuple:
    f = change.fact
    return (-f.count, f.src.display(), f.dst.display(), f.protocol, f.dst_port, f.src.ip, f.dst.ip)


def what_if(current: Iterable[NetworkPolicy], candidates: Iterable[NetworkPolicy],
            facts: Iterable[ConnectionFact], cluster: PolicyCluster | None = None,
            problems: Iterable[PolicyError] = ()) -> WhatIfResult:
    """Judge `facts` under the current policies and under current + candidates."""
    current = list(current)
    facts = merge_facts(facts)
    view = LayeredCluster(cluster_of_facts(facts), cluster)
    merged, added, replaced = merged_policies(current, candidates)
    before_eval = PolicyEvaluator(view, current)
    after_eval = PolicyEvaluator(view, merged)
    denied, allowed = [], []
    for fact in facts:
        conn = fact.connection
        before = before_eval.evaluate_connection(conn)
        after = after_eval.evaluate_connection(conn)
        if after.denied and not before.denied:
            denied.append(Change(fact, before, after))
        elif before.denied and not after.denied:
            allowed.append(Change(fact, before, after))
    denied.sort(key=_order)
    allowed.sort(key=_order)
    return WhatIfResult(newly_denied=tuple(denied), newly_allowed=tuple(allowed),
                        evaluated=len(facts), added=tuple(added), replaced=tuple(replaced),
                        problems=tuple(problems))
