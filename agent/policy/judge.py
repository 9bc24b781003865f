"""The NetworkPolicy verdict of every record, judged inside enrichment.

Enrichment (agent/enrich/names.py) already knows, for each new 5-tuple, which side opened
the connection and which backend answered after DNAT, and it caches its answer per 5-tuple;
it hands both to this judge (its ConnectionJudge) and caches what comes back with its names.
So a verdict costs one evaluation per new 5-tuple (a dictionary hit for identities seen
before, agent/policy/compiled.py) and the serialized `policy` field is made once per distinct
verdict; a record of a known 5-tuple pays for one merge of bytes and for `finding`, which
reads three of its fields to say what it shows of the connection (agent/policy/finding.py).

No verdict at all (no `policy` field) while the NetworkPolicies are not known: before the
first list, or when the agent may not list them (RBAC). "Not isolated" would be a claim.
"""

from __future__ import annotations

from collections.abc import Callable

from agent.policy.evaluate import PolicyEvaluator
from agent.policy.finding import Enforcement, Seen, enforcement_of, may_be_policy_drop
from agent.policy.flows import ANSWERED, policy_message
from agent.policy.verdict import ConnectionVerdict
from podflow_api.v1 import flow_pb2

_DEFINED = frozenset(("TCP", "UDP", "SCTP"))   # the protocols NetworkPolicy defines
# Plain ints: attribute access on the protobuf enum wrapper is slow on the hot path.
_ENFORCED, _DROPPED_OTHERWISE = int(Enforcement.ENFORCED), int(Enforcement.DROPPED_OTHERWISE)
_DROPPED, _POD_VETH = flow_pb2.DROPPED, flow_pb2.POD_VETH
_FROM_POD, _TO_POD = flow_pb2.FROM_POD, flow_pb2.TO_POD
_ANSWERED = ANSWERED

Finder = Callable[[flow_pb2.Flow], None]


def policy_bytes(verdict: ConnectionVerdict) -> bytes:
    """A serialized Flow holding only `policy` (egress and ingress): merged into a record."""
    return flow_pb2.Flow(policy=policy_message(verdict)).SerializeToString()


def derive(verdict: ConnectionVerdict) -> tuple[bytes, int]:
    """What the judge needs of a verdict (PolicyEvaluator's `derive`, kept beside each
    distinct verdict): its bytes, and 4 if it denies (the finder table's index bit)."""
    return policy_bytes(verdict), 4 if verdict.denied else 0


def _finder(denied: bool, defined: bool, reply: bool) -> Finder:
    """The finding of a record of a connection that policy denies (or not), of a protocol
    NetworkPolicy defines (or not), the record a reply (or not): one closure per case, so a
    record pays for its few field reads and nothing else. What they mean is agent.policy's
    flows.seen_in and finding.enforcement_of; this is them, specialized (tests/policy hold
    the two to the same answers)."""
    delivered = enforcement_of(denied, Seen.DELIVERED, "", defined)
    # A record at a pod veth proves delivery in this direction (seen_in).
    delivered_direction = _FROM_POD if reply else _TO_POD
    if denied:
        def dropped(flow: flow_pb2.Flow) -> int:
            return _ENFORCED if may_be_policy_drop(flow.drop_reason) else _DROPPED_OTHERWISE
    else:
        def dropped(flow: flow_pb2.Flow) -> int:
            return _DROPPED_OTHERWISE

    def find(flow: flow_pb2.Flow) -> None:
        if flow.verdict == _DROPPED:
            flow.policy.enforcement = dropped(flow)
        elif delivered and (flow.outcome in _ANSWERED or (
                flow.observation_point == _POD_VETH
                and flow.traffic_direction == delivered_direction)):
            flow.policy.enforcement = delivered
    return find


# index: 4 if denied + 2 if defined + 1 if reply
_FINDERS = tuple(_finder(bool(i & 4), bool(i & 2), bool(i & 1)) for i in range(8))


class RecordJudge:
    """The agent's ConnectionJudge (agent/enrich/names.py): `judge` per new 5-tuple returns
    the verdict's bytes and the finder every record of the 5-tuple is shown to. `known`
    turns true once the NetworkPolicies are listed (PolicyFeed sets it)."""

    def __init__(self, evaluator: PolicyEvaluator, known: bool = False) -> None:
        self._lookup = evaluator.lookup
        self._port_free = evaluator.port_free
        self.known = known

    def port_free(self, client_ip: str, server_ip: str) -> bool:
        """Whether the verdict of client -> server is the same for every server port
        (PolicyEvaluator.port_free); True while the policies are not known (no verdict)."""
        return not self.known or self._port_free(client_ip, server_ip)

    def judge(self, client_ip: str, server_ip: str, server_port: int, protocol: str,
              reply: bool) -> tuple[bytes, Finder] | None:
        if not self.known:
            return None
        wire, denied = self._lookup(client_ip, server_ip, server_port, protocol, True)
        return wire, _FINDERS[denied + (2 if protocol in _DEFINED else 0) + reply]
