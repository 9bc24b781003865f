"""A policy verdict joined with what was seen of the connection.

Only the two together say something no CNI-specific tool can: "denied but delivered" means
the CNI does not enforce this policy. What was seen must be evidence about the connection
getting through, not just a packet passing a hook: podflow's TC hooks on the host side of a
pod's veth see a leaving packet BEFORE the host's netfilter (where iptables-based CNIs
enforce policy), so "forwarded at the source veth" proves nothing. Evidence of delivery is a
record at the server pod's veth (a request going in, a reply coming out), or an outcome only
an answer can give (ESTABLISHED, RESET, CLOSED; not REFUSED, which a REJECT rule fakes);
evidence of a drop is a drop record (the kernel's kfree_skb, with its reason).
agent/policy/flows.py reads that from flow records.

    policy   seen        finding
    denied   dropped     ENFORCED              the policy is enforced
    denied   delivered   NOT_ENFORCED          the CNI does not enforce it
    allowed  dropped     DROPPED_OTHERWISE     something else dropped it (the kernel reason)
    allowed  delivered   ALLOWED_DELIVERED
    either   in flight   UNDECIDED             nothing yet says whether it got through

A denied connection dropped for a reason no policy engine gives (NO_SOCKET, QDISC_DROP, a
TCP state error ...) is DROPPED_OTHERWISE too: that drop says nothing about enforcement. An
allowed connection dropped with NETFILTER_DROP was dropped by something no NetworkPolicy
asked for: a host firewall, or a policy of a kind podflow does not read (Calico's
GlobalNetworkPolicy, CiliumNetworkPolicy).
The reasons a policy engine gives: NETFILTER_DROP (iptables/nftables CNIs, kube-router,
Calico iptables), TC_INGRESS/TC_EGRESS (eBPF CNIs that shoot the packet in TC), OVS_DROP_*
(OVS-based CNIs), and NOT_SPECIFIED / none (older kernels report no reason).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from agent.policy.verdict import ConnectionVerdict


class Seen(enum.IntEnum):
    """What the datapath showed of a connection so far."""

    IN_FLIGHT = 0   # only seen leaving the source: no proof either way yet
    DELIVERED = 1   # reached the destination pod, or was answered
    DROPPED = 2     # the kernel dropped it (drop_reason says why)


class Enforcement(enum.IntEnum):
    """Values match the proposed podflow.v1.PolicyEnforcement enum."""

    UNDECIDED = 0
    ALLOWED_DELIVERED = 1
    ENFORCED = 2            # denied and dropped
    NOT_ENFORCED = 3        # denied but delivered: the CNI does not enforce the policy
    DROPPED_OTHERWISE = 4   # allowed but dropped: something else dropped it


@dataclass(frozen=True, slots=True)
class Finding:
    enforcement: Enforcement
    policies: tuple[str, ...] = ()   # the denying policies (ENFORCED / NOT_ENFORCED)
    drop_reason: str = ""            # the kernel's reason (DROPPED), e.g. NETFILTER_DROP

    @property
    def summary(self) -> str:
        names = ", ".join(self.policies)
        if self.enforcement == Enforcement.ENFORCED:
            return f"denied and dropped ({names})"
        if self.enforcement == Enforcement.NOT_ENFORCED:
            return f"denied but delivered: the CNI does not enforce {names}"
        if self.enforcement == Enforcement.DROPPED_OTHERWISE:
            return f"allowed but dropped ({self.drop_reason or 'reason unknown'})"
        if self.enforcement == Enforcement.ALLOWED_DELIVERED:
            return "allowed and delivered"
        return "undecided"


_PLAIN = {e: Finding(e) for e in Enforcement}
POLICY_DROP_REASONS = frozenset(("", "NOT_SPECIFIED", "NETFILTER_DROP", "TC_INGRESS",
                                 "TC_EGRESS", "TC_DROP"))


def may_be_policy_drop(drop_reason: str) -> bool:
    """Whether a kernel drop reason is one a NetworkPolicy implementation gives."""
    return drop_reason in POLICY_DROP_REASONS or drop_reason.startswith("OVS_DROP")


def enforcement_of(denied: bool, seen: Seen, drop_reason: str = "",
                   defined: bool = True) -> Enforcement:
    """The table above, for a connection the policies deny (`denied`) or not, of which
    `seen` was observed. A drop wins over delivery evidence only when the caller says
    DROPPED (one record is one observation; the caller decides what a connection showed).

    `defined` False: the protocol is one NetworkPolicy does not define (anything but TCP,
    UDP, SCTP: "it is only guaranteed to deny TCP, UDP and SCTP connections. For other
    protocols, such as ARP or ICMP, the behaviour is undefined"), so a denied ICMP echo that
    got through is not called unenforced."""
    if seen == Seen.DROPPED:
        if denied and may_be_policy_drop(drop_reason):
            return Enforcement.ENFORCED
        return Enforcement.DROPPED_OTHERWISE
    if seen == Seen.DELIVERED:
        if not denied:
            return Enforcement.ALLOWED_DELIVERED
        return Enforcement.NOT_ENFORCED if defined else Enforcement.UNDECIDED
    return Enforcement.UNDECIDED


def join(verdict: ConnectionVerdict, seen: Seen, drop_reason: str = "",
         defined: bool = True) -> Finding:
    """The finding for a connection whose policy verdict is `verdict` and of which `seen`
    was observed (enforcement_of), with the denying policies and the drop reason."""
    enforcement = enforcement_of(verdict.denied, seen, drop_reason, defined)
    if enforcement in (Enforcement.ENFORCED, Enforcement.NOT_ENFORCED):
        return Finding(enforcement, verdict.denying_policies,
                       drop_reason if seen == Seen.DROPPED else "")
    if enforcement == Enforcement.DROPPED_OTHERWISE:
        return Finding(enforcement, (), drop_reason)
    return _PLAIN[enforcement]
