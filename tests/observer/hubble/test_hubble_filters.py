"""Hubble's FlowFilter semantics over mapped flows (agent/observer/hubble/filters.py);
table-driven: every field, its alternatives, the whitelist/blacklist rules and bad values."""

from __future__ import annotations

import pytest
from tests.observer.observer_flows import make_flow

from agent.observer.hubble import filters
from agent.observer.hubble.filters import HubbleFilterError, compile_filters
from agent.observer.hubble.mapper import to_hubble
from podflow_hubble.flow import flow_pb2 as hb


def hubble_flow(**fields) -> hb.Flow:
    """A mapped flow: shop/frontend-7d9f8c6b5-x2x4z (10.244.1.3:40002) -> backend
    shop/cart-5c7b9d8f4-abcde (10.244.2.17:8080) of Service shop/cart, TCP SYN+ACK, on
    node-a's veth, EGRESS, not a reply. `fields` override Hubble fields by dotted path with
    '__' (source__namespace="db"); lists replace, messages are copied."""
    flow = to_hubble(make_flow(2, node="node-a"))
    for key, value in fields.items():
        *parents, last = key.split("__")
        target = flow
        for part in parents:
            target = getattr(target, part)
        attr = getattr(target, last)
        if isinstance(value, list):
            del attr[:]
            attr.extend(value)
        elif hasattr(attr, "CopyFrom"):
            if value is None:
                target.ClearField(last)
            else:
                attr.CopyFrom(value)
        else:
            setattr(target, last, value)
    return flow


def udp(sport=40002, dport=53):
    return hb.Layer4(UDP=hb.UDP(source_port=sport, destination_port=dport))


def dns_l7(query="cart.shop.svc.cluster.local."):
    return hb.Layer7(type=hb.REQUEST, dns=hb.DNS(query=query))


EGRESS, INGRESS = hb.EGRESS, hb.INGRESS

