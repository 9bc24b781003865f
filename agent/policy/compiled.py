"""A set of NetworkPolicies compiled for evaluation, with the caches that are valid for it.

Speed (bench/policy.py): a verdict depends on the identities of both ends, not on their
addresses. A pod's identity is its namespace and labels, its namespace's labels, the ipBlocks
its address falls in and its container ports; a non-pod's, the ipBlocks. Compiling a policy
set numbers every distinct peer, and each identity carries the bitmask of the peers it
matches (`hits`) and the compiled rule set isolating it per direction. A verdict is then a
function of (egress rule set, the destination's hits masked to that set's peers, ingress
rule set, the source's masked hits, port, protocol, container ports where a rule names a
port, relation): a projection of (source identity, destination identity, port, protocol),
so the cache keyed by it gives the same answers as one keyed by identity pairs, with far
fewer entries, because pods of many workloads look alike to a given set of policies.
Directions are cached the same way and shared. Address -> identity entries are checked
when the cluster's generation moves (same PodInfo object and namespace labels: kept), and
all caches are bounded; verdicts are dropped when the policies change.
"""

from __future__ import annotations

import itertools
import socket

from agent.policy.model import EGRESS, INGRESS, IPBlock, NetworkPolicy, Peer, PolicyPort
from agent.policy.verdict import (NOT_APPLICABLE, NOT_ISOLATED, ConnectionVerdict,
                                  DirectionVerdict, Reason, RuleRef, Verdict)
from agent.policy.view import PodInfo

_POD, _OTHER = 1, 2
REL_NONE, REL_SELF, REL_OWN_NODE = 0, 1, 2
# container-ports keys: a non-pod has no ports; a pod's may be unknown; else interned >= 2.
_CPORTS_NONE, _CPORTS_UNKNOWN = 0, 1
# Rule-set ids of a direction where no rule set applies: not a pod, not isolated.
_NA, _NI = -1, -2


class _End:
    """An interned identity: everything a verdict may depend on about one end.

    `hits` is a bitmask over every distinct peer of every policy: the peers this end
    matches. A rule matches a peer when it has no peers or its peer mask meets `hits`."""

    __slots__ = ("id", "kind", "namespace", "labels", "ns_labels", "ipsig", "container_ports",
                 "cports_key", "hits", "ingress_set", "egress_set",
                 "out_id", "out_mask", "out_named", "in_id", "in_mask", "in_named")

    def __init__(self, id_: int, kind: int, ipsig: frozenset, hits: int, namespace: str = "",
                 labels: dict | None = None, ns_labels: dict | None = None,
                 container_ports=None, cports_key: int = _CPORTS_NONE) -> None:
        self.id = id_
        self.kind = kind
        self.ipsig = ipsig
        self.hits = hits
        self.namespace = namespace
        self.labels = labels or {}
        self.ns_labels = ns_labels or {}
        self.container_ports = container_ports
        self.cports_key = cports_key
        self.ingress_set: _RuleSet | None = None
        self.egress_set: _RuleSet | None = None
        self.set_rules(None, None)

    def set_rules(self, ingress: _RuleSet | None, egress: _RuleSet | None) -> None:
        """The rule sets isolating this end, and their flat forms for the hot path: an id
        (or _NA / _NI), the peer mask and whether a rule names a port."""
        self.ingress_set, self.egress_set = ingress, egress
        for direction, rules in (("in", ingress), ("out", egress)):
            if self.kind != _POD:
                flat = (_NA, 0, False)
            elif rules is None:
                flat = (_NI, 0, False)
            else:
                flat = (rules.id, rules.mask, rules.named)
            setattr(self, f"{direction}_id", flat[0])
            setattr(self, f"{direction}_mask", flat[1])
            setattr(self, f"{direction}_named", flat[2])


class _RuleSet:
    """The rules of the policies isolating one kind of pod in one direction, compiled: each
    rule as (peer mask, ports, RuleRef); `mask` is the union of the rules' peer masks, so
    `hits & mask` is all a peer contributes to the verdict."""

    __slots__ = ("id", "refs", "rules", "mask", "named")

    def __init__(self, id_: int, policies: tuple[NetworkPolicy, ...], rules: tuple) -> None:
        self.id = id_
        self.refs = tuple(p.ref for p in policies)
        self.rules = rules
        mask = 0
        for rule_mask, _, _ in rules:
            mask |= rule_mask
        self.mask = mask
        self.named = any(type(p.port) is str for _, ports, _ in rules for p in ports)


class _Block:
    """An ipBlock as integers, for matching many addresses quickly."""

    __slots__ = ("version", "net", "mask", "excepts")

    def __init__(self, block: IPBlock) -> None:
        net = block.network
        self.version = net.version
        self.net = int(net.network_address)
        self.mask = int(net.netmask)
        self.excepts = tuple((int(e.network_address), int(e.netmask))
                             for e in block.except_networks)

    def contains(self, version: int, addr: int) -> bool:
        if version != self.version or addr & self.mask != self.net:
            return False
        for net, mask in self.excepts:
            if addr & mask == net:
                return False
        return True


