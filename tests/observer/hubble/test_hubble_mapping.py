"""podflow record -> Hubble flow, field by field (agent/observer/hubble/mapping.py rules, written by mapper.py)."""

from __future__ import annotations

import uuid

import pytest
from google.protobuf import json_format, struct_pb2
from tests.observer.observer_flows import customize, make_flow

from agent.observer.hubble import encode, mapping
from agent.observer.hubble.mapper import HubbleMapper, to_hubble
from podflow_api.v1 import flow_pb2 as pf
from podflow_hubble.flow import flow_pb2 as hb

T0 = 1_796_000_000_123_456_789


def record(**overrides) -> pf.Flow:
    """make_flow's record: frontend (node-a) -> cart backend through Service shop/cart, seen
    at the frontend's veth as it leaves the pod, 3 packets / 102 bytes, ESTABLISHED."""
    return make_flow(2, node="node-a", time_ns=T0, **overrides)


def ext(flow: hb.Flow) -> dict:
    struct = struct_pb2.Struct()
    assert flow.extensions.Unpack(struct)
    return json_format.MessageToDict(struct)


# -- copied fields --------------------------------------------------------------------------

def test_time_node_ip_l4_and_interface_are_copied():
    out = to_hubble(record(), version="1.2.3")
    assert out.time.ToNanoseconds() == T0
    assert out.node_name == "node-a"
    assert (out.IP.source, out.IP.destination, out.IP.ipVersion) == \
        ("10.244.1.3", "10.244.2.17", hb.IPv4)
    assert out.l4.WhichOneof("protocol") == "TCP"
    assert (out.l4.TCP.source_port, out.l4.TCP.destination_port) == (40002, 8080)
    assert (out.l4.TCP.flags.SYN, out.l4.TCP.flags.ACK, out.l4.TCP.flags.FIN) == \
        (True, True, False)
    assert (out.interface.index, out.interface.name) == (12, "veth1a2b3c4d")
    assert (out.emitter.name, out.emitter.version) == ("podflow", "1.2.3")


@pytest.mark.parametrize("proto,which,fields", [
    ("udp", "UDP", ("source_port", "destination_port")),
    ("sctp", "SCTP", ("source_port", "destination_port")),
    ("icmpv4", "ICMPv4", ("type", "code")),
    ("icmpv6", "ICMPv6", ("type", "code")),
], ids=["udp", "sctp", "icmpv4", "icmpv6"])
def test_every_l4_protocol(proto, which, fields):
    out = to_hubble(record(proto=proto))
    assert out.l4.WhichOneof("protocol") == which
    src = getattr(record(proto=proto).l4, proto)
    assert [getattr(getattr(out.l4, which), f) for f in fields] == \
        [getattr(src, f) for f in fields]


def test_ipv6_and_no_tcp_flags():
    flow = record(ip__ip_version=pf.IPV6, src="fd00::1", dst="fd00::2")
    flow.l4.tcp.ClearField("flags")
    out = to_hubble(flow)
    assert out.IP.ipVersion == hb.IPv6
    assert not out.l4.TCP.HasField("flags")  # Hubble's flags filter reads "absent" as no flags


def test_uuid_is_stable_per_record_and_differs_between_records():
    a, b = to_hubble(record()), to_hubble(record())
    assert a.uuid == b.uuid
    assert uuid.UUID(a.uuid).version == 8
    assert to_hubble(record(packets=99)).uuid != a.uuid


# -- verdicts and drops ---------------------------------------------------------------------

def dropped(reason: str, **overrides) -> pf.Flow:
    return record(verdict=pf.DROPPED, drop_reason=reason, drop_reason_code=77,
                  observation_point=pf.HOST_STACK, **overrides)


def test_forwarded_is_a_trace_event():
    out = to_hubble(record())
    assert out.verdict == hb.FORWARDED
    assert out.Type == hb.L3_L4
    assert (out.event_type.type, out.event_type.sub_type) == (4, mapping.TRACE_FROM_ENDPOINT)
    assert not out.HasField("l7")


