"""The `/` filter language: what each term matches, negation, alternatives, and errors that
name the bad term."""

from __future__ import annotations

import pytest

from tui.filterexpr import FilterError, parse_filter
from tui.flowkey import FlowKey

CART_TO_REDIS = FlowKey(node="node-b", src_ns="shop", src_pod="cart-1", src_workload="cart",
                        dst_ns="shop", dst_pod="redis-0", dst_workload="redis",
                        service="shop/redis", backend="shop/redis-0", port=6379, proto="tcp",
                        verdict="forwarded", outcome="established", no_endpoints=False,
                        local_is_src=True)
DNS_DROPPED = FlowKey(node="node-a", src_ns="shop", src_pod="frontend-2", src_workload="frontend",
                      dst_ns="kube-system", dst_pod="coredns-1", dst_workload="coredns",
                      service="kube-system/kube-dns", backend="", port=53, proto="udp",
                      verdict="dropped", outcome="no_reply", no_endpoints=False,
                      local_is_src=True)
WORLD = FlowKey(node="node-a", src_ns="", src_pod="(world)", src_workload="", dst_ns="web",
                dst_pod="nginx-1", dst_workload="nginx", service="", backend="", port=443,
                proto="tcp", verdict="forwarded", outcome="established", no_endpoints=False,
                local_is_src=False)

CASES = [
    # (expression, keys expected to match)
    ("", [CART_TO_REDIS, DNS_DROPPED, WORLD]),
    ("ns=shop", [CART_TO_REDIS, DNS_DROPPED]),
    ("ns=kube-system", [DNS_DROPPED]),           # either end
    ("ns=kube-*", [DNS_DROPPED]),
    ("!ns=shop", [WORLD]),
    ("ns!=shop", [WORLD]),
    ("pod=cart-*", [CART_TO_REDIS]),
    ("pod=redis-0", [CART_TO_REDIS]),           # destination end too
    ("pod=shop/redis-*", [CART_TO_REDIS]),
    ("pod=kube-system/redis-*", []),
    ("workload=coredns", [DNS_DROPPED]),
    ("svc=shop/redis", [CART_TO_REDIS]),
    ("svc=kube-dns", [DNS_DROPPED]),            # bare name: any namespace
    ("svc=shop/*", [CART_TO_REDIS]),
    ("!svc=*", [WORLD]),
    ("port=443", [WORLD]),
    ("port=1-1024", [DNS_DROPPED, WORLD]),
    ("port=53,6379", [CART_TO_REDIS, DNS_DROPPED]),
    ("proto=udp", [DNS_DROPPED]),
    ("proto=TCP", [CART_TO_REDIS, WORLD]),
    ("verdict=dropped", [DNS_DROPPED]),
    ("!verdict=dropped", [CART_TO_REDIS, WORLD]),
    ("node=node-b", [CART_TO_REDIS]),
    ("node=node-*", [CART_TO_REDIS, DNS_DROPPED, WORLD]),
    ("ns=shop proto=tcp", [CART_TO_REDIS]),      # terms combine
    ("ns=shop !proto=tcp", [DNS_DROPPED]),
    ("  ns=shop    node=node-a ", [DNS_DROPPED]),
    ("proto=tcp,udp verdict=forwarded", [CART_TO_REDIS, WORLD]),
]


@pytest.mark.parametrize("expr,expected", CASES, ids=[c[0] or "(empty)" for c in CASES])
def test_matches(expr, expected):
    flt = parse_filter(expr)
    got = [k for k in (CART_TO_REDIS, DNS_DROPPED, WORLD) if flt(k)]
    assert got == expected
    # memoised answers stay the same
    assert [k for k in (CART_TO_REDIS, DNS_DROPPED, WORLD) if flt(k)] == expected


ERRORS = [
    ("shop", "expected key=value"),
    ("color=red", "unknown key 'color'"),
    ("port=https", "'https' is not a port"),
    ("port=70000", "within 0-65535"),
    ("port=90-80", "within 0-65535"),
    ("proto=quic", "'quic' is not one of tcp"),
    ("verdict=maybe", "'maybe' is not one of forwarded"),
    ("ns=", "ns needs a value"),
    ("ns=shop port=x", "port=x"),
]


@pytest.mark.parametrize("expr,message", ERRORS, ids=[e[0] for e in ERRORS])
def test_errors_name_the_term(expr, message):
    with pytest.raises(FilterError) as err:
        parse_filter(expr)
    assert message in str(err.value)


def test_text_is_normalised():
    assert parse_filter("  ns=shop   port=80 ").text == "ns=shop port=80"
    assert parse_filter("").empty
