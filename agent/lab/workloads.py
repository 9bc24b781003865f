"""What runs inside a lab namespace: commands, servers, clients and DNS lookups.

Pods, nodes and outside hosts share this mixin (`InNetns`): `run`/`popen` a command in the
namespace (the lab stops what is still running at cleanup), and the pod programs of
agent/lab/programs/ (a named server, a one-request client, a DNS lookup), each a plain
stdlib-only file run with `python -I -S` so it starts fast in any namespace.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

from agent.errors import LabError

if TYPE_CHECKING:
    from agent.lab.cluster import Lab

PROGRAMS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "programs")
SERVER_PROGRAM = os.path.join(PROGRAMS_DIR, "server.py")
CLIENT_PROGRAM = os.path.join(PROGRAMS_DIR, "client.py")
# One-shot DNS lookups and the demo's steady traffic run this script in pods.
POD_TRAFFIC_SCRIPT = os.path.join(PROGRAMS_DIR, "traffic.py")

HTTP_GET = "GET / HTTP/1.0\r\n\r\n"
DEFAULT_DNS_IP = "10.96.0.10"  # the kube-dns ClusterIP a lab's DNS server gets by default


def pod_program(path: str, *args: str) -> list[str]:
    """The command line running one of agent/lab/programs/ (isolated, no site packages)."""
    return [sys.executable, "-I", "-S", path, *args]


@dataclass
class Reply:
    """One request from `InNetns.request`: what came back, or why nothing did."""

    local_port: int   # the client's source port, also when the request failed
    text: str         # the server's answer ("" when none)
    error: str = ""   # the socket error ("" when answered)

    @property
    def name(self) -> str:
        """The answering server's name (see `InNetns.reply_name`)."""
        return InNetns.reply_name(self.text)


class InNetns:
    """`run`/`popen` inside a namespace, shared by nodes, pods and outside hosts."""

    netns: str
    lab: "Lab"

    def _argv(self, cmd: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.netns, *cmd]

    def run(self, cmd: Sequence[str], check: bool = True, **kwargs) -> subprocess.CompletedProcess:
        """subprocess.run inside this namespace (check=True by default)."""
        return subprocess.run(self._argv(cmd), check=check, **kwargs)

    def popen(self, cmd: Sequence[str], **kwargs) -> subprocess.Popen:
        """subprocess.Popen inside this namespace; the lab stops it at cleanup if still alive."""
        proc = subprocess.Popen(self._argv(cmd), **kwargs)
        self.lab.track_process(proc)
        return proc

    def serve(self, port: int, protocol: str = "tcp", name: str | None = None,
              timeout_s: float = 5.0) -> subprocess.Popen:
        """Start a tiny server answering every request with `name` (default: the pod's or
        host's name); an HTTP-looking request gets an HTTP/1.0 response. Returns once it
        listens."""
        name = name or getattr(self, "name")
        proc = self.popen(pod_program(SERVER_PROGRAM, name, str(port), protocol),
                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE)
        flag = "-lun" if protocol == "udp" else "-ltn"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise LabError(f"server on {name}:{port} exited: "
                               f"{proc.stderr.read().decode(errors='replace') if proc.stderr else ''}")
            res = self.run(["ss", "-H", flag, f"sport = :{port}"], check=False,
                           capture_output=True, text=True)
            if res.stdout.strip():
                return proc
            time.sleep(0.03)
        raise LabError(f"server on {name}:{port} not listening after {timeout_s}s")

    @staticmethod
    def _client_argv(ip: str, port: int, protocol: str, payload: str, timeout_s: float,
                     hold_s: float) -> list[str]:
        return pod_program(CLIENT_PROGRAM, ip, str(port), protocol, str(timeout_s), payload,
                           str(hold_s))

    def _reply(self, line: str, stderr: str, ip: str, port: int, protocol: str) -> Reply:
        try:
            fields = json.loads(line)
        except json.JSONDecodeError as exc:
            raise LabError(f"client in {self.netns} for {ip}:{port}/{protocol} printed no "
                           f"result: {stderr.strip()[-500:] or line!r}") from exc
        return Reply(int(fields["local_port"]), fields["reply"], fields["error"])

    def request(self, ip: str, port: int, protocol: str = "tcp", payload: str = HTTP_GET,
                timeout_s: float = 3.0) -> Reply:
        """One request from this namespace to ip:port; a failed one is a Reply with `error`."""
        res = self.run(self._client_argv(ip, port, protocol, payload, timeout_s, 0.0),
                       check=False, capture_output=True, text=True)
        return self._reply(res.stdout, res.stderr, ip, port, protocol)

    def request_held(self, ip: str, port: int, protocol: str = "tcp", payload: str = HTTP_GET,
                     timeout_s: float = 3.0, hold_s: float = 5.0
                     ) -> tuple[Reply, subprocess.Popen]:
        """`request`, returning as soon as the answer is in while the client keeps its socket
        open `hold_s` longer (wait for the process, or leave it to the lab's cleanup)."""
        proc = self.popen(self._client_argv(ip, port, protocol, payload, timeout_s, hold_s),
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
        line = proc.stdout.readline() if proc.stdout else ""
        stderr = "" if line or proc.stderr is None else proc.stderr.read()
        return self._reply(line, stderr, ip, port, protocol), proc

    def fetch(self, ip: str, port: int, protocol: str = "tcp", payload: str = HTTP_GET,
              timeout_s: float = 3.0, check: bool = True) -> str:
        """One request from this namespace to ip:port; returns the reply ("" on failure
        when check=False; LabError on failure when check=True)."""
        reply = self.request(ip, port, protocol, payload, timeout_s)
        if reply.error:
            if check:
                raise LabError(f"request from {self.netns} to {ip}:{port}/{protocol} failed: "
                               f"{reply.error}")
            return ""
        return reply.text

    def resolve(self, name: str, server: str | None = None, timeout_s: float = 2.0
                ) -> tuple[str, list[str]]:
        """Ask the cluster DNS (default: the lab's kube-dns ClusterIP) for `name`'s A
        records from this namespace: (rcode, addresses)."""
        server = server or (self.lab.dns.ip if self.lab.dns else DEFAULT_DNS_IP)
        res = self.run(pod_program(POD_TRAFFIC_SCRIPT, "resolve", name, server, str(timeout_s)),
                       check=False, capture_output=True, text=True)
        if res.returncode != 0:
            raise LabError(f"DNS lookup of {name} via {server} from {self.netns} failed: "
                           f"{(res.stderr.strip().splitlines() or ['?'])[-1]}")
        rcode, *ips = res.stdout.split()
        return rcode, ips

    @staticmethod
    def reply_name(reply: str) -> str:
        """The server name in a `fetch` reply (HTTP body or raw)."""
        return reply.replace("\r\n", "\n").split("\n\n", 1)[-1].strip()
