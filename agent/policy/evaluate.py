"""The NetworkPolicy evaluator: for a connection, the egress verdict at the source pod and
the ingress verdict at the destination pod, with the policies and rules behind each.

Semantics (Kubernetes concepts page "Network Policies" and the NetworkPolicy API reference;
each rule below is cited where it is implemented):

- Isolation is per pod and per direction: a pod is isolated for egress (ingress) when at
  least one policy in its namespace selects it (spec.podSelector) and lists Egress (Ingress)
  in its effective policyTypes. A pod no policy isolates gets NOT_ISOLATED.
- Policies are additive: an isolated pod allows a connection when at least one rule of any
  policy isolating it in that direction matches (ALLOWED, naming those policies and rules);
  otherwise DENIED, naming every policy that isolates it. Order never matters.
- A connection needs both: egress allowed at the source and ingress allowed at the
  destination ("If either the egress policy on the source, or the ingress policy on the
  destination denies the traffic, the traffic will be denied").
- A rule matches when the peer matches one of its peers (none = any) and the port matches
  one of its ports (none = any port and protocol). Ports are matched on the DESTINATION
  pod's side for both directions: the connection's destination port after DNAT (the
  Service's target port, as enforcement sees it), and named ports resolved on the
  destination pod's container ports (name, number and protocol).
- ipBlock matches any address in the CIDR and outside every `except`, pod IPs included:
  Kubernetes' own conformance tests ("should allow egress access to server in CIDR block",
  "should enforce except clause while egress access to server in CIDR block" in
  test/e2e/network/netpol) allow a pod by its pod IP /32 through ipBlock. (The docs advise
  cluster-external CIDRs because pod IPs are ephemeral, and Cilium deviates: cilium#9209.)
- Selector peers (podSelector, namespaceSelector) match only pods on the pod network. A
  host-network pod and a node are one thing to policy: the node's address (the docs'
  "most common implementation" for hostNetwork pods; NetworkPolicy never applies at them).
- "Traffic to and from the node where a Pod is running is always allowed" for ingress: the
  API reference allows ingress "if the traffic source is the pod's local node". Sources
  counted as the node: its addresses, its CNI gateway, its host-network pods.
- "A pod cannot block access to itself": a pod's connection to its own IP (e.g. a Service
  hairpin) is allowed in both directions.
- Replies of an allowed connection are allowed: the caller evaluates a reply record as the
  connection it belongs to, in its original orientation (Connection.of_record).
- Protocols other than TCP, UDP and SCTP (ICMP) have no ports: only rules without `ports`
  match them ("for all the other protocols, the behaviour may vary across network plugins";
  this is what iptables-based plugins do).

Speed: a verdict depends on the identities of both ends, not on their addresses, so it is
cached per (source identity, destination identity, port, protocol, relation). A pod's
identity is its namespace and labels, its namespace's labels, the set of ipBlocks its
address falls in and its container ports; a non-pod's is the set of ipBlocks. The address ->
identity table is dropped when the cluster's generation moves; the verdicts when the
policies change (namespace labels are part of the identity, so a relabelled namespace gets
fresh verdicts by itself).
"""

from __future__ import annotations

import enum
import ipaddress
import itertools
import threading
from collections.abc import Iterable
from dataclasses import dataclass

from agent.policy.model import EGRESS, INGRESS, IPBlock, NetworkPolicy, Peer, PolicyPort, Rule
from agent.policy.view import PodInfo, PolicyCluster, namespace_labels_with_name


class Verdict(enum.IntEnum):
    """Per direction. Values match the proposed podflow.v1.PolicyVerdict enum."""

    UNKNOWN = 0
    NOT_ISOLATED = 1    # no policy isolates this pod in this direction: allowed by default
    ALLOWED = 2         # isolated, and allowed (by rules, or by the own-node / self rule)
    DENIED = 3          # isolated, and no rule of the isolating policies allows it
    NOT_APPLICABLE = 4  # this end is not a pod on the pod network (world, node, host network)


class Reason(enum.IntEnum):
    """Why an isolated pod allows a connection."""

    NONE = 0
    RULE = 1       # rules of the policies named
    OWN_NODE = 2   # ingress from the pod's own node is always allowed
    SELF = 3       # a pod cannot block access to itself


@dataclass(frozen=True, slots=True)
class RuleRef:
    """One rule of one policy: `index` into spec.ingress or spec.egress."""

    policy: str      # "ns/name"
    direction: str   # Ingress or Egress
    index: int

    def __str__(self) -> str:
        return f"{self.policy} {self.direction.lower()}[{self.index}]"


