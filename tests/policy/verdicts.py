"""Records with a NetworkPolicy verdict, as the agent's policy stage writes them, for the
tests of what reads them (filters, metrics, the Hubble mapping, the TUI)."""

from __future__ import annotations

from podflow_api.v1 import flow_pb2


def with_verdict(flow: flow_pb2.Flow, egress: tuple = (), ingress: tuple = (),
                 enforcement: int = flow_pb2.POLICY_ENFORCEMENT_UNDECIDED) -> flow_pb2.Flow:
    """`flow` with policy.egress / policy.ingress set from (verdict, policy, ...) and the
    enforcement finding; returns the same message."""
    for side, spec in ((flow.policy.egress, egress), (flow.policy.ingress, ingress)):
        if spec:
            side.verdict = spec[0]
            side.policies.extend(spec[1:])
    flow.policy.enforcement = enforcement
    return flow
