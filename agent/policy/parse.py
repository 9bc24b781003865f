"""One NetworkPolicy from its API JSON, validated and defaulted as the API server would.

It applies the API server's defaulting and validation (pkg/apis/networking/v1/defaults.go,
pkg/apis/networking/validation), so podflow evaluates exactly what the cluster would store,
and refuses what the API server would refuse with a message naming the object and the
field (PolicyError), e.g.

    NetworkPolicy shop/allow-web: spec.ingress[0].ports[1].port: "HTTP" is not a valid
    port name (lowercase letters, digits and '-')

The meaning of what it builds: agent/policy/model.py.
"""

from __future__ import annotations

import ipaddress
import json
import re

from agent.errors import PolicyError
from agent.policy.model import (API_VERSION, EGRESS, INGRESS, KIND, PROTOCOLS, IPBlock,
                                NetworkPolicy, Peer, PolicyPort, Rule, ip_block)
from agent.policy.selectors import (DOES_NOT_EXIST, EXISTS, IN, NOT_IN, OPERATORS, SELECT_ALL,
                                    LabelSelector, Requirement)

# apimachinery validation: IsQualifiedName, IsValidLabelValue, IsValidPortName.
_NAME_PART = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_PORT_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class _Ctx:
    """Names the object being parsed, for errors; `strict` refuses unknown fields."""

    def __init__(self, obj: str, strict: bool = True) -> None:
        self.obj = obj
        self.strict = strict

    def unknown(self, raw: dict, allowed: tuple[str, ...], path: str, what: str) -> None:
        if not self.strict:
            return
        for key in raw:
            if key not in allowed:
                raise self.fail(f"{path}.{key}" if path else key,
                                f"unknown field of {what} ({', '.join(allowed)})")

    def fail(self, path: str, message: str) -> PolicyError:
        return PolicyError(self.obj, path, message)


def _show(value) -> str:
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def _want(ctx: _Ctx, value, kind: type | tuple, path: str, what: str):
    if isinstance(value, bool) or not isinstance(value, kind):
        raise ctx.fail(path, f"must be {what}, not {_show(value)}")
    return value


def _opt_list(ctx: _Ctx, obj: dict, key: str, path: str) -> list:
    value = obj.get(key)
    if value is None:
        return []
    return _want(ctx, value, list, path, "a list")


def _check_label_key(ctx: _Ctx, key, path: str) -> str:
    _want(ctx, key, str, path, "a string")
    prefix, slash, name = key.rpartition("/")
    if slash and (not prefix or len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix)):
        raise ctx.fail(path, f"{_show(key)} is not a valid label key: the prefix must be a "
                             "DNS subdomain (lowercase letters, digits, '-' and '.')")
    if not name or len(name) > 63 or not _NAME_PART.match(name):
        raise ctx.fail(path, f"{_show(key)} is not a valid label key (at most 63 letters, "
                             "digits, '-', '_' or '.', starting and ending alphanumeric)")
    return key


def _check_label_value(ctx: _Ctx, value, path: str) -> str:
    if not isinstance(value, str):
        raise ctx.fail(path, f"must be a string, not {_show(value)} (quote it in YAML)")
    if value and (len(value) > 63 or not _NAME_PART.match(value)):
        raise ctx.fail(path, f"{_show(value)} is not a valid label value (at most 63 letters, "
                             "digits, '-', '_' or '.', starting and ending alphanumeric)")
    return value


def _selector(ctx: _Ctx, raw, path: str) -> LabelSelector:
    """apimachinery ValidateLabelSelector + LabelSelectorAsSelector."""
    if raw is None:
        return SELECT_ALL
    _want(ctx, raw, dict, path, "a label selector (an object)")
    ctx.unknown(raw, ("matchLabels", "matchExpressions"), path, "a label selector")
    labels_raw = raw.get("matchLabels") or {}
    _want(ctx, labels_raw, dict, f"{path}.matchLabels", "an object of label: value")
    labels = []
    for key, value in labels_raw.items():
        _check_label_key(ctx, key, f"{path}.matchLabels")
        _check_label_value(ctx, value, f"{path}.matchLabels.{key}")
        labels.append((key, value))
    exprs = []
    exprs_raw = _opt_list(ctx, raw, "matchExpressions", f"{path}.matchExpressions")
    for index, expr in enumerate(exprs_raw):
        epath = f"{path}.matchExpressions[{index}]"
        _want(ctx, expr, dict, epath, "an object")
        key = _check_label_key(ctx, expr.get("key"), f"{epath}.key")
        op = expr.get("operator")
        if op not in OPERATORS:
            raise ctx.fail(f"{epath}.operator", f"{_show(op)} is not one of "
                                                "In, NotIn, Exists, DoesNotExist")
        values = _opt_list(ctx, expr, "values", f"{epath}.values")
        for vindex, value in enumerate(values):
            _check_label_value(ctx, value, f"{epath}.values[{vindex}]")
        if op in (IN, NOT_IN) and not values:
            raise ctx.fail(f"{epath}.values", f"must be non-empty for operator {op}")
        if op in (EXISTS, DOES_NOT_EXIST) and values:
            raise ctx.fail(f"{epath}.values", f"must be empty for operator {op}")
        exprs.append(Requirement(key=key, operator=op, values=frozenset(values)))
    return LabelSelector(match_labels=tuple(sorted(labels)), match_expressions=tuple(exprs))


