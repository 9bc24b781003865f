"""Each filter word selects the same flows from the TUI's `/` line and from `podflow observe`.

One small cluster's worth of records (requests and their replies, world and node ends, a
bare pod, drops, ICMP); for each word, a `/` expression and the observe flags that say the
same thing are compiled (tui.filterexpr over FlowKeys; agent.filters.flags -> FlowFilter
lists -> agent.filters.engine over Flows) and must select the same records, and the ones the
README's table says they mean.
"""

from __future__ import annotations

import argparse

import pytest

from agent.errors import FilterError, PodflowError
from agent.filters.engine import compile_filters
from agent.filters.flags import add_filter_arguments, filters_from_args
from podflow_api.v1 import flow_pb2 as F
from tests.policy.verdicts import with_verdict
from tui import filterexpr
from tui.filterexpr import parse_filter
from tui.flowkey import flow_key


def _endpoint(ep: F.Endpoint, spec: str) -> None:
    """'shop/cart-5c7b9-x2 Deployment/cart', 'web/nginx-1' (a bare pod), 'world', 'node'."""
    if spec in ("world", "node"):
        ep.kind = F.WORLD if spec == "world" else F.NODE
        return
    pod, _, workload = spec.partition(" ")
    ep.kind = F.POD
    ep.namespace, _, ep.pod_name = pod.partition("/")
    if workload:
        ep.workload.kind, _, ep.workload.name = workload.partition("/")


def _flow(src: str, dst: str, proto: str = "tcp", sport: int = 0, dport: int = 0,
          svc: str = "", reply: bool = False, verdict: int = F.FORWARDED,
          outcome: int = F.ESTABLISHED, node: str = "node-a") -> F.Flow:
    f = F.Flow(node_name=node, verdict=verdict, outcome=outcome, is_reply=reply,
               observation_point=F.POD_VETH,
               traffic_direction=F.TO_POD if reply else F.FROM_POD)
    _endpoint(f.source, src)
    _endpoint(f.destination, dst)
    if proto in ("tcp", "udp", "sctp"):
        ports = getattr(f.l4, proto)
        ports.source_port, ports.destination_port = sport, dport
    else:
        getattr(f.l4, proto).type = 8
    if svc:
        f.service.namespace, _, f.service.name = svc.partition("/")
    return f


CART = "shop/cart-5c7b9-x2 Deployment/cart"
REDIS = "shop/redis-0 StatefulSet/redis"
FRONTEND = "shop/frontend-7d9f8-ab Deployment/frontend"
COREDNS = "kube-system/coredns-6f4d-q Deployment/coredns"
NGINX = "web/nginx-1"  # a bare pod: no controller
METRICS = "kube-system/metrics-server-55c ReplicaSet/metrics-server-55c"

FLOWS = {
    "cart>redis": _flow(CART, REDIS, sport=41000, dport=6379, svc="shop/redis", node="node-b"),
    "redis>cart": _flow(REDIS, CART, sport=6379, dport=41000, svc="shop/redis", reply=True,
                        node="node-b"),
    "frontend>dns": _flow(FRONTEND, COREDNS, "udp", 45000, 53, "kube-system/kube-dns",
                          verdict=F.DROPPED, outcome=F.NO_REPLY),
    "world>nginx": _flow("world", NGINX, sport=50000, dport=443, node="node-c"),
    "nginx>world": _flow(NGINX, "world", sport=443, dport=50000, reply=True, node="node-c"),
    "cart-ping": _flow(CART, REDIS, "icmpv4", node="node-b", outcome=F.OUTCOME_UNKNOWN),
    "node>metrics": _flow("node", METRICS, sport=38000, dport=10250, outcome=F.REFUSED),
    "frontend>cart": _flow(FRONTEND, CART, "sctp", 42000, 9000, "shop/cart",
                           outcome=F.IN_PROGRESS),
}
# NetworkPolicy verdicts (agent/policy fills them on the agent)
with_verdict(FLOWS["cart>redis"], (F.POLICY_ALLOWED, "shop/cart-egress"),
        (F.POLICY_ALLOWED, "shop/redis-from-cart"), F.POLICY_ALLOWED_DELIVERED)
