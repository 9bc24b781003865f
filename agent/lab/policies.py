"""NetworkPolicies enforced the way an iptables-based CNI enforces them (kube-router,
Calico's iptables mode), rendered into every lab node's filter table.

The lab plays the CNI, so its enforcement is written here from the API's own words and
kept apart from podflow's evaluator (agent/policy), which it is there to check: podflow
must find what this enforces, and find unenforced what the lab is told not to enforce
(`enforce=False`: a CNI without NetworkPolicy support, or a policy it gets wrong).

What a node's filter table gets (iptables-restore --noflush, chains rewritten whole on each
sync, FORWARD jumps to PFLAB-POLICY first):

    PFLAB-POLICY   replies of allowed connections (conntrack ESTABLISHED,RELATED) go on;
                   then for each pod of this node isolated for egress: -s POD -j PFLAB-EGR-…
                   and for each pod isolated for ingress: -d POD -j PFLAB-ING-…
    PFLAB-ING-…    from its own node (node address, CNI gateway) and itself: RETURN; every
                   allowed (peer, port): RETURN; else DROP
    PFLAB-EGR-…    to itself: RETURN; every allowed (peer, port): RETURN; else DROP

RETURN is "allowed, go on" (the rest of FORWARD still applies); DROP makes the kernel free
the packet with NETFILTER_DROP, which podflow's drop tracing reports. FORWARD sees packets
after kube-proxy's DNAT, so a Service connection is judged on its backend and target port.
Selectors are resolved to the pods' addresses at each sync (like an ipset per peer);
ipBlock `except`s are a chain of their own that returns before the allowing rule.

Not rendered, so refused with a LabError instead of enforced wrongly: named ports in an
egress rule whose peer is an ipBlock (they exist only on pods).
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from agent.errors import LabError
from agent.lab.netns import run_tool

if TYPE_CHECKING:
    from agent.lab.cluster import Lab
    from agent.lab.nodes import Node
    from agent.lab.pods import Pod

MAIN_CHAIN = "PFLAB-POLICY"
NAME_LABEL = "kubernetes.io/metadata.name"
SELF_MARK = "0x10000/0x10000"   # "this ipBlock matched", set and read within one chain walk


@dataclass
class LabPolicy:
    """A NetworkPolicy manifest the lab knows; `enforce` False: in the metadata, not in
    iptables."""

    manifest: dict
    enforce: bool = True

    @property
    def namespace(self) -> str:
        return self.manifest["metadata"].get("namespace", "default")

    @property
    def name(self) -> str:
        return self.manifest["metadata"]["name"]

    @property
    def spec(self) -> dict:
        return self.manifest.get("spec") or {}

    def types(self) -> set[str]:
        given = self.spec.get("policyTypes")
        if given:
            return set(given)
        return {"Ingress"} | ({"Egress"} if self.spec.get("egress") else set())


def selects(selector: Mapping | None, labels: Mapping[str, str]) -> bool:
    """Whether a label selector (matchLabels and matchExpressions) selects `labels`."""
    if selector is None:
        return True
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], set(expr.get("values") or ())
        present = key in labels
        if op == "In" and not (present and labels[key] in values):
            return False
        if op == "NotIn" and present and labels[key] in values:
            return False
        if op == "Exists" and not present:
            return False
        if op == "DoesNotExist" and present:
            return False
    return True


def _chain(kind: str, pod: "Pod") -> str:
    digest = hashlib.sha256(f"{pod.namespace}/{pod.name}".encode()).hexdigest()[:16].upper()
    return f"PFLAB-{kind}-{digest}"


def _ns_labels(lab: "Lab", namespace: str) -> dict[str, str]:
    return {**lab.namespace_labels.get(namespace, {}), NAME_LABEL: namespace}


def _peer_pods(lab: "Lab", policy: LabPolicy, peer: Mapping) -> list["Pod"]:
    """The pods (on the pod network) a podSelector/namespaceSelector peer selects."""
    pod_sel = peer.get("podSelector")
    ns_sel = peer.get("namespaceSelector")
    out = []
    for pod in lab.pods:
        if pod.host_network:
            continue
        if ns_sel is None:
            if pod.namespace != policy.namespace:
                continue
        elif not selects(ns_sel, _ns_labels(lab, pod.namespace)):
            continue
        if selects(pod_sel, pod.labels):
            out.append(pod)
    return out


def _port_args(port: Mapping, target: "Pod | None") -> list[list[str]] | None:
    """iptables arguments for one NetworkPolicyPort toward `target` (the pod whose named
    ports resolve it); None when it cannot match there."""
    protocol = (port.get("protocol") or "TCP").lower()
    number = port.get("port")
    base = ["-p", protocol, "-m", protocol]
    if number is None:
        return [["-p", protocol]]
    if isinstance(number, str):
        if target is None:
            return None
        found = [p for name, p, proto in target.container_ports
                 if name == number and proto.lower() == protocol]
        return [base + ["--dport", str(p)] for p in found] or None
    end = port.get("endPort")
    return [base + ["--dport", f"{number}:{end}" if end else str(number)]]


class _Rules:
    """The rules of one pod's chain, and the ipBlock chains they need."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.extra: dict[str, list[str]] = {}

    def allow(self, chain: str, match: Sequence[str]) -> None:
        self.lines.append(" ".join(["-A", chain, *match, "-j", "RETURN"]))

    def block(self, chain: str, side: str, block: Mapping, ports: list[list[str]]) -> None:
        """An ipBlock peer: its own chain marks what is in the CIDR and in no `except`."""
        cidr, excepts = block["cidr"], list(block.get("except") or ())
        name = "PFLAB-BLK-" + hashlib.sha256(
            f"{side}{cidr}{excepts}".encode()).hexdigest()[:16].upper()
        flag = "-s" if side == "src" else "-d"
        self.extra[name] = ([f"-A {name} {flag} {ex} -j RETURN" for ex in excepts]
                            + [f"-A {name} {flag} {cidr} -j MARK --set-xmark {SELF_MARK}"])
        for port in ports:
            self.lines.append(" ".join(["-A", chain, *port, "-j", name]))
            self.lines.append(f"-A {chain} -m mark --mark {SELF_MARK} -j RETURN")