@dataclass(frozen=True, slots=True)
class DirectionVerdict:
    verdict: Verdict
    policies: tuple[str, ...] = ()    # ALLOWED: whose rules allow it; DENIED: that isolate the pod
    rules: tuple[RuleRef, ...] = ()   # ALLOWED by rules: each rule that matches
    reason: Reason = Reason.NONE
    # Named ports that could not be resolved because the destination pod's container ports
    # are unknown; set only on DENIED verdicts, which such a port might have turned.
    unresolved: tuple[str, ...] = ()

    @property
    def denied(self) -> bool:
        return self.verdict == Verdict.DENIED


@dataclass(frozen=True, slots=True)
class ConnectionVerdict:
    egress: DirectionVerdict    # at the source pod
    ingress: DirectionVerdict   # at the destination pod

    @property
    def denied(self) -> bool:
        """Policy forbids the connection (in either direction)."""
        return self.egress.verdict == Verdict.DENIED or self.ingress.verdict == Verdict.DENIED

    @property
    def allowed(self) -> bool:
        return not self.denied

    @property
    def denying_policies(self) -> tuple[str, ...]:
        out: list[str] = []
        for side in (self.egress, self.ingress):
            if side.verdict == Verdict.DENIED:
                out.extend(p for p in side.policies if p not in out)
        return tuple(out)

    @property
    def allowing_rules(self) -> tuple[RuleRef, ...]:
        return self.egress.rules + self.ingress.rules


NOT_ISOLATED = DirectionVerdict(Verdict.NOT_ISOLATED)
NOT_APPLICABLE = DirectionVerdict(Verdict.NOT_APPLICABLE)
_WITH_PORTS = frozenset(("TCP", "UDP", "SCTP"))


@dataclass(frozen=True, slots=True)
class Connection:
    """A connection in its original orientation: the side that opened it (src) and the
    address and port it reached, AFTER DNAT (a Service's backend pod and target port).
    dst_port is 0 for protocols without ports."""

    src_ip: str
    dst_ip: str
    dst_port: int
    protocol: str     # TCP, UDP, SCTP, ICMP ...

    @classmethod
    def of_record(cls, src_ip: str, src_port: int, dst_ip: str, dst_port: int, protocol: str,
                  is_reply: bool, backend_ip: str = "", backend_port: int = 0) -> Connection:
        """The connection a flow record belongs to. A reply record (server -> client) is
        turned around, so replies get the verdict of the connection they answer. When the
        record went through a Service, `backend_ip`/`backend_port` (the backend that answered,
        after DNAT) replace the server side, as enforcement sees it."""
        if is_reply:
            src_ip, dst_ip, dst_port = dst_ip, src_ip, src_port
        if backend_ip:
            dst_ip, dst_port = backend_ip, backend_port or dst_port
        return cls(src_ip, dst_ip, dst_port, protocol.upper())


# ---- identities ----------------------------------------------------------------------------

_POD, _OTHER = 1, 2
_REL_NONE, _REL_SELF, _REL_OWN_NODE = 0, 1, 2


class _End:
    """An interned identity: everything a verdict may depend on about one end."""

    __slots__ = ("id", "kind", "namespace", "labels", "ns_labels", "ipsig", "container_ports",
                 "ingress_policies", "egress_policies")

    def __init__(self, id_: int, kind: int, ipsig: frozenset, namespace: str = "",
                 labels: dict | None = None, ns_labels: dict | None = None,
                 container_ports=None) -> None:
        self.id = id_
        self.kind = kind
        self.ipsig = ipsig
        self.namespace = namespace
        self.labels = labels or {}
        self.ns_labels = ns_labels or {}
        self.container_ports = container_ports
        self.ingress_policies: tuple[NetworkPolicy, ...] = ()
        self.egress_policies: tuple[NetworkPolicy, ...] = ()


class _Block:
    """An ipBlock as integers, for matching many addresses quickly."""

    __slots__ = ("version", "net", "mask", "excepts")

    def __init__(self, block: IPBlock) -> None:
        net = block.network
        self.version = net.version
        self.net = int(net.network_address)
        self.mask = int(net.netmask)
        self.excepts = tuple((int(e.network_address), int(e.netmask)) for e in block.except_networks)

    def contains(self, version: int, addr: int) -> bool:
        if version != self.version or addr & self.mask != self.net:
            return False
        for net, mask in self.excepts:
            if addr & mask == net:
                return False
        return True


