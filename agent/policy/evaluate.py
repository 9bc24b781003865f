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
- ipBlock matches any address in the CIDR and outside every `except`, pod IPs included.
  The docs only advise ("These should be cluster-external IPs, since Pod IPs are ephemeral
  and unpredictable"); the API says nothing restricts it, and Kubernetes' own e2e tests
  ("should allow egress access to server in CIDR block", "should enforce except clause
  while egress access to server in CIDR block", test/e2e/network/netpol) allow a pod by
  its pod IP /32 through ipBlock. The "never pod IPs" reading was proposed when ipBlock was
  designed (kubernetes#49978) and not adopted; Cilium is the known exception (cilium#9209,
  documented as a missing feature in cilium#12783).
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
  match them, as iptables-based plugins do. The docs leave them undefined ("it is only
  guaranteed to deny TCP, UDP and SCTP connections. For other protocols, such as ARP or
  ICMP, the behaviour is undefined"), so finding.join never calls such a verdict unenforced.

The compiled policy set and its caches (how a verdict is found quickly): agent/policy/compiled.py.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable

from agent.policy.compiled import REL_NONE, REL_OWN_NODE, REL_SELF, Snapshot
from agent.policy.model import NetworkPolicy
from agent.policy.verdict import WITH_PORTS, Connection, ConnectionVerdict
from agent.policy.view import PolicyCluster, namespace_labels_with_name


def _parts(end) -> tuple:
    """What a verdict's cache key reads of an identity, kept in its address entry:
    6 out_id, 7 out_mask, 8 out_named, 9 in_id, 10 in_mask, 11 in_named, 12 hits,
    13 cports_key (agent/policy/compiled.py)."""
    return (end.out_id, end.out_mask, end.out_named, end.in_id, end.in_mask, end.in_named,
            end.hits, end.cports_key)


class PolicyEvaluator:
    """Evaluates connections against the current NetworkPolicies of a PolicyCluster.

    One thread evaluates (the pipeline); another may change the policies (the watch): a
    change builds a new compiled snapshot and swaps it in whole, so an evaluation sees the
    old set or the new one, never half of each."""

    def __init__(self, cluster: PolicyCluster, policies: Iterable[NetworkPolicy] = (),
                 max_cached: int = 65536,
                 derive: Callable[[ConnectionVerdict], object] | None = None) -> None:
        self._cluster = cluster
        self._max_cached = max_cached
        self._derive = derive
        # id(verdict) -> (verdict, derive(verdict)): verdicts are shared between keys, so a
        # derived value is made once per distinct verdict, not once per key.
        self._derived: dict[int, tuple[ConnectionVerdict, object]] = {}
        self._lock = threading.Lock()
        self._policies: dict[tuple[str, str], NetworkPolicy] = {}
        for policy in policies:
            self._policies[policy.key] = policy
        self.generation = 0   # bumped on every policy change
        self._snap = Snapshot(tuple(self._policies.values()), max_cached)

    # ---- writers ----

    def _rebuild(self, warm: Iterable[str] = ()) -> None:
        snap = Snapshot(tuple(self._policies.values()), self._max_cached)
        generation = self._cluster.generation
        for ip in warm:   # before the swap: no evaluation sees a half-learnt snapshot
            self._end(snap, ip, generation)
        self.generation += 1
        self._snap = snap

    def replace(self, policies: Iterable[NetworkPolicy], warm: Iterable[str] = ()) -> None:
        """The full current set (a relist, a reloaded file). The addresses in `warm` (every
        pod's, say) are learnt by the new compiled set before it replaces the old one, so
        the thread that evaluates never pays for them (see `warm`)."""
        with self._lock:
            self._policies = {p.key: p for p in policies}
            self._rebuild(warm)

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

    def _end(self, snap: Snapshot, ip: str, generation) -> tuple:
        """(generation, identity, pod key or None, node name or "", PodInfo, namespace
        labels, then the identity's key parts: see _E_*) of an address. An entry from an
        older cluster generation is checked, not dropped: the same PodInfo object (views
        reuse it while the pod is unchanged) with the same namespace labels keeps its
        identity, so pod churn elsewhere costs little."""
        cluster = self._cluster
        old = snap.ip_ends.get(ip)
        pod = cluster.pod_at(ip)
        if pod is not None and not pod.host_network:
            ns_labels = namespace_labels_with_name(cluster, pod.namespace)
            if old is not None and old[4] is pod and old[5] == ns_labels:
                entry = (generation,) + old[1:]
            else:
                end = snap.pod_end(pod, snap.ipsig(ip), ns_labels)
                entry = (generation, end, pod.key, pod.node_name, pod, ns_labels) + _parts(end)
        else:
            node = cluster.node_at(ip)
            if node is None and pod is not None:
                node = pod.node_name   # a host-network pod is its node's address
            if old is not None and old[4] is pod and old[2] is None and old[3] == (node or ""):
                entry = (generation,) + old[1:]
            else:
                end = snap.other_end(snap.ipsig(ip))
                entry = (generation, end, None, node or "", pod, None) + _parts(end)
        if len(snap.ip_ends) >= snap.max_cached and ip not in snap.ip_ends:
            snap.ip_ends.clear()
        snap.ip_ends[ip] = entry
        return entry

    def evaluate(self, src_ip: str, dst_ip: str, dst_port: int, protocol: str) -> ConnectionVerdict:
        """The verdict of a connection in its original orientation, with dst after DNAT."""
        return self.lookup(src_ip, dst_ip, dst_port, protocol, False)

    def evaluate_derived(self, src_ip: str, dst_ip: str, dst_port: int, protocol: str):
        """`derive(verdict)` of the connection's verdict (the constructor's `derive`), made
        once per distinct verdict of the current policies and cached beside it: what the
        agent writes into records (agent/policy/judge.py) costs one lookup."""
        return self.lookup(src_ip, dst_ip, dst_port, protocol, True)

    def _entries(self, snap: Snapshot, src_ip: str, dst_ip: str) -> tuple[tuple, tuple]:
        """The address entries (_end) of both ends, from the cache while current."""
        generation = self._cluster.generation
        ip_ends = snap.ip_ends
        src_entry = ip_ends.get(src_ip)
        if src_entry is None or src_entry[0] != generation:
            src_entry = self._end(snap, src_ip, generation)
        dst_entry = ip_ends.get(dst_ip)
        if dst_entry is None or dst_entry[0] != generation:
            dst_entry = self._end(snap, dst_ip, generation)
        return src_entry, dst_entry

    def port_free(self, src_ip: str, dst_ip: str) -> bool:
        """Whether connections from src to dst get one verdict whatever their port and
        protocol: no policy isolates src's egress nor dst's ingress (or an end is not a
        pod). Callers then judge such a pair once, not once per server port (a client of
        many ports, a port scan, or replies mistaken for requests)."""
        src_entry, dst_entry = self._entries(self._snap, src_ip, dst_ip)
        return src_entry[6] < 0 and dst_entry[9] < 0  # out_id / in_id: _NA or _NI

    def lookup(self, src_ip: str, dst_ip: str, dst_port: int, protocol: str, derived: bool):
        """evaluate (derived False) or evaluate_derived (True), without the extra call: this
        runs once per new connection on the agent's hot path (agent/policy/judge.py), so it
        reads as little as it can."""
        snap = self._snap
        src_entry, dst_entry = self._entries(snap, src_ip, dst_ip)
        if protocol not in WITH_PORTS:
            dst_port = 0
        src_pod = src_entry[2]
        if src_pod is not None:
            rel = REL_SELF if src_pod == dst_entry[2] else REL_NONE
        elif src_entry[3] and dst_entry[2] is not None and src_entry[3] == dst_entry[3]:
            rel = REL_OWN_NODE
        else:
            rel = REL_NONE
        # The verdict depends on no more than this (compiled.py): both directions' rule sets,
        # which of their peers the other end matches, port, protocol, container ports when a
        # rule names a port, the relation; read from the address entries, not the identities.
        key = (src_entry[6], dst_entry[12] & src_entry[7], dst_entry[9],
               src_entry[12] & dst_entry[10], dst_port, protocol,
               dst_entry[13] if src_entry[8] or dst_entry[11] else -1, rel)
        if derived:
            found = snap.derived.get(key)
            if found is not None:
                return found
        verdict = snap.verdicts.get(key)
        if verdict is None:
            verdict = snap.judge(key, src_entry[1], dst_entry[1], dst_port, protocol, rel)
        if not derived:
            return verdict
        entry = self._derived.get(id(verdict))
        if entry is None or entry[0] is not verdict:
            if len(self._derived) >= self._max_cached:
                self._derived.clear()
            entry = self._derived[id(verdict)] = (verdict, self._derive(verdict))
        if len(snap.derived) >= snap.max_cached:
            snap.derived.clear()
        snap.derived[key] = entry[1]
        return entry[1]

    def warm(self, ips: Iterable[str]) -> None:
        """Learn what these addresses are ahead of their first connection (agent start, a
        relist): the address table is what a first evaluation spends most of its time on.
        Call it from the thread that evaluates (or use `replace(..., warm=)`)."""
        snap = self._snap
        generation = self._cluster.generation
        for ip in ips:
            self._end(snap, ip, generation)

    def evaluate_connection(self, conn: Connection) -> ConnectionVerdict:
        return self.evaluate(conn.src_ip, conn.dst_ip, conn.dst_port, conn.protocol)

    def cache_stats(self) -> dict[str, int]:
        snap = self._snap
        return {"identities": len(snap.ends), "verdicts": len(snap.verdicts),
                "direction_verdicts": len(snap.direction_verdicts),
                "rule_sets": len(snap.rule_sets),
                "addresses": len(snap.ip_ends), "policies": len(snap.policies),
                "ip_blocks": len(snap.blocks)}