# (id, FlowFilter fields, overrides of a flow that matches, overrides of one that does not)
CASES = [
    ("uuid", {"uuid": ["u-1", "u-2"]}, {"uuid": "u-2"}, {"uuid": "u-3"}),
    ("source_ip-exact", {"source_ip": ["10.244.1.3"]}, {}, {"IP__source": "10.244.1.4"}),
    ("source_ip-cidr", {"source_ip": ["10.244.1.0/24"]}, {}, {"IP__source": "10.244.9.1"}),
    ("source_ip-cidr-host-bits", {"source_ip": ["10.244.1.9/24"]}, {},
     {"IP__source": "10.244.9.1"}),
    ("source_ip-v6-cidr", {"source_ip": ["fd00::/8"]}, {"IP__source": "fd00::1"},
     {"IP__source": "fe80::1"}),
    ("source_ip-v4-cidr-never-v6", {"source_ip": ["0.0.0.0/0"]}, {}, {"IP__source": "::1"}),
    ("source_ip-exact-is-text", {"source_ip": ["fd00::1"]}, {"IP__source": "fd00::1"},
     {"IP__source": "fd00:0::1"}),
    ("source_ip-alternatives", {"source_ip": ["10.9.0.0/16", "10.244.1.3"]}, {},
     {"IP__source": "10.8.0.1"}),
    ("source_ip-no-ip", {"source_ip": ["0.0.0.0/0"]}, {}, {"IP": None}),
    ("destination_ip", {"destination_ip": ["10.244.2.17"]}, {},
     {"IP__destination": "10.244.2.18"}),
    ("source_ip_xlated-never-filled", {"source_ip_xlated": ["0.0.0.0/0"]}, None, {}),
    ("source_pod-ns-prefix", {"source_pod": ["shop/frontend"]}, {},
     {"source__namespace": "other"}),
    ("source_pod-no-slash-is-default-ns", {"source_pod": ["frontend"]},
     {"source__namespace": "default"}, {}),
    ("source_pod-whole-ns", {"source_pod": ["shop/"]}, {"source__pod_name": ""},
     {"source__namespace": "db"}),
    ("source_pod-any-ns", {"source_pod": ["/frontend-"]}, {"source__namespace": "x"},
     {"source__pod_name": "cart-1"}),
    ("source_pod-no-endpoint", {"source_pod": ["/"]}, {},
     {"source__namespace": "", "source__pod_name": ""}),
    ("source_pod-extra-parts-ignored", {"source_pod": ["shop/frontend/x"]}, {},
     {"source__pod_name": "cart"}),
    ("destination_pod", {"destination_pod": ["shop/cart-5c"]}, {},
     {"destination__pod_name": "db-0"}),
    ("destination_service", {"destination_service": ["shop/cart"]}, {},
     {"destination_service": None}),
    ("destination_service-prefix", {"destination_service": ["shop/ca"]}, {},
     {"destination_service__name": "db"}),
    ("source_service", {"source_service": ["shop/"]},
     {"source_service": hb.Service(namespace="shop", name="cart")}, {}),
    ("source_workload", {"source_workload": [hb.Workload(kind="Deployment", name="frontend")]},
     {}, {"source__workloads": [hb.Workload(kind="StatefulSet", name="frontend")]}),
    ("source_workload-name-only", {"source_workload": [hb.Workload(name="frontend")]}, {},
     {"source__workloads": []}),
    ("destination_workload-kind-only", {"destination_workload": [hb.Workload(kind="Deployment")]},
     {}, {"destination__workloads": [hb.Workload(kind="DaemonSet", name="x")]}),
    ("source_label-any-source", {"source_label": ["app=frontend"]}, {},
     {"source__labels": ["k8s:app=cart"]}),
    ("source_label-k8s-source", {"source_label": ["k8s:app=frontend"]}, {},
     {"source__labels": ["container:app=frontend"]}),
    ("source_label-namespace", {"source_label": ["io.kubernetes.pod.namespace=shop"]}, {},
     {"source__labels": ["k8s:io.kubernetes.pod.namespace=db"]}),
    ("source_label-eqeq", {"source_label": ["app==frontend"]}, {}, {"source__labels": []}),
    ("source_label-neq", {"source_label": ["app!=cart"]}, {"source__labels": []},
     {"source__labels": ["k8s:app=cart"]}),
    ("source_label-in", {"source_label": ["app in (web, frontend)"]}, {},
     {"source__labels": ["k8s:app=db"]}),
    ("source_label-notin", {"source_label": ["app notin (cart,db)"]}, {},
     {"source__labels": ["k8s:app=db"]}),
    ("source_label-exists", {"source_label": ["tier"]}, {}, {"source__labels": ["k8s:app=x"]}),
    ("source_label-not-exists", {"source_label": ["!canary"]}, {},
     {"source__labels": ["k8s:canary=true"]}),
    ("source_label-and", {"source_label": ["app=frontend,tier=web"]}, {},
     {"source__labels": ["k8s:app=frontend"]}),
    ("source_label-or", {"source_label": ["app=x", "tier=web"]}, {}, {"source__labels": []}),
    ("source_label-gt", {"source_label": ["version>2"]}, {"source__labels": ["k8s:version=3"]},
     {"source__labels": ["k8s:version=2"]}),
    ("source_label-lt", {"source_label": ["version<2"]}, {"source__labels": ["k8s:version=1"]},
     {"source__labels": ["k8s:version=beta"]}),
    ("source_label-reserved", {"source_label": ["reserved:world"]},
     {"source__labels": ["reserved:world"]}, {}),
    ("source_label-empty-value", {"source_label": ["app="]}, {"source__labels": ["k8s:app="]},
     {}),
    ("source_label-empty-selects-all", {"source_label": [""]}, {}, None),
    ("destination_label", {"destination_label": ["app=cart"]}, {},
     {"destination__labels": ["k8s:app=db"]}),
    ("node_labels-never-filled", {"node_labels": ["role=worker"]}, None, {}),
    ("node_labels-negation-matches-none", {"node_labels": ["!role"]}, {}, None),
    ("source_fqdn", {"source_fqdn": ["*.example.com"]}, {"source_names": ["api.example.com"]},
     {"source_names": ["example.org"]}),
    ("destination_fqdn-trailing-dot-and-case", {"destination_fqdn": ["API.example.com."]},
     {"destination_names": ["api.example.com"]}, {"destination_names": []}),
    ("destination_fqdn-anchored", {"destination_fqdn": ["example.com"]},
     {"destination_names": ["example.com"]}, {"destination_names": ["api.example.com"]}),
    ("traffic_direction", {"traffic_direction": [INGRESS]}, {"traffic_direction": INGRESS}, {}),
    ("verdict", {"verdict": [hb.DROPPED, hb.ERROR]}, {"verdict": hb.DROPPED}, {}),
    ("drop_reason_desc", {"drop_reason_desc": [hb.POLICY_DENIED]},
     {"verdict": hb.DROPPED, "drop_reason_desc": hb.POLICY_DENIED},
     {"drop_reason_desc": hb.POLICY_DENIED}),
    ("interface-name", {"interface": [hb.NetworkInterface(name="veth1a2b3c4d")]}, {},
     {"interface__name": "eth0"}),
    ("interface-index", {"interface": [hb.NetworkInterface(index=12)]}, {},
     {"interface__index": 13}),
    ("interface-absent", {"interface": [hb.NetworkInterface()]}, {}, {"interface": None}),
    ("event_type-trace", {"event_type": [hb.EventTypeFilter(type=4)]}, {},
     {"event_type": hb.CiliumEventType(type=1, sub_type=133)}),
    ("event_type-sub-type", {"event_type": [hb.EventTypeFilter(type=4, match_sub_type=True,
                                                                sub_type=5)]},
     {}, {"event_type__sub_type": 0}),
    ("event_type-sub-type-ignored-unless-asked",
     {"event_type": [hb.EventTypeFilter(type=4, sub_type=0)]}, {}, {"event_type": None}),
    ("event_type-any-type", {"event_type": [hb.EventTypeFilter(type=0)]}, {},
     {"event_type": None}),
    ("http_status_code-nothing-matches", {"http_status_code": ["200", "4+"]}, None, {}),
    ("http_method-nothing-matches", {"http_method": ["GET"],
                                     "event_type": [hb.EventTypeFilter(type=129)]}, None, {}),
    ("protocol-tcp", {"protocol": ["TCP"]}, {}, {"l4": udp()}),
    ("protocol-udp", {"protocol": ["udp"]}, {"l4": udp()}, {}),
    ("protocol-icmp", {"protocol": ["icmp"]}, {"l4": hb.Layer4(ICMPv6=hb.ICMPv6(type=128))}, {}),
    ("protocol-icmpv4", {"protocol": ["icmpv4"]}, {"l4": hb.Layer4(ICMPv4=hb.ICMPv4(type=8))},
     {"l4": hb.Layer4(ICMPv6=hb.ICMPv6(type=128))}),
    ("protocol-dns", {"protocol": ["dns"]}, {"l4": udp(), "l7": dns_l7()}, {"l4": udp()}),
    ("protocol-http-never", {"protocol": ["http", "kafka", "vrrp", "igmp"]}, None, {}),
    ("source_port", {"source_port": ["40002"]}, {}, {"l4__TCP__source_port": 40003}),
    ("destination_port-udp", {"destination_port": ["53"]}, {"l4": udp()}, {}),
    ("destination_port-no-ports", {"destination_port": ["0"]}, {"l4__TCP__destination_port": 0},
     {"l4": hb.Layer4(ICMPv4=hb.ICMPv4())}),
    ("reply-true", {"reply": [True]}, {"is_reply__value": True}, {}),
    ("reply-false", {"reply": [False]}, {}, {"is_reply__value": True}),
    ("reply-unknown-matches-nothing", {"reply": [False, True]}, {}, {"is_reply": None}),
    ("reply-unknown-drop-is-not-a-reply", {"reply": [False]},
     {"is_reply": None, "verdict": hb.DROPPED}, {"is_reply": None}),
    ("dns_query-regex", {"dns_query": [r"\.shop\."]}, {"l7": dns_l7()},
     {"l7": dns_l7("db.other.svc.")}),
    ("dns_query-go-end-of-text", {"dns_query": [r"local\.\z"]}, {"l7": dns_l7()},
     {"l7": dns_l7("x.local.y")}),
    ("dns_query-needs-dns", {"dns_query": ["."]}, {"l7": dns_l7()}, {}),
    ("source_identity", {"source_identity": [1, 2]}, {"source__identity": 2}, {}),
    ("destination_identity", {"destination_identity": [6]}, {"destination__identity": 6},
     {"destination": None}),
    ("tcp_flags-subset", {"tcp_flags": [hb.TCPFlags(SYN=True)]}, {},
     {"l4__TCP__flags": hb.TCPFlags(ACK=True)}),
    ("tcp_flags-alternatives", {"tcp_flags": [hb.TCPFlags(FIN=True), hb.TCPFlags(RST=True)]},
     {"l4__TCP__flags": hb.TCPFlags(RST=True, ACK=True)}, {}),
    ("tcp_flags-empty-matches-any-flags", {"tcp_flags": [hb.TCPFlags()]}, {},
     {"l4__TCP__flags": None}),
    ("tcp_flags-ns-never", {"tcp_flags": [hb.TCPFlags(NS=True)]}, None, {}),
    ("node_name-plain", {"node_name": ["node-a"]}, {}, {"node_name": "node-b"}),
    ("node_name-glob", {"node_name": ["node-*"]}, {}, {"node_name": "worker-1"}),
    ("node_name-cluster", {"node_name": ["default/node-a"]}, {},
     {"node_name": "prod/node-a"}),
    ("node_name-any-cluster", {"node_name": ["/node-a"]}, {"node_name": "prod/node-a"},
     {"node_name": ""}),
    ("node_name-cluster-glob", {"node_name": ["prod/"]}, {"node_name": "prod/x"}, {}),
    ("node_name-is-lowercase", {"node_name": ["NODE-A"]}, {}, {"node_name": "Node-A"}),
    ("source_cluster_name-never-filled", {"source_cluster_name": ["default"]}, None, {}),
    ("ip_version", {"ip_version": [hb.IPv6]}, {"IP__ipVersion": hb.IPv6}, {}),
    ("trace_id-empty-matches", {"trace_id": ["", "abc"]}, {}, None),
    ("trace_id", {"trace_id": ["abc"]}, None, {}),
    ("ip_trace_id-zero-matches", {"ip_trace_id": [0]}, {}, None),
    ("ip_trace_id", {"ip_trace_id": [7]}, None, {}),
    ("encrypted-false", {"encrypted": [False]}, {}, None),
    ("encrypted-true", {"encrypted": [True]}, None, {}),
    ("all-fields-and", {"source_pod": ["shop/"], "destination_port": ["8080"],
                        "verdict": [hb.FORWARDED]}, {}, {"verdict": hb.DROPPED}),
    ("empty-filter-matches-all", {}, {}, None),
]


