"""Least-privilege NetworkPolicies per workload, from observed connections.

One policy per workload (Deployment, StatefulSet, DaemonSet, CronJob, bare pod ...) seen on
the pod network, isolating it for Ingress and Egress and allowing exactly the peers and
ports it was seen using:

- The policy selects the workload by the labels all of its pods share, minus labels that
  change with every rollout or pod (pod-template-hash, controller-revision-hash,
  statefulset.kubernetes.io/pod-name ...: UNSTABLE_LABEL_KEYS).
- A pod peer is named the same way; a peer in another namespace adds a namespaceSelector on
  kubernetes.io/metadata.name (one peer: namespace AND pods).
- A connection through a Service allows the Service's backends (the labels they share) on
  the target port: policy is enforced after DNAT, on the backend and its port.
- DNS: a workload seen resolving names gets egress to what answered on port 53 (kube-dns,
  through its Service) for both UDP and TCP 53 (TCP carries truncated answers); without a
  recorded port-53 connection, to kube-system pods labelled k8s-app=kube-dns.
- Anything that is not a pod (the world, nodes, host-network pods) is an ipBlock of its one
  address (/32 or /128), commented with the DNS names it was looked up as.
- Ingress from the pod's own node needs no rule (always allowed), so none is written.
- Protocols without ports (ICMP) can only be allowed by a rule without ports, which allows
  every port of that peer; such rules say so in a comment.

Output: YAML documents for `kubectl apply -f`, in a deterministic order (namespace, name;
rules by peer; ports by protocol and number), each rule commented with what it was seen
allowing. The advice is checked against the facts it came from: applied through what-if it
denies none of them (tests/policy/test_roundtrip.py).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

from agent.policy.facts import NODE, POD, ConnectionFact, Endpoint, host_prefix
from agent.policy.model import (EGRESS, INGRESS, NAMESPACE_NAME_LABEL, NetworkPolicy, Peer,
                                PolicyPort, Rule, ip_block)
from agent.policy.selectors import LabelSelector, selector_from_labels
from agent.policy.yamlout import Commented, dump_all

# Labels that differ between pods of one workload or between its rollouts.
UNSTABLE_LABEL_KEYS = frozenset((
    "pod-template-hash",                          # Deployment -> ReplicaSet
    "controller-revision-hash",                   # StatefulSet, DaemonSet revisions
    "pod-template-generation",                    # DaemonSet (legacy)
    "statefulset.kubernetes.io/pod-name",         # one pod of a StatefulSet
    "apps.kubernetes.io/pod-index",               # StatefulSet ordinal
    "controller-uid", "batch.kubernetes.io/controller-uid",   # one Job run
    "job-name", "batch.kubernetes.io/job-name",   # one Job run (a CronJob's runs differ)
    "batch.kubernetes.io/job-completion-index",
    "helm.sh/chart", "app.kubernetes.io/version",  # change on every upgrade
))
DNS_PORT = 53
KUBE_DNS_PEER = Peer(namespace_selector=selector_from_labels({NAMESPACE_NAME_LABEL: "kube-system"}),
                     pod_selector=selector_from_labels({"k8s-app": "kube-dns"}))
_WITH_PORTS = ("TCP", "UDP", "SCTP")


def stable_labels(labels: Iterable[tuple[str, str]]) -> dict[str, str]:
    return {k: v for k, v in labels if k not in UNSTABLE_LABEL_KEYS}


def shared_labels(ends: Iterable[Endpoint]) -> dict[str, str]:
    """The stable labels every one of `ends` carries with the same value."""
    common: dict[str, str] | None = None
    for end in ends:
        labels = stable_labels(end.labels)
        if common is None:
            common = labels
        else:
            common = {k: v for k, v in common.items() if labels.get(k) == v}
    return common or {}


def policy_name(kind: str, name: str) -> str:
    """podflow-<kind>-<name>, a valid object name (DNS subdomain, <= 253)."""
    return f"podflow-{kind.lower()}-{name}"[:253].rstrip("-.")


@dataclass(frozen=True, slots=True)
class AdvisedRule:
    direction: str
    peer: Peer
    ports: tuple[PolicyPort, ...]
    facts: tuple[ConnectionFact, ...]    # what this rule was seen allowing
    comment: str                         # on the peer (the names an ipBlock stands for ...)


@dataclass(frozen=True, slots=True)
class Advice:
    policies: tuple[NetworkPolicy, ...]
    rules: dict                           # (policy key, direction, index) -> AdvisedRule
    notes: tuple[str, ...]                # workloads left out and why
    facts: int                            # connection shapes read

    def yaml(self) -> str:
        """Every policy as YAML documents for `kubectl apply -f -`."""
        docs = []
        for policy in self.policies:
            manifest = policy.to_manifest()
            manifest["metadata"]["labels"] = {"app.kubernetes.io/managed-by": "podflow"}
            seen = 0
            for direction, key in ((INGRESS, "ingress"), (EGRESS, "egress")):
                rules = manifest["spec"].get(key, [])
                for index, rule in enumerate(rules):
                    advised: AdvisedRule = self.rules[(policy.key, direction, index)]
                    seen += sum(f.count for f in advised.facts)
                    peers_key = "from" if direction == INGRESS else "to"
                    if advised.comment and peers_key in rule:
                        peer = rule[peers_key][0]
                        if "ipBlock" in peer:
                            block = peer["ipBlock"]
                            block["cidr"] = Commented(block["cidr"], advised.comment)
                        else:
                            rule[peers_key][0] = Commented(peer, advised.comment)
                    rules[index] = Commented(rule, _rule_comment(advised))
            docs.append((manifest, f"{policy.ref}: least privilege for what was seen "
                                   f"({seen} connection{'' if seen == 1 else 's'})"))
        header = ["podflow policy advise: least-privilege NetworkPolicies from "
                  f"{self.facts} observed connection shapes.",
                  "Review before applying: traffic that was not seen will be denied."]
        header += [f"not covered: {note}" for note in self.notes]
        return dump_all(docs, "\n".join(header))


def _rule_comment(rule: AdvisedRule) -> str:
    if not rule.facts:
        return "not seen itself: names were resolved, so DNS must work"
    count = sum(f.count for f in rule.facts)
    last = max((f.last_seen_s for f in rule.facts), default=0.0)
    text = f"seen: {count} connection{'s' if count != 1 else ''}"
    if last:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(last))
        text += f", last {stamp}"
    if any(f.protocol not in _WITH_PORTS for f in rule.facts):
        text += "; all ports: ICMP can only be allowed by a rule without ports"
    return text


def _is_dns(fact: ConnectionFact) -> bool:
    return fact.dst_port == DNS_PORT and fact.protocol in ("UDP", "TCP")


class _Builder:
    def __init__(self, facts: list[ConnectionFact], namespace: str | None) -> None:
        self.facts = facts
        self.namespace = namespace
        self.notes: list[str] = []
        # Every pod end of a workload, to find the labels its pods share.
        self.pods: dict[tuple, list[Endpoint]] = {}
        for fact in facts:
            ends = [fact.src, fact.dst] + list(fact.service.backends if fact.service else ())
            for end in ends:
                if end.is_pod:
                    self.pods.setdefault(end.workload_key, []).append(end)
        self.selectors = {key: shared_labels(ends) for key, ends in self.pods.items()}

    def pod_peer(self, end: Endpoint, policy_ns: str, backends: tuple[Endpoint, ...] = ()
                 ) -> tuple[Peer, str]:
        if backends:
            labels = shared_labels(backends)
            namespace = backends[0].namespace
        else:
            labels = self.selectors.get(end.workload_key, {})
            namespace = end.namespace
        comment = ""
        if not labels:
            comment = (f"{end.display()} has no stable labels: every pod of namespace "
                       f"{namespace}")
        pod_selector = selector_from_labels(labels)
        if namespace == policy_ns:
            return Peer(pod_selector=pod_selector), comment
        return Peer(namespace_selector=selector_from_labels({NAMESPACE_NAME_LABEL: namespace}),
                    pod_selector=pod_selector), comment

    @staticmethod
    def ip_peer(end: Endpoint) -> tuple[Peer, str]:
        if end.kind == NODE or (end.kind == POD and end.host_network):
            what = f"node {end.node}" if end.node else "a node"
            if end.kind == POD:
                what += f" (host-network pod {end.namespace}/{end.pod})"
        elif end.names:
            what = ", ".join(sorted(set(end.names)))
        else:
            what = "no DNS name seen"
        return Peer(ip_block=ip_block(host_prefix(end.ip))), what

    def peer_for(self, other: Endpoint, policy_ns: str, fact: ConnectionFact, egress: bool
                 ) -> tuple[Peer, str]:
        if egress and fact.service is not None and other.is_pod:
            backends = tuple(b for b in fact.service.backends if b.is_pod) or (other,)
            peer, comment = self.pod_peer(other, policy_ns, backends)
            return peer, comment or f"Service {fact.service.ref}"
        if other.is_pod:
            return self.pod_peer(other, policy_ns)
        return self.ip_peer(other)

    def build(self) -> Advice:
        # workload -> direction -> peer -> (ports, facts, comment)
        plans: dict[tuple, dict[str, dict[Peer, list]]] = {}
        dns_users: set[tuple] = set()
        for fact in self.facts:
            for direction, subject, other in ((EGRESS, fact.src, fact.dst),
                                              (INGRESS, fact.dst, fact.src)):
                if not subject.is_pod:
                    continue
                if self.namespace is not None and subject.namespace != self.namespace:
                    continue
                wkey = subject.workload_key
                if not self.selectors.get(wkey):
                    continue
                if direction == INGRESS and other.kind == NODE and other.node \
                        and other.node == subject.node:
                    continue   # ingress from the pod's own node is always allowed
                if direction == INGRESS and other.kind == POD and other.host_network \
                        and other.node == subject.node:
                    continue
                if direction == EGRESS and (fact.dst.names or _is_dns(fact)):
                    dns_users.add(wkey)
                peer, comment = self.peer_for(other, subject.namespace, fact, direction == EGRESS)
                slot = plans.setdefault(wkey, {INGRESS: {}, EGRESS: {}})[direction].setdefault(
                    peer, [set(), [], comment])
                slot[1].append(fact)
                if fact.protocol not in _WITH_PORTS:
                    slot[0].add(None)          # no ports: the whole rule allows everything
                elif _is_dns(fact):
                    slot[0].update({PolicyPort("UDP", fact.dst_port),
                                    PolicyPort("TCP", fact.dst_port)})
                else:
                    slot[0].add(PolicyPort(fact.protocol, fact.dst_port))
        for wkey, ends in sorted(self.pods.items()):
            if self.namespace is not None and wkey[0] != self.namespace:
                continue
            if not self.selectors.get(wkey):
                self.notes.append(f"{wkey[0]}/{wkey[2]} ({wkey[1]}): its pods share no stable "
                                  "label to select them by")
        # DNS seen (names on world peers) but no port-53 connection recorded: kube-dns.
        for wkey in sorted(dns_users):
            egress = plans.setdefault(wkey, {INGRESS: {}, EGRESS: {}})[EGRESS]
            if not any(any(p is not None and p.port == DNS_PORT for p in slot[0])
                       for slot in egress.values()):
                egress[KUBE_DNS_PEER] = [{PolicyPort("UDP", DNS_PORT), PolicyPort("TCP", DNS_PORT)},
                                         [], "kube-dns (names were resolved)"]

        policies: list[NetworkPolicy] = []
        rules: dict = {}
        for wkey in sorted(plans):
            namespace, kind, name = wkey
            policy = NetworkPolicy(namespace=namespace, name=policy_name(kind, name),
                                   pod_selector=selector_from_labels(self.selectors[wkey]),
                                   policy_types=(INGRESS, EGRESS))
            built: dict[str, tuple[Rule, ...]] = {}
            for direction in (INGRESS, EGRESS):
                entries = sorted(plans[wkey][direction].items(), key=lambda kv: _peer_order(kv[0]))
                out = []
                for index, (peer, (ports, facts, comment)) in enumerate(entries):
                    port_list = () if None in ports else tuple(sorted(ports, key=_port_order))
                    out.append(Rule(peers=(peer,), ports=port_list))
                    rules[(policy.key, direction, index)] = AdvisedRule(
                        direction, peer, port_list, tuple(facts), comment)
                built[direction] = tuple(out)
            policies.append(NetworkPolicy(namespace=policy.namespace, name=policy.name,
                                          pod_selector=policy.pod_selector,
                                          policy_types=(INGRESS, EGRESS),
                                          ingress=built[INGRESS], egress=built[EGRESS]))
        policies.sort(key=lambda p: p.key)
        return Advice(policies=tuple(policies), rules=rules, notes=tuple(self.notes),
                      facts=len(self.facts))


def _selector_order(sel: LabelSelector | None) -> tuple:
    return (0, ()) if sel is None else (1, sel.match_labels)


def _peer_order(peer: Peer) -> tuple:
    """Pods of the policy's namespace, then other namespaces, then addresses."""
    if peer.ip_block is not None:
        net = peer.ip_block.network
        return (2, net.version, int(net.network_address), net.prefixlen)
    return (0 if peer.namespace_selector is None else 1,
            _selector_order(peer.namespace_selector), _selector_order(peer.pod_selector))


def _port_order(port: PolicyPort) -> tuple:
    return (port.protocol, port.port if isinstance(port.port, int) else -1, str(port.port))


def advise(facts: Iterable[ConnectionFact], namespace: str | None = None) -> Advice:
    """Least-privilege policies for every workload seen (in `namespace` only, if given)."""
    return _Builder(list(facts), namespace).build()