def _render_pod(lab: "Lab", pod: "Pod", direction: str, policies: list[LabPolicy],
                rules: _Rules) -> None:
    ingress = direction == "Ingress"
    chain = _chain("ING" if ingress else "EGR", pod)
    key = "ingress" if ingress else "egress"
    peers_key = "from" if ingress else "to"
    me = "-s" if ingress else "-d"
    rules.lines.append(f"-A {chain} -j MARK --set-xmark 0x0/{SELF_MARK.split('/')[1]}")
    rules.allow(chain, [me, f"{pod.ip}/32"])              # a pod cannot block itself
    if ingress:                                            # nor its own node
        for source in (pod.node.ip, pod.node.gateway if pod.node.kind == "bridge" else None):
            if source:
                rules.allow(chain, ["-s", f"{source}/32"])
    for policy in policies:
        for index, rule in enumerate(policy.spec.get(key) or []):
            rule = rule or {}
            port_specs = rule.get("ports") or [None]
            peers = rule.get(peers_key) or [None]
            for peer in peers:
                if peer is not None and "ipBlock" in peer:
                    ports = []
                    for port in port_specs:
                        args = [[]] if port is None else _port_args(port, pod if ingress else None)
                        if args is None:
                            if not ingress:
                                raise LabError(f"NetworkPolicy {policy.namespace}/{policy.name} "
                                               f"egress[{index}]: a named port toward an "
                                               "ipBlock is not enforced by the lab")
                            continue
                        ports += args
                    rules.block(chain, "src" if ingress else "dst", peer["ipBlock"], ports)
                    continue
                targets = [None] if peer is None else _peer_pods(lab, policy, peer)
                for other in targets:
                    address = [] if other is None else ["-s" if ingress else "-d", f"{other.ip}/32"]
                    toward = pod if ingress else other
                    for port in port_specs:
                        if port is None:
                            rules.allow(chain, address)
                            continue
                        if toward is None and isinstance(port.get("port"), str):
                            continue   # a named port toward any address: pods only (below)
                        for args in _port_args(port, toward) or []:
                            rules.allow(chain, address + args)
                if peer is None and not ingress:
                    # `to` absent with a named port: resolved on every pod it may reach.
                    for port in port_specs:
                        if port is not None and isinstance(port.get("port"), str):
                            for other in lab.pods:
                                if other.host_network:
                                    continue
                                for args in _port_args(port, other) or []:
                                    rules.allow(chain, ["-d", f"{other.ip}/32"] + args)
    rules.lines.append(f"-A {chain} -j DROP")