def _ip_block(ctx: _Ctx, raw, path: str) -> IPBlock:
    """ValidateIPBlock: cidr required and valid; each except a valid CIDR strictly inside it."""
    _want(ctx, raw, dict, path, "an object")
    ctx.unknown(raw, ("cidr", "except"), path, "an ipBlock")
    cidr = raw.get("cidr")
    if cidr in (None, ""):
        raise ctx.fail(f"{path}.cidr", "required")
    _want(ctx, cidr, str, f"{path}.cidr", "a CIDR string")
    try:
        network = ipaddress.ip_network(cidr, strict=False)
    except ValueError:
        raise ctx.fail(f"{path}.cidr", f"{_show(cidr)} is not a valid CIDR "
                                       "(e.g. 10.0.0.0/16 or 2001:db8::/64)") from None
    if "/" not in cidr:
        raise ctx.fail(f"{path}.cidr", f"{_show(cidr)} is not a valid CIDR: the prefix length "
                                       f"is missing (e.g. {cidr}/32)")
    excepts = []
    for index, ex in enumerate(_opt_list(ctx, raw, "except", f"{path}.except")):
        epath = f"{path}.except[{index}]"
        _want(ctx, ex, str, epath, "a CIDR string")
        try:
            ex_net = ipaddress.ip_network(ex, strict=False)
        except ValueError:
            raise ctx.fail(epath, f"{_show(ex)} is not a valid CIDR") from None
        if "/" not in ex:
            raise ctx.fail(epath, f"{_show(ex)} is not a valid CIDR: the prefix length is missing")
        if (ex_net.version != network.version or not ex_net.subnet_of(network)
                or ex_net.prefixlen <= network.prefixlen):
            raise ctx.fail(epath, f"{_show(ex)} must be a strict subset of cidr {cidr}")
        excepts.append(ex)
    return ip_block(cidr, excepts)


def _peer(ctx: _Ctx, raw, path: str) -> Peer:
    """ValidateNetworkPolicyPeer: at least one of the three; ipBlock alone."""
    _want(ctx, raw, dict, path, "an object (podSelector, namespaceSelector or ipBlock)")
    ctx.unknown(raw, ("podSelector", "namespaceSelector", "ipBlock"), path, "a peer")
    pod_raw, ns_raw = raw.get("podSelector"), raw.get("namespaceSelector")
    ipb_raw = raw.get("ipBlock")
    if pod_raw is None and ns_raw is None and ipb_raw is None:
        raise ctx.fail(path, "must specify a peer: podSelector, namespaceSelector or ipBlock")
    if ipb_raw is not None and (pod_raw is not None or ns_raw is not None):
        raise ctx.fail(path, "may not specify both ipBlock and another peer")
    if ipb_raw is not None:
        return Peer(ip_block=_ip_block(ctx, ipb_raw, f"{path}.ipBlock"))
    pod_sel = None if pod_raw is None else _selector(ctx, pod_raw, f"{path}.podSelector")
    ns_sel = None if ns_raw is None else _selector(ctx, ns_raw, f"{path}.namespaceSelector")
    return Peer(pod_selector=pod_sel, namespace_selector=ns_sel)


def _port(ctx: _Ctx, raw, path: str) -> PolicyPort:
    """ValidateNetworkPolicyPort + SetDefaults_NetworkPolicyPort."""
    _want(ctx, raw, dict, path, "an object (protocol, port, endPort)")
    ctx.unknown(raw, ("protocol", "port", "endPort"), path, "a port")
    protocol = raw.get("protocol")
    if protocol is None:
        protocol = "TCP"
    elif protocol not in PROTOCOLS:
        raise ctx.fail(f"{path}.protocol", f"{_show(protocol)} is not one of TCP, UDP, SCTP")
    port = raw.get("port")
    if port is not None:
        if isinstance(port, bool) or not isinstance(port, (int, str)):
            raise ctx.fail(f"{path}.port",
                           f"must be a port number or a port name, not {_show(port)}")
        if isinstance(port, int):
            if not 1 <= port <= 65535:
                raise ctx.fail(f"{path}.port", f"{port} is not a valid port number (1-65535)")
        elif (len(port) > 15 or not _PORT_NAME.match(port) or "--" in port
              or not re.search(r"[a-z]", port)):
            raise ctx.fail(f"{path}.port", f"{_show(port)} is not a valid port name (1-15 "
                                           "lowercase letters, digits and '-', with a letter; "
                                           "a number must not be quoted)")
    end_port = raw.get("endPort")
    if end_port is not None:
        if isinstance(end_port, bool) or not isinstance(end_port, int):
            raise ctx.fail(f"{path}.endPort", f"must be a port number, not {_show(end_port)}")
        if port is None:
            raise ctx.fail(f"{path}.endPort", "may not be specified when `port` is not specified")
        if isinstance(port, str):
            raise ctx.fail(f"{path}.endPort", "may not be specified when `port` is a named port")
        if end_port < port:
            raise ctx.fail(f"{path}.endPort",
                           f"{end_port} must be greater than or equal to port {port}")
        if end_port > 65535:
            raise ctx.fail(f"{path}.endPort", f"{end_port} is not a valid port number (1-65535)")
    return PolicyPort(protocol=protocol, port=port, end_port=end_port)


