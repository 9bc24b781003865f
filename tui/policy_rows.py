"""The Policies view's rows, from the aggregator's totals per flow key: for each
NetworkPolicy the connections its rules allowed, the connections it denied and what became
of them (dropped: enforced; delivered: the CNI does NOT enforce it), connections it allowed
that something else dropped, and, when the TUI knows the cluster's policies
(agent.client.policy.PolicyCatalog), the rules no connection used and the policies no
connection touched. Plain Python; counts are flows, each counted once (agent.wire.counting)."""

from __future__ import annotations

from collections.abc import Iterable

from tui.filterexpr import FlowFilter
from tui.flowkey import FlowKey
from tui.records import PolicyRow


def policy_rows(totals: Iterable[tuple[FlowKey, list[int]]], flt: FlowFilter,
                catalog=None) -> list[PolicyRow]:
    """Rows sorted with the policies the CNI does not enforce first, then by traffic.
    `totals`: (key, [packets, bytes, flows]) pairs; `catalog`: a PolicyCatalog or None."""
    rows: dict[str, PolicyRow] = {}
    used: dict[str, set[str]] = {}

    def row(name: str) -> PolicyRow:
        found = rows.get(name)
        if found is None:
            found = rows[name] = PolicyRow(name)
        return found

    for key, counts in totals:
        if not key.policies or not flt(key):
            continue
        flows = counts[2]
        denying = key.policies_denying
        finding = key.policy_finding
        for name in key.policies:
            r = row(name)
            if name in denying:
                r.denied += flows
                if finding == "enforced":
                    r.denied_dropped += flows
                elif finding == "not-enforced":
                    r.denied_delivered += flows
            else:
                r.allowed += flows
                if finding == "dropped-otherwise":
                    r.allowed_dropped += flows
        for rule in key.policy_rules:
            used.setdefault(rule.partition(" ")[0], set()).add(rule)
    if catalog is not None and not catalog.error:
        for name, rules in catalog.rules.items():
            r = row(name)
            seen = used.get(name, set())
            r.rules = len(rules)
            r.unused_rules = [rule.partition(" ")[2] for rule in rules if rule not in seen]
    return sorted(rows.values(), key=lambda r: (-r.denied_delivered, -(r.allowed + r.denied),
                                                r.name))