def render(lab: "Lab", node: "Node") -> str:
    """The node's policy chains as iptables-restore --noflush input."""
    enforced = [p for p in lab.policies if p.enforce]
    rules = _Rules()
    jumps = [f"-A {MAIN_CHAIN} -m conntrack --ctstate ESTABLISHED,RELATED -j RETURN"]
    chains = [MAIN_CHAIN]
    for pod in node.pods:
        if pod.host_network:
            continue
        for direction, kind, flag in (("Egress", "EGR", "-s"), ("Ingress", "ING", "-d")):
            isolating = [p for p in enforced if p.namespace == pod.namespace
                         and direction in p.types()
                         and selects(p.spec.get("podSelector") or {}, pod.labels)]
            if not isolating:
                continue
            chain = _chain(kind, pod)
            chains.append(chain)
            jumps.append(f"-A {MAIN_CHAIN} {flag} {pod.ip}/32 -j {chain}")
            _render_pod(lab, pod, direction, isolating, rules)
    chains += list(rules.extra)
    lines = ["*filter"] + [f":{c} - [0:0]" for c in chains] + jumps + rules.lines
    for extra in rules.extra.values():
        lines += extra
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def sync_policies(lab: "Lab", node: "Node") -> None:
    """Rewrite the node's policy chains (other chains and rules are left alone) and make
    sure FORWARD jumps to them first."""
    run_tool(["ip", "netns", "exec", node.netns, "iptables-restore", "-w", "5", "--noflush"],
             input_text=render(lab, node))
    check = run_tool(["ip", "netns", "exec", node.netns, "iptables", "-w", "5", "-C", "FORWARD",
                      "-j", MAIN_CHAIN], check=False, quiet=True)
    if check.returncode != 0:
        run_tool(["ip", "netns", "exec", node.netns, "iptables", "-w", "5", "-I", "FORWARD",
                  "1", "-j", MAIN_CHAIN])


def network_policy_objects(lab: "Lab") -> list[dict]:
    """Every policy the lab knows (enforced or not), as the API server would return it."""
    out = []
    for policy in lab.policies:
        obj = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", **{
            k: v for k, v in policy.manifest.items() if k not in ("apiVersion", "kind")}}
        meta = dict(obj.get("metadata") or {})
        meta.setdefault("namespace", "default")
        obj["metadata"] = meta
        out.append(obj)
    return out


def check_cidrs(manifest: Mapping) -> None:
    """A CIDR iptables would refuse is an error now, not at the next sync."""
    for key in ("ingress", "egress"):
        for rule in (manifest.get("spec") or {}).get(key) or []:
            for peer in (rule or {}).get("from" if key == "ingress" else "to") or []:
                block = (peer or {}).get("ipBlock")
                if block:
                    for cidr in [block["cidr"], *(block.get("except") or ())]:
                        ipaddress.ip_network(cidr, strict=False)