class _Snapshot:
    """One immutable set of policies, compiled, plus the caches that are valid for it."""

    def __init__(self, policies: tuple[NetworkPolicy, ...], max_cached: int) -> None:
        self.policies = policies
        self.max_cached = max_cached
        by_ns: dict[str, list[NetworkPolicy]] = {}
        for policy in sorted(policies, key=lambda p: p.key):
            by_ns.setdefault(policy.namespace, []).append(policy)
        self.by_namespace = {ns: tuple(pols) for ns, pols in by_ns.items()}
        # Every distinct ipBlock, numbered: an address's "signature" is the set of numbers
        # of the blocks it falls in.
        self.block_index: dict[IPBlock, int] = {}
        blocks: list[_Block] = []
        for policy in policies:
            for rule in policy.ingress + policy.egress:
                for peer in rule.peers:
                    if peer.ip_block is not None and peer.ip_block not in self.block_index:
                        self.block_index[peer.ip_block] = len(blocks)
                        blocks.append(_Block(peer.ip_block))
        self.blocks = tuple(blocks)
        # Identity numbers are never reused, even across reset(): a number taken before a
        # reset must not name another identity after it.
        self._ids = itertools.count()
        self.reset()

    def reset(self) -> None:
        self.ends: dict[tuple, _End] = {}
        self.verdicts: dict[tuple, ConnectionVerdict] = {}
        self.ip_ends: dict[str, tuple] = {}
        self.ip_generation: object = None

    # -- identities --

    def ipsig(self, ip: str) -> frozenset:
        if not self.blocks:
            return frozenset()
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return frozenset()
        version, value = addr.version, int(addr)
        return frozenset(i for i, b in enumerate(self.blocks) if b.contains(version, value))

    def intern(self, key: tuple, make) -> _End:
        end = self.ends.get(key)
        if end is None:
            if len(self.ends) >= self.max_cached:
                self.reset()   # identities are referenced by cached verdicts: drop both
            end = make(next(self._ids))
            self.ends[key] = end
        return end

    def pod_end(self, pod: PodInfo, ipsig: frozenset, ns_labels: dict) -> _End:
        labels = dict(pod.labels)
        key = (_POD, pod.namespace, tuple(sorted(labels.items())), tuple(sorted(ns_labels.items())),
               ipsig, pod.container_ports)

        def make(id_: int) -> _End:
            end = _End(id_, _POD, ipsig, pod.namespace, labels, ns_labels, pod.container_ports)
            ingress, egress = [], []
            for policy in self.by_namespace.get(pod.namespace, ()):
                if policy.pod_selector.matches(labels):
                    if policy.affects_ingress:
                        ingress.append(policy)
                    if policy.affects_egress:
                        egress.append(policy)
            end.ingress_policies, end.egress_policies = tuple(ingress), tuple(egress)
            return end
        return self.intern(key, make)

    def other_end(self, ipsig: frozenset) -> _End:
        return self.intern((_OTHER, ipsig), lambda id_: _End(id_, _OTHER, ipsig))

    # -- matching --

    def peer_matches(self, peer: Peer, policy_namespace: str, end: _End) -> bool:
        """NetworkPolicyPeer semantics (API reference; concepts page "Behavior of to and
        from selectors")."""
        if peer.ip_block is not None:
            return self.block_index[peer.ip_block] in end.ipsig
        if end.kind != _POD:
            return False
        if peer.namespace_selector is None:
            # podSelector alone: pods in the policy's own namespace.
            if end.namespace != policy_namespace:
                return False
        elif not peer.namespace_selector.matches(end.ns_labels):
            return False
        # podSelector absent next to a namespaceSelector: every pod of those namespaces.
        return peer.pod_selector is None or peer.pod_selector.matches(end.labels)

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

    def direction(self, direction: str, policies: tuple[NetworkPolicy, ...], peer: _End,
                  dst: _End, port: int, protocol: str, rel: int) -> DirectionVerdict:
        if not policies:
            return NOT_ISOLATED
        allowing: list[RuleRef] = []
        unresolved: list[str] = []
        for policy in policies:
            rules: tuple[Rule, ...] = policy.ingress if direction == INGRESS else policy.egress
            for index, rule in enumerate(rules):
                if rule.peers and not any(self.peer_matches(p, policy.namespace, peer)
                                          for p in rule.peers):
                    continue
                if self.port_matches(rule.ports, port, protocol, dst, unresolved):
                    allowing.append(RuleRef(policy.ref, direction, index))
        if allowing:
            names: list[str] = []
            for ref in allowing:
                if ref.policy not in names:
                    names.append(ref.policy)
            return DirectionVerdict(Verdict.ALLOWED, tuple(names), tuple(allowing), Reason.RULE)
        if rel == _REL_SELF:
            return DirectionVerdict(Verdict.ALLOWED, reason=Reason.SELF)
        if rel == _REL_OWN_NODE and direction == INGRESS:
            return DirectionVerdict(Verdict.ALLOWED, reason=Reason.OWN_NODE)
        return DirectionVerdict(Verdict.DENIED, tuple(p.ref for p in policies),
                                unresolved=tuple(sorted(set(unresolved))))

    def judge(self, src: _End, dst: _End, port: int, protocol: str, rel: int) -> ConnectionVerdict:
        egress = (self.direction(EGRESS, src.egress_policies, dst, dst, port, protocol, rel)
                  if src.kind == _POD else NOT_APPLICABLE)
        ingress = (self.direction(INGRESS, dst.ingress_policies, src, dst, port, protocol, rel)
                   if dst.kind == _POD else NOT_APPLICABLE)
        return ConnectionVerdict(egress, ingress)


