"""Shared pieces of the deploy tests: render the chart with Helm's own library, and check
rendered objects against the Kubernetes API's typed models with no unknown fields.

The `kubernetes` client's models carry the API schema (`attribute_map`: JSON name -> attribute,
`openapi_types`: attribute -> type). A key that is not in a model's attribute_map would be
silently dropped by `kubectl apply` on a lenient server or rejected by a strict one, so every
rendered key must map to a field, and a round trip through ApiClient must give back the input.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import yaml
from kubernetes import client as k8s

REPO = Path(__file__).resolve().parents[2]
CHART_DIR = REPO / "deploy" / "helm" / "podflow"
# The agents' headless Service, among the chart's others (hubble-peer, hubble-relay ...).
AGENT_SERVICE = "podflow-agent"


def load_script(name: str, path: Path):
    """Import a file that is not in a package (scripts/render-manifest.py, deploy/entrypoint.py)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


render_manifest = load_script("render_manifest", REPO / "scripts" / "render-manifest.py")


def render(values: dict | None = None, namespace: str = "podflow") -> list[dict]:
    """Every object the chart renders with `values`, parsed, in template order."""
    objects = []
    for source, text in sorted(render_manifest.render_chart(values, namespace=namespace).items()):
        if source.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                objects.append(doc)
    return objects


def by_kind(objects: list[dict], kind: str) -> list[dict]:
    return [o for o in objects if o["kind"] == kind]


def one(objects: list[dict], kind: str, name: str | None = None) -> dict:
    """The one object of `kind` (named `name`, where a kind has several)."""
    found = [o for o in by_kind(objects, kind) if name is None or o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {len(found)}"
    return found[0]


# Built-in kinds -> the client's model. Anything rendered must be listed here or in CRD_SCHEMAS.
MODELS = {
    ("v1", "Namespace"): "V1Namespace",
    ("v1", "ServiceAccount"): "V1ServiceAccount",
    ("v1", "Service"): "V1Service",
    ("apps/v1", "DaemonSet"): "V1DaemonSet",
    ("rbac.authorization.k8s.io/v1", "ClusterRole"): "V1ClusterRole",
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"): "V1ClusterRoleBinding",
    ("rbac.authorization.k8s.io/v1", "Role"): "V1Role",
}

# Custom resources are not in the client. These are the fields podflow's templates may use,
# transcribed from the published API references (prometheus-operator monitoring.coreos.com/v1
# ServiceMonitor; cert-manager.io/v1 Certificate). A string value is a model name or a
# primitive; a dict is an object with exactly those keys allowed; a one-item list is a list.
_RELABEL = {"sourceLabels": ["str"], "separator": "str", "targetLabel": "str", "regex": "str",
            "modulus": "int", "replacement": "str", "action": "str"}
CRD_SCHEMAS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): {
        "apiVersion": "str", "kind": "str", "metadata": "V1ObjectMeta",
        "spec": {
            "jobLabel": "str",
            "selector": "V1LabelSelector",
            "namespaceSelector": {"any": "bool", "matchNames": ["str"]},
            "endpoints": [{"port": "str", "path": "str", "scheme": "str", "interval": "str",
                           "scrapeTimeout": "str", "honorLabels": "bool",
                           "relabelings": [_RELABEL], "metricRelabelings": [_RELABEL]}],
        },
    },
    ("cert-manager.io/v1", "Certificate"): {
        "apiVersion": "str", "kind": "str", "metadata": "V1ObjectMeta",
        "spec": {
            "secretName": "str", "commonName": "str", "dnsNames": ["str"],
            "ipAddresses": ["str"], "duration": "str", "renewBefore": "str", "usages": ["str"],
            "isCA": "bool",
            "privateKey": {"algorithm": "str", "size": "int", "encoding": "str",
                           "rotationPolicy": "str"},
            "issuerRef": {"name": "str", "kind": "str", "group": "str"},
        },
    },
}
# cert-manager's KeyUsage enum (the values `usages` accepts).
CERT_MANAGER_USAGES = {
    "signing", "digital signature", "content commitment", "key encipherment", "key agreement",
    "data encipherment", "cert sign", "crl sign", "encipher only", "decipher only", "any",
    "server auth", "client auth", "code signing", "email protection", "s/mime",
    "ipsec end system", "ipsec tunnel", "ipsec user", "timestamping", "ocsp signing",
    "microsoft sgc", "netscape sgc",
}

_PRIMITIVES = {
    "str": (str,), "int": (int,), "float": (int, float), "bool": (bool,),
    "object": (str, int, float, bool, dict, list), "datetime": (str,), "date": (str,),
    "bytes": (str,),
}


def schema_problems(data, schema, path: str) -> list[str]:
    """Keys and types in `data` that `schema` (model name, primitive, dict or list) does not
    allow, each named by its path, e.g. `spec.template.spec.containers[0].securityContext.foo`."""
    if isinstance(schema, list):
        if not isinstance(data, list):
            return [f"{path}: expected a list, got {type(data).__name__}"]
        return [p for i, item in enumerate(data) for p in schema_problems(item, schema[0], f"{path}[{i}]")]
    if isinstance(schema, dict):
        if not isinstance(data, dict):
            return [f"{path}: expected an object, got {type(data).__name__}"]
        problems = []
        for key, value in data.items():
            if key not in schema:
                problems.append(f"{path}.{key}: unknown field")
            else:
                problems += schema_problems(value, schema[key], f"{path}.{key}")
        return problems
    return _typed_problems(data, schema, path)