def _rules(ctx: _Ctx, spec: dict, key: str, peers_key: str) -> tuple[Rule, ...]:
    rules = []
    for index, raw in enumerate(_opt_list(ctx, spec, key, f"spec.{key}")):
        path = f"spec.{key}[{index}]"
        if raw is None:
            raw = {}  # `- ` alone in YAML: an empty rule
        _want(ctx, raw, dict, path, f"an object ({peers_key}, ports)")
        ctx.unknown(raw, (peers_key, "ports"), path, f"an {key} rule")
        peers = tuple(_peer(ctx, p, f"{path}.{peers_key}[{i}]")
                      for i, p in enumerate(_opt_list(ctx, raw, peers_key, f"{path}.{peers_key}")))
        ports = tuple(_port(ctx, p, f"{path}.ports[{i}]")
                      for i, p in enumerate(_opt_list(ctx, raw, "ports", f"{path}.ports")))
        rules.append(Rule(peers=peers, ports=ports))
    return tuple(rules)


def object_name(obj, where: str = "", default_namespace: str = "default") -> str:
    """How errors name an object: "NetworkPolicy ns/name", else the document's place."""
    if isinstance(obj, dict):
        meta = obj.get("metadata")
        if isinstance(meta, dict) and isinstance(meta.get("name"), str) and meta["name"]:
            ns = meta.get("namespace") if isinstance(meta.get("namespace"), str) else None
            return f"{obj.get('kind') or KIND} {ns or default_namespace}/{meta['name']}"
    return where or "object"


def parse_policy(obj, default_namespace: str = "default", where: str = "",
                 strict: bool = True) -> NetworkPolicy:
    """One NetworkPolicy from its API JSON (a dict). `default_namespace` is used when
    metadata.namespace is absent (a file meant for `kubectl apply -n NS`). Raises PolicyError
    naming the object (ns/name, or `where` when it has none) and the field.

    `strict` refuses unknown fields, as `kubectl apply --validate=strict` does: in a file a
    misspelt `podselector` must not silently become "select every pod". Objects from the API
    server are parsed with strict=False, so a field added by a newer server does not make
    podflow drop a policy the cluster enforces."""
    ctx = _Ctx(object_name(obj, where or "NetworkPolicy", default_namespace), strict)
    if not isinstance(obj, dict):
        raise ctx.fail("", f"is a {type(obj).__name__}, expected a NetworkPolicy object")
    kind = obj.get("kind", KIND)
    if kind != KIND:
        raise ctx.fail("kind", f"{_show(kind)} is not NetworkPolicy")
    api_version = obj.get("apiVersion", API_VERSION)
    if api_version != API_VERSION:
        raise ctx.fail("apiVersion", f"{_show(api_version)} is not supported (only {API_VERSION})")
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        raise ctx.fail("metadata", "required (an object with name and namespace)")
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        raise ctx.fail("metadata.name", "required")
    namespace = meta.get("namespace") or default_namespace
    if not isinstance(namespace, str):
        raise ctx.fail("metadata.namespace", f"must be a string, not {_show(namespace)}")
    spec = obj.get("spec")
    if spec is None:
        raise ctx.fail("spec", "required")
    _want(ctx, spec, dict, "spec", "an object")
    ctx.unknown(spec, ("podSelector", "policyTypes", "ingress", "egress"), "spec", "spec")
    # podSelector: an omitted selector is the empty one (API reference: "If not specified,
    # defaults to an empty selector").
    pod_selector = _selector(ctx, spec.get("podSelector"), "spec.podSelector")
    ingress = _rules(ctx, spec, "ingress", "from")
    egress = _rules(ctx, spec, "egress", "to")
    types_raw = _opt_list(ctx, spec, "policyTypes", "spec.policyTypes")
    if len(types_raw) > 2:
        raise ctx.fail("spec.policyTypes", "may not specify more than two policyTypes")
    types: list[str] = []
    for index, value in enumerate(types_raw):
        if value not in (INGRESS, EGRESS):
            raise ctx.fail(f"spec.policyTypes[{index}]",
                           f"{_show(value)} is not one of Ingress, Egress")
        if value not in types:
            types.append(value)
    given = bool(types)
    if not given:
        # SetDefaults_NetworkPolicy: Ingress always; Egress iff there is an egress rule.
        types = [INGRESS] + ([EGRESS] if egress else [])
    types.sort(key=(INGRESS, EGRESS).index)
    return NetworkPolicy(namespace=namespace, name=name, pod_selector=pod_selector,
                         policy_types=tuple(types), ingress=ingress, egress=egress,
                         policy_types_given=given)