@pytest.mark.parametrize("fields,match,miss", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_filter_field(fields, match, miss):
    predicate = compile_filters([hb.FlowFilter(**fields)])
    if match is not None:
        assert predicate(hubble_flow(**match)), "should match"
    if miss is not None:
        assert not predicate(hubble_flow(**miss)), "should not match"


def test_case_ids_are_unique():
    ids = [c[0] for c in CASES]
    assert len(ids) == len(set(ids))


def test_every_declared_filter_field_has_semantics():
    names = {f.name for f in hb.FlowFilter.DESCRIPTOR.fields}
    assert names == set(filters._BUILDERS)


# -- lists ----------------------------------------------------------------------------------

def test_whitelist_is_or_blacklist_is_none_of():
    flow = hubble_flow()
    pod = hb.FlowFilter(source_pod=["shop/"])
    other = hb.FlowFilter(source_pod=["db/"])
    drop = hb.FlowFilter(verdict=[hb.DROPPED])
    forwarded = hb.FlowFilter(verdict=[hb.FORWARDED])
    assert compile_filters([], []) is None
    assert compile_filters([other, pod])(flow)
    assert not compile_filters([other])(flow)
    assert compile_filters([], [drop])(flow)
    assert not compile_filters([], [drop, forwarded])(flow)
    assert not compile_filters([pod], [forwarded])(flow)
    assert compile_filters([pod], [drop])(flow)
    assert not compile_filters([], [hb.FlowFilter()])(flow)  # an empty filter matches all


@pytest.mark.parametrize("whitelist,blacklist,matches", [
    # hubble observe --namespace shop: source_pod or destination_pod in "shop/"
    ([{"source_pod": ["shop/"]}, {"destination_pod": ["shop/"]}], [],
     {"": True, "source__namespace=db": True, "both=db": False}),
    # --pod shop/frontend --not --verdict DROPPED
    ([{"source_pod": ["shop/frontend"]}, {"destination_pod": ["shop/frontend"]}],
     [{"verdict": [hb.DROPPED]}], {"": True, "verdict=drop": False, "both=db": False}),
    # --to-service shop/cart --type trace
    ([{"destination_service": ["shop/cart"], "event_type": [hb.EventTypeFilter(type=4)]}], [],
     {"": True, "verdict=drop": True, "both=db": True}),
], ids=["namespace", "pod-not-dropped", "to-service-trace"])
def test_filter_lists_as_the_hubble_cli_sends_them(whitelist, blacklist, matches):
    variants = {
        "": {},
        "source__namespace=db": {"source__namespace": "db"},
        "both=db": {"source__namespace": "db", "destination__namespace": "db"},
        "verdict=drop": {"verdict": hb.DROPPED},
    }
    predicate = compile_filters([hb.FlowFilter(**w) for w in whitelist],
                                [hb.FlowFilter(**b) for b in blacklist])
    for name, expected in matches.items():
        assert predicate(hubble_flow(**variants[name])) is expected, name


# -- bad filters ----------------------------------------------------------------------------

BAD = [
    ("ip", {"source_ip": ["10.0.0.300"]}, "whitelist[0].source_ip: invalid IP address"),
    ("prefix", {"destination_ip": ["10.0.0.0/33"]}, "destination_ip: invalid IP prefix"),
    ("xlated", {"source_ip_xlated": ["x"]}, "source_ip_xlated: invalid IP address"),
    ("port", {"source_port": ["8o"]}, "source_port: invalid port '8o'"),
    ("port-range", {"destination_port": ["80-90"]}, "invalid port '80-90'"),
    ("port-too-big", {"destination_port": ["65536"]}, "invalid port"),
    ("protocol", {"protocol": ["tcpp"]}, "protocol: unknown protocol 'tcpp'"),
    ("pod", {"source_pod": [""]}, "source_pod: name must not be empty"),
    ("service", {"destination_service": [""]}, "name must not be empty"),
    ("cluster", {"destination_cluster_name": [""]}, "name must not be empty"),
    ("fqdn-rune", {"source_fqdn": ["a b"]}, "source_fqdn: ' ': invalid rune"),
    ("fqdn-empty", {"destination_fqdn": ["."]}, "empty pattern"),
    ("fqdn-dots", {"destination_fqdn": ["a.."]}, "multiple trailing dots"),
    ("node-slashes", {"node_name": ["a/b/c"]}, "node_name: too many slashes"),
    ("node-empty", {"node_name": [""]}, "node_name: empty pattern"),
    ("regex", {"dns_query": ["("]}, "dns_query: invalid regular expression '('"),
    ("label-op", {"source_label": ["app=(x)"]}, "source_label: expected a value"),
    ("label-key", {"source_label": ["app-=x"]}, "invalid label key 'app-'"),
    ("label-key-long", {"source_label": ["k8s:" + "a" * 60]}, "invalid label key"),
    ("label-value", {"destination_label": ["app=a b"]}, "expected ',' or the end"),
    ("label-in-empty", {"source_label": ["app in ()"]}, "needs at least one value"),
    ("label-in-unclosed", {"source_label": ["app in (a"]}, "missing ')'"),
    ("label-trailing-comma", {"source_label": ["app=a,"]}, "must follow ','"),
    ("label-gt", {"source_label": ["v>x"]}, "needs an integer"),
    ("label-not", {"source_label": ["!"]}, "expected a label key after '!'"),
    ("http-status", {"http_status_code": ["600"]}, "invalid status code prefix '600'"),
    ("http-needs-l7", {"http_method": ["GET"], "event_type": [hb.EventTypeFilter(type=4)]},
     "requires the event type filter to only match 'l7' events"),
    ("http-path", {"http_path": ["("]}, "http_path: invalid regular expression"),
    ("cel", {"experimental": hb.FlowFilter.Experimental(cel_expression=["true"])},
     "experimental.cel_expression: CEL expressions are not supported"),
]


@pytest.mark.parametrize("fields,message", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_filters_are_refused_with_the_fields_path(fields, message):
    with pytest.raises(HubbleFilterError) as err:
        compile_filters([hb.FlowFilter(**fields)])
    assert message in str(err.value)


def test_fields_this_declaration_does_not_know_are_refused():
    flt = hb.FlowFilter(source_pod=["shop/"])
    # field 41 (a future FlowFilter field), varint 1: what a newer client could send
    flt.MergeFromString(flt.SerializeToString() + bytes([41 << 3 & 0x7F | 0x80, 41 >> 4, 1]))
    with pytest.raises(HubbleFilterError, match=r"blacklist\[0\]: field number\(s\) \[41\]"):
        compile_filters([], [flt])


def test_an_empty_experimental_message_is_harmless():
    flt = hb.FlowFilter(verdict=[hb.FORWARDED])
    flt.experimental.SetInParent()
    assert compile_filters([flt])(hubble_flow())


@pytest.mark.parametrize("selector,labels,expected", [
    ("app", [], False),
    ("!app", [], True),
    ("k8s:app", ["container:app=x"], False),
    ("container:app", ["container:app=x"], True),
    ("app", ["unspec-label"], False),
    ("unspec-label", ["unspec-label"], True),
    ("app.kubernetes.io/name=web", ["k8s:app.kubernetes.io/name=web"], True),
    ("k8s:app.kubernetes.io/name in (web)", ["k8s:app.kubernetes.io/name=web"], True),
    ("  app  =  x  ,  tier  ", ["k8s:app=x", "k8s:tier=web"], True),
], ids=["exists-empty", "not-exists-empty", "source-mismatch", "source-match",
        "sourceless-label-key", "sourceless-label", "prefixed-key", "prefixed-key-with-source",
        "spaces"])
def test_label_selector_sources(selector, labels, expected):
    check = filters.parse_hubble_selector(selector)
    assert check(filters.parse_labels(tuple(labels))) is expected
