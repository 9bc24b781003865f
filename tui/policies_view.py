"""PoliciesView: each NetworkPolicy, the connections it allows and denies, what became of the
denied ones (dropped: enforced; delivered: the CNI does NOT enforce the policy), connections
it allowed that something else dropped, and its rules nothing used. Policies the CNI does not
enforce come first, marked."""

from __future__ import annotations

from rich.style import Style

from tui.snapshot import Snapshot
from tui.table_view import TableView

NOT_ENFORCED = Style(bold=True, color="red")


class PoliciesView(TableView):
    NAME = "policies"
    COLUMNS = ("policy", "allowed", "denied", "denied+dropped", "denied+delivered",
               "allowed+dropped", "enforcement", "unused rules")
    HEADER = "Policies: the connections each NetworkPolicy allows and denies"

    def rows_of(self, snapshot: Snapshot):
        rows, styles = [], []
        unenforced = 0
        for p in snapshot.policies:
            if p.not_enforced:
                unenforced += 1
                enforcement = "NOT ENFORCED"
            elif p.denied_dropped:
                enforcement = "enforced"
            else:
                enforcement = "-"
            if p.unused_rules is None:
                unused = "?"
            elif p.rules == 0:
                unused = "no rules (denies all)"
            else:
                unused = (f"{len(p.unused_rules)} of {p.rules}: {', '.join(p.unused_rules)}"
                          if p.unused_rules else f"0 of {p.rules}")
            rows.append((p.name, f"{p.allowed:,}", f"{p.denied:,}", f"{p.denied_dropped:,}",
                         f"{p.denied_delivered:,}", f"{p.allowed_dropped:,}", enforcement,
                         unused))
            styles.append(NOT_ENFORCED if p.not_enforced else None)
        header = (f"Policies: {len(rows)} · connections each allows and denies · "
                  f"{unenforced} NOT ENFORCED (denied, yet delivered)")
        if snapshot.policy_error:
            header += f" · rules unknown: {snapshot.policy_error}"
        elif not snapshot.policy_source:
            header += " · rules: start with --metadata to list unused ones"
        return header, rows, styles
