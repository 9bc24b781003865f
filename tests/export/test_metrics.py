"""The Prometheus endpoint, scraped with a real HTTP client and parsed with
prometheus_client's own parser."""

from __future__ import annotations

import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent.config import AgentConfig
from agent.errors import ConfigError
from agent.export import metrics
from podflow_api.v1 import flow_pb2, observer_pb2
from tests.export.conftest import make_flow, wait_for
from tests.policy.verdicts import with_verdict


def scrape(server) -> dict[str, dict[tuple, float]]:
    """family name -> {sorted label items (sample name first): value}."""
    address = server.ready_info()["metrics"]
    text = urllib.request.urlopen(f"http://{address}/metrics", timeout=5).read().decode()
    out: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        samples = out.setdefault(family.name, {})
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            samples[tuple(sorted(sample.labels.items()))] = sample.value
    return out


@pytest.fixture
def serve(store, stats):
    servers = []

    def start(*argv):
        config = AgentConfig.from_flags(["--metrics", "127.0.0.1:0", *argv])
        server = metrics.MetricsServer(config.metrics, store, stats)
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def _feed_and_wait(store, server, flows):
    before = sum(v[0] for v in server.counters.snapshot()[0].values())
    store.extend(flows)
    counted = sum(1 for f in flows if server.counters.counts(f))
    wait_for(lambda: sum(v[0] for v in server.counters.snapshot()[0].values()) == before + counted)


def test_disabled_without_the_flag(stats):
    from agent.main import build_stages

    config = AgentConfig.from_flags(["--metadata", "none", "--no-drops"])
    assert config.metrics.address is None
    assert not any(isinstance(s, metrics.MetricsServer) for s in build_stages(config, stats))


def test_flows_packets_bytes_by_namespace_pair_service_and_verdict(serve, store):
    server = serve()
    flows = [make_flow(0, src_ns="shop", dst_ns="db", packets=3, nbytes=300, service="db/pg"),
             make_flow(1, src_ns="shop", dst_ns="db", packets=2, nbytes=200, service="db/pg"),
             make_flow(2, src_ns="web", dst_ns="shop", packets=1, nbytes=60),
             make_flow(3, src_ns="web", dst_ns="shop", packets=4, nbytes=80,
                       verdict=flow_pb2.DROPPED, drop_reason="NETFILTER_DROP")]
    _feed_and_wait(store, server, flows)
    got = scrape(server)
    key = lambda s, d, svc, v: (("destination_namespace", d), ("service", svc),  # noqa: E731
                                ("source_namespace", s), ("verdict", v))
    assert got["podflow_flows"] == {key("shop", "db", "db/pg", "FORWARDED"): 2,
                                    key("web", "shop", "", "FORWARDED"): 1,
                                    key("web", "shop", "", "DROPPED"): 1}
    assert got["podflow_packets"][key("shop", "db", "db/pg", "FORWARDED")] == 5
    assert got["podflow_bytes"][key("shop", "db", "db/pg", "FORWARDED")] == 500
    assert got["podflow_drops"] == {(("reason", "NETFILTER_DROP"),): 4}


def _to_pod(seq, src_kind, src_node, point=flow_pb2.POD_VETH, dst_kind=flow_pb2.POD):
    f = make_flow(seq, direction=flow_pb2.TO_POD, point=point)
    for ep, kind in ((f.source, src_kind), (f.destination, dst_kind)):
        ep.kind = kind
        if kind != flow_pb2.POD:  # the world or a node: no pod names
            ep.namespace = ep.pod_name = ""
    f.source.node_name = src_node
    return f


# The rule itself is agent.wire.counting's (tests/wire/test_counting.py); these are the cases
# where the metrics' own copy used to disagree with the TUI's and now follow it.
COUNT_CASES = {
    "from-pod-at-its-veth": (make_flow(0), True),
    "same-packet-on-the-bridge": (make_flow(0, point=flow_pb2.BRIDGE), False),
    "to-pod-from-a-local-pod": (_to_pod(0, flow_pb2.POD, "node-t"), False),
    # counted by the sender's agent: a sum over every agent counts the packet once
    "to-pod-from-a-pod-on-another-node": (_to_pod(0, flow_pb2.POD, "node-b"), False),
    "to-pod-from-the-world": (_to_pod(0, flow_pb2.WORLD, ""), True),
    "bridge-record-of-node-traffic": (_to_pod(0, flow_pb2.NODE, "", point=flow_pb2.BRIDGE,
                                              dst_kind=flow_pb2.WORLD), True),
}