def _typed_problems(data, type_name: str, path: str) -> list[str]:
    if type_name in _PRIMITIVES:
        ok = isinstance(data, _PRIMITIVES[type_name])
        if type_name in ("int", "float") and isinstance(data, bool):
            ok = False
        return [] if ok else [f"{path}: expected {type_name}, got {data!r}"]
    m = re.fullmatch(r"[Ll]ist\[(.+)\]", type_name)
    if m:
        return schema_problems(data, [m.group(1)], path)
    m = re.fullmatch(r"(?:dict\((\w+), (.+)\)|Dict\[(\w+), (.+)\])", type_name)
    if m:
        if not isinstance(data, dict):
            return [f"{path}: expected a map, got {type(data).__name__}"]
        value_type = m.group(2) or m.group(4)
        return [p for k, v in data.items() for p in _typed_problems(v, value_type, f"{path}.{k}")]
    model = getattr(k8s, type_name)
    if not isinstance(data, dict):
        return [f"{path}: expected {type_name}, got {type(data).__name__}"]
    json_to_attr = {json_name: attr for attr, json_name in model.attribute_map.items()}
    problems = []
    for key, value in data.items():
        attr = json_to_attr.get(key)
        if attr is None:
            problems.append(f"{path}.{key}: unknown field of {type_name}")
        else:
            problems += _typed_problems(value, model.openapi_types[attr], f"{path}.{key}")
    return problems


def strict_problems(obj: dict) -> list[str]:
    """Everything wrong with one rendered object: unknown kind, unknown or mistyped fields,
    required fields missing (the model's setters raise), or a lossy round trip."""
    key = (obj.get("apiVersion"), obj.get("kind"))
    name = f"{key[1]}/{obj.get('metadata', {}).get('name')}"
    if key in CRD_SCHEMAS:
        return schema_problems(obj, CRD_SCHEMAS[key], name)
    if key not in MODELS:
        return [f"{name}: no typed model for {key}; add it to MODELS or CRD_SCHEMAS"]
    problems = _typed_problems(obj, MODELS[key], name)
    if problems:
        return problems
    api = k8s.ApiClient()
    try:
        model = api.deserialize(json.dumps(obj), MODELS[key], "application/json")
    except ValueError as exc:  # a required field is missing or an enum value is invalid
        return [f"{name}: {exc}"]
    back = api.sanitize_for_serialization(model)
    if back != obj:
        return [f"{name}: changed in a round trip through {MODELS[key]}"]
    return []


def agent_container(objects: list[dict]) -> dict:
    pod = one(objects, "DaemonSet")["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["containers"]] == ["agent"]
    return pod["containers"][0]


# Value sets every chart test runs against: the defaults and one set per optional feature.
VALUE_SETS: dict[str, dict] = {
    "defaults": {},
    "plain-manifest": {"namespace": {"create": True}},
    "tls-mtls-cert-manager": {"tls": {"enabled": True, "certManager": {
        "enabled": True, "issuerRef": {"name": "podflow-ca", "kind": "ClusterIssuer"}}}},
    "tls-server-only-own-secret": {"tls": {"enabled": True, "requireClientCert": False,
                                           "secretName": "my-podflow-certs"}},
    "service-monitor": {"metrics": {"serviceMonitor": {"enabled": True,
                                                       "labels": {"release": "prom"}}}},
    "metrics-off": {"metrics": {"enabled": False, "serviceMonitor": {"enabled": True}}},
    "flow-log-on-node": {"flowLog": {"hostPath": "/var/log/podflow", "compress": False}},
    "flow-log-off": {"flowLog": {"enabled": False}},
    "scheduling-and-agent-flags": {
        "image": {"repository": "registry.example/podflow", "tag": "1.2.3",
                  "pullPolicy": "Always"},
        "imagePullSecrets": [{"name": "regcred"}],
        "nodeSelector": {"node-role.kubernetes.io/worker": ""},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "net",
                         "effect": "NoSchedule"}],
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [
                {"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]}]}]}}},
        "priorityClassName": "system-node-critical",
        "podAnnotations": {"example.com/team": "net"},
        "podLabels": {"team": "net"},
        "resources": {"requests": {"cpu": "50m", "memory": "128Mi"},
                      "limits": {"cpu": "500m", "memory": "512Mi"}},
        "agent": {"logLevel": "debug", "metadata": "none", "interfaces": ["veth*", "cni0"],
                  "excludeInterfaces": ["lxc_health"], "storeSize": 20000,
                  "extraArgs": ["--syn-timeout=5"],
                  "extraEnv": [{"name": "PYTHONFAULTHANDLER", "value": "1"}]},
        "hostPaths": {"usrSrc": ""},
        "terminationGracePeriodSeconds": 90,
        "updateStrategy": {"maxUnavailable": "20%"},
    },
    "kernel-before-5.8": {"compat": {"sysAdmin": True}, "seccompProfile": {"type": "Unconfined"}},
    "seccomp-runtime-default": {"seccompProfile": {"type": "RuntimeDefault"}},
    "seccomp-localhost": {"seccompProfile": {"type": "Localhost",
                                             "localhostProfile": "profiles/podflow-agent.json"},
                          "tui": {"rbac": {"create": False}}},
}
