"""Every FlowFilter field, allow and deny, and the filter flags; table-driven."""

from __future__ import annotations

import argparse

import pytest
from tests.observer.observer_flows import make_flow

from agent.filters import flags as filters
from agent.errors import ConfigError
from agent.filters.engine import FilterError, compile_filters, parse_label_selector
from podflow_api.v1 import flow_pb2, observer_pb2

F = flow_pb2

# (id, FlowFilter fields, overrides of a flow that matches, overrides of one that does not)
CASES = [
    ("source_ip-exact", {"source_ip": ["10.244.1.5"]}, {"src": "10.244.1.5"}, {"src": "10.244.1.6"}),
    ("source_ip-cidr", {"source_ip": ["10.244.1.0/24"]}, {}, {"src": "10.1.0.1"}),
    ("source_ip-v6-cidr", {"source_ip": ["fd00::/8"]}, {"src": "fd00::1"}, {"src": "fe80::1"}),
    ("source_ip-v6-spelling", {"source_ip": ["fd00::1"]}, {"src": "fd00:0:0::1"}, {"src": "fd00::2"}),
    ("source_ip-alternatives", {"source_ip": ["10.9.0.0/16", "10.244.1.1"]}, {}, {"src": "10.8.0.1"}),
    ("destination_ip", {"destination_ip": ["10.244.2.17"]}, {}, {"dst": "10.244.2.18"}),
    ("source_pod-ns-prefix", {"source_pod": ["shop/frontend"]}, {}, {"source__namespace": "other"}),
    ("source_pod-any-ns", {"source_pod": ["frontend-"]}, {"source__namespace": "x"},
     {"source__pod_name": "cart-1"}),
    ("source_pod-whole-ns", {"source_pod": ["shop/"]}, {}, {"source__namespace": "db"}),
    ("destination_pod", {"destination_pod": ["shop/cart-5c"]}, {}, {"destination__pod_name": "db-0"}),
    ("source_namespace", {"source_namespace": ["shop"]}, {}, {"source__namespace": "kube-system"}),
    ("source_namespace-alternatives", {"source_namespace": ["a", "shop"]}, {},
     {"source__namespace": "b"}),
    ("destination_namespace", {"destination_namespace": ["shop"]}, {},
     {"destination__namespace": "db"}),
    ("source_label-eq", {"source_label": ["app=frontend"]}, {}, {"source__labels": ["app=x"]}),
    ("source_label-eqeq", {"source_label": ["app==frontend"]}, {}, {"source__labels": ["app=x"]}),
    ("source_label-neq", {"source_label": ["app!=cart"]}, {}, {"source__labels": ["app=cart"]}),
    ("source_label-in", {"source_label": ["app in (web,frontend)"]}, {},
     {"source__labels": ["app=db"]}),
    ("source_label-notin", {"source_label": ["app notin (cart,db)"]}, {},
     {"source__labels": ["app=db"]}),
    ("source_label-exists", {"source_label": ["tier"]}, {}, {"source__labels": ["app=frontend"]}),
    ("source_label-not-exists", {"source_label": ["!canary"]}, {},
     {"source__labels": ["canary=true"]}),
    ("source_label-and", {"source_label": ["app=frontend,tier=web"]}, {},
     {"source__labels": ["app=frontend", "tier=db"]}),
    ("source_label-mixed", {"source_label": ["app in (frontend,x),tier!=db,!canary"]}, {},
     {"source__labels": ["app=frontend", "canary=1"]}),
    ("destination_label", {"destination_label": ["app=cart"]}, {},
     {"destination__labels": ["app=db"]}),
    ("source_service-reply", {"source_service": ["shop/cart"]}, {"is_reply": True}, {}),
    ("source_service-dns-name", {"source_service": ["cart"]},
     {"source__names": ["cart.shop.svc.cluster.local"]}, {"source__names": ["cart.example.com"]}),
    ("destination_service", {"destination_service": ["shop/cart"]}, {},
     {"service__name": "other"}),
    ("destination_service-name", {"destination_service": ["cart"]}, {}, {"is_reply": True}),
    ("service", {"service": ["shop/cart"]}, {"is_reply": True}, {"service__namespace": "x"}),
    ("source_workload-kind", {"source_workload": ["Deployment/frontend"]}, {},
     {"source__workload__kind": "StatefulSet"}),
    ("source_workload-name", {"source_workload": ["frontend"]}, {},
     {"source__workload__name": "api"}),
    ("destination_workload-kind-case", {"destination_workload": ["deployment/cart"]}, {},
     {"destination__workload__name": "db"}),
    ("source_port-range", {"source_port": ["40000-40010"]}, {"sport": 40005}, {"sport": 50000}),
    ("destination_port", {"destination_port": ["8080"]}, {}, {"dport": 9090}),
    ("destination_port-udp", {"destination_port": ["53"]}, {"proto": "udp", "dport": 53},
     {"proto": "icmpv4"}),
    ("server_port-request", {"server_port": ["8080"]}, {}, {"is_reply": True}),
    ("server_port-reply", {"server_port": ["40000-40100"]}, {"is_reply": True},
     {"sport": 50000, "is_reply": True}),
    ("protocol-udp", {"protocol": ["udp"]}, {"proto": "udp"}, {}),
    ("protocol-icmp-either", {"protocol": ["ICMP"]}, {"proto": "icmpv6"}, {"proto": "sctp"}),
    ("tcp_flags-one", {"tcp_flags": ["SYN"]}, {}, {"l4__tcp__flags__SYN": False}),
    ("tcp_flags-all-listed", {"tcp_flags": ["syn,ack"]}, {}, {"l4__tcp__flags__ACK": False}),
    ("tcp_flags-not-tcp", {"tcp_flags": ["SYN"]}, {}, {"proto": "udp"}),
    ("verdict", {"verdict": [F.DROPPED]}, {"verdict": F.DROPPED}, {}),
    ("traffic_direction", {"traffic_direction": [F.TO_POD]}, {"traffic_direction": F.TO_POD}, {}),
    ("observation_point", {"observation_point": [F.BRIDGE]}, {"observation_point": F.BRIDGE}, {}),
    ("interface-glob", {"interface": ["veth*"]}, {}, {"interface__name": "cni0"}),
    ("node_name-glob", {"node_name": ["node-?"]}, {}, {"node_name": "worker-1"}),
    ("ip_version", {"ip_version": [F.IPV6]}, {"ip__ip_version": F.IPV6}, {}),
    ("category", {"category": [F.POD_TO_WORLD]}, {"category": F.POD_TO_WORLD}, {}),
    ("drop_reason", {"drop_reason": ["NETFILTER_DROP"]}, {"drop_reason": "NETFILTER_DROP"},
     {"drop_reason": "NO_SOCKET"}),
    ("drop_reason-glob", {"drop_reason": ["*socket*"]}, {"drop_reason": "NO_SOCKET"}, {}),
    ("outcome", {"outcome": [F.REFUSED]}, {"outcome": F.REFUSED}, {}),
    ("dns_query-glob", {"dns_query": ["*.shop.svc.cluster.local"]},
     {"dns__query": "cart.shop.svc.cluster.local"}, {"dns__query": "example.com"}),
    ("policy_verdict-denied", {"policy_verdict": ["denied"]},
     {"policy__ingress__verdict": F.POLICY_DENIED}, {"policy__ingress__verdict": F.POLICY_ALLOWED}),
    ("policy_verdict-finding", {"policy_verdict": ["not-enforced"]},
     {"policy__enforcement": F.POLICY_NOT_ENFORCED}, {"policy__enforcement": F.POLICY_ENFORCED}),
    ("policy_verdict-unknown", {"policy_verdict": ["unknown"]}, {},
     {"policy__egress__verdict": F.POLICY_NOT_ISOLATED}),
    ("policy-either-direction", {"policy": ["shop/*"]},
     {"policy__egress__policies": ["shop/cart-out"]}, {"policy__ingress__policies": ["db/in"]}),
    ("all-fields-must-match", {"source_namespace": ["shop"], "protocol": ["udp"]},
     {"proto": "udp"}, {}),
]


