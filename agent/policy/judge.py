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
from agent.policy.finding import Enforcement, enforcement_of
from agent.policy.flows import policy_message, seen_in
from agent.policy.verdict import ConnectionVerdict
from podflow_api.v1 import flow_pb2

_DEFINED = frozenset(("TCP", "UDP", "SCTP"))   # the protocols NetworkPolicy defines
_UNDECIDED = Enforcement.UNDECIDED
# (denied, defined, reply): the token cached per 5-tuple; one object per combination.
_TOKENS = {(d, f, r): (d, f, r) for d in (False, True) for f in (False, True)
           for r in (False, True)}


def policy_bytes(verdict: ConnectionVerdict) -> bytes:
    """A serialized Flow holding only `policy` (egress and ingress): merged into a record."""
    return flow_pb2.Flow(policy=policy_message(verdict)).SerializeToString()


class RecordJudge:
    """The agent's ConnectionJudge: `judge` per new 5-tuple, `finding` per record."""

    def __init__(self, evaluator: PolicyEvaluator, known: Callable[[], bool],
                 max_verdicts: int = 65536) -> None:
        self._evaluator = evaluator
        self._known = known
        # id(verdict) -> (verdict, its bytes): verdicts are shared by the evaluator's cache,
        # so the few distinct ones are serialized once; the verdict kept alive keeps its id.
        self._bytes: dict[int, tuple[ConnectionVerdict, bytes]] = {}
        self._max_verdicts = max_verdicts

    def judge(self, client_ip: str, server_ip: str, server_port: int, protocol: str,
              reply: bool) -> tuple[bytes, tuple] | None:
        if not self._known():
            return None
        verdict = self._evaluator.evaluate(client_ip, server_ip, server_port, protocol)
        entry = self._bytes.get(id(verdict))
        if entry is None or entry[0] is not verdict:
            if len(self._bytes) >= self._max_verdicts:
                self._bytes.clear()
            entry = self._bytes[id(verdict)] = (verdict, policy_bytes(verdict))
        return entry[1], _TOKENS[(verdict.denied, protocol in _DEFINED, reply)]

    @staticmethod
    def finding(flow: flow_pb2.Flow, token: tuple) -> None:
        denied, defined, reply = token
        seen, drop_reason = seen_in(flow, reply)
        enforcement = enforcement_of(denied, seen, drop_reason, defined)
        if enforcement != _UNDECIDED:
            flow.policy.enforcement = enforcement
