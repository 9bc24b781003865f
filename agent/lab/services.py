"""Services as kube-proxy (iptables mode) makes them, and NetworkPolicy-like drop rules.

A Service is a ClusterIP (or none: headless), ports, and backends (pod, target port). Every
node's nat table is rewritten as a whole from all Services whenever one changes, the way
kube-proxy does it: KUBE-SERVICES -> KUBE-SVC-<hash> -> KUBE-SEP-<hash> (DNAT to a backend,
chosen with `statistic --mode random`), KUBE-NODEPORTS -> KUBE-EXT-<hash> for NodePorts, and
the masquerade mark. Chain names use kube-proxy's hash, so what the agent and a reader see
in `iptables-save` is what a real node shows.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

from agent.lab.netns import run_tool

if TYPE_CHECKING:
    from agent.lab.pods import Pod

CLUSTER_DOMAIN = "cluster.local"
MASQ_MARK = "0x4000/0x4000"      # kube-proxy's masquerade mark


def short_hash(*parts: str, length: int = 16) -> str:
    """kube-proxy's chain-name hash: base32 of sha256, truncated."""
    digest = hashlib.sha256("/".join(parts).encode()).digest()
    return base64.b32encode(digest).decode()[:length]


def common_labels(pods: Sequence["Pod"]) -> dict[str, str]:
    """The labels every backend shares: the Service's selector when none is given."""
    if not pods:
        return {}
    common = dict(pods[0].labels)
    for p in pods[1:]:
        common = {k: v for k, v in common.items() if p.labels.get(k) == v}
    return common


@dataclass
class ServicePort:
    """One port of a Service (kube-dns has two: udp and tcp 53)."""

    name: str
    port: int
    protocol: str          # tcp, udp, sctp
    target_port: int | None = None   # None: each backend's own port
    node_port: int | None = None


@dataclass(eq=False)
class Service:
    """A Service and its endpoints; `backends` are (pod, target port) pairs."""

    namespace: str
    name: str
    cluster_ip: str | None      # None when headless
    ports: list[ServicePort]
    backends: list[tuple["Pod", int]]
    selector: dict[str, str]
    uid: str = ""
    resource_version: int = 0

    @property
    def headless(self) -> bool:
        return self.cluster_ip is None

    @property
    def type(self) -> str:
        return "NodePort" if any(p.node_port for p in self.ports) else "ClusterIP"

    @property
    def port(self) -> int:
        return self.ports[0].port

    @property
    def node_port(self) -> int | None:
        return self.ports[0].node_port

    @property
    def dns_name(self) -> str:
        return f"{self.name}.{self.namespace}.svc.{CLUSTER_DOMAIN}"

    def target_port(self, sp: ServicePort, backend_port: int) -> int:
        return sp.target_port if sp.target_port is not None else backend_port


def kube_proxy_nat(services: Sequence[Service], cluster_cidr: str) -> str:
    """The nat table kube-proxy (iptables mode) would write for these Services, as
    iptables-restore input."""
    chains = ["KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-MARK-MASQ"]
    rules = [
        '-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        '-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        '-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING',
        f"-A KUBE-MARK-MASQ -j MARK --set-xmark {MASQ_MARK}",
        f"-A KUBE-POSTROUTING -m mark ! --mark {MASQ_MARK} -j RETURN",
        "-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0",
        '-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring '
        'SNAT" -j MASQUERADE --random-fully',
    ]
    for svc in services:
        if svc.headless:
            continue
        for sp in svc.ports:
            spn = f"{svc.namespace}/{svc.name}" + (f":{sp.name}" if sp.name else "")
            svc_chain = "KUBE-SVC-" + short_hash(spn, sp.protocol)
            chains.append(svc_chain)
            p = sp.protocol
            # kube-proxy rejects traffic to a Service without endpoints (filter table);
            # here it simply stays untranslated.
            if svc.backends:
                rules.append(f'-A KUBE-SERVICES -d {svc.cluster_ip}/32 -p {p} -m comment '
                             f'--comment "{spn} cluster IP" -m {p} --dport {sp.port} '
                             f'-j {svc_chain}')
            rules.append(f'-A {svc_chain} ! -s {cluster_cidr} -d {svc.cluster_ip}/32 '
                         f'-p {p} -m comment --comment "{spn} cluster IP" -m {p} '
                         f'--dport {sp.port} -j KUBE-MARK-MASQ')
            if sp.node_port and svc.backends:
                ext_chain = "KUBE-EXT-" + short_hash(spn, sp.protocol)
                chains.append(ext_chain)
                rules.append(f'-A KUBE-NODEPORTS -p {p} -m comment --comment "{spn}" '
                             f'-m {p} --dport {sp.node_port} -j {ext_chain}')
                rules.append(f'-A {ext_chain} -m comment --comment "masquerade traffic '
                             f'for {spn} external destinations" -j KUBE-MARK-MASQ')
                rules.append(f"-A {ext_chain} -j {svc_chain}")
            n = len(svc.backends)
            for i, (pod, backend_port) in enumerate(svc.backends):
                target = svc.target_port(sp, backend_port)
                sep_chain = "KUBE-SEP-" + short_hash(spn, sp.protocol, f"{pod.ip}:{target}")
                chains.append(sep_chain)
                comment = f'-m comment --comment "{spn} -> {pod.ip}:{target}"'
                if i < n - 1:
                    prob = 1.0 / (n - i)
                    rules.append(f"-A {svc_chain} {comment} -m statistic --mode random "
                                 f"--probability {prob:.11f} -j {sep_chain}")
                else:
                    rules.append(f"-A {svc_chain} {comment} -j {sep_chain}")
                rules.append(f'-A {sep_chain} -s {pod.ip}/32 -m comment --comment "{spn}" '
                             f"-j KUBE-MARK-MASQ")
                rules.append(f'-A {sep_chain} -p {p} -m comment --comment "{spn}" -m {p} '
                             f"-j DNAT --to-destination {pod.ip}:{target}")
    rules.append('-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; '
                 'NOTE: this must be the last rule in this chain" -m addrtype '
                 '--dst-type LOCAL -j KUBE-NODEPORTS')
    lines = ["*nat", ":PREROUTING ACCEPT [0:0]", ":INPUT ACCEPT [0:0]",
             ":OUTPUT ACCEPT [0:0]", ":POSTROUTING ACCEPT [0:0]"]
    lines += [f":{c} - [0:0]" for c in dict.fromkeys(chains)]
    lines += rules
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def sync_nat(netns: str, rules: str) -> None:
    """Rewrite a node's nat table as a whole (iptables-restore, like kube-proxy)."""
    run_tool(["ip", "netns", "exec", netns, "iptables-restore", "-w", "5"], input_text=rules)


def drop_rule(src: "Pod", dst: "Pod", port: int | None, protocol: str) -> list[str]:
    """The iptables arguments of a NetworkPolicy-like DROP of src -> dst (on `port`),
    commented so a reader of `iptables-save` knows whose it is."""
    rule = ["-s", f"{src.ip}/32", "-d", f"{dst.ip}/32"]
    if port is not None:
        rule += ["-p", protocol, "-m", protocol, "--dport", str(port)]
    elif protocol:
        rule += ["-p", protocol]
    return rule + ["-m", "comment", "--comment", f"podflow-lab policy {src.key} -> {dst.key}",
                   "-j", "DROP"]
