"""The cluster as podflow knows it, and the indexes enrichment reads on every flow.

Sources (the API watch, a file) write through `apply` / `replace` under a lock; the
enricher reads the indexes without taking it: each index is a dict updated one key at a
time, which the GIL makes atomic, so a reader sees either the old or the new answer for an
address, never a torn one. Pods are indexed incrementally (10,000 pods, churning); a Service
is re-indexed on its own when it or one of its EndpointSlices changes.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from dataclasses import dataclass

from agent.enrich.k8s import objects
from agent.enrich.k8s.objects import KINDS, EndpointSlice, Node, Owned, Pod, Service, ServicePort
from podflow_api.v1 import flow_pb2

log = logging.getLogger("podflow.k8s")


@dataclass(frozen=True, slots=True)
class Peer:
    """What an address is: its Endpoint message (shared, never mutated) and where it runs."""

    kind: int            # flow_pb2.EndpointKind
    node_name: str
    endpoint: flow_pb2.Endpoint
    pod: Pod | None = None


WORLD = Peer(kind=flow_pb2.WORLD, node_name="", endpoint=flow_pb2.Endpoint(kind=flow_pb2.WORLD))


class ClusterState:
    """Objects by kind plus the address indexes built from them."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._objects: dict[str, dict[tuple[str, str], object]] = {k: {} for k in KINDS}
        # Every pod that ever claimed an IP, so that deleting the winner promotes the next one.
        self._pod_ip_claims: dict[str, dict[tuple[str, str], Pod]] = {}
        self.pod_by_ip: dict[str, Pod] = {}
        self.host_pod_by_ip: dict[str, Pod] = {}
        self.node_by_ip: dict[str, Node] = {}
        # The first address of a node's pod CIDR: the CNI's gateway on that node (cni0,
        # cbr0), the source of traffic the node masquerades into its pods.
        self.node_gateway_by_ip: dict[str, Node] = {}
        # (ip, port, protocol) -> (Service, ServicePort): ClusterIPs, external and LB IPs.
        self.vip: dict[tuple[str, int, str], tuple[Service, ServicePort]] = {}
        # (nodePort, protocol) -> (Service, ServicePort), reached on any node address.
        self.node_port: dict[tuple[int, str], tuple[Service, ServicePort]] = {}
        # endpoint IP -> {service key: (Service, ports of the slice)} for headless Services.
        self.headless: dict[str, dict[tuple[str, str], tuple[Service, tuple]]] = {}
        self.ready_endpoints: dict[tuple[str, str], int] = {}
        self._slices_by_service: dict[tuple[str, str], dict[tuple[str, str], EndpointSlice]] = {}
        self._service_index_keys: dict[tuple[str, str], list[tuple[str, object]]] = {}
        self._owners_generation = 0
        self._peer_cache: dict[str, tuple[Pod, int, Peer]] = {}
        self._node_peers: dict[str, Peer] = {}
        self.generation = 0  # bumped on every change; lets tests and benches wait for one
        self.changed = threading.Condition(self._lock)
        # Kinds a source has listed (its whole set is known), and who is told of each change
        # of a kind before `generation` moves (the policy stage, for NetworkPolicies).
        self._listed: set[str] = set()
        self._listeners: dict[str, list] = {}

    # ---- writers -----------------------------------------------------------------------

    def apply(self, kind: str, event_type: str, raw: dict) -> None:
        """One watch event (ADDED, MODIFIED, DELETED) for an object of `kind`."""
        try:
            obj = objects.parse(kind, raw)
        except objects.ObjectError as exc:
            log.warning("ignoring a %s the API sent: %s", kind, exc)
            return
        with self._lock:
            if event_type == "DELETED":
                old = self._objects[kind].get(obj.key)
                self._remove(kind, obj.key)
                if old is not None:
                    self._tell(kind, "DELETED", old)
            elif self._objects[kind].get(obj.key) == obj:
                return  # a change to fields podflow does not use (status heartbeats)
            else:
                self._put(kind, obj)
                self._tell(kind, event_type, obj)
            self._bump()

    def replace(self, kind: str, raws: list[dict]) -> None:
        """The full current set of `kind` (a relist or a reloaded file): objects missing from
        it are deleted."""
        parsed = {}
        for raw in raws:
            try:
                obj = objects.parse(kind, raw)
            except objects.ObjectError as exc:
                log.warning("ignoring a %s: %s", kind, exc)
                continue
            parsed[obj.key] = obj
        with self._lock:
            self._listed.add(kind)
            if kind == "Node":  # one re-index for the whole set, not one per node
                self._objects["Node"] = parsed
                self._reindex_nodes()
                self._bump()
                return
            for key in [k for k in self._objects[kind] if k not in parsed]:
                self._remove(kind, key)
            for key, obj in parsed.items():
                if self._objects[kind].get(key) != obj:
                    self._put(kind, obj)
            self._tell(kind, "REPLACED", list(parsed.values()))
            self._bump()

    def subscribe(self, kind: str, listener) -> None:
        """Call `listener(event, objects)` on every change of `kind`: ("ADDED" | "MODIFIED" |
        "DELETED", one object) or ("REPLACED", every object, after a relist or a reload). It
        runs in the source's thread, under the state's lock and BEFORE `generation` moves,
        so whoever caches by generation (the enricher) never keeps an answer made before the
        listener saw the change. A kind already listed is replayed to it at once."""
        with self._lock:
            self._listeners.setdefault(kind, []).append(listener)
            if kind in self._listed:
                listener("REPLACED", list(self._objects[kind].values()))

    def listed(self, kind: str) -> bool:
        """Whether a source has listed `kind` (its whole set is known; a forbidden or not
        yet answered list is not)."""
        return kind in self._listed

    def _tell(self, kind: str, event: str, objs) -> None:
        for listener in self._listeners.get(kind, ()):
            listener(event, objs)

    def _bump(self) -> None:
        self.generation += 1
        self.changed.notify_all()

    def wait_for(self, predicate, timeout_s: float) -> bool:
        """Block until predicate(self) holds (re-checked on every change); for tests/benches."""
        with self._lock:
            return self.changed.wait_for(lambda: predicate(self), timeout=timeout_s)

    def _put(self, kind: str, obj) -> None:
        old = self._objects[kind].get(obj.key)
        self._objects[kind][obj.key] = obj
        if kind == "Pod":
            if old is not None:
                self._unindex_pod(old)
            self._index_pod(obj)
        elif kind == "Service":
            self._reindex_service(obj.key)
        elif kind == "EndpointSlice":
            if old is not None and old.service_name != obj.service_name:
                self._slices_by_service.get((old.namespace, old.service_name), {}).pop(old.key, None)
                self._reindex_service((old.namespace, old.service_name))
            if obj.service_name:
                self._slices_by_service.setdefault((obj.namespace, obj.service_name), {})[obj.key] = obj
                self._reindex_service((obj.namespace, obj.service_name))
        elif kind == "Node":
            self._reindex_nodes()
        elif kind in ("ReplicaSet", "Job"):
            self._owners_generation += 1

    def _remove(self, kind: str, key: tuple[str, str]) -> None:
        old = self._objects[kind].pop(key, None)
        if old is None:
            return
        if kind == "Pod":
            self._unindex_pod(old)
            for ip in old.ips:
                if ip not in self.pod_by_ip and ip not in self.host_pod_by_ip:
                    self._peer_cache.pop(ip, None)
        elif kind == "Service":
            self._reindex_service(key)
        elif kind == "EndpointSlice":
            if old.service_name:
                svc_key = (old.namespace, old.service_name)
                self._slices_by_service.get(svc_key, {}).pop(old.key, None)
                self._reindex_service(svc_key)
        elif kind == "Node":
            self._reindex_nodes()
        elif kind in ("ReplicaSet", "Job"):
            self._owners_generation += 1

    # ---- pods --------------------------------------------------------------------------

    def _index_pod(self, pod: Pod) -> None:
        for ip in pod.ips:
            self._pod_ip_claims.setdefault(ip, {})[pod.key] = pod
            self._elect(ip)

    def _unindex_pod(self, pod: Pod) -> None:
        for ip in pod.ips:
            claims = self._pod_ip_claims.get(ip)
            if claims is None:
                continue
            claims.pop(pod.key, None)
            if not claims:
                del self._pod_ip_claims[ip]
            self._elect(ip)

    def _elect(self, ip: str) -> None:
        """An IP belongs to the newest live pod claiming it: a finished pod keeps its IP in
        its status, and the kubelet may already have given that IP to a new pod."""
        claims = self._pod_ip_claims.get(ip, {})
        live = [p for p in claims.values() if p.live]
        for index, host in ((self.pod_by_ip, False), (self.host_pod_by_ip, True)):
            candidates = [p for p in live if p.host_network == host]
            if candidates:
                index[ip] = max(candidates, key=lambda p: (p.created, p.name))
            else:
                index.pop(ip, None)

    def _workload(self, pod: Pod) -> tuple[str, str]:
        """Follow the controller chain: ReplicaSet -> Deployment, Job -> CronJob."""
        kind, name = pod.owner_kind, pod.owner_name
        if not kind:
            return "Pod", pod.name
        if kind in ("ReplicaSet", "Job"):
            owned = self._objects[kind].get((pod.namespace, name))
            if isinstance(owned, Owned):
                if owned.owner_kind:
                    return owned.owner_kind, owned.owner_name
                return kind, name
            if kind == "ReplicaSet":
                # Without the ReplicaSet (a file source often lacks it), a Deployment's
                # ReplicaSet is named "<deployment>-<pod-template-hash>".
                template_hash = pod.label_map.get("pod-template-hash")
                if template_hash and name.endswith("-" + template_hash):
                    return "Deployment", name[: -len(template_hash) - 1]
        return kind, name

    # ---- nodes -------------------------------------------------------------------------

    def _reindex_nodes(self) -> None:
        index: dict[str, Node] = {}
        gateways: dict[str, Node] = {}
        for node in self._objects["Node"].values():
            for ip in node.addresses:
                index.setdefault(ip, node)
            for cidr in node.pod_cidrs:
                try:
                    gateways.setdefault(str(ipaddress.ip_network(cidr, strict=False)[1]), node)
                except (ValueError, IndexError):
                    log.warning("node %s: ignoring pod CIDR %r", node.name, cidr)
        for old, new in ((self.node_by_ip, index), (self.node_gateway_by_ip, gateways)):
            for ip in [ip for ip in old if ip not in new]:
                del old[ip]
            old.update(new)
        self._node_peers = {}

    # ---- Services ----------------------------------------------------------------------

    def _reindex_service(self, svc_key: tuple[str, str]) -> None:
        for index_name, key in self._service_index_keys.pop(svc_key, []):
            index = getattr(self, index_name)
            if index_name == "headless":
                entry = index.get(key)
                if entry is not None:
                    entry.pop(svc_key, None)
                    if not entry:
                        del index[key]
            elif key in index and index[key][0].key == svc_key:
                del index[key]
        slices = self._slices_by_service.get(svc_key, {})
        if not slices:
            self._slices_by_service.pop(svc_key, None)
        svc = self._objects["Service"].get(svc_key)
        if svc is None:
            self.ready_endpoints.pop(svc_key, None)
            return
        added: list[tuple[str, object]] = []
        self.ready_endpoints[svc_key] = sum(len(ep.addresses) for s in slices.values()
                                            for ep in s.endpoints if ep.ready)
        if svc.headless:
            for sl in slices.values():
                for ep in sl.endpoints:
                    for ip in ep.addresses:
                        self.headless.setdefault(ip, {})[svc_key] = (svc, sl.ports)
                        added.append(("headless", ip))
        else:
            for port in svc.ports:
                for ip in svc.cluster_ips + svc.external_ips:
                    key = (ip, port.port, port.protocol)
                    self.vip[key] = (svc, port)
                    added.append(("vip", key))
                if port.node_port and svc.type in ("NodePort", "LoadBalancer"):
                    key = (port.node_port, port.protocol)
                    self.node_port[key] = (svc, port)
                    added.append(("node_port", key))
        self._service_index_keys[svc_key] = added

    # ---- readers (lock-free) -----------------------------------------------------------

    def peer(self, ip: str) -> Peer:
        """What `ip` is: a pod, a node (host network), or the world."""
        pod = self.pod_by_ip.get(ip)
        if pod is not None:
            cached = self._peer_cache.get(ip)
            if cached is not None and cached[0] is pod and cached[1] == self._owners_generation:
                return cached[2]
            return self._pod_peer(pod, ip)
        node = self.node_by_ip.get(ip)
        if node is None:
            node = self.node_gateway_by_ip.get(ip)
        if node is not None:
            peer = self._node_peers.get(node.name)
            if peer is None:
                peer = Peer(kind=flow_pb2.NODE, node_name=node.name,
                            endpoint=flow_pb2.Endpoint(kind=flow_pb2.NODE, node_name=node.name))
                self._node_peers[node.name] = peer
            return peer
        pod = self.host_pod_by_ip.get(ip)
        if pod is not None:  # a host-network pod on a node we have no Node object for
            return self._pod_peer(pod, ip)
        return WORLD

    def _pod_peer(self, pod: Pod, ip: str) -> Peer:
        """Build (and cache by IP) a pod's Endpoint; the cache entry is valid while the IP
        still maps to this very Pod object and no owner (ReplicaSet, Job) changed."""
        generation = self._owners_generation
        kind, name = self._workload(pod)
        endpoint = flow_pb2.Endpoint(kind=flow_pb2.POD, namespace=pod.namespace,
                                     pod_name=pod.name, labels=pod.labels,
                                     workload=flow_pb2.Workload(kind=kind, name=name),
                                     node_name=pod.node_name, host_network=pod.host_network)
        peer = Peer(kind=flow_pb2.POD, node_name=pod.node_name, endpoint=endpoint, pod=pod)
        self._peer_cache[ip] = (pod, generation, peer)
        return peer

    def service_at(self, ip: str, port: int, protocol: str) -> tuple[Service, ServicePort] | None:
        """The Service reached by dialing ip:port: a ClusterIP / external / LB address, or a
        NodePort on any node's address."""
        hit = self.vip.get((ip, port, protocol))
        if hit is None and ip in self.node_by_ip:
            hit = self.node_port.get((port, protocol))
        return hit

    def headless_at(self, ip: str, port: int, protocol: str) -> Service | None:
        """The headless Service whose EndpointSlices list ip with this port (if any)."""
        entry = self.headless.get(ip)
        if not entry:
            return None
        for svc_key in sorted(entry):
            svc, ports = entry[svc_key]
            if not ports or any(p == port and proto == protocol for _, p, proto in ports):
                return svc
        return None

    def has_endpoints(self, svc: Service) -> bool:
        return self.ready_endpoints.get(svc.key, 0) > 0

    def objects_of(self, kind: str) -> list:
        """The objects of `kind` held now (a copy), e.g. for the Hubble peer list."""
        with self._lock:
            return list(self._objects[kind].values())

    def get(self, kind: str, namespace: str, name: str):
        return self._objects[kind].get((namespace, name))

    def objects(self, kind: str) -> list:
        """Every cached object of `kind` (a copy)."""
        with self._lock:
            return list(self._objects[kind].values())

    def service_backends(self, namespace: str, name: str) -> list[str]:
        """The addresses of a Service's ready endpoints, from its EndpointSlices."""
        with self._lock:
            slices = list(self._slices_by_service.get((namespace, name), {}).values())
        return [ip for sl in slices for ep in sl.endpoints if ep.ready for ip in ep.addresses]

    def count(self, kind: str) -> int:
        return len(self._objects[kind])
