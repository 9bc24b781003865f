"""The value vocabulary on its own: name patterns, pods, `ns/name`, ports, protocols, enums,
and the README's filter table, which must list every word once."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from agent.filters import vocabulary as vocab
from agent.filters.vocabulary import FilterError
from podflow_api.v1 import flow_pb2 as F
from tui import filterexpr

# (id, patterns, how, names that match, names that do not)
NAMES = [
    ("exact", ["shop"], {}, ["shop"], ["shop2", "sho", "", "Shop"]),
    ("exact-alternatives", ["a", "b"], {}, ["a", "b"], ["ab", ""]),
    ("glob-star", ["kube-*"], {}, ["kube-system", "kube-"], ["kube", "xkube-a", ""]),
    ("glob-question", ["node-?"], {}, ["node-a"], ["node-ab", "node-"]),
    ("glob-class", ["node-[ab]"], {}, ["node-a", "node-b"], ["node-c"]),
    ("star-not-empty", ["*"], {}, ["x"], [""]),
    ("prefix", ["cart-"], {"prefix": True}, ["cart-", "cart-5c7b9-x2"], ["cart", "xcart-", ""]),
    ("prefix-glob", ["*-0"], {"prefix": True}, ["redis-0", "redis-01"], ["redis-1"]),
    ("prefix-empty-is-any", [""], {"prefix": True}, ["x"], [""]),
    ("mixed", ["a", "b*"], {}, ["a", "bc"], ["ab", "cb"]),
    ("mixed-prefix", ["a", "b*c"], {"prefix": True}, ["ax", "bxcx"], ["xa", "bx"]),
    ("any-case", ["*socket*"], {"ignore_case": True}, ["NO_SOCKET"], ["NO_SOCK"]),
    ("any-case-exact", ["NETFILTER_DROP"], {"ignore_case": True}, ["netfilter_drop"], [""]),
]


@pytest.mark.parametrize("patterns,how,yes,no", [n[1:] for n in NAMES], ids=[n[0] for n in NAMES])
def test_name_matcher(patterns, how, yes, no):
    match = vocab.name_matcher(patterns, **how)
    assert [n for n in yes if not match(n)] == []
    assert [n for n in no if match(n)] == []


PAIRS = [
    # (id, matcher, values, (first, name) pairs that match, pairs that do not)
    ("pod-any-namespace", vocab.pod_matcher, ["cart-"], [("shop", "cart-1"), ("x", "cart-")],
     [("shop", "cart"), ("shop", "")]),
    ("pod-namespace", vocab.pod_matcher, ["shop/cart-"], [("shop", "cart-1")],
     [("shop2", "cart-1"), ("", "cart-1")]),
    ("pod-namespace-glob", vocab.pod_matcher, ["kube-*/core"], [("kube-system", "coredns")],
     [("shop", "coredns")]),
    ("pod-whole-namespace", vocab.pod_matcher, ["shop/"], [("shop", "x")], [("shop", "")]),
    ("pod-alternatives", vocab.pod_matcher, ["shop/cart", "db/", "web"],
     [("shop", "cart-1"), ("db", "pg-0"), ("x", "web-1")], [("shop", "pg-0"), ("db", "")]),
    ("service", vocab.service_matcher, ["shop/cart"], [("shop", "cart")],
     [("shop", "cart2"), ("db", "cart")]),
    ("service-any-namespace", vocab.service_matcher, ["cart"], [("shop", "cart"), ("", "cart")],
     [("shop", "")]),
    ("service-globs", vocab.service_matcher, ["*/c*"], [("shop", "cart")], [("shop", "db")]),
    ("workload-kind-any-case", vocab.workload_matcher, ["deployment/cart"],
     [("Deployment", "cart")], [("StatefulSet", "cart"), ("Deployment", "cart-1")]),
    ("workload-name", vocab.workload_matcher, ["cart"], [("Deployment", "cart"), ("pod", "cart")],
     [("Deployment", "")]),
]


@pytest.mark.parametrize("matcher,values,yes,no", [p[1:] for p in PAIRS], ids=[p[0] for p in PAIRS])
def test_pair_matchers(matcher, values, yes, no):
    match = matcher(values, "test")
    assert [p for p in yes if not match(*p)] == []
    assert [p for p in no if match(*p)] == []


PORTS = [
    ("one", ["443"], [443], [442, 444]),
    ("range", ["8000-8100"], [8000, 8050, 8100], [7999, 8101]),
    ("alternatives", ["53", "8000-8001"], [53, 8001], [54]),
    ("spaces", [" 80 "], [80], [8]),
    ("zero", ["0"], [0], [1]),
]


@pytest.mark.parametrize("values,yes,no", [p[1:] for p in PORTS], ids=[p[0] for p in PORTS])
def test_ports(values, yes, no):
    match = vocab.port_matcher(values, "port")
    assert all(match(p) for p in yes) and not any(match(p) for p in no)


PROTOCOLS = [
    ("tcp", "tcp", {"tcp"}), ("any-case", "UDP", {"udp"}), ("icmp-both", "icmp", {"icmpv4", "icmpv6"}),
    ("icmp4", "icmp4", {"icmpv4"}), ("icmp6", "icmp6", {"icmpv6"}), ("number-6", "6", {"tcp"}),
    ("number-17", "17", {"udp"}), ("number-132", "132", {"sctp"}), ("number-1", "1", {"icmpv4"}),
    ("number-58", "58", {"icmpv6"}),
]


@pytest.mark.parametrize("text,wanted", [p[1:] for p in PROTOCOLS], ids=[p[0] for p in PROTOCOLS])
def test_protocols(text, wanted):
    assert vocab.parse_protocol(text, "protocol") == wanted


ENUMS = [
    ("verdict", vocab.VERDICT, "dropped", F.DROPPED),
    ("verdict-unknown", vocab.VERDICT, "unknown", F.VERDICT_UNKNOWN),
    ("verdict-proto-name", vocab.VERDICT, "FORWARDED", F.FORWARDED),
    ("direction-dashes", vocab.DIRECTION, "from-pod", F.FROM_POD),
    ("direction-underscores", vocab.DIRECTION, "TO_POD", F.TO_POD),
    ("direction-egress", vocab.DIRECTION, "egress", F.FROM_POD),
    ("direction-ingress", vocab.DIRECTION, "Ingress", F.TO_POD),
    ("outcome", vocab.OUTCOME, "no-reply", F.NO_REPLY),
    ("outcome-unknown", vocab.OUTCOME, "unknown", F.OUTCOME_UNKNOWN),
    ("ip-version", vocab.IP_VERSION, "6", F.IPV6),
    ("ip-version-name", vocab.IP_VERSION, "ipv4", F.IPV4),
    ("category", vocab.CATEGORY, "pod-to-world", F.POD_TO_WORLD),
    ("observation-point", vocab.OBSERVATION_POINT, "host-stack", F.HOST_STACK),
]


@pytest.mark.parametrize("words,text,number", [e[1:] for e in ENUMS], ids=[e[0] for e in ENUMS])
def test_enums(words, text, number):
    assert words.parse(text, "x") == number


BAD = [
    ("namespace-empty", vocab.parse_namespace, " ", "not a namespace name"),
    ("pod-empty", vocab.parse_pod, "", "empty pod"),
    ("pod-empty-namespace", vocab.parse_pod, "/x", "empty namespace"),
    ("service-empty-name", vocab.parse_ns_name, "shop/", "'namespace/name' or 'name'"),
    ("workload-empty-kind", vocab.parse_workload, "/cart", "'kind/name' or 'name'"),
    ("port-negative", vocab.parse_port_range, "-1", "not a port"),
    ("port-open-range", vocab.parse_port_range, "80-", "not a port"),
    ("protocol-number", vocab.parse_protocol, "99", "unknown protocol"),
    ("ip", vocab.parse_ip_or_cidr, "10.0.0.0/33", "not an IP address or CIDR"),
    ("tcp-flags-empty", vocab.parse_tcp_flags, ",", "empty TCP flag list"),
    ("pattern-empty", vocab.parse_pattern, "", "empty pattern"),
    ("enum", vocab.DIRECTION.parse, "sideways", "is not one of from-pod, to-pod, unknown"),
]


@pytest.mark.parametrize("parse,text,why", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_values_start_with_the_path(parse, text, why):
    with pytest.raises(FilterError) as err:
        parse(text, "the.path")
    assert str(err.value).startswith("the.path: ") and why in str(err.value)


def _readme_filter_table() -> list[list[str]]:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Filters: one vocabulary", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows]


def test_readme_table_has_each_word_once():
    rows = _readme_filter_table()
    words = [row[0].strip("`") for row in rows]
    assert len(words) == len(set(words))
    assert set(words) == {w.name for w in vocab.WORDS}


def test_readme_table_names_every_flag_and_tui_key():
    rows = {row[0].strip("`"): row for row in _readme_filter_table()}
    for spelling in vocab.SPELLINGS:
        word = vocab.SPELLINGS[spelling][0].name
        assert f"`--{spelling}`" in rows[word][2], spelling
    tui_keys = {key for row in rows.values() for key in re.findall(r"`([a-z-]+)=`", row[1])}
    assert tui_keys >= set(filterexpr.KEYS)
    assert {filterexpr._word(key) for key in tui_keys} == set(filterexpr._TERMS)
    for key in tui_keys:  # the TUI's keys sit in the row of their word
        word = filterexpr._word(key).removeprefix("from-").removeprefix("to-")
        assert f"`{key}=`" in rows[word][1]
