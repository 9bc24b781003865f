"""Parsing NetworkPolicy objects: defaults, selectors, and errors that name the object and
the field; a loader of many objects that reports each bad one and keeps the rest."""

from __future__ import annotations

import json

import pytest

from agent.errors import PolicyError
from agent.policy.load import load_policies, load_policy_file
from agent.policy.model import EGRESS, INGRESS
from agent.policy.parse import parse_policy
from agent.policy.selectors import LabelSelector, Requirement
from policy.cluster import labels, np


def spec_policy(spec: dict, name: str = "p", namespace: str | None = "shop") -> dict:
    meta = {"name": name}
    if namespace:
        meta["namespace"] = namespace
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": meta,
            "spec": spec}


# ---- defaults ------------------------------------------------------------------------------

@pytest.mark.parametrize("spec, types", [
    pytest.param({"podSelector": {}}, (INGRESS,), id="omitted-no-rules"),
    pytest.param({"podSelector": {}, "ingress": [{}]}, (INGRESS,), id="omitted-ingress-rules"),
    pytest.param({"podSelector": {}, "egress": [{}]}, (INGRESS, EGRESS), id="omitted-egress-rules"),
    pytest.param({"podSelector": {}, "egress": []}, (INGRESS,), id="omitted-empty-egress"),
    pytest.param({"podSelector": {}, "policyTypes": ["Egress"], "ingress": [{}]}, (EGRESS,),
                 id="given-egress-only"),
    pytest.param({"podSelector": {}, "policyTypes": ["Egress", "Ingress"]}, (INGRESS, EGRESS),
                 id="given-both-any-order"),
])
def test_policy_types(spec, types):
    policy = parse_policy(spec_policy(spec))
    assert policy.policy_types == types
    assert policy.policy_types_given == ("policyTypes" in spec)


def test_defaults_and_shapes():
    policy = parse_policy(spec_policy({
        "podSelector": {"matchLabels": {"app": "cart"}},
        "ingress": [{"from": [{"namespaceSelector": {}, "podSelector": labels(role="x")}],
                     "ports": [{"port": 80}, {"protocol": "UDP", "port": "dns"},
                               {"port": 32000, "endPort": 32100}, {"protocol": "SCTP"}]},
                    {}, None]}, namespace=None))
    assert policy.namespace == "default" and policy.ref == "default/p"
    assert policy.pod_selector.matches({"app": "cart", "x": "y"})
    rule = policy.ingress[0]
    assert rule.peers[0].namespace_selector == LabelSelector() and rule.peers[0].ip_block is None
    assert [(p.protocol, p.port, p.end_port) for p in rule.ports] == [
        ("TCP", 80, None), ("UDP", "dns", None), ("TCP", 32000, 32100), ("SCTP", None, None)]
    assert policy.ingress[1].peers == () and policy.ingress[1].ports == ()
    assert policy.ingress[2].peers == () and policy.ingress[2].ports == ()


def test_missing_pod_selector_selects_all():
    assert parse_policy(spec_policy({"policyTypes": ["Ingress"]})).pod_selector.empty


def test_to_manifest_round_trips():
    raw = spec_policy({"podSelector": {"matchExpressions": [
        {"key": "app", "operator": "In", "values": ["b", "a"]}, {"key": "x", "operator": "Exists"}]},
        "policyTypes": ["Ingress", "Egress"],
        "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}]}],
        "egress": [{"to": [{"namespaceSelector": labels(a="b"), "podSelector": {}}],
                    "ports": [{"protocol": "UDP", "port": 53}]}]})
    policy = parse_policy(raw)
    assert parse_policy(policy.to_manifest()) == policy


# ---- label selectors (apimachinery semantics) -----------------------------------------------

@pytest.mark.parametrize("selector, labels_, expected", [
    pytest.param(LabelSelector(), {}, True, id="empty-selects-everything"),
    pytest.param(LabelSelector((("a", "1"),)), {"a": "1", "b": "2"}, True, id="matchLabels"),
    pytest.param(LabelSelector((("a", "1"),)), {"a": "2"}, False, id="matchLabels-other-value"),
    pytest.param(LabelSelector((("a", ""),)), {"a": ""}, True, id="matchLabels-empty-value"),
    pytest.param(LabelSelector((("a", ""),)), {}, False, id="matchLabels-empty-value-needs-key"),
    pytest.param(LabelSelector((), (Requirement("a", "In", frozenset({"1", "2"})),)), {"a": "2"},
                 True, id="In"),
    pytest.param(LabelSelector((), (Requirement("a", "In", frozenset({"1"})),)), {}, False,
                 id="In-missing-key"),
    pytest.param(LabelSelector((), (Requirement("a", "NotIn", frozenset({"1"})),)), {}, True,
                 id="NotIn-missing-key-matches"),
    pytest.param(LabelSelector((), (Requirement("a", "NotIn", frozenset({"1"})),)), {"a": "1"},
                 False, id="NotIn"),
    pytest.param(LabelSelector((), (Requirement("a", "Exists"),)), {"a": ""}, True, id="Exists"),
    pytest.param(LabelSelector((), (Requirement("a", "DoesNotExist"),)), {"a": "x"}, False,
                 id="DoesNotExist"),
    pytest.param(LabelSelector((("b", "2"),), (Requirement("a", "Exists"),)), {"a": "1"}, False,
                 id="labels-AND-expressions"),
])
def test_selector(selector, labels_, expected):
    assert selector.matches(labels_) is expected


