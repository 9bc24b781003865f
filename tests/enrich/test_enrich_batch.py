"""Enrichment of a batch of records gives each record exactly what enriching it alone gives,
while naming once per identity: ports and conntrack count only where a Service may be
involved (no root needed)."""

from __future__ import annotations

import numpy as np
import pytest

from agent.enrich.batch import BatchEnricher
from agent.enrich.conntrack import Entry, Tuple5
from agent.enrich.names import FlowEnricher
from podflow_api.v1 import flow_pb2
from tests import batches
from tests.enrich.test_enrich import CART1, CART_VIP, CASES, FRONTEND, cluster, conntrack

FIELDS = ("is_reply", "source", "destination", "category", "service", "backend", "translation")


def _record(flow: flow_pb2.Flow) -> dict:
    kind = flow.l4.WhichOneof("protocol")
    proto = {"icmpv4": "icmp"}.get(kind, kind)
    if proto == "icmp":
        sport, dport = flow.l4.icmpv4.type, flow.l4.icmpv4.code
    else:
        l4 = getattr(flow.l4, kind)
        sport, dport = l4.source_port, l4.destination_port
    return batches.rec(flow.ip.source, flow.ip.destination, sport, dport, proto)


def _names(flow: flow_pb2.Flow) -> dict:
    return {name: getattr(flow, name) for name in FIELDS}


@pytest.mark.parametrize("record", [pytest.param(c[1], id=c[0]) for c in CASES])
def test_a_batch_record_gets_what_the_record_alone_gets(record):
    alone = flow_pb2.Flow()
    alone.CopyFrom(record)
    FlowEnricher(cluster(), conntrack()).enrich([alone])
    batch = batches.batch(_record(record))
    BatchEnricher(cluster(), conntrack()).enrich(batch)
    assert _names(batch.flow(0)) == _names(alone)


def test_pod_to_pod_churn_is_one_identity():
    batch = batches.batch(*[batches.rec(FRONTEND, CART1, 30000 + i, 9000 + i % 64)
                            for i in range(2000)])
    enricher = BatchEnricher(cluster(), conntrack())
    enricher.enrich(batch)
    assert len(batch.idents) == 1
    assert batch.flow(1999).category == flow_pb2.POD_TO_POD_CROSS_NODE


def test_service_connections_share_one_identity_per_backend():
    ct = conntrack()
    for sport in range(41000, 41500):
        ct._remember(Entry(Tuple5(6, FRONTEND, sport, CART_VIP, 80),
                           Tuple5(6, CART1, 8080, FRONTEND, sport)), 0)
    batch = batches.batch(*[batches.rec(FRONTEND, CART_VIP, sport, 80, "tcp")
                            for sport in range(41000, 41500)])
    BatchEnricher(cluster(), ct).enrich(batch)
    assert len(batch.idents) == 1
    flows = [batch.flow(i) for i in (0, 499)]
    assert {(f.service.name, f.backend.pod_name) for f in flows} == {("cart", "cart-1")}
    assert [f.l4.tcp.source_port for f in flows] == [41000, 41499]


def test_looked_up_names_go_on_the_endpoints():
    batch = batches.batch(batches.rec(FRONTEND, "203.0.113.9", 40000, 443, "tcp"))
    batch.group_names = {0: ((), ("api.example.com",))}
    BatchEnricher(cluster(), None).enrich(batch)
    flow = batch.flow(0)
    assert list(flow.destination.names) == ["api.example.com"]
    assert flow.category == flow_pb2.POD_TO_WORLD


def test_without_metadata_only_translations_from_conntrack_events():
    batch = batches.batch(batches.rec(FRONTEND, CART_VIP, 40000, 80, "tcp"),
                          batches.rec(FRONTEND, CART_VIP, 40001, 80, "tcp"))
    BatchEnricher(None, conntrack()).enrich(batch)
    with_entry, without = batch.flow(0), batch.flow(1)
    assert with_entry.translation.translated_ip == CART1 and not with_entry.is_reply
    assert not without.HasField("translation") and not without.HasField("source")
    assert np.array_equal(batch.ident[:1], batch.ident[:1])


def test_under_overload_new_identities_get_no_conntrack_detail_and_say_so():
    from agent.datapath.shedding import NO_DETAIL
    from agent.stats import AgentStats

    stats = AgentStats("n", "t")
    stats.shed_level = NO_DETAIL
    batch = batches.batch(batches.rec(FRONTEND, CART_VIP, 40000, 80, "tcp"))
    BatchEnricher(cluster(), conntrack(), stats=stats).enrich(batch)
    flow = batch.flow(0)
    assert flow.service.name == "cart" and not flow.backend.pod_name
    assert stats.snapshot_datapath_errors()["enrichment_detail_shed"] == 1
    stats.shed_level = 0
    BatchEnricher(cluster(), conntrack(), stats=stats).enrich(batch)
    assert batch.flow(0).backend.pod_name == "cart-1"
