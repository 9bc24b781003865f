"""`hubble observe`'s filter flags against a REAL agent on the lab (root, eBPF on real veths):
each flag's FlowFilter, as the hubble CLI builds it, gives exactly the flows it names.

The filters below are what `hubble observe FLAGS --print-raw-filters` prints (hubble 1.19.4),
parsed into podflow's own declaration of the API; the client is generated from that
declaration too. The expected flows come from an oracle that reads the unfiltered stream's
fields directly (not Hubble's filter code): for each flag, the filtered answer must be
exactly the flows the oracle picks, and neither nothing nor everything.
"""

from __future__ import annotations

import os
import time

import grpc
import pytest
from google.protobuf import json_format, struct_pb2, timestamp_pb2

from podflow_hubble.flow import flow_pb2 as hb
from podflow_hubble.observer import observer_pb2, observer_pb2_grpc

pytestmark = pytest.mark.root

AGENT_ARGS = ("--active-timeout", "1", "--idle-timeout", "2", "--sweep-interval", "0.2",
              "--syn-timeout", "1")
CART_VIP = "10.96.0.12"


class Cluster:
    """The lab, its agent on node-a, and a Hubble client of that agent."""

    def __init__(self, lab, agent, pods):
        self.lab, self.agent, self.pods = lab, agent, pods
        self.channel = grpc.insecure_channel(agent.ready["hubble_listen"])
        self.stub = observer_pb2_grpc.ObserverStub(self.channel)
        self.cut = None  # (until Timestamp, every flow up to it)

    def flows(self, **request) -> list[hb.Flow]:
        out = self.stub.GetFlows(observer_pb2.GetFlowsRequest(**request), timeout=30)
        return [r.flow for r in out if r.HasField("flow")]


def _traffic(pods, lab) -> None:
    frontend, cart, storefront, db = (pods[k] for k in ("frontend", "cart", "storefront", "db"))
    for _ in range(2):
        frontend.fetch(CART_VIP, 80)                            # pod -> Service -> backend
    storefront.fetch(cart.ip, 8080)                             # pod -> pod, another namespace
    storefront.fetch(db.ip, 5432)                               # across nodes, without `shop`
    frontend.fetch(storefront.ip, 9999, protocol="udp")         # UDP
    frontend.run(["ping", "-c", "2", "-i", "0.2", storefront.ip], capture_output=True)
    rule = lab.add_drop_rule(frontend, db, port=5432, node=frontend.node)
    try:
        for _ in range(2):
            frontend.fetch(db.ip, 5432, timeout_s=0.5, check=False)  # dropped by "policy"
    finally:
        lab.remove_drop_rule(rule)