@pytest.mark.parametrize("reason,overrides,expected", [
    ("NETFILTER_DROP", {}, hb.POLICY_DENIED),
    ("NETFILTER_DROP", {"destination__kind": pf.WORLD}, hb.POLICY_DENIED),
    ("NETFILTER_DROP", {"source__kind": pf.NODE, "destination__kind": pf.WORLD},
     hb.DROP_REASON_UNKNOWN),
    ("NETFILTER_DROP", {"source__host_network": True, "destination__host_network": True},
     hb.DROP_REASON_UNKNOWN),
    ("NETFILTER_DROP", {"source__kind": pf.ENDPOINT_UNKNOWN,
                        "destination__kind": pf.ENDPOINT_UNKNOWN}, hb.POLICY_DENIED),
    ("IP_RPFILTER", {}, hb.INVALID_SOURCE_IP),
    ("NO_SOCKET", {}, hb.SOCKET_LOOKUP_FAILED),
    ("IP_OUTNOROUTES", {}, hb.FIB_LOOKUP_FAILED),
    ("NEIGH_FAILED", {}, hb.FIB_LOOKUP_FAILED),
    ("TCP_CSUM", {}, hb.INVALID_PACKET_DROPPED),
    ("QDISC_DROP", {}, hb.DROP_RATE_LIMITED),
    ("IPV6_BAD_EXTHDR", {}, hb.INVALID_IPV6_EXTENSION_HEADER),
    ("NOT_SPECIFIED", {}, hb.DROP_REASON_UNKNOWN),
    ("REASON_999", {}, hb.DROP_REASON_UNKNOWN),
    ("", {}, hb.DROP_REASON_UNKNOWN),
], ids=["netfilter-pod-to-pod-is-policy", "netfilter-pod-to-world-is-policy",
        "netfilter-node-to-world-is-not", "netfilter-host-network-pods-are-not",
        "netfilter-without-metadata-is-policy", "rpfilter", "no-socket", "no-route",
        "neighbour", "checksum", "qdisc", "ipv6-exthdr", "not-specified", "unnamed", "empty"])
def test_drop_reasons(reason, overrides, expected):
    out = to_hubble(dropped(reason, **overrides))
    assert out.verdict == hb.DROPPED
    assert out.drop_reason_desc == expected
    assert out.drop_reason == expected  # the deprecated number, for old readers
    assert (out.event_type.type, out.event_type.sub_type) == (mapping.EVENT_DROP, expected)
    assert out.Type == hb.L3_L4
    assert out.trace_observation_point == hb.UNKNOWN_POINT
    assert ext(out)["drop_reason"] == reason
    assert ext(out)["drop_reason_code"] == 77
    assert f"kernel drop reason {reason or 'unknown'}" in out.Summary


# -- endpoints ------------------------------------------------------------------------------

def test_pod_endpoint():
    out = to_hubble(record())
    src = out.source
    assert (src.namespace, src.pod_name) == ("shop", "frontend-7d9f8c6b5-x2x4z")
    assert list(src.labels) == ["k8s:app=frontend", "k8s:io.kubernetes.pod.namespace=shop",
                                "k8s:tier=web"]  # pod-template-hash is per instance
    assert [(w.kind, w.name) for w in src.workloads] == [("Deployment", "frontend")]
    assert src.identity == mapping.identity_of(src.labels)
    assert src.identity >= 256
    assert src.ID == mapping.endpoint_id_of("shop", "frontend-7d9f8c6b5-x2x4z") > 0


def test_replicas_share_an_identity_and_only_local_pods_have_an_id():
    a = to_hubble(record(source__pod_name="frontend-1", source__labels=[
        "app=frontend", "pod-template-hash=aaa", "tier=web"]))
    b = to_hubble(record(source__pod_name="frontend-2", source__node_name="node-b",
                         source__labels=["app=frontend", "pod-template-hash=bbb", "tier=web"]))
    assert a.source.identity == b.source.identity
    assert a.source.ID and not b.source.ID
    other_ns = to_hubble(record(source__namespace="prod"))
    assert other_ns.source.identity != a.source.identity


def test_identity_scheme_is_a_documented_hash():
    labels = ["k8s:app=x", "k8s:io.kubernetes.pod.namespace=default"]
    assert mapping.identity_of(labels) == mapping.identity_of(list(reversed(labels)))
    assert 256 <= mapping.identity_of([]) < 1 << 24


@pytest.mark.parametrize("overrides,labels,identity,pod", [
    ({"destination__kind": pf.NODE, "destination__node_name": "node-a"},
     ["reserved:host"], 1, ""),
    ({"destination__kind": pf.NODE, "destination__node_name": "node-b"},
     ["reserved:remote-node"], 6, ""),
    ({"destination__host_network": True, "destination__node_name": "node-b"},
     ["reserved:remote-node"], 6, "cart-5c7b9d8f4-abcde"),
    ({"destination__host_network": True}, ["reserved:host"], 1, "cart-5c7b9d8f4-abcde"),
    ({"destination__kind": pf.WORLD}, ["reserved:world"], 2, ""),
    ({"destination__kind": pf.SERVICE_IP}, [], 0, ""),
    ({"destination__kind": pf.ENDPOINT_UNKNOWN}, [], 0, ""),
], ids=["this-node", "other-node", "host-network-pod-elsewhere", "host-network-pod-here",
        "world", "untranslated-service-ip", "no-metadata"])
