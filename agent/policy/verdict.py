"""What the evaluator answers: a verdict per direction (NOT_ISOLATED, ALLOWED, DENIED,
NOT_APPLICABLE) with the policies and rules behind it, both directions of a connection, and
the connection itself in its original orientation, after DNAT. Values match podflow.v1's
PolicyVerdict and PolicyAllowReason enums (proto/podflow_api/v1/flow.proto)."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import NamedTuple

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


class ConnectionVerdict(NamedTuple):
    """Both directions of one connection (a NamedTuple: the cheapest value to build)."""

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
WITH_PORTS = frozenset(("TCP", "UDP", "SCTP"))


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
        upper = protocol.upper()
        return cls(src_ip, dst_ip, dst_port, upper if upper in WITH_PORTS else protocol)
