"""The cluster's DNS: dnsmasq in a kube-system pod behind the kube-dns Service, playing CoreDNS.

Its records are a hosts file written from the lab's Services and pods, and rewritten (then
SIGHUP) whenever a Service or a pod comes or goes, so a lookup always matches what the
metadata says. dnsmasq answers only `cluster.local` names, NXDOMAIN for the rest of the
domain, and forwards nothing.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from typing import TYPE_CHECKING

from agent.errors import LabError
from agent.lab.pods import Pod
from agent.lab.services import CLUSTER_DOMAIN, Service, ServicePort

if TYPE_CHECKING:
    from agent.lab.cluster import Lab
    from agent.lab.nodes import Node


class DnsServer:
    """dnsmasq in a kube-system pod behind the kube-dns Service, playing CoreDNS: answers
    `<svc>.<ns>.svc.cluster.local` (ClusterIP, or the backends' IPs when headless) and
    `<pod-ip-dashed>.<ns>.pod.cluster.local`; NXDOMAIN for other cluster names."""

    def __init__(self, lab: "Lab", pod: Pod, service: Service, hosts_file: str):
        self.lab = lab
        self.pod = pod
        self.service = service
        self.hosts_file = hosts_file
        self.process: subprocess.Popen | None = None

    @classmethod
    def start_on(cls, lab: "Lab", node: "Node", cluster_ip: str, namespace: str,
                 pod_name: str) -> "DnsServer":
        """A kube-system pod on `node` behind the kube-dns Service at `cluster_ip` (udp and
        tcp 53), with dnsmasq answering in it; returns once it answers."""
        pod = node.add_pod(namespace, pod_name, labels={"k8s-app": "kube-dns"},
                           owner=("Deployment", "coredns"))
        svc = lab.add_service(namespace, "kube-dns", cluster_ip=cluster_ip, port=53,
                              protocol="udp", backends=[(pod, 53)], port_name="dns",
                              selector={"k8s-app": "kube-dns"},
                              extra_ports=[ServicePort("dns-tcp", 53, "tcp", None, None)])
        dns = cls(lab, pod, svc, os.path.join(lab.run_dir, "dns-hosts"))
        dns.start()
        return dns

    @property
    def ip(self) -> str:
        """The address pods send queries to (the kube-dns ClusterIP)."""
        return self.service.cluster_ip or self.pod.ip

    def records(self) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        for svc in self.lab.services:
            if svc.headless:
                out += [(svc.dns_name, p.ip) for p, _ in svc.backends]
            else:
                out.append((svc.dns_name, svc.cluster_ip))
        for pod in self.lab.pods:
            if not pod.host_network:
                out.append((f"{pod.ip.replace('.', '-')}.{pod.namespace}.pod.{CLUSTER_DOMAIN}",
                            pod.ip))
        return out

    def write_hosts(self) -> None:
        tmp = f"{self.hosts_file}.tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            for name, ip in self.records():
                fh.write(f"{ip} {name}\n")
        os.replace(tmp, self.hosts_file)

    def start(self) -> None:
        self.write_hosts()
        cmd = ["dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--no-hosts",
               f"--addn-hosts={self.hosts_file}", "--no-resolv", "--user=root",
               "--group=root", "--pid-file=", f"--listen-address={self.pod.ip}",
               "--bind-interfaces", f"--local=/{CLUSTER_DOMAIN}/", "--cache-size=0",
               "--log-facility=-"]
        if shutil.which("dnsmasq") is None:
            raise LabError("dnsmasq is not installed (Debian package dnsmasq-base)")
        log_path = os.path.join(self.lab.run_dir, "dnsmasq.log")
        with open(log_path, "wb") as logf:
            self.process = self.pod.popen(cmd, stdout=logf, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL)
        # Wait until it answers on port 53 (it binds within milliseconds).
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                with open(log_path, encoding="utf-8", errors="replace") as fh:
                    raise LabError(f"dnsmasq exited with {self.process.returncode}: "
                                   f"{fh.read().strip()}")
            res = self.pod.run(["ss", "-lun", "sport = :53"], check=False,
                               capture_output=True, text=True)
            if self.pod.ip in res.stdout:
                return
            time.sleep(0.05)
        raise LabError("dnsmasq did not start listening on port 53 within 10 s")

    def reload(self) -> None:
        """Re-read the records (dnsmasq reloads --addn-hosts on SIGHUP)."""
        self.write_hosts()
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGHUP)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
