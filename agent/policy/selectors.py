"""Kubernetes label selectors (apimachinery LabelSelector), as NetworkPolicy uses them for
pods and namespaces: matchLabels AND every matchExpressions requirement; the empty selector
selects everything. Parsed from JSON in agent/policy/parse.py."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

IN, NOT_IN, EXISTS, DOES_NOT_EXIST = "In", "NotIn", "Exists", "DoesNotExist"
OPERATORS = (IN, NOT_IN, EXISTS, DOES_NOT_EXIST)


@dataclass(frozen=True, slots=True)
class Requirement:
    """One matchExpressions entry (apimachinery LabelSelectorRequirement)."""

    key: str
    operator: str                  # In, NotIn, Exists, DoesNotExist
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        """apimachinery labels.Requirement.Matches: NotIn and DoesNotExist also match when
        the key is absent."""
        op = self.operator
        if op == IN:
            value = labels.get(self.key)
            return value is not None and value in self.values
        if op == NOT_IN:
            value = labels.get(self.key)
            return value is None or value not in self.values
        if op == EXISTS:
            return self.key in labels
        return self.key not in labels


@dataclass(frozen=True, slots=True)
class LabelSelector:
    """matchLabels AND every matchExpressions requirement; the empty selector selects all."""

    match_labels: tuple[tuple[str, str], ...] = ()   # sorted (key, value)
    match_expressions: tuple[Requirement, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.match_labels and not self.match_expressions

    def matches(self, labels: Mapping[str, str]) -> bool:
        for key, value in self.match_labels:
            if labels.get(key) != value:
                return False
        for req in self.match_expressions:
            if not req.matches(labels):
                return False
        return True

    def to_manifest(self) -> dict:
        out: dict = {}
        if self.match_labels:
            out["matchLabels"] = dict(self.match_labels)
        if self.match_expressions:
            exprs = []
            for req in self.match_expressions:
                entry: dict = {"key": req.key, "operator": req.operator}
                if req.operator in (IN, NOT_IN):
                    entry["values"] = sorted(req.values)
                exprs.append(entry)
            out["matchExpressions"] = exprs
        return out


SELECT_ALL = LabelSelector()


def selector_from_labels(labels: Mapping[str, str]) -> LabelSelector:
    """A selector matching exactly these label pairs (what advise writes)."""
    return LabelSelector(match_labels=tuple(sorted(labels.items())))