@pytest.mark.parametrize("flow,counted", COUNT_CASES.values(), ids=COUNT_CASES.keys())
def test_one_observation_point_per_packet(flow, counted):
    assert metrics.FlowCounters([], 10, 60).counts(flow) is counted


def _bare(direction, src_ip, dst_ip, point=flow_pb2.POD_VETH):
    """A record of an agent without metadata: addresses only."""
    f = flow_pb2.Flow(node_name="node-t", traffic_direction=direction, observation_point=point,
                      packets=1, bytes=100, verdict=flow_pb2.FORWARDED)
    f.ip.source, f.ip.destination = src_ip, dst_ip
    return f


def test_without_metadata_a_same_node_packet_counts_once():
    counters = metrics.FlowCounters([], 10, 60)
    # pod A -> pod B on this node: seen leaving A, on the bridge, entering B (any batch order);
    # a packet from another node's pod C entering B.
    counters.add([_bare(flow_pb2.TO_POD, "10.0.0.1", "10.0.0.2"),
                  _bare(flow_pb2.FROM_POD, "10.0.0.1", "10.0.0.2", point=flow_pb2.BRIDGE),
                  _bare(flow_pb2.FROM_POD, "10.0.0.1", "10.0.0.2"),
                  _bare(flow_pb2.TO_POD, "10.0.9.9", "10.0.0.2")])
    series, _drops = counters.snapshot()
    assert series[()][:3] == [2, 2, 200]


def test_labels_are_chosen_by_flag(serve, store):
    server = serve("--metrics-labels", "protocol,traffic_direction")
    _feed_and_wait(store, server, [make_flow(0), make_flow(1)])
    got = scrape(server)
    assert got["podflow_flows"] == {(("protocol", "tcp"), ("traffic_direction", "FROM_POD")): 2}


def test_series_are_capped_with_an_overflow_series(serve, store):
    server = serve("--metrics-labels", "source_namespace", "--metrics-max-series", "3")
    _feed_and_wait(store, server, [make_flow(i, src_ns=f"ns{i}", packets=1) for i in range(10)])
    got = scrape(server)["podflow_flows"]
    assert len(got) == 4
    assert got[(("source_namespace", metrics.OVERFLOW),)] == 7
    assert sum(got.values()) == 10, "nothing is dropped, only folded"


def test_series_of_deleted_pods_expire(serve, store):
    server = serve("--metrics-labels", "source_pod", "--metrics-series-ttl", "0.5")
    _feed_and_wait(store, server, [make_flow(0, src_ns="gone")])
    assert (("source_pod", "gone-pod"),) in scrape(server)["podflow_flows"]
    time.sleep(0.7)
    _feed_and_wait(store, server, [make_flow(1, src_ns="alive")])
    assert set(scrape(server)["podflow_flows"]) == {(("source_pod", "alive-pod"),)}


def test_agent_health_from_stats(serve, stats):
    server = serve()
    stats.add_lost(observer_pb2.EXPORTER_WRITE, 5)
    stats.add_lost(observer_pb2.KERNEL_RING_BUFFER, 2)
    stats.set_interface(4, "cni0")
    stats.set_interface(9, "veth1")
    stats.set_datapath_errors({"parse_error": 3})
    stats.exporter_error = "cannot write /x: No space left on device"
    stats.metadata_stale = True
    stats.set_interface_notes("veth1", {"egress": "foreign cls_bpf filter 'x' runs first"})
    assert scrape(server)["podflow_datapath_tracing"] == {(): 0}
    stats.set_datapath_state("tracing")
    got = scrape(server)
    assert got["podflow_datapath_tracing"] == {(): 1}
    assert got["podflow_interface_notes"] == {(): 1}
    assert got["podflow_lost_events"] == {(("stage", "EXPORTER_WRITE"),): 5,
                                          (("stage", "KERNEL_RING_BUFFER"),): 2}
    assert got["podflow_interfaces_traced"] == {(): 2}
    assert got["podflow_datapath_errors"] == {(("reason", "parse_error"),): 3}
    assert got["podflow_exporter_failing"] == {(): 1}
    assert got["podflow_metadata_stale"] == {(): 1}


BAD_ARGS = {
    "unknown-label": (["--metrics-labels", "source_namespace,colour"], "--metrics-labels.*colour"),
    "no-port": (["--metrics", "localhost"], "--metrics must be HOST:PORT"),
    "zero-series": (["--metrics-max-series", "0"], "--metrics-max-series"),
}