class Snapshot:
    """One immutable set of policies, compiled, plus the caches that are valid for it.

    Compilation numbers every distinct peer (a podSelector is bound to its policy's
    namespace; selectors and ipBlocks equal in value share a number) and groups them for
    matching: ipBlocks by block, podSelector-only peers by namespace, the others by their
    namespaceSelector, so an end's `hits` costs one selector match per distinct selector
    that can concern it."""

    def __init__(self, policies: tuple[NetworkPolicy, ...], max_cached: int) -> None:
        self.policies = policies
        self.max_cached = max_cached
        by_ns: dict[str, list[NetworkPolicy]] = {}
        for policy in sorted(policies, key=lambda p: p.key):
            by_ns.setdefault(policy.namespace, []).append(policy)
        self.by_namespace = {ns: tuple(pols) for ns, pols in by_ns.items()}
        self.block_index: dict[IPBlock, int] = {}
        blocks: list[_Block] = []
        self.block_bits: list[int] = []
        peer_bits: dict[tuple, int] = {}
        local: dict[str, list[tuple[int, object]]] = {}
        groups: dict[object, list[tuple[int, object]]] = {}

        def bit_of(peer: Peer, policy_ns: str) -> int:
            if peer.ip_block is not None:
                key = ("ip", peer.ip_block)
            elif peer.namespace_selector is None:
                key = ("local", policy_ns, peer.pod_selector)
            else:
                key = ("ns", peer.namespace_selector, peer.pod_selector)
            bit = peer_bits.get(key)
            if bit is not None:
                return bit
            bit = peer_bits[key] = 1 << len(peer_bits)
            if peer.ip_block is not None:
                index = self.block_index.get(peer.ip_block)
                if index is None:
                    index = self.block_index[peer.ip_block] = len(blocks)
                    blocks.append(_Block(peer.ip_block))
                    self.block_bits.append(0)
                self.block_bits[index] |= bit
            elif peer.namespace_selector is None:
                local.setdefault(policy_ns, []).append((bit, peer.pod_selector))
            else:
                groups.setdefault(peer.namespace_selector, []).append((bit, peer.pod_selector))
            return bit

        self.compiled: dict[tuple, tuple] = {}
        for policy in self.policies:
            for direction, rules in ((INGRESS, policy.ingress), (EGRESS, policy.egress)):
                out = []
                for index, rule in enumerate(rules):
                    mask = 0
                    for peer in rule.peers:
                        mask |= bit_of(peer, policy.namespace)
                    out.append((mask, rule.ports, RuleRef(policy.ref, direction, index)))
                self.compiled[(policy.key, direction)] = tuple(out)
        self.blocks = tuple(blocks)
        self.local_peers = {ns: tuple(members) for ns, members in local.items()}
        self.ns_groups = tuple((sel, tuple(members)) for sel, members in groups.items())
        self.rule_sets: dict[tuple, _RuleSet] = {}
        self.cports_keys: dict[tuple, int] = {}
        # Identity numbers are never reused, even across reset(): a number taken before a
        # reset must not name another identity after it.
        self._ids = itertools.count()
        self.reset()

    def reset(self) -> None:
        self.ends: dict[tuple, _End] = {}
        self.verdicts: dict[tuple, ConnectionVerdict] = {}
        self.derived: dict[tuple, object] = {}   # PolicyEvaluator.evaluate_derived's
        self.direction_verdicts: dict[tuple, DirectionVerdict] = {}
        self.ip_ends: dict[str, tuple] = {}

    # -- identities --

    def ipsig(self, ip: str) -> frozenset:
        if not self.blocks:
            return frozenset()
        # inet_pton: a tenth of ipaddress.ip_address's cost, for every new world address.
        try:
            if ":" in ip:
                version, value = 6, int.from_bytes(socket.inet_pton(socket.AF_INET6, ip), "big")
            else:
                version, value = 4, int.from_bytes(socket.inet_pton(socket.AF_INET, ip), "big")
        except OSError:
            return frozenset()
        return frozenset(i for i, b in enumerate(self.blocks) if b.contains(version, value))

    def intern(self, key: tuple, make) -> _End:
        end = self.ends.get(key)
        if end is None:
            if len(self.ends) >= self.max_cached:
                self.reset()   # cached verdicts name identities: drop them together
            end = make(next(self._ids))
            self.ends[key] = end
        return end

    def rule_set(self, policies: list[NetworkPolicy], direction: str) -> _RuleSet | None:
        if not policies:
            return None
        key = (direction,) + tuple(p.key for p in policies)
        found = self.rule_sets.get(key)
        if found is None:
            rules = tuple(r for p in policies for r in self.compiled[(p.key, direction)])
            found = self.rule_sets[key] = _RuleSet(len(self.rule_sets), tuple(policies), rules)
        return found

    def pod_end(self, pod: PodInfo, ipsig: frozenset, ns_labels: dict) -> _End:
        labels = dict(pod.labels)
        key = (_POD, pod.namespace, tuple(sorted(labels.items())), tuple(sorted(ns_labels.items())),
               ipsig, pod.container_ports)

        def make(id_: int) -> _End:
            hits = 0
            for index in ipsig:
                hits |= self.block_bits[index]
            for bit, selector in self.local_peers.get(pod.namespace, ()):
                if selector is None or selector.matches(labels):
                    hits |= bit
            for ns_selector, members in self.ns_groups:
                if ns_selector.matches(ns_labels):
                    for bit, selector in members:
                        if selector is None or selector.matches(labels):
                            hits |= bit
            ports = pod.container_ports
            if ports is None:
                cports_key = _CPORTS_UNKNOWN
            else:
                cports_key = self.cports_keys.setdefault(ports, len(self.cports_keys) + 2)
            end = _End(id_, _POD, ipsig, hits, pod.namespace, labels, ns_labels, ports, cports_key)
            ingress, egress = [], []
            for policy in self.by_namespace.get(pod.namespace, ()):
                if policy.pod_selector.matches(labels):
                    if policy.affects_ingress:
                        ingress.append(policy)
                    if policy.affects_egress:
                        egress.append(policy)
            end.set_rules(self.rule_set(ingress, INGRESS), self.rule_set(egress, EGRESS))
            return end
        return self.intern(key, make)

    def other_end(self, ipsig: frozenset) -> _End:
        def make(id_: int) -> _End:
            hits = 0
            for index in ipsig:
                hits |= self.block_bits[index]
            return _End(id_, _OTHER, ipsig, hits)
        return self.intern((_OTHER, ipsig), make)

    # -- matching --

    @staticmethod
    def port_matches(ports: tuple[PolicyPort, ...], port: int, protocol: str, dst: _End,
                     unresolved: list[str]) -> bool:
        """NetworkPolicyPort semantics: no ports = all; protocol must match; no port = every
        port of it; port..endPort inclusive; a named port is resolved on the destination
        pod's container ports (name, number and protocol)."""
        if not ports:
            return True
        for p in ports:
            if p.protocol != protocol:
                continue
            want = p.port
            if want is None:
                return True
            if type(want) is int:
                if port == want or (p.end_port is not None and want <= port <= p.end_port):
                    return True
                continue
            if dst.kind != _POD:
                continue   # named ports exist only on pods
            if dst.container_ports is None:
                unresolved.append(want)
                continue
            for cp in dst.container_ports:
                if cp.name == want and cp.port == port and cp.protocol == protocol:
                    return True
        return False

    def direction(self, key: tuple, rules: _RuleSet, hits: int, dst: _End, port: int,
                  protocol: str, rel: int) -> DirectionVerdict:
        """The verdict at a pod isolated by `rules` for a connection whose peer matches the
        peers `hits` (already masked with rules.mask), computed and cached under `key`."""
        allowing: list[RuleRef] = []
        unresolved: list[str] = []
        for rule_mask, ports, ref in rules.rules:
            if rule_mask and not hits & rule_mask:
                continue
            if self.port_matches(ports, port, protocol, dst, unresolved):
                allowing.append(ref)
        if allowing:
            names: list[str] = []
            for ref in allowing:
                if ref.policy not in names:
                    names.append(ref.policy)
            verdict = DirectionVerdict(Verdict.ALLOWED, tuple(names), tuple(allowing), Reason.RULE)
        elif rel == REL_SELF:
            verdict = DirectionVerdict(Verdict.ALLOWED, reason=Reason.SELF)
        elif rel == REL_OWN_NODE:
            verdict = DirectionVerdict(Verdict.ALLOWED, reason=Reason.OWN_NODE)
        else:
            verdict = DirectionVerdict(Verdict.DENIED, rules.refs,
                                       unresolved=tuple(sorted(set(unresolved))))
        if len(self.direction_verdicts) >= self.max_cached:
            self.direction_verdicts.clear()
        self.direction_verdicts[key] = verdict
        return verdict

    def _side(self, rules: _RuleSet | None, kind: int, peer: _End, dst: _End, port: int,
              protocol: str, rel: int) -> DirectionVerdict:
        if kind != _POD:
            return NOT_APPLICABLE
        if rules is None:
            return NOT_ISOLATED
        hits = peer.hits & rules.mask
        key = (rules.id, hits, port, protocol, dst.cports_key if rules.named else -1, rel)
        verdict = self.direction_verdicts.get(key)
        if verdict is None:
            verdict = self.direction(key, rules, hits, dst, port, protocol, rel)
        return verdict

    def judge(self, key: tuple, src: _End, dst: _End, port: int, protocol: str,
              rel: int) -> ConnectionVerdict:
        """Both directions of a connection not in the verdict cache; cached under `key`.
        Direction verdicts are shared between the connection verdicts that contain them."""
        # The own-node exception is for ingress only.
        egress = self._side(src.egress_set, src.kind, dst, dst, port, protocol,
                            REL_SELF if rel == REL_SELF else REL_NONE)
        ingress = self._side(dst.ingress_set, dst.kind, src, dst, port, protocol, rel)
        verdict = ConnectionVerdict(egress, ingress)
        if len(self.verdicts) >= self.max_cached:
            self.verdicts.clear()
        self.verdicts[key] = verdict
        return verdict
