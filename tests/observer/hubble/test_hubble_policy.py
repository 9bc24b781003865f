"""podflow's NetworkPolicy verdict in Hubble's terms: the *_allowed_by / *_denied_by Policy
lists (Cilium's field numbers) and POLICY_DENIED where podflow calls a drop enforced."""

from __future__ import annotations

from agent.observer.hubble.mapper import HubbleMapper, to_hubble
from podflow_api.v1 import flow_pb2 as pf
from podflow_hubble.flow import flow_pb2 as hb
from tests.policy.verdicts import with_verdict


def record(verdict=pf.FORWARDED, drop_reason="", enforcement=pf.POLICY_ENFORCEMENT_UNDECIDED,
           egress=(pf.POLICY_NOT_ISOLATED,), ingress=(pf.POLICY_NOT_ISOLATED,)) -> pf.Flow:
    f = pf.Flow(node_name="node-a", verdict=verdict, drop_reason=drop_reason,
                observation_point=pf.POD_VETH, traffic_direction=pf.FROM_POD)
    f.ip.source, f.ip.destination, f.ip.ip_version = "10.0.1.2", "10.0.2.5", pf.IPV4
    f.l4.tcp.source_port, f.l4.tcp.destination_port = 40000, 5432
    for ep, ns, pod in ((f.source, "shop", "frontend-1"), (f.destination, "data", "db-0")):
        ep.kind, ep.namespace, ep.pod_name = pf.POD, ns, pod
    return with_verdict(f, egress, ingress, enforcement)


def names(policies) -> list[tuple[str, str, str]]:
    return [(p.namespace, p.name, p.kind) for p in policies]


def test_policies_allowing_and_denying_each_direction():
    out = to_hubble(record(egress=(pf.POLICY_ALLOWED, "shop/out", "shop/dns"),
                           ingress=(pf.POLICY_DENIED, "data/db-in")))
    assert names(out.egress_allowed_by) == [("shop", "out", "NetworkPolicy"),
                                            ("shop", "dns", "NetworkPolicy")]
    assert names(out.ingress_denied_by) == [("data", "db-in", "NetworkPolicy")]
    assert not out.ingress_allowed_by and not out.egress_denied_by
    assert "k8s:io.cilium.k8s.policy.name=db-in" in out.ingress_denied_by[0].labels
    # Cilium's numbers, so Hubble's own clients read them
    assert hb.Flow.DESCRIPTOR.fields_by_name["egress_allowed_by"].number == 21001
    assert hb.Flow.DESCRIPTOR.fields_by_name["ingress_allowed_by"].number == 21002
    assert hb.Flow.DESCRIPTOR.fields_by_name["egress_denied_by"].number == 21004
    assert hb.Flow.DESCRIPTOR.fields_by_name["ingress_denied_by"].number == 21005


def test_no_verdict_no_policies():
    f = record()
    f.ClearField("policy")
    out = to_hubble(f)
    assert not (out.egress_allowed_by or out.ingress_allowed_by or out.egress_denied_by
                or out.ingress_denied_by)


def test_drop_reason_follows_the_verdict():
    mapper = HubbleMapper("test")
    enforced = record(pf.DROPPED, "NETFILTER_DROP", pf.POLICY_ENFORCED,
                      ingress=(pf.POLICY_DENIED, "data/db-in"))
    otherwise = record(pf.DROPPED, "NETFILTER_DROP", pf.POLICY_DROPPED_OTHERWISE,
                       ingress=(pf.POLICY_ALLOWED, "data/db-in"))
    assert mapper.to_hubble(enforced).drop_reason_desc == hb.POLICY_DENIED
    # no NetworkPolicy denies it, but a netfilter drop of pod traffic may be a policy of a
    # kind podflow does not read (Calico's, Cilium's): Hubble's reading stays a policy's
    assert mapper.to_hubble(otherwise).drop_reason_desc == hb.POLICY_DENIED
    queue = record(pf.DROPPED, "QDISC_DROP", pf.POLICY_DROPPED_OTHERWISE,
                   ingress=(pf.POLICY_ALLOWED, "data/db-in"))
    assert mapper.to_hubble(queue).drop_reason_desc == hb.DROP_RATE_LIMITED
    # the same record with and without a verdict is not mixed up by the mapper's caches
    plain = record(pf.DROPPED, "NETFILTER_DROP")
    plain.ClearField("policy")
    assert mapper.to_hubble(plain).drop_reason_desc == hb.POLICY_DENIED   # pod traffic