with_verdict(FLOWS["redis>cart"], (F.POLICY_ALLOWED, "shop/cart-egress"),
        (F.POLICY_ALLOWED, "shop/redis-from-cart"), F.POLICY_ALLOWED_DELIVERED)
with_verdict(FLOWS["frontend>dns"], (F.POLICY_DENIED, "shop/default-deny"),
        (F.POLICY_NOT_ISOLATED,), F.POLICY_ENFORCED)
with_verdict(FLOWS["world>nginx"], (F.POLICY_NOT_APPLICABLE,), (F.POLICY_NOT_ISOLATED,))
with_verdict(FLOWS["node>metrics"], (F.POLICY_NOT_APPLICABLE,),
        (F.POLICY_DENIED, "kube-system/metrics-in", "kube-system/default-deny"),
        F.POLICY_NOT_ENFORCED)
with_verdict(FLOWS["frontend>cart"], (F.POLICY_ALLOWED, "shop/cart-egress"),
        (F.POLICY_NOT_ISOLATED,), F.POLICY_DROPPED_OTHERWISE)

# (id, `/` expression, observe flags, the records both select)
CASES = [
    # namespace: exact or glob, either end; from-/to- one end
    ("namespace", "ns=kube-system", ["--namespace", "kube-system"],
     ["frontend>dns", "node>metrics"]),
    ("namespace-glob", "namespace=kube-*", ["--namespace", "kube-*"],
     ["frontend>dns", "node>metrics"]),
    ("namespace-alternatives", "ns=web,kube-system", ["--namespace", "web,kube-system"],
     ["frontend>dns", "world>nginx", "nginx>world", "node>metrics"]),
    ("namespace-any-never-empty", "ns=*", ["--namespace", "*"], list(FLOWS)),
    ("namespace-not", "!ns=shop", ["--not", "--namespace", "shop"],
     ["world>nginx", "nginx>world", "node>metrics"]),
    ("namespace-neq", "ns!=web", ["--not", "--namespace", "web"],
     ["cart>redis", "redis>cart", "frontend>dns", "cart-ping", "node>metrics",
      "frontend>cart"]),
    ("from-namespace", "from-ns=web", ["--from-namespace", "web"], ["nginx>world"]),
    ("to-namespace", "to-namespace=kube-system", ["--to-namespace", "kube-system"],
     ["frontend>dns", "node>metrics"]),
    # pod: a name prefix, wildcards, ns/ scope; only pods (never "(world)")
    ("pod-prefix", "pod=cart-", ["--pod", "cart-"],
     ["cart>redis", "redis>cart", "cart-ping", "frontend>cart"]),
    ("pod-whole-name-is-a-prefix", "pod=redis-0", ["--pod", "redis-0"],
     ["cart>redis", "redis>cart", "cart-ping"]),
    ("pod-glob", "pod=*-0", ["--pod", "*-0"], ["cart>redis", "redis>cart", "cart-ping"]),
    ("pod-glob-inside", "pod=*dns", ["--pod", "*dns"], ["frontend>dns"]),
    ("pod-in-namespace", "pod=kube-system/", ["--pod", "kube-system/"],
     ["frontend>dns", "node>metrics"]),
    ("pod-namespace-glob", "pod=kube-*/core", ["--pod", "kube-*/core"], ["frontend>dns"]),
    ("pod-wrong-namespace", "pod=web/redis", ["--pod", "web/redis"], []),
    ("pod-not-a-world-end", "pod=(world)", ["--pod", "(world)"], []),
    ("from-pod", "from-pod=nginx", ["--from-pod", "nginx"], ["nginx>world"]),
    ("to-pod", "to-pod=shop/cart", ["--to-pod", "shop/cart"], ["redis>cart", "frontend>cart"]),
    # workload: exact or glob name; a bare pod is its own workload
    ("workload", "workload=coredns", ["--workload", "coredns"], ["frontend>dns"]),
    ("workload-glob", "workload=metrics-*", ["--workload", "metrics-*"], ["node>metrics"]),
    ("workload-is-not-a-prefix", "workload=red", ["--workload", "red"], []),
    ("workload-bare-pod", "workload=nginx-1", ["--workload", "nginx-1"],
     ["world>nginx", "nginx>world"]),
    ("from-workload", "from-workload=frontend", ["--from-workload", "frontend"],
     ["frontend>dns", "frontend>cart"]),
    ("to-workload", "to-workload=redis", ["--to-workload", "redis"], ["cart>redis", "cart-ping"]),
    # service: the Service the flow went to, [ns/]name, globs, requests and replies
    ("service", "svc=shop/redis", ["--service", "shop/redis"], ["cart>redis", "redis>cart"]),
    ("service-any-namespace", "service=kube-dns", ["--service", "kube-dns"], ["frontend>dns"]),
    ("service-glob", "svc=shop/*", ["--service", "shop/*"],
     ["cart>redis", "redis>cart", "frontend>cart"]),
    ("service-namespace-glob", "svc=*/cart", ["--service", "*/cart"], ["frontend>cart"]),
    ("service-none", "!svc=*", ["--not", "--service", "*"],
     ["world>nginx", "nginx>world", "cart-ping", "node>metrics"]),
    # port: the server port (destination of a request, source of a reply), ranges
    ("port", "port=443", ["--port", "443"], ["world>nginx", "nginx>world"]),
    ("port-reply-side", "port=6379", ["--port", "6379"], ["cart>redis", "redis>cart"]),
    ("port-range", "port=1-1024", ["--port", "1-1024"],
     ["frontend>dns", "world>nginx", "nginx>world"]),
    ("port-alternatives", "port=53,9000", ["--port", "53,9000"],
     ["frontend>dns", "frontend>cart"]),
    ("port-client-ports-are-not-it", "port=40000-60000", ["--port", "40000-60000"], []),
    ("port-zero-needs-ports", "port=0", ["--port", "0"], []),
    # protocol: names, icmp = both versions, numbers
    ("protocol", "proto=udp", ["--protocol", "udp"], ["frontend>dns"]),
    ("protocol-any-case", "protocol=SCTP", ["--protocol", "SCTP"], ["frontend>cart"]),
    ("protocol-icmp", "proto=icmp", ["--protocol", "icmp"], ["cart-ping"]),
    ("protocol-number", "proto=17,132", ["--protocol", "17,132"],
     ["frontend>dns", "frontend>cart"]),
    # verdict and outcome: enum names, `unknown`
    ("verdict", "verdict=dropped", ["--verdict", "dropped"], ["frontend>dns"]),
    ("verdict-not", "!verdict=forwarded", ["--not", "--verdict", "forwarded"], ["frontend>dns"]),
    ("outcome", "outcome=refused,no-reply", ["--outcome", "refused,no-reply"],
     ["frontend>dns", "node>metrics"]),
    ("outcome-underscore", "outcome=in_progress", ["--outcome", "in_progress"],
     ["frontend>cart"]),
    ("outcome-unknown", "outcome=unknown", ["--outcome", "unknown"], ["cart-ping"]),
    # node: exact or glob
    ("node", "node=node-b", ["--node", "node-b"], ["cart>redis", "redis>cart", "cart-ping"]),
    ("node-glob", "node=node-[ac]", ["--node", "node-[ac]"],
     ["frontend>dns", "world>nginx", "nginx>world", "node>metrics", "frontend>cart"]),
    # policy-verdict: the verdict, or what was seen of it; unknown = not evaluated
    ("policy-verdict-denied", "policy-verdict=denied", ["--policy-verdict", "denied"],
     ["frontend>dns", "node>metrics"]),
    ("policy-verdict-allowed", "policy-verdict=allowed", ["--policy-verdict", "allowed"],
     ["cart>redis", "redis>cart", "frontend>cart"]),
    ("policy-verdict-not-isolated", "policy-verdict=not-isolated",
     ["--policy-verdict", "not-isolated"], ["world>nginx"]),
    ("policy-verdict-unknown", "policy-verdict=unknown", ["--policy-verdict", "unknown"],
     ["nginx>world", "cart-ping"]),
    ("policy-verdict-findings", "policy-verdict=not-enforced,dropped_otherwise",
     ["--policy-verdict", "not-enforced,dropped_otherwise"], ["node>metrics", "frontend>cart"]),
    ("policy-verdict-enforced", "policy-verdict=ENFORCED", ["--policy-verdict", "ENFORCED"],
     ["frontend>dns"]),
    # policy: a policy the verdict names (allowing or denying), [ns/]name, globs
    ("policy", "policy=shop/cart-egress", ["--policy", "shop/cart-egress"],
     ["cart>redis", "redis>cart", "frontend>cart"]),
    ("policy-any-namespace", "policy=default-deny", ["--policy", "default-deny"],
     ["frontend>dns", "node>metrics"]),
    ("policy-glob", "policy=kube-system/*", ["--policy", "kube-system/*"], ["node>metrics"]),
    ("policy-none", "!policy=*", ["--not", "--policy", "*"],
     ["world>nginx", "nginx>world", "cart-ping"]),
    # terms of different words combine with AND (flags of different words too)
    ("and", "ns=shop proto=tcp", ["--namespace", "shop", "--protocol", "tcp"],
     ["cart>redis", "redis>cart"]),
    ("and-not", "ns=shop !proto=tcp", ["--namespace", "shop", "--not", "--protocol", "tcp"],
     ["frontend>dns", "cart-ping", "frontend>cart"]),
]


