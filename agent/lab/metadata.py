"""The Kubernetes objects a lab stands for, shaped like `kubectl get ... -o json`.

Agents under test read them (`--metadata FILE`, or the fake API server that serves them) to
name both ends of every flow, so they carry what a real cluster's objects carry where the
agent looks: Nodes with their pod CIDR and address, Pods with owner references through
ReplicaSets to Deployments, Services with their ports, and EndpointSlices naming each
backend pod and its node. Names, uids and resource versions are stable for a lab id.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from typing import TYPE_CHECKING

from agent.lab.policies import network_policy_objects
from agent.lab.services import short_hash

if TYPE_CHECKING:
    from agent.lab.cluster import Lab
    from agent.lab.nodes import Node
    from agent.lab.pods import Pod
    from agent.lab.services import Service


def object_uid(lab_id: str, kind: str, namespace: str, name: str) -> str:
    """A uid that is the same for the same object of the same lab id, every run."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"podflow-lab/{lab_id}/{kind}/{namespace}/{name}"))


def replicaset_name(deployment: str) -> str:
    """The ReplicaSet the lab's metadata puts between a Deployment and its pods
    (`<deployment>-<10-char pod-template-hash>`), for naming pods like Kubernetes does."""
    return f"{deployment}-{hashlib.sha1(deployment.encode()).hexdigest()[:10]}"


CREATED = "2026-01-01T00:00:00Z"  # every object's creationTimestamp


def cluster_metadata(lab: "Lab") -> dict:
    """`kubectl get pods,services,endpointslices,nodes,namespaces,networkpolicies -A -o
    json` for this lab, plus the ReplicaSets that own Deployments' pods. Every policy the
    lab knows is listed, the ones it does not enforce too (agent/lab/policies.py)."""
    items: list[dict] = [_node(node) for node in lab.nodes]
    replicasets: dict[tuple[str, str], dict] = {}
    items += [_pod(lab, pod, replicasets) for pod in lab.pods]
    for svc in lab.services:
        items += [_service(svc), _endpoint_slice(lab, svc)]
    items.extend(replicasets.values())
    items += [_namespace(lab, ns) for ns in sorted(
        {p.namespace for p in lab.pods} | {s.namespace for s in lab.services}
        | set(lab.namespace_labels) | {p.namespace for p in lab.policies})]
    items += network_policy_objects(lab)
    return {"apiVersion": "v1", "kind": "List", "items": items,
            "metadata": {"resourceVersion": ""}}


def _node(node: "Node") -> dict:
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": node.name, "uid": node.uid, "resourceVersion": "1",
                     "creationTimestamp": CREATED,
                     "labels": {"kubernetes.io/hostname": node.name,
                                "kubernetes.io/os": "linux",
                                "podflow.lab/cni": node.kind}},
        "spec": {"podCIDR": str(node.pod_cidr), "podCIDRs": [str(node.pod_cidr)]},
        "status": {"addresses": [{"type": "InternalIP", "address": node.ip},
                                 {"type": "Hostname", "address": node.name}],
                   "conditions": [{"type": "Ready", "status": "True"}]},
    }


def _namespace(lab: "Lab", name: str) -> dict:
    return {"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "uid": lab.uid("Namespace", "", name),
                         "resourceVersion": "1", "creationTimestamp": CREATED,
                         "labels": {**lab.namespace_labels.get(name, {}),
                                    "kubernetes.io/metadata.name": name}},
            "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}}


def _owner_ref(api: str, kind: str, name: str, uid: str) -> dict:
    return {"apiVersion": api, "kind": kind, "name": name, "controller": True,
            "blockOwnerDeletion": True, "uid": uid}


def _replicaset(lab: "Lab", pod: "Pod", name: str, deployment: str) -> dict:
    """The ReplicaSet between a Deployment and its pods (replicas counted by the caller)."""
    return {
        "apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {
            "name": name, "namespace": pod.namespace,
            "uid": lab.uid("ReplicaSet", pod.namespace, name),
            "resourceVersion": "1", "creationTimestamp": CREATED,
            "labels": dict(pod.labels),
            "ownerReferences": [_owner_ref("apps/v1", "Deployment", deployment,
                                           lab.uid("Deployment", pod.namespace, deployment))]},
        "spec": {"replicas": 0, "selector": {"matchLabels": dict(pod.labels)}},
    }


