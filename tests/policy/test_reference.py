"""The evaluator (compiled peers, bitmasks, caches) against a plain reference that applies
the NetworkPolicy rules directly, on random policies, pods and connections, before and after
the cluster and the policies change. Any difference in verdict, policies, rules, reason or
unresolved named ports fails with the connection and the policies involved."""

from __future__ import annotations

import ipaddress
import random

import pytest

from agent.policy.evaluate import PolicyEvaluator
from agent.policy.load import load_policies
from agent.policy.model import EGRESS, INGRESS, NAMESPACE_NAME_LABEL
from agent.policy.verdict import ConnectionVerdict, DirectionVerdict, Reason, RuleRef, Verdict
from agent.policy.view import ContainerPort, PodInfo, StaticCluster

NAMESPACES = ["a", "b", "c"]
NODES = {"192.168.0.1": "n1", "192.168.0.2": "n2", "10.0.1.254": "n1"}
WORLD = ["93.184.216.34", "172.17.1.5", "172.17.0.9", "8.8.8.8", "2001:db8::7"]
PORT_NAMES = ["http", "metrics", "dns", "pg"]


def random_labels(rng: random.Random) -> dict:
    out = {}
    for key, values in (("app", "xyz"), ("tier", ["fe", "be"]), ("env", ["p", "d"])):
        if rng.random() < 0.7:
            out[key] = rng.choice(list(values))
    return out


def random_selector(rng: random.Random) -> dict:
    roll = rng.random()
    if roll < 0.25:
        return {}
    sel: dict = {}
    if roll < 0.7:
        items = sorted(random_labels(rng).items())
        sel["matchLabels"] = dict(rng.sample(items, k=min(len(items), rng.randint(1, 2))))
    if rng.random() < 0.4:
        op = rng.choice(["In", "NotIn", "Exists", "DoesNotExist"])
        expr = {"key": rng.choice(["app", "tier", "env", NAMESPACE_NAME_LABEL]), "operator": op}
        if op in ("In", "NotIn"):
            expr["values"] = rng.sample(["x", "y", "z", "fe", "be", "p", "d", "a", "b"], k=2)
        sel["matchExpressions"] = [expr]
    return sel


def random_peer(rng: random.Random) -> dict:
    roll = rng.random()
    if roll < 0.3:
        return {"podSelector": random_selector(rng)}
    if roll < 0.55:
        return {"namespaceSelector": random_selector(rng)}
    if roll < 0.8:
        return {"namespaceSelector": random_selector(rng), "podSelector": random_selector(rng)}
    cidr = rng.choice(["10.0.0.0/8", "10.0.1.0/24", "172.17.0.0/16", "0.0.0.0/0", "192.168.0.0/16",
                       "2001:db8::/32"])
    block: dict = {"cidr": cidr}
    net = ipaddress.ip_network(cidr)
    if rng.random() < 0.5 and net.prefixlen < 24:
        sub = list(net.subnets(new_prefix=net.prefixlen + 8 if net.version == 4 else 64))
        block["except"] = [str(sub[1 if len(sub) > 1 else 0])]
    return {"ipBlock": block}


def random_ports(rng: random.Random) -> list | None:
    if rng.random() < 0.3:
        return None
    out = []
    for _ in range(rng.randint(1, 2)):
        port: dict = {}
        if rng.random() < 0.7:
            port["protocol"] = rng.choice(["TCP", "UDP", "SCTP"])
        kind = rng.random()
        if kind < 0.4:
            port["port"] = rng.choice([53, 80, 8080, 5432])
        elif kind < 0.6:
            port["port"] = rng.choice(PORT_NAMES)
        elif kind < 0.8:
            start = rng.choice([50, 80, 8000])
            port["port"], port["endPort"] = start, start + rng.choice([0, 5, 100])
        out.append(port)
    return out


def random_policy(rng: random.Random, index: int) -> dict:
    spec: dict = {"podSelector": random_selector(rng)}
    for direction, peers_key in (("ingress", "from"), ("egress", "to")):
        if rng.random() < 0.6:
            rules = []
            for _ in range(rng.randint(0, 2)):
                rule: dict = {}
                if rng.random() < 0.8:
                    rule[peers_key] = [random_peer(rng) for _ in range(rng.randint(0, 2))]
                ports = random_ports(rng)
                if ports is not None:
                    rule["ports"] = ports
                rules.append(rule)
            spec[direction] = rules
    if rng.random() < 0.5:
        spec["policyTypes"] = rng.choice([["Ingress"], ["Egress"], ["Ingress", "Egress"]])
    return {"kind": "NetworkPolicy", "metadata": {"name": f"p{index}",
                                                  "namespace": rng.choice(NAMESPACES)},
            "spec": spec}


def random_cluster(rng: random.Random) -> StaticCluster:
    pods = {}
    for i in range(14):
        ip = f"10.0.{rng.choice([1, 2])}.{i + 1}"
        ports = None if rng.random() < 0.15 else tuple(
            ContainerPort(name, rng.choice([53, 80, 8080, 5432, 9090]), rng.choice(["TCP", "UDP"]))
            for name in rng.sample(PORT_NAMES, k=rng.randint(0, 3)))
        pods[ip] = PodInfo(rng.choice(NAMESPACES), f"pod-{i}", random_labels(rng),
                           rng.choice(["n1", "n2"]), ports)
    # A host-network pod on n2's address.
    pods["192.168.0.2"] = PodInfo("a", "hostnet", {"app": "x"}, "n2", (), host_network=True)
    namespaces = {ns: random_labels(rng) for ns in NAMESPACES[:-1]}   # "c" has no object
    return StaticCluster(pods=pods, nodes=NODES, namespaces=namespaces)