def _observe(argv: list[str]):
    parser = argparse.ArgumentParser(exit_on_error=False)
    add_filter_arguments(parser)
    allow, deny = filters_from_args(parser.parse_args(argv))
    predicate = compile_filters(allow, deny)
    return [name for name, f in FLOWS.items() if predicate is None or predicate(f)]


def _tui(expression: str):
    flt = parse_filter(expression)
    return [name for name, f in FLOWS.items() if flt(flow_key(f))]


@pytest.mark.parametrize("expr,argv,expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_same_selection(expr, argv, expected):
    assert _tui(expr) == expected
    assert _observe(argv) == expected


def test_every_tui_word_is_compared():
    words = {filterexpr._word(term.lstrip("!").partition("=")[0].rstrip("!"))
             for case in CASES for term in case[1].split()}
    assert words >= set(filterexpr._TERMS), set(filterexpr._TERMS) - words


# The same bad value is refused on both paths, for the same reason.
BAD = [
    ("port-out-of-range", "port=70000", ["--port", "70000"], "within 0-65535"),
    ("port-name", "port=https", ["--port", "https"], "is not a port"),
    ("port-reversed", "port=90-80", ["--port", "90-80"], "within 0-65535"),
    ("protocol", "proto=quic", ["--protocol", "quic"], "unknown protocol"),
    ("verdict", "verdict=maybe", ["--verdict", "maybe"], "'maybe' is not one of forwarded"),
    ("outcome", "outcome=lost", ["--outcome", "lost"], "is not one of established"),
    ("namespace-slash", "ns=a/b", ["--namespace", "a/b"], "not a namespace"),
    ("pod-empty-namespace", "pod=/cart", ["--pod", "/cart"], "empty namespace"),
    ("pod-two-slashes", "pod=a/b/c", ["--pod", "a/b/c"], "namespace/name-prefix"),
    ("service-two-slashes", "svc=a/b/c", ["--service", "a/b/c"], "namespace/name"),
    ("policy-verdict", "policy-verdict=blocked", ["--policy-verdict", "blocked"],
     "'blocked' is not one of allowed, denied"),
    ("policy-two-slashes", "policy=a/b/c", ["--policy", "a/b/c"], "namespace/name"),
]


@pytest.mark.parametrize("expr,argv,why", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_same_refusal(expr, argv, why):
    with pytest.raises(FilterError) as tui_err:
        parse_filter(expr)
    assert why in str(tui_err.value) and str(tui_err.value).startswith(expr)
    with pytest.raises(argparse.ArgumentError) as flag_err:
        _observe(argv)
    assert why in str(flag_err.value) and argv[0] in str(flag_err.value)
    assert isinstance(flag_err.value.__cause__, FilterError)


def test_one_error_class():
    assert filterexpr.FilterError is FilterError
    assert issubclass(FilterError, PodflowError) and issubclass(FilterError, ValueError)


def test_tui_knows_workloads_by_name_only():
    with pytest.raises(FilterError, match="by name only"):
        parse_filter("workload=Deployment/cart")
    assert _observe(["--workload", "deployment/cart"]) == ["cart>redis", "redis>cart",
                                                           "cart-ping", "frontend>cart"]