def test_reserved_endpoints(overrides, labels, identity, pod):
    flow = record(**overrides)
    if flow.destination.kind in (pf.NODE, pf.WORLD, pf.ENDPOINT_UNKNOWN):
        flow.destination.ClearField("pod_name")
        flow.destination.ClearField("labels")
        flow.destination.ClearField("workload")
    out = to_hubble(flow).destination
    assert (list(out.labels), out.identity, out.pod_name, out.ID) == (labels, identity, pod, 0)


def test_names_from_dns():
    out = to_hubble(record(source__names=["a.example"], destination__names=["b.example"]))
    assert (list(out.source_names), list(out.destination_names)) == (["a.example"],
                                                                     ["b.example"])


# -- direction, reply, services --------------------------------------------------------------

@pytest.mark.parametrize("overrides,reply", [
    ({}, False),  # to the backend of the Service it dialed
    ({"src": "10.244.2.17", "dst": "10.244.1.3", "sport": 8080, "dport": 40002}, True),
    ({"src": "10.96.0.20", "dst": "10.244.1.3", "sport": 80, "dport": 40002}, True),
    ({"service": pf.Service(), "backend": pf.Backend(), "sport": 80, "dport": 45000}, True),
    ({"service": pf.Service(), "backend": pf.Backend(), "sport": 45000, "dport": 80}, False),
    ({"service": pf.Service(), "backend": pf.Backend(), "sport": 5000, "dport": 5000}, False),
    ({"service": pf.Service(), "backend": pf.Backend(), "sport": 80, "dport": 45000,
      "l4__tcp__flags": pf.TCPFlags(SYN=True)}, False),
    ({"is_reply": True, "sport": 45000, "dport": 80}, True),
], ids=["service-request", "backend-answers", "service-address-answers", "lower-port-answers",
        "higher-port-asks", "equal-ports", "lone-syn-opens", "record-says-reply"])
def test_is_reply_is_always_set(overrides, reply):
    flow = record(**overrides)
    out = to_hubble(flow)
    assert out.HasField("is_reply")
    assert (out.is_reply.value, out.reply) == (reply, reply)


@pytest.mark.parametrize("icmp,type_,reply", [
    ("icmpv4", 8, False), ("icmpv4", 0, True), ("icmpv4", 3, True), ("icmpv4", 11, True),
    ("icmpv6", 128, False), ("icmpv6", 129, True), ("icmpv6", 1, True),
], ids=["echo-request", "echo-reply", "unreachable", "time-exceeded", "v6-echo-request",
        "v6-echo-reply", "v6-unreachable"])
def test_icmp_replies(icmp, type_, reply):
    flow = record(proto=icmp, service=pf.Service(), backend=pf.Backend())
    getattr(flow.l4, icmp).type = type_
    assert to_hubble(flow).is_reply.value is reply


@pytest.mark.parametrize("direction,reply,expected", [
    (pf.FROM_POD, False, hb.EGRESS),
    (pf.FROM_POD, True, hb.INGRESS),
    (pf.TO_POD, False, hb.INGRESS),
    (pf.TO_POD, True, hb.EGRESS),
    (pf.TRAFFIC_DIRECTION_UNKNOWN, False, hb.TRAFFIC_DIRECTION_UNKNOWN),
], ids=["pod-opens", "pod-answers", "pod-is-dialed", "answer-reaches-pod", "unknown"])
def test_traffic_direction_is_of_the_connection(direction, reply, expected):
    flow = record(traffic_direction=direction, is_reply=reply)
    assert to_hubble(flow).traffic_direction == expected
    assert ext(to_hubble(flow)).get("direction") == (
        pf.TrafficDirection.Name(direction) if direction else None)