# ---- the reference: the rules, applied directly ------------------------------------------

def describe(cluster: StaticCluster, ip: str):
    pod = cluster.pod_at(ip)
    if pod is not None and not pod.host_network:
        ns_labels = dict(cluster.namespace_labels(pod.namespace) or {})
        ns_labels[NAMESPACE_NAME_LABEL] = pod.namespace
        return {"pod": pod, "ns_labels": ns_labels, "ip": ip, "node": pod.node_name}
    node = cluster.node_at(ip) or (pod.node_name if pod is not None else None)
    return {"pod": None, "ip": ip, "node": node}


def peer_matches(peer, policy_ns, end) -> bool:
    if peer.ip_block is not None:
        return peer.ip_block.contains(end["ip"])
    pod = end["pod"]
    if pod is None:
        return False
    if peer.namespace_selector is None:
        ns_ok = pod.namespace == policy_ns
    else:
        ns_ok = peer.namespace_selector.matches(end["ns_labels"])
    return ns_ok and (peer.pod_selector is None or peer.pod_selector.matches(pod.labels))


def port_matches(ports, port, proto, dst, unresolved) -> bool:
    if not ports:
        return True
    for p in ports:
        if p.protocol != proto:
            continue
        if p.port is None:
            return True
        if isinstance(p.port, int):
            high = p.end_port if p.end_port is not None else p.port
            if p.port <= port <= high:
                return True
        elif dst["pod"] is not None:
            cports = dst["pod"].container_ports
            if cports is None:
                unresolved.add(p.port)
            elif any(c.name == p.port and c.port == port and c.protocol == proto for c in cports):
                return True
    return False


def reference(policies, cluster, src_ip, dst_ip, port, proto) -> ConnectionVerdict:
    src, dst = describe(cluster, src_ip), describe(cluster, dst_ip)
    if proto not in ("TCP", "UDP", "SCTP"):
        port = 0
    same_pod = src["pod"] is not None and dst["pod"] is not None and src["pod"].key == dst["pod"].key
    own_node = (src["pod"] is None and src["node"] and dst["pod"] is not None
                and src["node"] == dst["pod"].node_name)

    def side(direction, subject, peer):
        if subject["pod"] is None:
            return DirectionVerdict(Verdict.NOT_APPLICABLE)
        pod = subject["pod"]
        isolating = sorted((p for p in policies if p.namespace == pod.namespace
                            and p.pod_selector.matches(pod.labels) and direction in p.policy_types),
                           key=lambda p: p.key)
        if not isolating:
            return DirectionVerdict(Verdict.NOT_ISOLATED)
        rules, unresolved = [], set()
        for p in isolating:
            for i, rule in enumerate(p.rules(direction)):
                if rule.peers and not any(peer_matches(pe, p.namespace, peer) for pe in rule.peers):
                    continue
                if port_matches(rule.ports, port, proto, dst, unresolved):
                    rules.append(RuleRef(p.ref, direction, i))
        if rules:
            names = tuple(dict.fromkeys(r.policy for r in rules))
            return DirectionVerdict(Verdict.ALLOWED, names, tuple(rules), Reason.RULE)
        if same_pod:
            return DirectionVerdict(Verdict.ALLOWED, reason=Reason.SELF)
        if own_node and direction == INGRESS:
            return DirectionVerdict(Verdict.ALLOWED, reason=Reason.OWN_NODE)
        return DirectionVerdict(Verdict.DENIED, tuple(p.ref for p in isolating),
                                unresolved=tuple(sorted(unresolved)))

    return ConnectionVerdict(side(EGRESS, src, dst), side(INGRESS, dst, src))


@pytest.mark.parametrize("seed", range(12))
def test_matches_reference(seed):
    rng = random.Random(seed)
    cluster = random_cluster(rng)
    loaded = load_policies([random_policy(rng, i) for i in range(rng.randint(3, 14))])
    assert not loaded.problems, loaded.problems
    policies = list(loaded.policies)
    evaluator = PolicyEvaluator(cluster, policies, max_cached=64 if seed % 2 else 65536)
    ips = list(cluster._pods) + list(NODES) + WORLD
    checked = 0
    for round_ in range(3):
        for _ in range(400):
            src, dst = rng.choice(ips), rng.choice(ips)
            port = rng.choice([53, 80, 85, 8080, 8100, 5432, 9090])
            proto = rng.choice(["TCP", "TCP", "UDP", "SCTP", "ICMP"])
            got = evaluator.evaluate(src, dst, port, proto)
            want = reference(policies, cluster, src, dst, port, proto)
            assert got == want, (src, dst, port, proto, [p.to_manifest() for p in policies])
            checked += 1
        # Change the world between rounds: relabel a pod and a namespace, swap a policy.
        ip = rng.choice(list(cluster._pods))
        old = cluster.pod_at(ip)
        cluster.update(pods={ip: PodInfo(old.namespace, old.name, random_labels(rng), old.node_name,
                                         old.container_ports, old.host_network)},
                       namespaces={"a": random_labels(rng)})
        if round_ == 1:
            policies[0] = load_policies([dict(random_policy(rng, 0),
                                              metadata=policies[0].to_manifest()["metadata"])]).policies[0]
            evaluator.upsert(policies[0])
    assert checked == 1200