# ---- errors name the object and the field -------------------------------------------------

BAD = [
    ({"podSelector": {}, "ingress": [{"ports": [{"port": 80}, {"port": 70000}]}]},
     "spec.ingress[0].ports[1].port", "70000 is not a valid port number"),
    ({"podSelector": {}, "ingress": [{"ports": [{"port": "HTTP"}]}]},
     "spec.ingress[0].ports[0].port", "not a valid port name"),
    ({"podSelector": {}, "ingress": [{"ports": [{"port": "80"}]}]},
     "spec.ingress[0].ports[0].port", "a number must not be quoted"),
    ({"podSelector": {}, "ingress": [{"ports": [{"port": "http", "endPort": 90}]}]},
     "spec.ingress[0].ports[0].endPort", "named port"),
    ({"podSelector": {}, "egress": [{"ports": [{"endPort": 90}]}]},
     "spec.egress[0].ports[0].endPort", "`port` is not specified"),
    ({"podSelector": {}, "egress": [{"ports": [{"port": 100, "endPort": 90}]}]},
     "spec.egress[0].ports[0].endPort", "greater than or equal to port 100"),
    ({"podSelector": {}, "egress": [{"ports": [{"protocol": "ICMP"}]}]},
     "spec.egress[0].ports[0].protocol", "not one of TCP, UDP, SCTP"),
    ({"podSelector": {}, "egress": [{"ports": [{"protocol": "tcp"}]}]},
     "spec.egress[0].ports[0].protocol", "not one of TCP, UDP, SCTP"),
    ({"podSelector": {}, "ingress": [{"from": [{}]}]},
     "spec.ingress[0].from[0]", "must specify a peer"),
    ({"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8"},
                                                 "podSelector": {}}]}]},
     "spec.ingress[0].from[0]", "may not specify both ipBlock and another peer"),
    ({"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.300/8"}}]}]},
     "spec.ingress[0].from[0].ipBlock.cidr", "not a valid CIDR"),
    ({"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.1"}}]}]},
     "spec.ingress[0].from[0].ipBlock.cidr", "prefix length is missing"),
    ({"podSelector": {}, "ingress": [{"from": [{"ipBlock": {}}]}]},
     "spec.ingress[0].from[0].ipBlock.cidr", "required"),
    ({"podSelector": {}, "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/16",
                                                         "except": ["10.1.0.0/24"]}}]}]},
     "spec.egress[0].to[0].ipBlock.except[0]", "strict subset"),
    ({"podSelector": {}, "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/16",
                                                         "except": ["10.0.0.0/16"]}}]}]},
     "spec.egress[0].to[0].ipBlock.except[0]", "strict subset"),
    ({"podSelector": {"matchLabels": {"app": 1}}}, "spec.podSelector.matchLabels.app",
     "must be a string"),
    ({"podSelector": {"matchLabels": {"bad key!": "x"}}}, "spec.podSelector.matchLabels",
     "not a valid label key"),
    ({"podSelector": {"matchExpressions": [{"key": "a", "operator": "Equals", "values": ["x"]}]}},
     "spec.podSelector.matchExpressions[0].operator", "not one of In, NotIn"),
    ({"podSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]}},
     "spec.podSelector.matchExpressions[0].values", "non-empty for operator In"),
    ({"podSelector": {"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]}},
     "spec.podSelector.matchExpressions[0].values", "empty for operator Exists"),
    ({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {"matchLabel": {}}}]}]},
     "spec.ingress[0].from[0].namespaceSelector.matchLabel", "unknown field of a label selector"),
    ({"podselector": {}}, "spec.podselector", "unknown field of spec"),
    ({"podSelector": {}, "policyTypes": ["Ingres"]}, "spec.policyTypes[0]", "not one of Ingress, Egress"),
    ({"podSelector": {}, "policyTypes": "Ingress"}, "spec.policyTypes", "must be a list"),
    ({"podSelector": {}, "ingress": {"from": []}}, "spec.ingress", "must be a list"),
    ({"podSelector": {}, "egress": [{"from": []}]}, "spec.egress[0].from", "unknown field of an egress rule"),
]


