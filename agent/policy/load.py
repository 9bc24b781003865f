"""Many NetworkPolicies at once: YAML or JSON text with `---` documents, Lists,
NetworkPolicyLists, metadata files holding other kinds too. Each bad object becomes a
problem naming it and its field; the rest still load (agent/policy/parse.py reads one)."""

from __future__ import annotations

from dataclasses import dataclass

import yaml

from agent.errors import PolicyError
from agent.policy.model import KIND, NetworkPolicy
from agent.policy.parse import parse_policy

@dataclass(frozen=True, slots=True)
class LoadResult:
    """The good policies (in input order) and one PolicyError per bad object."""

    policies: tuple[NetworkPolicy, ...]
    problems: tuple[PolicyError, ...]
    skipped: int = 0    # objects of other kinds (Pods, Services ... in a metadata file)


def _documents(source) -> list[tuple[str, object]]:
    """(where, document) pairs from YAML/JSON text, a dict or a list of dicts."""
    if isinstance(source, (str, bytes)):
        text = source.decode("utf-8") if isinstance(source, bytes) else source
        docs = []
        loader = yaml.safe_load_all(text)
        index = 0
        while True:
            try:
                doc = next(loader)
            except StopIteration:
                break
            except yaml.YAMLError as exc:
                raise PolicyError(f"document {index + 1}", "", f"is not valid YAML: {exc}") from exc
            index += 1
            if doc is not None:
                docs.append((f"document {index}", doc))
        return docs
    if isinstance(source, dict):
        return [("document 1", source)]
    return [(f"item {i}", doc) for i, doc in enumerate(source)]


def _walk(where: str, doc, out: list) -> None:
    if isinstance(doc, list):
        for index, item in enumerate(doc):
            _walk(f"{where}[{index}]", item, out)
        return
    if isinstance(doc, dict) and isinstance(doc.get("items"), list) \
            and str(doc.get("kind", "List")).endswith("List"):
        typed = doc.get("kind") == "NetworkPolicyList"
        for index, item in enumerate(doc["items"]):
            if typed and isinstance(item, dict) and "kind" not in item:
                item = dict(item, kind=KIND)   # a typed list may omit each item's kind
            _walk(f"{where}.items[{index}]", item, out)
        return
    out.append((where, doc))


def load_policies(source, default_namespace: str = "default", strict: bool = True) -> LoadResult:
    """Every NetworkPolicy in `source`: YAML or JSON text (one or many `---` documents), a
    dict (one object, a List, a NetworkPolicyList) or a list of them. Objects of other kinds
    are skipped (a `kubectl get pods,...,networkpolicies -o json` file holds many); each bad
    NetworkPolicy becomes a problem and the rest still load. Text that is not YAML at all
    raises PolicyError."""
    flat: list[tuple[str, object]] = []
    for where, doc in _documents(source):
        _walk(where, doc, flat)
    policies, problems, skipped = [], [], 0
    seen: dict[tuple[str, str], int] = {}
    for where, doc in flat:
        if isinstance(doc, dict) and doc.get("kind", KIND) != KIND:
            skipped += 1
            continue
        try:
            policy = parse_policy(doc, default_namespace=default_namespace, where=where,
                                  strict=strict)
        except PolicyError as exc:
            problems.append(exc)
            continue
        if policy.key in seen:   # the later object wins, as a second `kubectl apply` would
            policies[seen[policy.key]] = policy
            continue
        seen[policy.key] = len(policies)
        policies.append(policy)
    return LoadResult(policies=tuple(policies), problems=tuple(problems), skipped=skipped)


def load_policy_file(path: str, default_namespace: str = "default",
                     strict: bool = True) -> LoadResult:
    """load_policies on a file; an unreadable file raises PolicyError naming it. `strict`
    False for objects a cluster stored (a `kubectl get -o json` file)."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise PolicyError(path, "", f"cannot read: {exc.strerror}") from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PolicyError(path, "", f"not UTF-8 text: {exc}") from exc
    try:
        return load_policies(text, default_namespace=default_namespace, strict=strict)
    except PolicyError as exc:
        raise PolicyError(f"{path}: {exc.obj}", exc.path, exc.message) from exc