@pytest.fixture(scope="module")
def cluster(ebpf_ready):
    from agent.lab import Lab

    with Lab(f"hubl{os.getpid() % 10000}") as lab:
        a = lab.add_node("node-a", kind="bridge", pod_cidr="10.244.1.0/24")
        b = lab.add_node("node-b", kind="routed", pod_cidr="10.244.2.0/24")
        pods = {
            "frontend": a.add_pod("shop", "frontend-1", labels={"app": "frontend"},
                                  owner=("Deployment", "frontend")),
            "cart": a.add_pod("shop", "cart-1", labels={"app": "cart"},
                              owner=("Deployment", "cart")),
            "storefront": a.add_pod("web", "storefront-1", labels={"app": "storefront"}),
            "db": b.add_pod("data", "db-0", labels={"app": "db"}, owner=("StatefulSet", "db")),
        }
        pods["cart"].serve(8080)
        pods["storefront"].serve(9999, protocol="udp")
        pods["db"].serve(5432)
        lab.add_service("shop", "cart", cluster_ip=CART_VIP, port=80,
                        backends=[(pods["cart"], 8080)])
        meta = lab.write_metadata(os.path.join(lab.run_dir, "metadata.json"))
        agent = a.start_agent(*AGENT_ARGS, metadata_file=meta)
        c = Cluster(lab, agent, pods)
        try:
            _traffic(pods, lab)
            deadline = time.monotonic() + 30
            while True:  # until every kind of traffic made above was recorded
                seen = c.flows()
                kinds = {(f.l4.WhichOneof("protocol"), f.verdict) for f in seen}
                if {("TCP", hb.FORWARDED), ("UDP", hb.FORWARDED), ("ICMPv4", hb.FORWARDED),
                        ("TCP", hb.DROPPED)} <= kinds or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            cut_ns = time.time_ns()
            time.sleep(1.0)  # records of flows up to the cut are in the store by now
            until = timestamp_pb2.Timestamp(seconds=cut_ns // 10**9, nanos=cut_ns % 10**9)
            c.cut = (until, c.flows(until=until))
            yield c
        finally:
            c.channel.close()


def cli_filters(*lines: str) -> list[hb.FlowFilter]:
    """FlowFilters from the JSON lines `hubble observe --print-raw-filters` prints."""
    return [json_format.Parse(line, hb.FlowFilter()) for line in lines]


def either(side_test):
    return lambda f: side_test(f.source, f) or side_test(f.destination, f)


def _ports(f: hb.Flow) -> tuple[int, int]:
    kind = f.l4.WhichOneof("protocol")
    if kind in ("TCP", "UDP", "SCTP"):
        l4 = getattr(f.l4, kind)
        return l4.source_port, l4.destination_port
    return 0, 0


# (id, hubble observe flags, whitelist, blacklist, oracle over a Hubble flow)
CASES = [
    ("namespace", "--namespace web",
     cli_filters('{"source_pod":["web/"]}', '{"destination_pod":["web/"]}'), [],
     either(lambda ep, f: ep.namespace == "web")),
    ("pod", "--pod shop/frontend",
     cli_filters('{"source_pod":["shop/frontend"]}', '{"destination_pod":["shop/frontend"]}'),
     [], either(lambda ep, f: ep.namespace == "shop" and ep.pod_name.startswith("frontend"))),
    ("ip", "--ip FRONTEND",
     None, [], None),  # filled in by the test: the frontend pod's address
    ("port", "--port 8080",
     cli_filters('{"source_port":["8080"]}', '{"destination_port":["8080"]}'), [],
     lambda f: 8080 in _ports(f)),
    ("protocol", "--protocol udp", cli_filters('{"protocol":["udp"]}'), [],
     lambda f: f.l4.WhichOneof("protocol") == "UDP"),
    ("verdict", "--verdict DROPPED", cli_filters('{"verdict":["DROPPED"]}'), [],
     lambda f: f.verdict == hb.DROPPED),
    ("type-drop", "--type drop", cli_filters('{"event_type":[{"type":1}]}'), [],
     lambda f: f.event_type.type == 1),
    ("type-trace-sub", "--type trace:from-endpoint",
     cli_filters('{"event_type":[{"type":4,"match_sub_type":true,"sub_type":5}]}'), [],
     lambda f: f.event_type.type == 4 and f.event_type.sub_type == 5),
    ("not", "--not --namespace shop", [],
     cli_filters('{"source_pod":["shop/"]}', '{"destination_pod":["shop/"]}'),
     lambda f: f.source.namespace != "shop" and f.destination.namespace != "shop"),
    ("to-service", "--to-service shop/cart", cli_filters('{"destination_service":["shop/cart"]}'),
     [], lambda f: (f.destination_service.namespace, f.destination_service.name)
     == ("shop", "cart")),
    ("label", "--label app=cart",
     cli_filters('{"source_label":["app=cart"]}', '{"destination_label":["app=cart"]}'), [],
     either(lambda ep, f: "k8s:app=cart" in ep.labels)),
]


@pytest.mark.parametrize("flags,whitelist,blacklist,oracle", [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_each_filter_flag_gives_exactly_its_flows(cluster, flags, whitelist, blacklist, oracle):
    until, everything = cluster.cut
    if whitelist is None:  # --ip: the frontend pod's address, either side
        ip = cluster.pods["frontend"].ip
        whitelist = cli_filters(f'{{"source_ip":["{ip}"]}}', f'{{"destination_ip":["{ip}"]}}')
        oracle = lambda f: ip in (f.IP.source, f.IP.destination)  # noqa: E731
    got = cluster.flows(until=until, whitelist=whitelist, blacklist=blacklist)
    expected = [f for f in everything if oracle(f)]
    assert expected and len(expected) < len(everything), f"{flags}: the lab has no contrast"
    assert [f.uuid for f in got] == [f.uuid for f in expected], flags


def test_last_and_since_pick_by_position_and_time(cluster):
    until, everything = cluster.cut
    # --last 3 (with a filter: the last 3 that match)
    assert [f.uuid for f in cluster.flows(until=until, number=3)] == \
        [f.uuid for f in everything[-3:]]
    udp = cli_filters('{"protocol":["udp"]}')
    matching = [f for f in everything if f.l4.WhichOneof("protocol") == "UDP"]
    assert [f.uuid for f in cluster.flows(until=until, number=1, whitelist=udp)] == \
        [matching[-1].uuid]
    # --since: from a time on (the middle flow's)
    middle = everything[len(everything) // 2].time
    since_ns = middle.seconds * 10**9 + middle.nanos
    got = cluster.flows(since=middle, until=until)
    assert [f.uuid for f in got] == [f.uuid for f in everything
                                     if f.time.seconds * 10**9 + f.time.nanos >= since_ns]


def test_follow_sends_the_new_flows_that_match(cluster):
    """`hubble observe -f --protocol icmp` while a pod pings."""
    start_ns = time.time_ns()
    call = cluster.stub.GetFlows(observer_pb2.GetFlowsRequest(
        follow=True, whitelist=cli_filters('{"protocol":["icmp"]}')), timeout=60)
    frontend, storefront = cluster.pods["frontend"], cluster.pods["storefront"]
    time.sleep(0.5)
    frontend.run(["ping", "-c", "3", "-i", "0.2", storefront.ip], capture_output=True)
    got = []
    for resp in call:
        if resp.HasField("flow"):
            got.append(resp.flow)
            if {(f.IP.source, f.IP.destination) for f in got} >= {
                    (frontend.ip, storefront.ip), (storefront.ip, frontend.ip)}:
                break
    call.cancel()
    # Hubble's "icmp" is ICMPv4 and ICMPv6 (pods send router solicitations too)
    assert all(f.l4.WhichOneof("protocol") in ("ICMPv4", "ICMPv6") for f in got)
    assert all(f.time.seconds * 10**9 + f.time.nanos > start_ns for f in got)
    echo = [f for f in got if f.IP.source == frontend.ip]
    assert echo[0].source.pod_name == "frontend-1" and echo[0].destination.namespace == "web"
    assert echo[0].Summary.startswith("ICMPv4 EchoRequest")


def test_the_agent_reads_like_a_hubble_server(cluster):
    """What `hubble status`, `hubble list namespaces` and a drop record show."""
    status = cluster.stub.ServerStatus(observer_pb2.ServerStatusRequest(), timeout=10)
    assert status.seen_flows >= len(cluster.cut[1]) and status.max_flows == 65535
    namespaces = cluster.stub.GetNamespaces(observer_pb2.GetNamespacesRequest(), timeout=10)
    assert {"shop", "web", "data"} <= {n.namespace for n in namespaces.namespaces}
    drops = [f for f in cluster.cut[1] if f.verdict == hb.DROPPED]
    assert drops[0].drop_reason_desc == hb.POLICY_DENIED
    assert drops[0].destination.pod_name == "db-0" and drops[0].source.pod_name == "frontend-1"
    served = [f for f in cluster.cut[1] if f.destination_service.name == "cart"]
    assert {f.destination.pod_name for f in served} == {"cart-1"}  # the backend is the end
    replies = [f for f in cluster.cut[1] if f.source_service.name == "cart"]
    assert replies and all(f.is_reply.value for f in replies)
    ext = struct_pb2.Struct()
    assert served[0].extensions.Unpack(ext)
    assert ext["service"]["ip"] == CART_VIP and ext["packets"] >= 1