@pytest.mark.parametrize("point,direction,hubble_point,code", [
    (pf.POD_VETH, pf.FROM_POD, hb.FROM_ENDPOINT, 5),
    (pf.POD_VETH, pf.TO_POD, hb.TO_ENDPOINT, 0),
    (pf.BRIDGE, pf.FROM_POD, hb.TO_HOST, 2),
    (pf.BRIDGE, pf.TO_POD, hb.FROM_HOST, 7),
    (pf.OBSERVATION_POINT_UNKNOWN, pf.FROM_POD, hb.UNKNOWN_POINT, 255),
], ids=["veth-from-pod", "veth-to-pod", "bridge-from-pod", "bridge-to-pod", "unknown"])
def test_trace_observation_points(point, direction, hubble_point, code):
    out = to_hubble(record(observation_point=point, traffic_direction=direction))
    assert out.trace_observation_point == hubble_point
    assert (out.event_type.type, out.event_type.sub_type) == (mapping.EVENT_TRACE, code)


def test_service_is_the_destination_on_requests_and_the_source_on_replies():
    request = to_hubble(record())
    assert (request.destination_service.namespace, request.destination_service.name) == \
        ("shop", "cart")
    assert not request.HasField("source_service")
    reply = to_hubble(record(src="10.244.2.17", dst="10.244.1.3", sport=8080, dport=40002,
                             traffic_direction=pf.TO_POD))
    assert (reply.source_service.namespace, reply.source_service.name) == ("shop", "cart")
    assert not reply.HasField("destination_service")
    # The backend stays the endpoint: the Service is not an endpoint in Hubble's terms.
    assert reply.source.pod_name == "frontend-7d9f8c6b5-x2x4z"
    assert not to_hubble(record(service=pf.Service())).HasField("destination_service")


# -- DNS ------------------------------------------------------------------------------------

def dns_record(response: bool, **overrides) -> pf.Flow:
    flow = record(proto="udp", service=pf.Service(), backend=pf.Backend(),
                  dst="10.96.0.10", sport=41000, dport=53, **overrides)
    flow.dns.query = "cart.shop.svc.cluster.local"
    flow.dns.qtypes.append("A")
    if response:
        flow.ip.source, flow.ip.destination = flow.ip.destination, flow.ip.source
        flow.l4.udp.source_port, flow.l4.udp.destination_port = 53, 41000
        flow.traffic_direction = pf.TO_POD
        flow.dns.response = True
        flow.dns.rcode = "NOERROR"
        flow.dns.ips.extend(["10.96.0.20"])
        flow.dns.ttl = 30
        flow.dns.latency_ns = 1_500_000
    return flow


def test_dns_query_at_the_clients_veth_is_an_l7_request():
    out = to_hubble(dns_record(response=False))
    assert (out.Type, out.event_type.type, out.event_type.sub_type) == (hb.L7, 129, 0)
    assert out.l7.type == hb.REQUEST
    dns = out.l7.dns
    assert (dns.query, list(dns.qtypes), dns.observation_source) == \
        ("cart.shop.svc.cluster.local.", ["A"], "podflow")
    assert out.Summary.startswith("DNS Query cart.shop.svc.cluster.local. A; ")
    assert out.trace_observation_point == hb.UNKNOWN_POINT


def test_dns_answer_at_the_clients_veth_is_an_l7_response():
    out = to_hubble(dns_record(response=True))
    assert out.is_reply.value and out.traffic_direction == hb.EGRESS
    assert (out.l7.type, out.l7.latency_ns) == (hb.RESPONSE, 1_500_000)
    dns = out.l7.dns
    assert (list(dns.ips), dns.ttl, dns.rcode) == (["10.96.0.20"], 30, 0)
    assert out.Summary.startswith(
        'DNS Answer "10.96.0.20" TTL: 30 (cart.shop.svc.cluster.local. A); ')


def test_dns_error_codes_are_numbers():
    flow = dns_record(response=True)
    flow.dns.rcode = "NXDOMAIN"
    del flow.dns.ips[:]
    out = to_hubble(flow)
    assert out.l7.dns.rcode == 3
    assert "DNS Answer RCode: NXDOMAIN (cart.shop.svc.cluster.local. A)" in out.Summary
    assert mapping.rcode_number("RCODE11") == 11


@pytest.mark.parametrize("overrides,l7", [
    ({"traffic_direction": pf.TO_POD}, False),  # the query arriving at the DNS server's veth
    ({"observation_point": pf.BRIDGE}, False),
    ({"traffic_direction": pf.TO_POD, "source__host_network": True}, True),
    ({"traffic_direction": pf.TO_POD, "source__kind": pf.NODE}, True),
    ({"verdict": pf.DROPPED, "drop_reason": "NETFILTER_DROP"}, False),
], ids=["server-side-veth", "bridge", "host-network-client", "node-client", "dropped"])
def test_dns_is_l7_once_per_message(overrides, l7):
    out = to_hubble(dns_record(response=False, **overrides))
    assert out.HasField("l7") is l7
    assert (out.Type == hb.L7) is l7