@pytest.mark.parametrize("spec, path, message", BAD, ids=[b[1] + ":" + b[2][:24] for b in BAD])
def test_error_names_object_and_field(spec, path, message):
    with pytest.raises(PolicyError) as info:
        parse_policy(spec_policy(spec, name="allow-web"))
    err = info.value
    assert err.obj == "NetworkPolicy shop/allow-web"
    assert err.path == path
    assert message in err.message
    assert str(err).startswith(f"NetworkPolicy shop/allow-web: {path}: ")


@pytest.mark.parametrize("obj, path, message", [
    pytest.param({"kind": "NetworkPolicy", "metadata": {}, "spec": {}}, "metadata.name", "required",
                 id="no-name"),
    pytest.param({"kind": "NetworkPolicy", "metadata": {"name": "x"}}, "spec", "required",
                 id="no-spec"),
    pytest.param({"apiVersion": "extensions/v1beta1", "kind": "NetworkPolicy",
                  "metadata": {"name": "x"}, "spec": {}}, "apiVersion", "not supported",
                 id="old-api-version"),
    pytest.param(["not", "an", "object"], "", "expected a NetworkPolicy object", id="a-list"),
])
def test_object_level_errors(obj, path, message):
    with pytest.raises(PolicyError) as info:
        parse_policy(obj)
    assert info.value.path == path and message in info.value.message


def test_lenient_mode_accepts_unknown_fields_from_a_newer_api_server():
    raw = spec_policy({"podSelector": {}, "futureField": True,
                       "ingress": [{"from": [{"podSelector": {}, "futurePeer": {}}]}]})
    with pytest.raises(PolicyError):
        parse_policy(raw)
    assert parse_policy(raw, strict=False).ingress[0].peers[0].pod_selector.empty


# ---- loading many ----------------------------------------------------------------------------

MULTI_DOC = """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: good-one, namespace: shop}
spec:
  podSelector: {}
---
# a comment-only document is skipped
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: bad-port, namespace: shop}
spec:
  podSelector: {}
  ingress:
  - ports:
    - port: 99999
---
apiVersion: v1
kind: Service
metadata: {name: not-a-policy}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: good-two}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Egress]
---
- just a list item
"""


def test_loader_reports_each_bad_object_and_keeps_the_rest():
    result = load_policies(MULTI_DOC, default_namespace="web")
    assert [p.ref for p in result.policies] == ["shop/good-one", "web/good-two"]
    assert [str(e) for e in result.problems] == [
        "NetworkPolicy shop/bad-port: spec.ingress[0].ports[0].port: 99999 is not a valid port "
        "number (1-65535)",
        "document 6[0]: is a str, expected a NetworkPolicy object"]
    assert result.skipped == 1


def test_loader_reads_kubectl_list_json_and_typed_lists():
    kubectl = {"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}},
        np("a", "shop", podSelector={}),
        {"kind": "NetworkPolicyList", "items": [
            {"metadata": {"name": "b", "namespace": "shop"}, "spec": {"podSelector": {}}},
            {"metadata": {"namespace": "shop"}, "spec": {}}]}]}
    result = load_policies(json.dumps(kubectl))
    assert [p.ref for p in result.policies] == ["shop/a", "shop/b"]
    assert len(result.problems) == 1 and result.problems[0].path == "metadata.name"
    assert result.problems[0].obj == "document 1.items[2].items[1]"
    assert load_policies(kubectl).policies == result.policies


def test_loader_later_object_of_same_name_wins():
    result = load_policies([np("a", "shop", podSelector={}),
                            np("a", "shop", podSelector=labels(app="x"))])
    assert len(result.policies) == 1 and not result.policies[0].pod_selector.empty


def test_loader_invalid_yaml_is_an_error_naming_the_document():
    with pytest.raises(PolicyError) as info:
        load_policies("kind: NetworkPolicy\n---\nmetadata: [unclosed\n")
    assert info.value.obj == "document 2" and "not valid YAML" in info.value.message


def test_load_file_names_the_file(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("a: [\n")
    with pytest.raises(PolicyError) as info:
        load_policy_file(str(path))
    assert str(path) in str(info.value)
    with pytest.raises(PolicyError) as info:
        load_policy_file(str(tmp_path / "missing.yaml"))
    assert "cannot read" in str(info.value)
