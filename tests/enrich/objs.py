"""Kubernetes objects as the API server returns them (camelCase JSON), for the k8s tests."""

from __future__ import annotations


def pod(name: str, ip: str | None, namespace: str = "shop", labels: dict | None = None,
        node: str = "node-a", owner: tuple[str, str] | None = None, phase: str = "Running",
        host_network: bool = False, created: str = "2026-11-21T09:00:00Z") -> dict:
    meta: dict = {"name": name, "namespace": namespace, "labels": labels or {},
                  "creationTimestamp": created}
    if owner:
        meta["ownerReferences"] = [{"apiVersion": "apps/v1", "kind": owner[0], "name": owner[1],
                                    "controller": True, "uid": "x"}]
    status: dict = {"phase": phase}
    if ip:
        status["podIP"] = ip
        status["podIPs"] = [{"ip": ip}]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta,
            "spec": {"nodeName": node, "hostNetwork": host_network}, "status": status}


def service(name: str, cluster_ip: str | None, ports: list[tuple[int, int]] | None = None,
            namespace: str = "shop", type_: str = "ClusterIP", node_ports: list[int] | None = None,
            protocol: str = "TCP", external_ips: list[str] | None = None) -> dict:
    spec_ports = []
    for index, (port, target) in enumerate(ports or [(80, 8080)]):
        entry = {"name": f"p{index}", "port": port, "targetPort": target, "protocol": protocol}
        if node_ports:
            entry["nodePort"] = node_ports[index]
        spec_ports.append(entry)
    spec: dict = {"type": type_, "ports": spec_ports,
                  "clusterIP": cluster_ip if cluster_ip else "None"}
    spec["clusterIPs"] = [spec["clusterIP"]]
    if external_ips:
        spec["externalIPs"] = external_ips
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def endpointslice(service_name: str, endpoints: list[tuple[str, str | None, bool]],
                  ports: list[int] | None = None, namespace: str = "shop",
                  node: str = "node-a", protocol: str = "TCP", name: str | None = None) -> dict:
    """endpoints: (ip, pod name or None, ready)."""
    eps = []
    for ip, pod_name, ready in endpoints:
        ep: dict = {"addresses": [ip], "conditions": {"ready": ready}, "nodeName": node}
        if pod_name:
            ep["targetRef"] = {"kind": "Pod", "name": pod_name, "namespace": namespace}
        eps.append(ep)
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
            "metadata": {"name": name or f"{service_name}-abcde", "namespace": namespace,
                         "labels": {"kubernetes.io/service-name": service_name}},
            "ports": [{"port": p, "protocol": protocol} for p in (ports or [8080])],
            "endpoints": eps}


def node(name: str, ip: str, pod_cidr: str | None = None) -> dict:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
            "spec": {"podCIDR": pod_cidr} if pod_cidr else {},
            "status": {"addresses": [{"type": "InternalIP", "address": ip},
                                     {"type": "Hostname", "address": name}]}}


def replicaset(name: str, deployment: str | None, namespace: str = "shop") -> dict:
    meta: dict = {"name": name, "namespace": namespace}
    if deployment:
        meta["ownerReferences"] = [{"kind": "Deployment", "name": deployment, "controller": True}]
    return {"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": meta}


def job(name: str, cronjob: str | None, namespace: str = "shop") -> dict:
    meta: dict = {"name": name, "namespace": namespace}
    if cronjob:
        meta["ownerReferences"] = [{"kind": "CronJob", "name": cronjob, "controller": True}]
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": meta}


def as_list(*items: dict) -> dict:
    return {"apiVersion": "v1", "kind": "List", "items": list(items)}