# -- summary and extensions -----------------------------------------------------------------

@pytest.mark.parametrize("overrides,expected", [
    ({}, "TCP Flags: SYN, ACK; 3 packets, 102 bytes; ESTABLISHED"),
    ({"packets": 1, "bytes": 1, "outcome": pf.OUTCOME_UNKNOWN},
     "TCP Flags: SYN, ACK; 1 packet, 1 byte"),
    ({"proto": "udp"}, "UDP; 3 packets, 102 bytes; ESTABLISHED"),
    ({"proto": "icmpv4"}, "ICMPv4 EchoRequest; 3 packets, 102 bytes; ESTABLISHED"),
    ({"l4": pf.Layer4(icmpv6=pf.ICMPv6(type=1, code=4))},
     "ICMPv6 DestinationUnreachable(code 4); 3 packets, 102 bytes; ESTABLISHED"),
    ({"l4": pf.Layer4(), "ip__fragment": True},
     "IPv4 fragment; 3 packets, 102 bytes; ESTABLISHED"),
    ({"outcome": pf.REFUSED}, "TCP Flags: SYN, ACK; 3 packets, 102 bytes; REFUSED"),
], ids=["tcp", "singular", "udp", "icmp", "icmp-code", "fragment", "refused"])
def test_summary(overrides, expected):
    flow = record()
    if "l4" in overrides:
        flow.ClearField("l4")
    customize(flow, **overrides)
    assert to_hubble(flow).Summary == expected


def test_extensions_carry_what_hubble_has_no_field_for():
    flow = record(flow_end=True, ip__fragment=True)
    flow.translation.original_ip, flow.translation.original_port = "10.96.0.20", 80
    flow.translation.translated_ip, flow.translation.translated_port = "10.244.2.17", 8080
    out = to_hubble(flow)
    assert out.extensions.type_url == "type.googleapis.com/google.protobuf.Struct"
    got = ext(out)
    assert got == {
        "packets": 3, "bytes": 102,
        "first_seen": pf.Flow(first_seen=flow.first_seen).first_seen.ToJsonString(),
        "last_seen": flow.last_seen.ToJsonString(),
        "flow_end": True, "observation_point": "POD_VETH", "direction": "FROM_POD",
        "category": "POD_TO_SERVICE", "outcome": "ESTABLISHED", "fragment": True,
        "source_node": "node-a", "destination_node": "node-a",
        "service": {"namespace": "shop", "name": "cart", "type": "ClusterIP",
                    "ip": "10.96.0.20", "port": 80, "no_endpoints": False},
        "backend": {"ip": "10.244.2.17", "port": 8080, "namespace": "shop",
                    "pod_name": "cart-5c7b9d8f4-abcde", "node_name": "node-a"},
        "translation": {"original_ip": "10.96.0.20", "original_port": 80,
                        "translated_ip": "10.244.2.17", "translated_port": 8080},
    }


def test_an_empty_record_maps_without_error():
    out = to_hubble(pf.Flow())
    assert out.verdict == hb.VERDICT_UNKNOWN
    assert not out.HasField("IP")
    assert out.HasField("is_reply") and out.source.identity == 0
    assert out.Summary == "IPv4; 0 packets, 0 bytes"


# -- the encoder a server uses --------------------------------------------------------------

# What `hubble observe` asks for by default in its compact, dict and table outputs.
CLI_DEFAULT_MASK = ["time", "verdict", "ethernet", "IP", "l4", "source.identity",
                    "source.namespace", "source.pod_name", "destination.identity",
                    "destination.namespace", "destination.pod_name", "Type", "node_name", "l7",
                    "event_type", "source_service", "destination_service", "is_reply",
                    "Summary", "ip_trace_id"]


def test_response_bytes_are_a_get_flows_response():
    from podflow_hubble.observer import observer_pb2

    mapper = HubbleMapper("1.2.3")
    flow = record()
    response = observer_pb2.GetFlowsResponse.FromString(mapper.response_bytes(flow))
    assert response.WhichOneof("response_types") == "flow"
    assert response.node_name == "node-a"
    assert response.time == flow.time
    assert response.flow == to_hubble(flow, "1.2.3")