def _pod(lab: "Lab", pod: "Pod", replicasets: dict[tuple[str, str], dict]) -> dict:
    """The Pod object; a Deployment's pod adds to (or creates) its ReplicaSet."""
    meta = {"name": pod.name, "namespace": pod.namespace, "uid": pod.uid,
            "resourceVersion": str(pod.resource_version), "creationTimestamp": CREATED,
            "labels": dict(pod.labels)}
    if pod.owner is not None:
        kind, oname = pod.owner
        if kind == "Deployment":
            rs_name = replicaset_name(oname)
            rs = replicasets.setdefault((pod.namespace, rs_name),
                                        _replicaset(lab, pod, rs_name, oname))
            rs["spec"]["replicas"] += 1
            ref = _owner_ref("apps/v1", "ReplicaSet", rs_name, rs["metadata"]["uid"])
        else:
            api = "batch/v1" if kind in ("Job", "CronJob") else "apps/v1"
            ref = _owner_ref(api, kind, oname, lab.uid(kind, pod.namespace, oname))
        meta["ownerReferences"] = [ref]
    return {
        "apiVersion": "v1", "kind": "Pod", "metadata": meta,
        "spec": {"nodeName": pod.node.name, "hostNetwork": pod.host_network,
                 "containers": [{"name": pod.name.split("-")[0] or "main",
                                 "image": "podflow-lab/app:latest",
                                 "ports": [{"name": n, "containerPort": p, "protocol": proto}
                                           for n, p, proto in pod.container_ports]}]},
        "status": {"phase": "Running", "podIP": pod.ip, "podIPs": [{"ip": pod.ip}],
                   "hostIP": pod.node.ip, "hostIPs": [{"ip": pod.node.ip}],
                   "conditions": [{"type": "Ready", "status": "True"}]},
    }


def _service(svc: "Service") -> dict:
    ports = []
    for sp in svc.ports:
        targets = {svc.target_port(sp, bp) for _, bp in svc.backends}
        target = sp.target_port if sp.target_port is not None else (
            targets.pop() if len(targets) == 1 else sp.port)
        entry = {"name": sp.name, "port": sp.port, "targetPort": target,
                 "protocol": sp.protocol.upper()}
        if sp.node_port:
            entry["nodePort"] = sp.node_port
        if not sp.name:
            del entry["name"]
        ports.append(entry)
    cluster_ip = svc.cluster_ip or "None"
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": svc.name, "namespace": svc.namespace, "uid": svc.uid,
                     "resourceVersion": str(svc.resource_version),
                     "creationTimestamp": CREATED, "labels": {}},
        "spec": {"clusterIP": cluster_ip, "clusterIPs": [cluster_ip],
                 "type": svc.type, "ports": ports, "selector": dict(svc.selector),
                 "sessionAffinity": "None", "ipFamilies": ["IPv4"]},
        "status": {"loadBalancer": {}},
    }


def _endpoint_slice(lab: "Lab", svc: "Service") -> dict:
    """The Service's one EndpointSlice: every backend ready, with its pod and node."""
    slice_name = f"{svc.name}-{short_hash(svc.namespace, svc.name, length=5).lower()}"
    return {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {
            "name": slice_name, "namespace": svc.namespace,
            "uid": lab.uid("EndpointSlice", svc.namespace, slice_name),
            "resourceVersion": str(svc.resource_version), "creationTimestamp": CREATED,
            "generateName": f"{svc.name}-",
            "labels": {"kubernetes.io/service-name": svc.name,
                       "endpointslice.kubernetes.io/managed-by":
                           "endpointslice-controller.k8s.io"},
            "ownerReferences": [{"apiVersion": "v1", "kind": "Service",
                                 "name": svc.name, "uid": svc.uid, "controller": True,
                                 "blockOwnerDeletion": True}]},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [p.ip],
                       "conditions": {"ready": True, "serving": True, "terminating": False},
                       "nodeName": p.node.name,
                       "targetRef": {"kind": "Pod", "name": p.name,
                                     "namespace": p.namespace, "uid": p.uid}}
                      for p, _ in svc.backends],
        "ports": [{"name": sp.name, "port": svc.target_port(sp, svc.backends[0][1])
                   if svc.backends else sp.port, "protocol": sp.protocol.upper()}
                  for sp in svc.ports],
    }


def write_json_atomically(doc: dict, path: str) -> str:
    """Write `doc` as JSON so an agent watching the file never reads half of it."""
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(doc, fh, indent=1)
    os.replace(tmp, path)
    return path
