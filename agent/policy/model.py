"""`networking.k8s.io/v1` NetworkPolicy objects as frozen dataclasses, and what they mean.

The same camelCase JSON comes from the API server's watch, from `kubectl get
networkpolicies -A -o json` and from the YAML files users write for `podflow policy
what-if`: agent/policy/parse.py turns one object into these (with the API server's
defaulting and validation), agent/policy/load.py reads many, and label selectors live in
agent/policy/selectors.py. Evaluation reads nothing but these objects.

Semantics kept here (API reference, NetworkPolicySpec / NetworkPolicyPeer / NetworkPolicyPort,
and the concepts page "Network Policies"):

- policyTypes omitted: Ingress always, Egress iff `spec.egress` has at least one rule
  (SetDefaults_NetworkPolicy: `len(spec.Egress) != 0`; `egress: []` does NOT add Egress).
- `ingress`/`egress` absent or `[]`: no rule, so the policy allows nothing in a direction it
  applies to. A rule `{}` allows everything.
- `from`/`to` absent or `[]`: the rule matches all peers; `ports` absent or `[]`: all ports
  and protocols. (Absent and empty mean the same for these lists; only `spec.egress` feeds a
  default, and it counts rules, not presence.)
- A peer with podSelector and namespaceSelector selects pods matching both (AND, one peer);
  two peers are OR'd. ipBlock may not be combined with a selector. An empty selector `{}`
  selects everything; a missing podSelector in a peer with a namespaceSelector means all pods
  of those namespaces.
- Ports: protocol defaults to TCP (SetDefaults_NetworkPolicyPort); `port` is a number or a
  named container port; no port = every port of that protocol; `endPort` needs a numeric
  `port` and is >= it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field

from agent.policy.selectors import LabelSelector

API_VERSION = "networking.k8s.io/v1"
KIND = "NetworkPolicy"
INGRESS = "Ingress"
EGRESS = "Egress"
PROTOCOLS = ("TCP", "UDP", "SCTP")
# Every namespace carries this label (set by the API server since 1.21, immutable), so a
# namespaceSelector can pick a namespace by name.
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"


@dataclass(frozen=True, slots=True)
class IPBlock:
    """A CIDR minus `except` CIDRs (each a strict subset of the CIDR, as validation demands)."""

    cidr: str
    except_: tuple[str, ...] = ()
    network: ipaddress.IPv4Network | ipaddress.IPv6Network = field(
        default=None, compare=False, hash=False, repr=False)
    except_networks: tuple = field(default=(), compare=False, hash=False, repr=False)

    def contains(self, ip: str | ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        addr = ipaddress.ip_address(ip) if isinstance(ip, str) else ip
        if addr.version != self.network.version or addr not in self.network:
            return False
        return not any(addr in ex for ex in self.except_networks)

    def to_manifest(self) -> dict:
        out: dict = {"cidr": self.cidr}
        if self.except_:
            out["except"] = list(self.except_)
        return out


def ip_block(cidr: str, except_: Iterable[str] = ()) -> IPBlock:
    """Build a validated IPBlock (raises ValueError on a bad CIDR)."""
    network = ipaddress.ip_network(cidr, strict=False)
    excepts = tuple(except_)
    nets = tuple(ipaddress.ip_network(e, strict=False) for e in excepts)
    return IPBlock(cidr=cidr, except_=excepts, network=network, except_networks=nets)


@dataclass(frozen=True, slots=True)
class Peer:
    """One `from`/`to` entry. ipBlock alone, or selectors: podSelector only = pods of the
    policy's namespace; namespaceSelector only = all pods of those namespaces; both = pods
    matching podSelector in namespaces matching namespaceSelector."""

    pod_selector: LabelSelector | None = None
    namespace_selector: LabelSelector | None = None
    ip_block: IPBlock | None = None

    def to_manifest(self) -> dict:
        out: dict = {}
        if self.ip_block is not None:
            out["ipBlock"] = self.ip_block.to_manifest()
        if self.namespace_selector is not None:
            out["namespaceSelector"] = self.namespace_selector.to_manifest()
        if self.pod_selector is not None:
            out["podSelector"] = self.pod_selector.to_manifest()
        return out


@dataclass(frozen=True, slots=True)
class PolicyPort:
    """protocol (default TCP); port: a number, a named container port, or None (all ports of
    the protocol); end_port: the inclusive end of a numeric range."""

    protocol: str = "TCP"
    port: int | str | None = None
    end_port: int | None = None

    def to_manifest(self) -> dict:
        out: dict = {"protocol": self.protocol}
        if self.port is not None:
            out["port"] = self.port
        if self.end_port is not None:
            out["endPort"] = self.end_port
        return out


@dataclass(frozen=True, slots=True)
class Rule:
    """An ingress or egress rule: traffic must match one of `peers` (none = any peer) AND one
    of `ports` (none = any port and protocol)."""

    peers: tuple[Peer, ...] = ()
    ports: tuple[PolicyPort, ...] = ()

    def to_manifest(self, direction: str) -> dict:
        out: dict = {}
        if self.peers:
            out["from" if direction == INGRESS else "to"] = [p.to_manifest() for p in self.peers]
        if self.ports:
            out["ports"] = [p.to_manifest() for p in self.ports]
        return out


@dataclass(frozen=True, slots=True)
class NetworkPolicy:
    namespace: str
    name: str
    pod_selector: LabelSelector
    policy_types: tuple[str, ...]       # effective (defaults applied): Ingress and/or Egress
    ingress: tuple[Rule, ...] = ()
    egress: tuple[Rule, ...] = ()
    policy_types_given: bool = True     # False when spec.policyTypes was omitted

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)

    @property
    def ref(self) -> str:
        """"ns/name": how verdicts, filters and metrics name the policy."""
        return f"{self.namespace}/{self.name}"

    @property
    def affects_ingress(self) -> bool:
        return INGRESS in self.policy_types

    @property
    def affects_egress(self) -> bool:
        return EGRESS in self.policy_types

    def rules(self, direction: str) -> tuple[Rule, ...]:
        return self.ingress if direction == INGRESS else self.egress

    def to_manifest(self) -> dict:
        """The object as `kubectl apply` takes it (defaults written out, canonical order)."""
        spec: dict = {"podSelector": self.pod_selector.to_manifest(),
                      "policyTypes": list(self.policy_types)}
        if self.ingress:
            spec["ingress"] = [r.to_manifest(INGRESS) for r in self.ingress]
        if self.egress:
            spec["egress"] = [r.to_manifest(EGRESS) for r in self.egress]
        return {"apiVersion": API_VERSION, "kind": KIND,
                "metadata": {"name": self.name, "namespace": self.namespace}, "spec": spec}
