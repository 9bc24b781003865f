"""The fields podflow needs from Kubernetes objects, parsed from the API's JSON.

Both sources (the API server's list/watch and a `kubectl get -o json` file) hand us the same
camelCase JSON, so one parser serves both, and the cache holds small immutable records
instead of whole objects (10,000 pods must stay cheap in memory).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from agent.errors import ObjectError

# kind -> how the API names its collection; the cache and the sources key on `kind`.
KINDS: tuple[str, ...] = ("Pod", "Service", "EndpointSlice", "Node", "Namespace",
                          "ReplicaSet", "Job", "NetworkPolicy")


@dataclass(frozen=True, slots=True)
class Pod:
    namespace: str
    name: str
    uid: str
    labels: tuple[str, ...]          # "k=v", sorted
    label_map: dict = field(compare=False, hash=False)
    node_name: str
    host_network: bool
    ips: tuple[str, ...]
    phase: str
    created: str                     # RFC 3339; compares in time order
    owner_kind: str                  # the controller ownerReference, "" for a bare pod
    owner_name: str
    # (name, port, protocol) of every container port, what a NetworkPolicy's named port
    # resolves to: spec.containers[].ports and those of restartable init containers
    # (sidecars, restartPolicy: Always), which serve while the pod runs. None: the object
    # had no spec.containers (unknown), () when it declares no ports.
    container_ports: tuple[tuple[str, int, str], ...] | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)

    @property
    def live(self) -> bool:
        """A pod that finished no longer owns its IP: the kubelet may give it to a new pod."""
        return self.phase not in ("Succeeded", "Failed")


@dataclass(frozen=True, slots=True)
class NetworkPolicyObject:
    """A NetworkPolicy as the cache holds it: its identity and the object as JSON (apiVersion,
    kind, name, namespace and spec; status, annotations and managed fields left out, so a
    change to those is no change). agent/policy parses and evaluates it; the cache only
    stores it and tells the policy stage (ClusterState.subscribe)."""

    namespace: str
    name: str
    body: str        # canonical JSON: equal objects compare equal

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)

    def object(self) -> dict:
        return json.loads(self.body)


@dataclass(frozen=True, slots=True)
class ServicePort:
    name: str
    protocol: str      # TCP, UDP, SCTP
    port: int
    target_port: str   # a number or a named container port, as in the spec
    node_port: int


@dataclass(frozen=True, slots=True)
class Service:
    namespace: str
    name: str
    type: str                        # ClusterIP, NodePort, LoadBalancer, ExternalName
    cluster_ips: tuple[str, ...]     # empty for a headless Service
    headless: bool
    ports: tuple[ServicePort, ...]
    external_ips: tuple[str, ...]    # spec.externalIPs and status.loadBalancer.ingress[].ip

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)

    @property
    def display_type(self) -> str:
        """The type flows carry: a headless ClusterIP Service is reported as Headless."""
        return "Headless" if self.headless else self.type


@dataclass(frozen=True, slots=True)
class SliceEndpoint:
    addresses: tuple[str, ...]
    ready: bool
    pod_namespace: str
    pod_name: str
    node_name: str


@dataclass(frozen=True, slots=True)
class EndpointSlice:
    namespace: str
    name: str
    service_name: str                              # label kubernetes.io/service-name
    ports: tuple[tuple[str, int, str], ...]        # (name, port, protocol)
    endpoints: tuple[SliceEndpoint, ...]

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)


@dataclass(frozen=True, slots=True)
class Node:
    name: str
    addresses: tuple[str, ...]  # InternalIP and ExternalIP
    pod_cidrs: tuple[str, ...] = ()

    @property
    def key(self) -> tuple[str, str]:
        return ("", self.name)


@dataclass(frozen=True, slots=True)
class Namespace:
    name: str
    labels: tuple[str, ...]

    @property
    def key(self) -> tuple[str, str]:
        return ("", self.name)


@dataclass(frozen=True, slots=True)
class Owned:
    """A ReplicaSet or a Job: only its own controller matters (Deployment, CronJob)."""

    kind: str
    namespace: str
    name: str
    owner_kind: str
    owner_name: str

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)


def _meta(obj: dict) -> dict:
    meta = obj.get("metadata")
    if not isinstance(meta, dict) or not meta.get("name"):
        raise ObjectError("object without metadata.name")
    return meta


def _labels(meta: dict) -> tuple[tuple[str, ...], dict]:
    raw = meta.get("labels") or {}
    return tuple(sorted(f"{k}={v}" for k, v in raw.items())), dict(raw)


def _controller(meta: dict) -> tuple[str, str]:
    """The ownerReference with controller=true (else the first one), as (kind, name)."""
    refs = meta.get("ownerReferences") or []
    for ref in refs:
        if ref.get("controller"):
            return ref.get("kind", ""), ref.get("name", "")
    if refs:
        return refs[0].get("kind", ""), refs[0].get("name", "")
    return "", ""


def _container_ports(spec: dict) -> tuple[tuple[str, int, str], ...] | None:
    containers = spec.get("containers")
    if not isinstance(containers, list):
        return None
    sidecars = [c for c in spec.get("initContainers") or []
                if isinstance(c, dict) and c.get("restartPolicy") == "Always"]
    out = []
    for container in containers + sidecars:
        if not isinstance(container, dict):
            continue
        for port in container.get("ports") or []:
            if not isinstance(port, dict):
                continue
            number = port.get("containerPort")
            if isinstance(number, int) and not isinstance(number, bool) and number > 0:
                out.append((str(port.get("name") or ""), number,
                            str(port.get("protocol") or "TCP").upper()))
    return tuple(out)


def parse_pod(obj: dict) -> Pod:
    meta = _meta(obj)
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    ips = [p.get("ip") for p in status.get("podIPs") or [] if p.get("ip")]
    if not ips and status.get("podIP"):
        ips = [status["podIP"]]
    labels, label_map = _labels(meta)
    owner_kind, owner_name = _controller(meta)
    return Pod(namespace=meta.get("namespace", "default"), name=meta["name"],
               uid=meta.get("uid", ""), labels=labels, label_map=label_map,
               node_name=spec.get("nodeName", ""), host_network=bool(spec.get("hostNetwork")),
               ips=tuple(ips), phase=status.get("phase", ""),
               created=meta.get("creationTimestamp", ""),
               owner_kind=owner_kind, owner_name=owner_name,
               container_ports=_container_ports(spec))


def parse_service(obj: dict) -> Service:
    meta = _meta(obj)
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    cluster_ips = list(spec.get("clusterIPs") or [])
    if not cluster_ips and spec.get("clusterIP"):
        cluster_ips = [spec["clusterIP"]]
    headless = cluster_ips == ["None"] or spec.get("clusterIP") == "None"
    if headless:
        cluster_ips = []
    ports = tuple(
        ServicePort(name=p.get("name", ""), protocol=(p.get("protocol") or "TCP").upper(),
                    port=int(p.get("port", 0)), target_port=str(p.get("targetPort", p.get("port", ""))),
                    node_port=int(p.get("nodePort") or 0))
        for p in spec.get("ports") or [])
    external = list(spec.get("externalIPs") or [])
    for ingress in (status.get("loadBalancer") or {}).get("ingress") or []:
        if ingress.get("ip"):
            external.append(ingress["ip"])
    return Service(namespace=meta.get("namespace", "default"), name=meta["name"],
                   type=spec.get("type", "ClusterIP"), cluster_ips=tuple(cluster_ips),
                   headless=headless, ports=ports, external_ips=tuple(external))


def parse_endpointslice(obj: dict) -> EndpointSlice:
    meta = _meta(obj)
    ports = tuple((p.get("name") or "", int(p.get("port") or 0), (p.get("protocol") or "TCP").upper())
                  for p in obj.get("ports") or [])
    endpoints = []
    for ep in obj.get("endpoints") or []:
        ref = ep.get("targetRef") or {}
        conditions = ep.get("conditions") or {}
        endpoints.append(SliceEndpoint(
            addresses=tuple(ep.get("addresses") or ()),
            # The API's rule: a nil `ready` means ready.
            ready=conditions.get("ready") is not False,
            pod_namespace=ref.get("namespace", meta.get("namespace", "")) if ref.get("kind") == "Pod" else "",
            pod_name=ref.get("name", "") if ref.get("kind") == "Pod" else "",
            node_name=ep.get("nodeName", "")))
    return EndpointSlice(namespace=meta.get("namespace", "default"), name=meta["name"],
                         service_name=(meta.get("labels") or {}).get("kubernetes.io/service-name", ""),
                         ports=ports, endpoints=tuple(endpoints))


def parse_node(obj: dict) -> Node:
    meta = _meta(obj)
    addresses = [a.get("address") for a in (obj.get("status") or {}).get("addresses") or []
                 if a.get("type") in ("InternalIP", "ExternalIP") and a.get("address")]
    spec = obj.get("spec") or {}
    cidrs = list(spec.get("podCIDRs") or [])
    if not cidrs and spec.get("podCIDR"):
        cidrs = [spec["podCIDR"]]
    return Node(name=meta["name"], addresses=tuple(addresses), pod_cidrs=tuple(cidrs))


def parse_namespace(obj: dict) -> Namespace:
    meta = _meta(obj)
    return Namespace(name=meta["name"], labels=_labels(meta)[0])


def parse_networkpolicy(obj: dict) -> NetworkPolicyObject:
    """Only what evaluation reads, as canonical JSON; the policy stage validates the rest
    (a malformed spec is its to report, with the field)."""
    meta = _meta(obj)
    namespace = meta.get("namespace") or "default"
    body = {"apiVersion": obj.get("apiVersion") or "networking.k8s.io/v1",
            "kind": "NetworkPolicy", "metadata": {"name": meta["name"], "namespace": namespace},
            "spec": obj.get("spec")}
    try:
        text = json.dumps(body, sort_keys=True, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise ObjectError(f"NetworkPolicy {namespace}/{meta['name']}: spec is not JSON: {exc}") \
            from exc
    return NetworkPolicyObject(namespace=namespace, name=meta["name"], body=text)


def _parse_owned(kind: str):
    def parse(obj: dict) -> Owned:
        meta = _meta(obj)
        owner_kind, owner_name = _controller(meta)
        return Owned(kind=kind, namespace=meta.get("namespace", "default"), name=meta["name"],
                     owner_kind=owner_kind, owner_name=owner_name)
    return parse


PARSERS = {
    "Pod": parse_pod,
    "Service": parse_service,
    "EndpointSlice": parse_endpointslice,
    "Node": parse_node,
    "Namespace": parse_namespace,
    "ReplicaSet": _parse_owned("ReplicaSet"),
    "Job": _parse_owned("Job"),
    "NetworkPolicy": parse_networkpolicy,
}


def parse(kind: str, obj: dict):
    """Parse one API object of `kind` (one of KINDS)."""
    if not isinstance(obj, dict):
        raise ObjectError(f"{kind} is not a JSON object")
    return PARSERS[kind](obj)