@pytest.mark.parametrize("fields,match,nomatch", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_allow_filter(fields, match, nomatch):
    pred = compile_filters([observer_pb2.FlowFilter(**fields)], [])
    assert pred(make_flow(**match)) is True
    assert pred(make_flow(**nomatch)) is False


@pytest.mark.parametrize("fields,match,nomatch", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_deny_filter(fields, match, nomatch):
    pred = compile_filters([], [observer_pb2.FlowFilter(**fields)])
    assert pred(make_flow(**match)) is False
    assert pred(make_flow(**nomatch)) is True


def test_every_field_is_covered():
    covered = {name for case in CASES for name in case[1]}
    assert covered == {f.name for f in observer_pb2.FlowFilter.DESCRIPTOR.fields}


def test_allow_any_and_no_deny():
    allow = [observer_pb2.FlowFilter(protocol=["udp"]), observer_pb2.FlowFilter(verdict=[F.DROPPED])]
    deny = [observer_pb2.FlowFilter(source_namespace=["kube-system"])]
    pred = compile_filters(allow, deny)
    assert pred(make_flow(proto="udp"))
    assert pred(make_flow(verdict=F.DROPPED))
    assert not pred(make_flow())
    assert not pred(make_flow(proto="udp", source__namespace="kube-system"))


def test_no_filters_is_none():
    assert compile_filters([], []) is None


BAD = [
    ("source_ip", ["10.0.0.0/33"], "not an IP address or CIDR"),
    ("destination_ip", ["nope"], "not an IP address or CIDR"),
    ("source_pod", ["/x"], "empty namespace"),
    ("destination_pod", ["a/b/c"], "namespace/name-prefix"),
    ("source_namespace", ["a/b"], "not a namespace"),
    ("source_label", ["app in ()"], "needs at least one value"),
    ("destination_label", ["=x"], "expected a label key"),
    ("source_service", ["a/b/c"], "namespace/name"),
    ("service", ["/cart"], "namespace/name"),
    ("source_workload", ["Deployment/"], "kind/name"),
    ("source_port", ["70000"], "within 0-65535"),
    ("destination_port", ["20-10"], "within 0-65535"),
    ("destination_port", ["http"], "not a port"),
    ("protocol", ["foo"], "unknown protocol"),
    ("tcp_flags", ["SYN,FOO"], "unknown TCP flag"),
    ("verdict", [99], "not a Verdict value"),
    ("interface", [""], "empty pattern"),
    ("dns_query", [" "], "empty pattern"),
]


@pytest.mark.parametrize("field,values,why", BAD, ids=[f"{b[0]}-{b[1][0]}" for b in BAD])
@pytest.mark.parametrize("side", ["allowlist", "denylist"])
def test_bad_values_name_the_field(field, values, why, side):
    flt = [observer_pb2.FlowFilter(), observer_pb2.FlowFilter(**{field: values})]
    with pytest.raises(FilterError) as err:
        compile_filters(flt, []) if side == "allowlist" else compile_filters([], flt)
    assert str(err.value).startswith(f"{side}[1].{field}: ")
    assert why in str(err.value)
    assert isinstance(err.value, ValueError)


# -- flags ----------------------------------------------------------------------------------

def parse(argv, prefix=""):
    p = argparse.ArgumentParser(exit_on_error=False)
    filters.add_filter_arguments(p, prefix=prefix)
    return filters.filters_from_args(p.parse_args(argv), prefix=prefix)


FF = observer_pb2.FlowFilter
FLAG_CASES = [
    ("none", [], [], []),
    ("pod-either-side", ["--pod", "shop/cart"],
     [FF(source_pod=["shop/cart"]), FF(destination_pod=["shop/cart"])], []),
    ("from-to", ["--from-pod", "a", "--to-pod", "b"], [FF(source_pod=["a"], destination_pod=["b"])], []),
    ("not-namespace", ["--not", "--namespace", "kube-system"], [],
     [FF(source_namespace=["kube-system"]), FF(destination_namespace=["kube-system"])]),
    ("not-applies-to-next-only", ["--not", "--protocol", "udp", "--verdict", "dropped"],
     [FF(verdict=[F.DROPPED])], [FF(protocol=["udp"])]),
    ("port-and-protocol", ["--port", "53", "--protocol", "udp"],
     [FF(server_port=["53"], protocol=["udp"])], []),
    ("pod-and-port", ["--pod", "a", "--port", "53"],
     [FF(source_pod=["a"], server_port=["53"]), FF(destination_pod=["a"], server_port=["53"])], []),
    ("protocol-then-pod", ["--protocol", "udp", "--pod", "a"],
     [FF(protocol=["udp"], source_pod=["a"]), FF(protocol=["udp"], destination_pod=["a"])], []),
    ("repeat-is-alternatives", ["--from-namespace", "a", "--from-namespace", "b"],
     [FF(source_namespace=["a", "b"])], []),
    ("enums", ["--direction", "egress", "--ip-version", "6", "--observation-point", "pod-veth",
               "--category", "pod-to-world", "--outcome", "refused"],
     [FF(traffic_direction=[F.FROM_POD], ip_version=[F.IPV6], observation_point=[F.POD_VETH],
         category=[F.POD_TO_WORLD], outcome=[F.REFUSED])], []),
    ("comma-list-of-fixed-values", ["--outcome", "refused,unanswered", "--protocol", "tcp,udp"],
     [FF(outcome=[F.REFUSED, F.UNANSWERED], protocol=["tcp", "udp"])], []),
    ("not-comma-list", ["--not", "--verdict", "dropped,forwarded"], [],
     [FF(verdict=[F.DROPPED, F.FORWARDED])]),
    ("strings", ["--label", "app=x,tier in (a,b)", "--service", "shop/cart", "--node", "n*",
                 "--interface", "veth*", "--drop-reason", "NO_SOCKET", "--dns-query", "*.svc",
                 "--tcp-flags", "SYN,ACK", "--from-ip", "10.0.0.0/8", "--to-port", "80-90",
                 "--from-workload", "Deployment/api", "--to-service", "db",
                 "--to-namespace", "db"],
     [FF(source_label=["app=x,tier in (a,b)"], service=["shop/cart"], node_name=["n*"],
         interface=["veth*"], drop_reason=["NO_SOCKET"], dns_query=["*.svc"],
         tcp_flags=["SYN,ACK"], source_ip=["10.0.0.0/8"], destination_port=["80-90"],
         source_workload=["Deployment/api"], destination_service=["db"],
         destination_namespace=["db"]),
      FF(destination_label=["app=x,tier in (a,b)"], service=["shop/cart"], node_name=["n*"],
         interface=["veth*"], drop_reason=["NO_SOCKET"], dns_query=["*.svc"],
         tcp_flags=["SYN,ACK"], source_ip=["10.0.0.0/8"], destination_port=["80-90"],
         source_workload=["Deployment/api"], destination_service=["db"],
         destination_namespace=["db"])], []),
]


def _canon(filters_list):
    """Compare filters regardless of field order."""
    return [sorted((f.name, list(v)) for f, v in flt.ListFields()) for flt in filters_list]


@pytest.mark.parametrize("argv,allow,deny", [c[1:] for c in FLAG_CASES],
                         ids=[c[0] for c in FLAG_CASES])
def test_flags(argv, allow, deny):
    got_allow, got_deny = parse(argv)
    assert _canon(got_allow) == _canon(allow)
    assert _canon(got_deny) == _canon(deny)


def test_from_label_applies_to_both_sides_filters():
    # --from-label after a symmetric flag: lands in both the source- and destination-side filter
    allow, _ = parse(["--pod", "x", "--from-label", "a"])
    assert all(list(f.source_label) == ["a"] for f in allow)


def test_symmetric_flag_matches_either_side():
    allow, deny = parse(["--pod", "shop/frontend"])
    pred = compile_filters(allow, deny)
    assert pred(make_flow())  # frontend is the source
    assert pred(make_flow(source__pod_name="x", destination__pod_name="frontend-1"))
    assert not pred(make_flow(source__pod_name="x"))


def test_prefix_for_the_flow_log():
    allow, deny = parse(["--flow-log-verdict", "dropped", "--flow-log-not", "--flow-log-protocol",
                         "udp"], prefix="flow-log-")
    assert _canon(allow) == _canon([FF(verdict=[F.DROPPED])])
    assert _canon(deny) == _canon([FF(protocol=["udp"])])


BAD_FLAGS = [
    (["--ip", "300.1.1.1"], "--ip"),
    (["--from-port", "99999"], "--from-port"),
    (["--verdict", "maybe"], "--verdict"),
    (["--label", "app in ()"], "--label"),
    (["--protocol", "tcpx"], "--protocol"),
    (["--tcp-flags", "SYNN"], "--tcp-flags"),
]


@pytest.mark.parametrize("argv,flag", BAD_FLAGS, ids=[b[1] for b in BAD_FLAGS])
def test_bad_flag_names_the_flag(argv, flag):
    with pytest.raises(argparse.ArgumentError) as err:
        parse(argv)
    assert flag in str(err.value)


def test_label_selector_parser():
    sel = parse_label_selector("a=1,b!=2,c in (x, y),d notin (z),e,!f")
    assert sel({"a": "1", "c": "x", "e": ""})
    assert not sel({"a": "1", "c": "x", "e": "", "f": "1"})
    assert not sel({"a": "1", "b": "2", "c": "x", "e": ""})
    assert not sel({"a": "1", "c": "x", "d": "z", "e": ""})


def test_dangling_not_is_an_error():
    with pytest.raises(ConfigError, match="--not must be followed"):
        parse(["--pod", "x", "--not"])
    with pytest.raises(ConfigError, match="--flow-log-not"):
        parse(["--flow-log-not"], prefix="flow-log-")
