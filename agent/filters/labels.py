"""Label selectors in kubectl's syntax (`app=cart,tier!=db`, `app in (a,b)`, `!canary`), the
values of the `label` filter word (agent.filters.vocabulary), as predicates on a pod's labels."""

from __future__ import annotations

import re
from collections.abc import Callable

from agent.errors import FilterError

# a=b, a==b, a!=b, a in (x,y), a notin (x,y), a, !a
_LABEL_KEY = r"[A-Za-z0-9]([-A-Za-z0-9_./]*[A-Za-z0-9])?"
_SEL_SET = re.compile(rf"^\s*(?P<key>{_LABEL_KEY})\s+(?P<op>in|notin)\s*\((?P<vals>[^)]*)\)\s*$")
_SEL_CMP = re.compile(rf"^\s*(?P<key>{_LABEL_KEY})\s*(?P<op>==|=|!=)\s*(?P<val>[^=!,()\s]*)\s*$")
_SEL_EXISTS = re.compile(rf"^\s*(?P<neg>!?)\s*(?P<key>{_LABEL_KEY})\s*$")


def _split_selector(selector: str) -> list[str]:
    """Split on commas outside parentheses."""
    parts, depth, cur = [], 0, []
    for ch in selector:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return parts


def parse_label_selector(selector: str, path: str = "label") -> Callable[[dict], bool]:
    """A kubectl-style label selector as a predicate on a {key: value} dict."""
    reqs: list[Callable[[dict], bool]] = []
    if not selector.strip():
        raise FilterError(f"{path}: empty label selector")
    for part in _split_selector(selector):
        if m := _SEL_SET.match(part):
            key, op = m["key"], m["op"]
            vals = frozenset(x.strip() for x in m["vals"].split(",") if x.strip())
            if not vals:
                raise FilterError(f"{path}: {part.strip()!r} has an empty value set")
            if op == "in":
                reqs.append(lambda labels, k=key, vs=vals: labels.get(k) in vs)
            else:
                reqs.append(lambda labels, k=key, vs=vals: labels.get(k) not in vs)
        elif m := _SEL_CMP.match(part):
            key, op, val = m["key"], m["op"], m["val"]
            if op == "!=":
                reqs.append(lambda labels, k=key, v=val: labels.get(k) != v)
            else:
                reqs.append(lambda labels, k=key, v=val: labels.get(k) == v)
        elif m := _SEL_EXISTS.match(part):
            key = m["key"]
            if m["neg"]:
                reqs.append(lambda labels, k=key: k not in labels)
            else:
                reqs.append(lambda labels, k=key: k in labels)
        else:
            raise FilterError(f"{path}: cannot parse {part.strip()!r} in label selector "
                              f"{selector!r}")
    return lambda labels: all(r(labels) for r in reqs)