@pytest.mark.parametrize("flow", [record(), dns_record(response=True),
                                  dropped("NETFILTER_DROP")], ids=["trace", "dns", "drop"])
def test_a_field_mask_keeps_what_protobufs_own_mask_keeps(flow):
    from google.protobuf import field_mask_pb2

    mask = encode.FlowMask(CLI_DEFAULT_MASK)
    assert mask.ignored == ["ethernet", "ip_trace_id"]  # fields podflow never sends
    got = hb.Flow.FromString(HubbleMapper().flow_bytes(flow, mask))
    expected = hb.Flow()
    known = [p for p in CLI_DEFAULT_MASK if p not in mask.ignored]
    field_mask_pb2.FieldMask(paths=known).MergeMessage(to_hubble(flow), expected)
    assert got == expected
    assert got.source.identity and not got.source.labels


def test_cached_parts_never_leak_between_records():
    mapper = HubbleMapper()
    first, second = record(packets=1), record(packets=5, outcome=pf.RESET)
    for _ in range(2):
        a, b = mapper.to_hubble(first), mapper.to_hubble(second)
        assert (ext(a)["packets"], ext(b)["packets"]) == (1, 5)
        assert a.Summary.endswith("ESTABLISHED") and b.Summary.endswith("RESET")
        assert a == to_hubble(first) and b == to_hubble(second)
    reply = record(src="10.244.2.17", dst="10.244.1.3", sport=8080, dport=40002)
    assert mapper.to_hubble(reply).is_reply.value  # another 5-tuple, another static part


def test_times_are_written_as_protobuf_json_writes_them():
    from google.protobuf import timestamp_pb2

    for nanos in (0, 5_000_000, 5_000, 5, 999_999_999):
        ts = timestamp_pb2.Timestamp(seconds=1_796_000_000, nanos=nanos)
        assert encode.rfc3339(ts) == ts.ToJsonString()


def test_a_mask_on_a_sub_field_of_any_message():
    flow = record()
    mask = encode.FlowMask(["IP.source", "l4", "source.labels", "source"])
    got = hb.Flow.FromString(HubbleMapper().flow_bytes(flow, mask))
    assert got.IP.source == "10.244.1.3" and not got.IP.destination
    assert got.l4.TCP.destination_port == 8080
    assert got.source.pod_name  # "source" as a whole wins over "source.labels"
    assert not got.HasField("destination") and not got.Summary


@pytest.mark.parametrize("podflow,hubble", [
    (pf.TCP, hb.TCP), (pf.UDP, hb.UDP), (pf.SCTP, hb.SCTP), (pf.ICMPv4, hb.ICMPv4),
    (pf.ICMPv6, hb.ICMPv6), (pf.TCPFlags, hb.TCPFlags)], ids=lambda m: m.DESCRIPTOR.name)
def test_podflows_l4_messages_are_hubbles_on_the_wire(podflow, hubble):
    """The encoder copies these messages' bytes as they are (encode.py, _l4_bytes)."""
    ours = [(f.number, f.type) for f in podflow.DESCRIPTOR.fields]
    theirs = [(f.number, f.type) for f in hubble.DESCRIPTOR.fields if f.name != "NS"]
    assert ours == theirs


def test_podflows_ip_is_hubbles_but_for_fragment():
    ours = {f.number: f.type for f in pf.IP.DESCRIPTOR.fields}
    theirs = {f.number: f.type for f in hb.IP.DESCRIPTOR.fields}
    assert {n: t for n, t in ours.items() if n != 4} == theirs  # 4: fragment, Hubble's encrypted
    assert [pf.IPV4, pf.IPV6] == [hb.IPv4, hb.IPv6]
    from google.protobuf import unknown_fields

    fragment = record()
    fragment.ip.fragment = True
    out = to_hubble(fragment)
    assert (out.IP.source, out.IP.ipVersion) == ("10.244.1.3", hb.IPv4)
    assert len(unknown_fields.UnknownFieldSet(out.IP)) == 0  # no field 4: not "encrypted"


def test_caches_keep_what_is_still_asked_for_and_stay_bounded():
    cache = encode._Bounded(2)
    for key in "abc":
        cache.put(key, key.upper())
    assert cache.get("a") == "A"          # in the older generation: found, moved back
    cache.put("d", "D")                   # turnover: b (not asked for since) is forgotten
    assert (cache.get("a"), cache.get("b"), cache.get("c"), cache.get("d")) == \
        ("A", None, "C", "D")
    assert len(cache) <= 4