class PolicyEvaluator:
    """Evaluates connections against the current NetworkPolicies of a PolicyCluster.

    One thread evaluates (the pipeline); another may change the policies (the watch): a
    change builds a new compiled snapshot and swaps it in whole, so an evaluation sees the
    old set or the new one, never half of each."""

    def __init__(self, cluster: PolicyCluster, policies: Iterable[NetworkPolicy] = (),
                 max_cached: int = 65536) -> None:
        self._cluster = cluster
        self._max_cached = max_cached
        self._lock = threading.Lock()
        self._policies: dict[tuple[str, str], NetworkPolicy] = {}
        for policy in policies:
            self._policies[policy.key] = policy
        self.generation = 0   # bumped on every policy change
        self._snap = _Snapshot(tuple(self._policies.values()), max_cached)

    # ---- writers ----

    def _rebuild(self) -> None:
        self.generation += 1
        self._snap = _Snapshot(tuple(self._policies.values()), self._max_cached)

    def replace(self, policies: Iterable[NetworkPolicy]) -> None:
        """The full current set (a relist, a reloaded file)."""
        with self._lock:
            self._policies = {p.key: p for p in policies}
            self._rebuild()

    def upsert(self, policy: NetworkPolicy) -> None:
        with self._lock:
            if self._policies.get(policy.key) == policy:
                return
            self._policies[policy.key] = policy
            self._rebuild()

    def delete(self, namespace: str, name: str) -> None:
        with self._lock:
            if self._policies.pop((namespace, name), None) is not None:
                self._rebuild()

    @property
    def policies(self) -> tuple[NetworkPolicy, ...]:
        return self._snap.policies

    # ---- readers ----

    def _end(self, snap: _Snapshot, ip: str) -> tuple:
        """(identity, pod key or None, node name or "") of an address, cached per address
        while the cluster's generation stays."""
        cached = snap.ip_ends.get(ip)
        if cached is not None:
            return cached
        cluster = self._cluster
        pod = cluster.pod_at(ip)
        ipsig = snap.ipsig(ip)
        if pod is not None and not pod.host_network:
            end = snap.pod_end(pod, ipsig, namespace_labels_with_name(cluster, pod.namespace))
            entry = (end, pod.key, pod.node_name)
        else:
            node = cluster.node_at(ip)
            if node is None and pod is not None:
                node = pod.node_name   # a host-network pod is its node's address
            entry = (snap.other_end(ipsig), None, node or "")
        if len(snap.ip_ends) >= snap.max_cached:
            snap.ip_ends.clear()
        snap.ip_ends[ip] = entry
        return entry

    def evaluate(self, src_ip: str, dst_ip: str, dst_port: int, protocol: str) -> ConnectionVerdict:
        """The verdict of a connection in its original orientation, with dst after DNAT."""
        snap = self._snap
        generation = self._cluster.generation
        if snap.ip_generation != generation:
            snap.ip_ends.clear()
            snap.ip_generation = generation
        src, src_pod, src_node = self._end(snap, src_ip)
        dst, dst_pod, dst_node = self._end(snap, dst_ip)
        if src_pod is not None and src_pod == dst_pod:
            rel = _REL_SELF
        elif src_pod is None and src_node and dst_pod is not None and src_node == dst_node:
            rel = _REL_OWN_NODE
        else:
            rel = _REL_NONE
        if protocol in _WITH_PORTS:
            key = (src.id, dst.id, dst_port, protocol, rel)
        else:
            key = (src.id, dst.id, 0, protocol, rel)
        verdict = snap.verdicts.get(key)
        if verdict is None:
            verdict = snap.judge(src, dst, key[2], protocol, rel)
            if len(snap.verdicts) >= snap.max_cached:
                snap.verdicts.clear()
            snap.verdicts[key] = verdict
        return verdict

    def evaluate_connection(self, conn: Connection) -> ConnectionVerdict:
        return self.evaluate(conn.src_ip, conn.dst_ip, conn.dst_port, conn.protocol)

    def cache_stats(self) -> dict[str, int]:
        snap = self._snap
        return {"identities": len(snap.ends), "verdicts": len(snap.verdicts),
                "addresses": len(snap.ip_ends), "policies": len(snap.policies),
                "ip_blocks": len(snap.blocks)}