@pytest.mark.parametrize("argv,message", BAD_ARGS.values(), ids=BAD_ARGS.keys())
def test_bad_flags_name_the_flag(argv, message):
    with pytest.raises(ConfigError, match=message):
        AgentConfig.from_flags(["--metrics", "127.0.0.1:0", *argv])


def test_policy_verdicts_and_findings_by_policy(serve, store):
    server = serve()
    allowed = (flow_pb2.POLICY_ALLOWED, "shop/cart-in")
    denied = (flow_pb2.POLICY_DENIED, "data/db-in")
    flows = [
        with_verdict(make_flow(0), ingress=allowed),
        with_verdict(make_flow(1), ingress=allowed, enforcement=flow_pb2.POLICY_ALLOWED_DELIVERED),
        with_verdict(make_flow(2), egress=allowed, ingress=denied),
        with_verdict(make_flow(3, verdict=flow_pb2.DROPPED, drop_reason="NETFILTER_DROP"),
                egress=allowed, ingress=denied, enforcement=flow_pb2.POLICY_ENFORCED),
        # at the destination's veth: not counted as a packet, but it shows a finding
        with_verdict(_to_pod(4, flow_pb2.POD, "node-t"), ingress=denied,
                enforcement=flow_pb2.POLICY_NOT_ENFORCED),
        with_verdict(make_flow(5, verdict=flow_pb2.DROPPED, drop_reason="NO_SOCKET"), ingress=allowed,
                enforcement=flow_pb2.POLICY_DROPPED_OTHERWISE),
    ]
    _feed_and_wait(store, server, flows)
    got = scrape(server)
    pv = lambda p, v: (("policy", p), ("verdict", v))  # noqa: E731
    pf = lambda p, f: (("finding", f), ("policy", p))  # noqa: E731
    assert got["podflow_policy_verdicts"] == {pv("shop/cart-in", "allowed"): 5,
                                              pv("data/db-in", "denied"): 2}
    assert got["podflow_policy_findings"] == {pf("data/db-in", "enforced"): 1,
                                              pf("data/db-in", "not-enforced"): 1,
                                              pf("shop/cart-in", "dropped-otherwise"): 1}


def test_policy_series_are_capped_too(serve, store):
    server = serve("--metrics-max-series", "2")
    flows = [with_verdict(make_flow(i), ingress=(flow_pb2.POLICY_ALLOWED, f"ns/p{i}")) for i in range(5)]
    _feed_and_wait(store, server, flows)
    verdicts, _ = server.counters.policy_snapshot()
    assert len(verdicts) <= 3 and verdicts[(metrics.OVERFLOW, metrics.OVERFLOW)] >= 3


@pytest.mark.parametrize("labels", [("source_namespace", "destination_namespace", "service",
                                     "verdict"),
                                    ("protocol", "traffic_direction", "outcome", "interface")])
def test_a_batch_counts_what_its_records_one_by_one_count(labels):
    """The datapath's batches are counted per identity with numpy; the counters must equal
    those of the same records counted one by one (end notices count nothing)."""
    from agent.enrich.batch import BatchEnricher
    from tests import batches
    from tests.enrich.test_enrich import CART1, CART2, FRONTEND, cluster

    records = [batches.rec(FRONTEND, CART1, 40000 + i, 9000, "tcp" if i % 3 else "udp",
                           packets=i + 1, nbytes=100 * (i + 1), hook=i % 2)
               for i in range(60)]
    records += [batches.rec(CART2, FRONTEND, 5000 + i, 80, packets=2, ifindex=9)
                for i in range(20)]
    records.append(batches.rec(FRONTEND, CART1, 40001, 9000, update=True))
    batch = batches.batch(*records)
    batch.outcome[::4] = flow_pb2.ESTABLISHED
    BatchEnricher(cluster(), None).enrich(batch)
    by_batch = metrics.FlowCounters(labels, 1000, 600)
    by_batch.add_batch(batch, 0, len(batch))
    one_by_one = metrics.FlowCounters(labels, 1000, 600)
    one_by_one.add([batch.flow(i) for i in range(len(batch)) if not batch.update[i]])
    got, want = by_batch.snapshot()[0], one_by_one.snapshot()[0]
    assert {k: v[:3] for k, v in got.items()} == {k: v[:3] for k, v in want.items()}
    assert sum(v[0] for v in got.values()) > 0
