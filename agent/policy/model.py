"""`networking.k8s.io/v1` NetworkPolicy objects, parsed and validated, as frozen dataclasses.

The same camelCase JSON comes from the API server's watch, from `kubectl get
networkpolicies -A -o json` and from the YAML files users write for `podflow policy
what-if`, so one parser serves all three. It applies the API server's defaulting and
validation (pkg/apis/networking/v1/defaults.go, pkg/apis/networking/validation), so podflow
evaluates exactly what the cluster would store, and refuses what the API server would refuse
with a message naming the object and the field, e.g.

    NetworkPolicy shop/allow-web: spec.ingress[0].ports[1].port: "HTTP" is not a valid
    port name (lowercase letters, digits and '-')

Semantics kept here (API reference, NetworkPolicySpec / NetworkPolicyPeer / NetworkPolicyPort,
and the concepts page "Network Policies"):

- policyTypes omitted: Ingress always, Egress iff `spec.egress` has at least one rule
  (SetDefaults_NetworkPolicy: `len(spec.Egress) != 0`; `egress: []` does NOT add Egress).
- `ingress`/`egress` absent or `[]`: no rule, so the policy allows nothing in a direction it
  applies to. A rule `{}` allows everything.
- `from`/`to` absent or `[]`: the rule matches all peers; `ports` absent or `[]`: all ports
  and protocols. (Absent and empty mean the same for these lists; only `spec.egress` feeds a
  default, and it counts rules, not presence.)
- A peer with podSelector and namespaceSelector selects pods matching both (AND, one peer);
  two peers are OR'd. ipBlock may not be combined with a selector. An empty selector `{}`
  selects everything; a missing podSelector in a peer with a namespaceSelector means all pods
  of those namespaces.
- Ports: protocol defaults to TCP (SetDefaults_NetworkPolicyPort); `port` is a number or a
  named container port; no port = every port of that protocol; `endPort` needs a numeric
  `port` and is >= it.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import yaml

from agent.errors import PodflowError

API_VERSION = "networking.k8s.io/v1"
KIND = "NetworkPolicy"
INGRESS = "Ingress"
EGRESS = "Egress"
PROTOCOLS = ("TCP", "UDP", "SCTP")
# Every namespace carries this label (set by the API server since 1.21, immutable), so a
# namespaceSelector can pick a namespace by name.
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"


class PolicyError(PodflowError, ValueError):
    """One NetworkPolicy (or document) is malformed: names the object and the field."""

    def __init__(self, obj: str, path: str, message: str) -> None:
        self.obj = obj          # "NetworkPolicy ns/name", or "document 3" when it has no name
        self.path = path        # e.g. "spec.ingress[0].ports[1].port"; "" for the whole object
        self.message = message
        super().__init__(f"{obj}: {path}: {message}" if path else f"{obj}: {message}")


# ---- label selectors -----------------------------------------------------------------------

IN, NOT_IN, EXISTS, DOES_NOT_EXIST = "In", "NotIn", "Exists", "DoesNotExist"
_OPERATORS = (IN, NOT_IN, EXISTS, DOES_NOT_EXIST)


@dataclass(frozen=True, slots=True)
class Requirement:
    """One matchExpressions entry (apimachinery LabelSelectorRequirement)."""

    key: str
    operator: str                  # In, NotIn, Exists, DoesNotExist
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        """apimachinery labels.Requirement.Matches: NotIn and DoesNotExist also match when
        the key is absent."""
        op = self.operator
        if op == IN:
            value = labels.get(self.key)
            return value is not None and value in self.values
        if op == NOT_IN:
            value = labels.get(self.key)
            return value is None or value not in self.values
        if op == EXISTS:
            return self.key in labels
        return self.key not in labels


@dataclass(frozen=True, slots=True)
class LabelSelector:
    """matchLabels AND every matchExpressions requirement; the empty selector selects all."""

    match_labels: tuple[tuple[str, str], ...] = ()   # sorted (key, value)
    match_expressions: tuple[Requirement, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.match_labels and not self.match_expressions

    def matches(self, labels: Mapping[str, str]) -> bool:
        for key, value in self.match_labels:
            if labels.get(key) != value:
                return False
        for req in self.match_expressions:
            if not req.matches(labels):
                return False
        return True

    def to_manifest(self) -> dict:
        out: dict = {}
        if self.match_labels:
            out["matchLabels"] = dict(self.match_labels)
        if self.match_expressions:
            exprs = []
            for req in self.match_expressions:
                entry: dict = {"key": req.key, "operator": req.operator}
                if req.operator in (IN, NOT_IN):
                    entry["values"] = sorted(req.values)
                exprs.append(entry)
            out["matchExpressions"] = exprs
        return out


SELECT_ALL = LabelSelector()


def selector_from_labels(labels: Mapping[str, str]) -> LabelSelector:
    """A selector matching exactly these label pairs (what advise writes)."""
    return LabelSelector(match_labels=tuple(sorted(labels.items())))


# ---- peers, ports, rules, policies ---------------------------------------------------------

@dataclass(frozen=True, slots=True)
class IPBlock:
    """A CIDR minus `except` CIDRs (each a strict subset of the CIDR, as validation demands)."""

    cidr: str
    except_: tuple[str, ...] = ()
    network: ipaddress.IPv4Network | ipaddress.IPv6Network = field(
        default=None, compare=False, hash=False, repr=False)
    except_networks: tuple = field(default=(), compare=False, hash=False, repr=False)

    def contains(self, ip: str | ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        addr = ipaddress.ip_address(ip) if isinstance(ip, str) else ip
        if addr.version != self.network.version or addr not in self.network:
            return False
        return not any(addr in ex for ex in self.except_networks)

    def to_manifest(self) -> dict:
        out: dict = {"cidr": self.cidr}
        if self.except_:
            out["except"] = list(self.except_)
        return out


def ip_block(cidr: str, except_: Iterable[str] = ()) -> IPBlock:
    """Build a validated IPBlock (raises ValueError on a bad CIDR)."""
    network = ipaddress.ip_network(cidr, strict=False)
    excepts = tuple(except_)
    nets = tuple(ipaddress.ip_network(e, strict=False) for e in excepts)
    return IPBlock(cidr=cidr, except_=excepts, network=network, except_networks=nets)


@dataclass(frozen=True, slots=True)
class Peer:
    """One `from`/`to` entry. ipBlock alone, or selectors: podSelector only = pods of the
    policy's namespace; namespaceSelector only = all pods of those namespaces; both = pods
    matching podSelector in namespaces matching namespaceSelector."""

    pod_selector: LabelSelector | None = None
    namespace_selector: LabelSelector | None = None
    ip_block: IPBlock | None = None

    def to_manifest(self) -> dict:
        out: dict = {}
        if self.ip_block is not None:
            out["ipBlock"] = self.ip_block.to_manifest()
        if self.namespace_selector is not None:
            out["namespaceSelector"] = self.namespace_selector.to_manifest()
        if self.pod_selector is not None:
            out["podSelector"] = self.pod_selector.to_manifest()
        return out


@dataclass(frozen=True, slots=True)
class PolicyPort:
    """protocol (default TCP); port: a number, a named container port, or None (all ports of
    the protocol); end_port: the inclusive end of a numeric range."""

    protocol: str = "TCP"
    port: int | str | None = None
    end_port: int | None = None

    def to_manifest(self) -> dict:
        out: dict = {"protocol": self.protocol}
        if self.port is not None:
            out["port"] = self.port
        if self.end_port is not None:
            out["endPort"] = self.end_port
        return out


@dataclass(frozen=True, slots=True)
class Rule:
    """An ingress or egress rule: traffic must match one of `peers` (none = any peer) AND one
    of `ports` (none = any port and protocol)."""

    peers: tuple[Peer, ...] = ()
    ports: tuple[PolicyPort, ...] = ()

    def to_manifest(self, direction: str) -> dict:
        out: dict = {}
        if self.peers:
            out["from" if direction == INGRESS else "to"] = [p.to_manifest() for p in self.peers]
        if self.ports:
            out["ports"] = [p.to_manifest() for p in self.ports]
        return out


@dataclass(frozen=True, slots=True)
class NetworkPolicy:
    namespace: str
    name: str
    pod_selector: LabelSelector
    policy_types: tuple[str, ...]       # effective (defaults applied): Ingress and/or Egress
    ingress: tuple[Rule, ...] = ()
    egress: tuple[Rule, ...] = ()
    policy_types_given: bool = True     # False when spec.policyTypes was omitted

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)

    @property
    def ref(self) -> str:
        """"ns/name": how verdicts, filters and metrics name the policy."""
        return f"{self.namespace}/{self.name}"

    @property
    def affects_ingress(self) -> bool:
        return INGRESS in self.policy_types

    @property
    def affects_egress(self) -> bool:
        return EGRESS in self.policy_types

    def rules(self, direction: str) -> tuple[Rule, ...]:
        return self.ingress if direction == INGRESS else self.egress

    def to_manifest(self) -> dict:
        """The object as `kubectl apply` takes it (defaults written out, canonical order)."""
        spec: dict = {"podSelector": self.pod_selector.to_manifest(),
                      "policyTypes": list(self.policy_types)}
        if self.ingress:
            spec["ingress"] = [r.to_manifest(INGRESS) for r in self.ingress]
        if self.egress:
            spec["egress"] = [r.to_manifest(EGRESS) for r in self.egress]
        return {"apiVersion": API_VERSION, "kind": KIND,
                "metadata": {"name": self.name, "namespace": self.namespace}, "spec": spec}


# ---- parsing -------------------------------------------------------------------------------

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
        if op not in _OPERATORS:
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


# ---- loading many --------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class LoadResult:
    """The good policies (in input order) and one PolicyError per bad object."""

    policies: tuple[NetworkPolicy, ...]
    problems: tuple[PolicyError, ...]
    skipped: int = 0    # objects of other kinds (Pods, Services ... in a metadata file)


def _documents(source) -> list[tuple[str, object]]:
    """(where, document) pairs from YAML/JSON text, a dict or a list of dicts."""
    if isinstance(source, (str, bytes)):
        text = source.decode("utf-8") if isinstance(source, bytes) else source
        docs = []
        loader = yaml.safe_load_all(text)
        index = 0
        while True:
            try:
                doc = next(loader)
            except StopIteration:
                break
            except yaml.YAMLError as exc:
                raise PolicyError(f"document {index + 1}", "", f"is not valid YAML: {exc}") from exc
            index += 1
            if doc is not None:
                docs.append((f"document {index}", doc))
        return docs
    if isinstance(source, dict):
        return [("document 1", source)]
    return [(f"item {i}", doc) for i, doc in enumerate(source)]


def _walk(where: str, doc, out: list) -> None:
    if isinstance(doc, list):
        for index, item in enumerate(doc):
            _walk(f"{where}[{index}]", item, out)
        return
    if isinstance(doc, dict) and isinstance(doc.get("items"), list) \
            and str(doc.get("kind", "List")).endswith("List"):
        typed = doc.get("kind") == "NetworkPolicyList"
        for index, item in enumerate(doc["items"]):
            if typed and isinstance(item, dict) and "kind" not in item:
                item = dict(item, kind=KIND)   # a typed list may omit each item's kind
            _walk(f"{where}.items[{index}]", item, out)
        return
    out.append((where, doc))


def load_policies(source, default_namespace: str = "default", strict: bool = True) -> LoadResult:
    """Every NetworkPolicy in `source`: YAML or JSON text (one or many `---` documents), a
    dict (one object, a List, a NetworkPolicyList) or a list of them. Objects of other kinds
    are skipped (a `kubectl get pods,...,networkpolicies -o json` file holds many); each bad
    NetworkPolicy becomes a problem and the rest still load. Text that is not YAML at all
    raises PolicyError."""
    flat: list[tuple[str, object]] = []
    for where, doc in _documents(source):
        _walk(where, doc, flat)
    policies, problems, skipped = [], [], 0
    seen: dict[tuple[str, str], int] = {}
    for where, doc in flat:
        if isinstance(doc, dict) and doc.get("kind", KIND) != KIND:
            skipped += 1
            continue
        try:
            policy = parse_policy(doc, default_namespace=default_namespace, where=where,
                                  strict=strict)
        except PolicyError as exc:
            problems.append(exc)
            continue
        if policy.key in seen:   # the later object wins, as a second `kubectl apply` would
            policies[seen[policy.key]] = policy
            continue
        seen[policy.key] = len(policies)
        policies.append(policy)
    return LoadResult(policies=tuple(policies), problems=tuple(problems), skipped=skipped)


def load_policy_file(path: str, default_namespace: str = "default") -> LoadResult:
    """load_policies on a file; an unreadable file raises PolicyError naming it."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise PolicyError(path, "", f"cannot read: {exc.strerror}") from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PolicyError(path, "", f"not UTF-8 text: {exc}") from exc
    try:
        return load_policies(text, default_namespace=default_namespace)
    except PolicyError as exc:
        raise PolicyError(f"{path}: {exc.obj}", exc.path, exc.message) from exc
