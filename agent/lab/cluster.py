"""A Kubernetes-shaped cluster built from network namespaces, for tests, benchmarks and the demo.

No cluster can run here, but the kernel is real: a node is a network namespace, a pod is a
namespace joined to its node by a veth pair (host side `veth<8 hex>`, pod side `eth0`), a
bridge node puts the veths on `cni0` (Flannel-like), a routed node gives each pod a /32 route
and proxy ARP (Calico-like), nodes meet on an "underlay" namespace holding a bridge, and
Services are kube-proxy-shaped iptables rules in every node's namespace. `metadata()` returns
the Kubernetes objects that match, shaped like `kubectl get ... -o json`.

Nothing is created in the root namespace except files under /run/podflow-lab/<lab>. Every
namespace is named `pf<lab id>-...`, and each lab records its owner process, so
`Lab.cleanup_leftovers()` removes what a crashed run left without touching a lab that is
still running in another process.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Sequence

from agent.errors import PodflowError

log = logging.getLogger("podflow.lab")

RUN_ROOT = "/run/podflow-lab"
NETNS_DIR = "/run/netns"
UNDERLAY_CIDR = ipaddress.ip_network("172.18.0.0/24")
UNDERLAY_GATEWAY = "172.18.0.1"  # the underlay namespace's own address: "the world" to nodes
ROUTED_GATEWAY = "169.254.1.1"   # Calico's fake gateway, answered by proxy ARP
MASQ_MARK = "0x4000/0x4000"      # kube-proxy's masquerade mark
DEFAULT_CLUSTER_CIDR = "10.244.0.0/16"
DEFAULT_DNS_IP = "10.96.0.10"
CLUSTER_DOMAIN = "cluster.local"


class LabError(PodflowError):
    """The lab could not build, run or remove something; the message says what."""


class LabBusyError(LabError):
    """Another live process owns a lab with the same id."""

    def __init__(self, message: str, owner_pid: int):
        super().__init__(message)
        self.owner_pid = owner_pid


# ----------------------------------------------------------------------------- helpers

def _run(cmd: Sequence[str], *, check: bool = True, input_text: str | None = None,
         quiet: bool = False) -> subprocess.CompletedProcess:
    """Run a set-up command; failures become LabError naming the command and its stderr."""
    try:
        res = subprocess.run(list(cmd), input=input_text, capture_output=True, text=True,
                             check=False)
    except FileNotFoundError as exc:
        raise LabError(f"{cmd[0]} is not installed (Debian package: "
                       f"{_DEBIAN_PACKAGE.get(cmd[0], cmd[0])})") from exc
    if check and res.returncode != 0:
        raise LabError(f"`{' '.join(cmd)}` failed ({res.returncode}): {res.stderr.strip()}")
    if not quiet and res.returncode != 0:
        log.debug("`%s` -> %d: %s", " ".join(cmd), res.returncode, res.stderr.strip())
    return res


_DEBIAN_PACKAGE = {"ip": "iproute2", "ss": "iproute2", "iptables": "iptables", "iptables-restore": "iptables",
                   "dnsmasq": "dnsmasq-base", "sysctl": "procps", "ping": "iputils-ping",
                   "conntrack": "conntrack", "tcpdump": "tcpdump", "iperf3": "iperf3",
                   "tmux": "tmux"}


def missing_tools(tools: Sequence[str] = ("ip", "ss", "iptables", "iptables-restore", "sysctl")
                  ) -> list[str]:
    """Names of required tools not on PATH, each with the Debian package that provides it."""
    return [f"{t} (Debian package {_DEBIAN_PACKAGE.get(t, t)})" for t in tools
            if shutil.which(t) is None]


def _netns_exists(name: str) -> bool:
    return os.path.exists(os.path.join(NETNS_DIR, name))


def _list_netns() -> list[str]:
    try:
        return sorted(os.listdir(NETNS_DIR))
    except FileNotFoundError:
        return []


def _pid_start_time(pid: int) -> str | None:
    """The process's start time in clock ticks, so a reused pid is not taken for the owner."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            stat = fh.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _netns_pids(netns: str) -> list[int]:
    res = _run(["ip", "netns", "pids", netns], check=False, quiet=True)
    return [int(p) for p in res.stdout.split() if p.isdigit()]


def _kill_netns_processes(netns: str, grace_s: float = 3.0) -> None:
    """Stop every process living in one of our namespaces (SIGTERM, then SIGKILL): a namespace
    with processes in it outlives `ip netns delete`, with its links."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = [p for p in _netns_pids(netns) if p != os.getpid()]
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace_s
        while (time.monotonic() < deadline
               and any(p != os.getpid() for p in _netns_pids(netns))):
            time.sleep(0.05)


def _delete_netns(netns: str) -> None:
    if not _netns_exists(netns):
        return
    _kill_netns_processes(netns)
    _run(["ip", "netns", "delete", netns], check=False)


def _short_hash(*parts: str, length: int = 16) -> str:
    """kube-proxy's chain-name hash: base32 of sha256, truncated."""
    digest = hashlib.sha256("/".join(parts).encode()).digest()
    return base64.b32encode(digest).decode()[:length]


def _bridge_mac(netns: str, bridge: str) -> str:
    """A fixed, locally administered MAC for a lab bridge. Without one, Linux gives a bridge
    the lowest MAC among its ports and changes it whenever a port with a lower one joins (a
    new pod's veth, a new outside host). Neighbours whose ARP entry still holds the old
    address, another port's, keep sending there: the bridge passes such frames up as not
    addressed to it and IP drops them, until the entry is probed again (seconds to a
    minute). A pod's first connection after a pod was added timed out that way. The kernel
    never changes an address set by the user."""
    digest = hashlib.sha256(f"{netns}/{bridge}".encode()).digest()
    return ":".join(f"{b:02x}" for b in (0x02, *digest[:5]))


def _sanitize_id(lab_id: str) -> str:
    clean = re.sub(r"[^a-z0-9]", "", lab_id.lower())
    if not clean:
        raise LabError(f"lab id {lab_id!r} has no letters or digits")
    return clean[:16]


# ----------------------------------------------------------------------------- app stand-ins

# A pod's "application": answers every TCP connection (or UDP datagram) with the pod's name,
# as an HTTP/1.0 response when the request looks like HTTP. Runs with the standard library
# only, so it starts fast in any namespace.
_SERVER_CODE = r"""
import socket, sys, threading
name, port, proto = sys.argv[1], int(sys.argv[2]), sys.argv[3]
body = (name + "\n").encode()
def answer(req):
    if req.startswith((b"GET ", b"POST ", b"HEAD ")):
        return (b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: "
                + str(len(body)).encode() + b"\r\n\r\n" + body)
    return body
if proto == "udp":
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", port))
    while True:
        data, peer = s.recvfrom(65535)
        s.sendto(answer(data), peer)
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", port))
s.listen(128)
def handle(c):
    # Read the whole request (up to the end of HTTP headers, or until the client shuts its
    # side, which is how a bulk sender ends), then answer and close.
    with c:
        c.settimeout(30)
        req = b""
        try:
            while not req.startswith((b"GET ", b"POST ", b"HEAD ")) or b"\r\n\r\n" not in req:
                chunk = c.recv(65536)
                if not chunk:
                    break
                if len(req) < 4096:
                    req += chunk
            c.sendall(answer(req))
        except OSError:
            pass
while True:
    c, _ = s.accept()
    threading.Thread(target=handle, args=(c,), daemon=True).start()
"""

# A pod's client: one request (TCP: connect, send, shut the sending side, read to the end;
# UDP: one datagram and its answer), then one JSON line {"local_port", "reply", "error"} (the
# source port also when the request failed, so a test can find that attempt's flow), then
# the socket stays open `hold` seconds (its conntrack entry stays ESTABLISHED meanwhile).
_CLIENT_CODE = r"""
import json, socket, sys, time
ip, port, proto, timeout = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
payload, hold = sys.argv[5].encode(), float(sys.argv[6])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM)
s.settimeout(timeout)
out, error = b"", ""
try:
    if proto == "udp":
        s.sendto(payload, (ip, port))
        out = s.recvfrom(65535)[0]
    else:
        s.connect((ip, port))
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
except OSError as exc:
    error = f"{type(exc).__name__}: {exc}"
print(json.dumps({"local_port": s.getsockname()[1], "reply": out.decode(errors="replace"),
                  "error": error}), flush=True)
time.sleep(hold)
"""

HTTP_GET = "GET / HTTP/1.0\r\n\r\n"


@dataclass
class Reply:
    """One request from `_InNetns.request`: what came back, or why nothing did."""

    local_port: int   # the client's source port, also when the request failed
    text: str         # the server's answer ("" when none)
    error: str = ""   # the socket error ("" when answered)

    @property
    def name(self) -> str:
        """The answering server's name (see `_InNetns.reply_name`)."""
        return _InNetns.reply_name(self.text)


# One-shot DNS lookups and the demo's steady traffic run this stdlib-only script in pods.
POD_TRAFFIC_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "programs", "traffic.py")


# ----------------------------------------------------------------------------- processes

class _InNetns:
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
        self.lab._processes.append(proc)
        return proc

    def serve(self, port: int, protocol: str = "tcp", name: str | None = None,
              timeout_s: float = 5.0) -> subprocess.Popen:
        """Start a tiny server answering every request with `name` (default: the pod's or
        host's name); an HTTP-looking request gets an HTTP/1.0 response. Returns once it
        listens."""
        name = name or getattr(self, "name")
        proc = self.popen([sys.executable, "-I", "-S", "-c", _SERVER_CODE, name, str(port),
                           protocol], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
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

    def _client_argv(self, ip: str, port: int, protocol: str, payload: str, timeout_s: float,
                     hold_s: float) -> list[str]:
        return [sys.executable, "-I", "-S", "-c", _CLIENT_CODE, ip, str(port), protocol,
                str(timeout_s), payload, str(hold_s)]

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
        res = self.run([sys.executable, "-I", "-S", POD_TRAFFIC_SCRIPT, "resolve", name, server,
                        str(timeout_s)], check=False, capture_output=True, text=True)
        if res.returncode != 0:
            raise LabError(f"DNS lookup of {name} via {server} from {self.netns} failed: "
                           f"{(res.stderr.strip().splitlines() or ['?'])[-1]}")
        rcode, *ips = res.stdout.split()
        return rcode, ips

    @staticmethod
    def reply_name(reply: str) -> str:
        """The server name in a `fetch` reply (HTTP body or raw)."""
        return reply.replace("\r\n", "\n").split("\n\n", 1)[-1].strip()


# ----------------------------------------------------------------------------- objects

@dataclass(eq=False)
class Pod(_InNetns):
    """A pod: its own namespace with `eth0`, or the node's namespace when host-network."""

    lab: "Lab"
    node: "Node"
    namespace: str
    name: str
    ip: str
    netns: str
    host_ifname: str | None
    labels: dict[str, str] = field(default_factory=dict)
    owner: tuple[str, str] | None = None
    host_network: bool = False
    uid: str = ""
    resource_version: int = 0

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def __repr__(self) -> str:
        return f"Pod({self.key} {self.ip} on {self.node.name})"


@dataclass(eq=False)
class OutsideHost(_InNetns):
    """A machine on the underlay that is not a node (a NodePort client, "the world")."""

    lab: "Lab"
    name: str
    ip: str
    netns: str


@dataclass
class ServicePort:
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
    backends: list[tuple[Pod, int]]
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


class AgentHandle:
    """A `podflow agent` process from `spawn_agent`: on a lab node (`node`), or alone for a
    test that needs one agent and no lab (`node` None). As a context manager it stops the
    agent on the way out."""

    def __init__(self, node_name: str, proc: subprocess.Popen, address: str, ready_file: str,
                 stderr_path: str, stdout_path: str, node: "Node | None" = None):
        self.node_name = node_name
        self.node = node
        self.process = proc
        self.address = address
        self.ready_file = ready_file
        self.stderr_path = stderr_path
        self.stdout_path = stdout_path
        self.ready: dict = {}

    def __enter__(self) -> "AgentHandle":
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    @property
    def pid(self) -> int:
        return self.process.pid

    def stderr_text(self) -> str:
        try:
            with open(self.stderr_path, encoding="utf-8", errors="replace") as fh:
                return fh.read()
        except FileNotFoundError:
            return ""

    def wait_ready(self, timeout_s: float) -> dict:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if os.path.exists(self.ready_file):
                try:
                    with open(self.ready_file, encoding="utf-8") as fh:
                        self.ready = json.load(fh)
                    return self.ready
                except (json.JSONDecodeError, FileNotFoundError):
                    pass  # written atomically by the agent; retry on the odd race
            code = self.process.poll()
            if code is not None:
                raise LabError(f"podflow agent on {self.node_name} exited with {code} before "
                               f"it was ready:\n{self.stderr_text().strip()[-4000:]}")
            time.sleep(0.1)
        self.kill()
        raise LabError(f"podflow agent on {self.node_name} not ready after {timeout_s:.0f}s:\n"
                       f"{self.stderr_text().strip()[-4000:]}")

    def stop(self, timeout_s: float = 20.0) -> int:
        """SIGTERM, wait, return the exit code (SIGKILL after the timeout)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("agent on %s ignored SIGTERM for %.0fs; killing", self.node_name,
                            timeout_s)
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def wait(self, timeout_s: float) -> int:
        """The exit code once the agent exits by itself (subprocess.TimeoutExpired if not)."""
        return self.process.wait(timeout_s)

    def kill(self) -> int:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        return self.process.returncode


def spawn_agent(base: str, *args: str, node_name: str, netns: str | None = None,
                env: dict[str, str] | None = None, node: "Node | None" = None) -> AgentHandle:
    """Start `podflow agent --node-name NODE_NAME --listen unix:BASE.sock --ready-file
    BASE.ready.json ARGS` (inside `netns` when given), its output in BASE.stdout and
    BASE.stderr. Returns at once: `wait_ready` waits, `stop` ends it."""
    sock = f"{base}.sock"
    ready = f"{base}.ready.json"
    for stale in (sock, ready):
        if os.path.exists(stale):
            os.unlink(stale)
    cmd = [sys.executable, "-m", "agent.cli", "agent", "--node-name", node_name,
           "--listen", f"unix:{sock}", "--ready-file", ready, *args]
    if netns is not None:
        cmd = ["ip", "netns", "exec", netns, *cmd]
    stderr_path, stdout_path = f"{base}.stderr", f"{base}.stdout"
    with open(stderr_path, "wb") as err, open(stdout_path, "wb") as out:
        # Own session: a Ctrl-C meant for the caller's terminal does not reach the agent;
        # its owner stops it in order.
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                start_new_session=True, env={**os.environ, **(env or {})})
    return AgentHandle(node_name, proc, f"unix:{sock}", ready, stderr_path, stdout_path, node)


class Node(_InNetns):
    """A node: a namespace with uplink `eth0` on the underlay and pods on veths."""

    def __init__(self, lab: "Lab", name: str, kind: str, pod_cidr: str, index: int, ip: str):
        self.lab = lab
        self.name = name
        self.kind = kind
        self.pod_cidr = ipaddress.ip_network(pod_cidr)
        self.index = index
        self.ip = ip
        self.netns = f"{lab.prefix}-n{index}"
        self.pods: list[Pod] = []
        self.agents: list[AgentHandle] = []
        self._next_host = 2  # .1 is the bridge's gateway on bridge nodes
        self.uid = lab._uid("Node", "", name)
        self.bridge = "cni0" if kind == "bridge" else None
        self.gateway = (str(self.pod_cidr.network_address + 1) if kind == "bridge"
                        else ROUTED_GATEWAY)

    def __repr__(self) -> str:
        return f"Node({self.name} {self.kind} {self.ip} {self.pod_cidr})"

    # ---- pods

    def _allocate_ip(self) -> str:
        while True:
            addr = self.pod_cidr.network_address + self._next_host
            self._next_host += 1
            if addr not in self.pod_cidr or addr == self.pod_cidr.broadcast_address:
                raise LabError(f"node {self.name}: pod CIDR {self.pod_cidr} is full")
            if all(p.ip != str(addr) for p in self.pods):
                return str(addr)

    def _veth_name(self, namespace: str, name: str) -> str:
        taken = {p.host_ifname for p in self.pods}
        salt = 0
        while True:
            cand = "veth" + hashlib.sha1(f"{namespace}/{name}/{salt}".encode()).hexdigest()[:8]
            if cand not in taken:
                return cand
            salt += 1

    def add_pod(self, namespace: str, name: str, labels: dict[str, str] | None = None,
                owner: tuple[str, str] | None = None, ip: str | None = None,
                host_network: bool = False) -> Pod:
        """Create a pod. `owner` is (kind, name), e.g. ("Deployment", "frontend"): the
        metadata then carries Pod -> ReplicaSet -> Deployment owner references."""
        lab = self.lab
        if any(p.namespace == namespace and p.name == name for p in lab.pods):
            raise LabError(f"pod {namespace}/{name} already exists")
        if host_network:
            pod = Pod(lab=lab, node=self, namespace=namespace, name=name, ip=self.ip,
                      netns=self.netns, host_ifname=None, labels=dict(labels or {}),
                      owner=owner, host_network=True, uid=lab._uid("Pod", namespace, name),
                      resource_version=lab._next_rv())
            self.pods.append(pod)
            lab.pods.append(pod)
            return pod
        ip = ip or self._allocate_ip()
        lab._pod_seq += 1
        netns = f"{lab.prefix}-p{lab._pod_seq}"
        veth = self._veth_name(namespace, name)
        pod = Pod(lab=lab, node=self, namespace=namespace, name=name, ip=ip, netns=netns,
                  host_ifname=veth, labels=dict(labels or {}), owner=owner,
                  uid=lab._uid("Pod", namespace, name), resource_version=lab._next_rv())
        lab._track_netns(netns)
        _run(["ip", "netns", "add", netns])
        n = self.netns
        _run(["ip", "-n", n, "link", "add", veth, "type", "veth", "peer", "name", "eth0",
              "netns", netns])
        prefix_len = self.pod_cidr.prefixlen if self.kind == "bridge" else 32
        _run(["ip", "-n", netns, "link", "set", "lo", "up"])
        _run(["ip", "-n", netns, "addr", "add", f"{ip}/{prefix_len}", "dev", "eth0"])
        _run(["ip", "-n", netns, "link", "set", "eth0", "up"])
        if self.kind == "bridge":
            _run(["ip", "-n", n, "link", "set", veth, "master", "cni0"])
            _run(["ip", "-n", n, "link", "set", veth, "type", "bridge_slave", "hairpin", "on"])
            _run(["ip", "-n", n, "link", "set", veth, "up"])
            _run(["ip", "-n", netns, "route", "add", "default", "via", self.gateway])
        else:
            _run(["ip", "-n", n, "link", "set", veth, "up"])
            _run(["ip", "netns", "exec", n, "sysctl", "-qw",
                  f"net.ipv4.conf.{veth}.proxy_arp=1",
                  f"net.ipv4.neigh.{veth}.proxy_delay=0",
                  f"net.ipv4.conf.{veth}.forwarding=1"])
            _run(["ip", "-n", n, "route", "add", f"{ip}/32", "dev", veth, "scope", "link"])
            _run(["ip", "-n", netns, "route", "add", ROUTED_GATEWAY, "dev", "eth0",
                  "scope", "link"])
            _run(["ip", "-n", netns, "route", "add", "default", "via", ROUTED_GATEWAY,
                  "dev", "eth0", "onlink"])
        self.pods.append(pod)
        lab.pods.append(pod)
        lab._services_changed()  # a new pod may be a headless Service's DNS answer
        return pod

    def remove_pod(self, pod: Pod) -> None:
        """Delete the pod's namespace (and with it its veth pair) and its metadata."""
        if pod not in self.pods:
            raise LabError(f"{pod} is not on node {self.name}")
        self.pods.remove(pod)
        self.lab.pods.remove(pod)
        for svc in self.lab.services:
            svc.backends = [(p, port) for p, port in svc.backends if p is not pod]
        if not pod.host_network:
            _delete_netns(pod.netns)
            self.lab._untrack_netns(pod.netns)
            if self.kind == "routed":
                _run(["ip", "-n", self.netns, "route", "del", f"{pod.ip}/32"], check=False,
                     quiet=True)
        self.lab._services_changed()

    # ---- agent

    def start_agent(self, *extra_args: str, metadata_file: str | None = None,
                    timeout_s: float = 120.0, env: dict[str, str] | None = None
                    ) -> AgentHandle:
        """Run `podflow agent` inside this node's namespace and wait until it is ready."""
        seq = len(self.agents)
        base = os.path.join(self.lab.run_dir, self.name if seq == 0 else f"{self.name}.{seq}")
        metadata = ["--metadata", metadata_file] if metadata_file is not None else []
        handle = spawn_agent(base, *metadata, *extra_args, node_name=self.name,
                             netns=self.netns, env=env, node=self)
        self.agents.append(handle)
        handle.wait_ready(timeout_s)
        return handle


# ----------------------------------------------------------------------------- DNS

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


# ----------------------------------------------------------------------------- the lab

class Lab:
    """Context manager building a cluster from namespaces; cleanup is complete and
    idempotent, also after exceptions."""

    def __init__(self, lab_id: str = "lab", cluster_cidr: str = DEFAULT_CLUSTER_CIDR):
        if os.geteuid() != 0:
            raise LabError("the lab needs root (network namespaces, veths, iptables)")
        missing = missing_tools()
        if missing:
            raise LabError("missing tools: " + ", ".join(missing))
        self.id = _sanitize_id(lab_id)
        self.prefix = f"pf{self.id}"
        self.cluster_cidr = ipaddress.ip_network(cluster_cidr)
        self.run_dir = os.path.join(RUN_ROOT, self.id)
        self.underlay = f"{self.prefix}-underlay"
        self.nodes: list[Node] = []
        self.pods: list[Pod] = []
        self.services: list[Service] = []
        self.outside_hosts: list[OutsideHost] = []
        self.dns: DnsServer | None = None
        self.drop_rules: list[tuple[Node, list[str]]] = []
        self._processes: list[subprocess.Popen] = []
        self._netns: list[str] = []
        self._pod_seq = 0
        self._rv = 1000
        self._next_underlay_host = 10
        self._next_outside_host = 100
        self._created = False
        self._closed = False
        self._setup()

    # ---- lifecycle

    def __enter__(self) -> "Lab":
        return self

    def __exit__(self, *exc_info) -> None:
        self.cleanup()

    def _state_file(self) -> str:
        return os.path.join(self.run_dir, "lab.json")

    def _save_state(self) -> None:
        state = {"id": self.id, "owner_pid": os.getpid(),
                 "owner_start": _pid_start_time(os.getpid()), "netns": self._netns}
        os.makedirs(self.run_dir, exist_ok=True)  # a concurrent leftover sweep may race us
        tmp = self._state_file() + ".tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(state, fh)
        os.replace(tmp, self._state_file())

    def _track_netns(self, name: str) -> None:
        self._netns.append(name)
        self._save_state()

    def _untrack_netns(self, name: str) -> None:
        if name in self._netns:
            self._netns.remove(name)
            self._save_state()

    def _setup(self) -> None:
        owner = Lab._owner_alive(self.id)
        if owner:
            raise LabBusyError(f"lab {self.id!r} is in use by live process {owner}; "
                               "pick another lab id", owner)
        if Lab.leftovers(self.id):
            log.warning("removing leftovers of a crashed lab %r", self.id)
            Lab.cleanup_leftovers(self.id)
        os.makedirs(self.run_dir, exist_ok=True)
        self._created = True
        _LIVE_LABS.add(self.id)
        try:
            self._track_netns(self.underlay)
            u = self.underlay
            _run(["ip", "netns", "add", u])
            _run(["ip", "-n", u, "link", "set", "lo", "up"])
            _run(["ip", "-n", u, "link", "add", "br0", "address", _bridge_mac(u, "br0"),
                  "type", "bridge"])
            _run(["ip", "-n", u, "addr", "add",
                  f"{UNDERLAY_GATEWAY}/{UNDERLAY_CIDR.prefixlen}", "dev", "br0"])
            _run(["ip", "-n", u, "link", "set", "br0", "up"])
            # The underlay is a plain L2 segment: no netfilter on its bridge.
            _run(["ip", "netns", "exec", u, "sysctl", "-qw", "net.ipv4.ip_forward=1",
                  "net.bridge.bridge-nf-call-iptables=0",
                  "net.bridge.bridge-nf-call-ip6tables=0"])
        except BaseException:
            self.cleanup()
            raise

    def cleanup(self) -> None:
        """Stop agents and processes, delete every namespace (with its links, qdiscs,
        filters and iptables rules) and the run directory. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        for node in self.nodes:
            for agent in node.agents:
                try:
                    agent.stop(timeout_s=15)
                except OSError as exc:
                    log.warning("stopping agent on %s: %s", node.name, exc)
        if self.dns is not None:
            self.dns.stop()
        for proc in self._processes:
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + 3
        for proc in self._processes:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        # Pods first, then nodes, then the underlay: each deletion takes its veth peers along.
        for netns in reversed(list(self._netns)):
            _delete_netns(netns)
        for netns in _list_netns():
            if netns.startswith(self.prefix + "-"):
                _delete_netns(netns)
        self._netns.clear()
        if self._created:
            shutil.rmtree(self.run_dir, ignore_errors=True)
            _LIVE_LABS.discard(self.id)

    @staticmethod
    def _owner_alive(lab_id: str) -> int | None:
        """The pid of the live process owning this lab, or None."""
        try:
            with open(os.path.join(RUN_ROOT, lab_id, "lab.json"), encoding="utf-8") as fh:
                state = json.load(fh)
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        pid = int(state.get("owner_pid", 0))
        if pid == os.getpid():
            return pid if lab_id in _LIVE_LABS else None
        if pid <= 0:
            return None
        start = _pid_start_time(pid)
        if start is not None and start == state.get("owner_start"):
            return pid
        return None

    @staticmethod
    def _lab_ids_on_host() -> set[str]:
        ids = set()
        for netns in _list_netns():
            m = re.match(r"^pf([a-z0-9]+)-", netns)
            if m:
                ids.add(m.group(1))
        if os.path.isdir(RUN_ROOT):
            ids.update(os.listdir(RUN_ROOT))
        return ids

    @staticmethod
    def leftovers(lab_id: str | None = None) -> dict[str, list[str]]:
        """Labs left by processes that are gone: {lab id: [its namespaces]}. Labs owned by
        a live process (another test, a running demo) are not leftovers."""
        ids = {_sanitize_id(lab_id)} if lab_id else Lab._lab_ids_on_host()
        out = {}
        for lid in sorted(ids):
            if Lab._owner_alive(lid):
                continue
            names = [n for n in _list_netns() if n.startswith(f"pf{lid}-")]
            if names or os.path.isdir(os.path.join(RUN_ROOT, lid)):
                out[lid] = names
        return out

    @staticmethod
    def cleanup_leftovers(lab_id: str | None = None, force: bool = False) -> list[str]:
        """Remove what crashed labs left (every lab whose owner is gone, or only `lab_id`).
        With force, also a lab whose owner still runs (its owner then loses its lab).
        Returns the lab ids removed."""
        if force and lab_id:
            targets = {_sanitize_id(lab_id): None}
        else:
            targets = Lab.leftovers(lab_id)
        removed = []
        for lid in targets:
            for netns in sorted(_list_netns(), key=lambda n: ("-underlay" in n, "-n" in n)):
                if netns.startswith(f"pf{lid}-"):
                    _delete_netns(netns)
            shutil.rmtree(os.path.join(RUN_ROOT, lid), ignore_errors=True)
            removed.append(lid)
        return removed

    # ---- metadata helpers

    def _uid(self, kind: str, namespace: str, name: str) -> str:
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"podflow-lab/{self.id}/{kind}/{namespace}/{name}"))

    def _next_rv(self) -> int:
        self._rv += 1
        return self._rv

    # ---- nodes

    def add_node(self, name: str, kind: str = "bridge", pod_cidr: str | None = None) -> Node:
        """A node namespace: `eth0` on the underlay with the default route, routes to the
        other nodes' pod CIDRs, and a `cni0` bridge (kind="bridge") or none ("routed")."""
        if kind not in ("bridge", "routed"):
            raise LabError(f"node kind {kind!r}: expected 'bridge' or 'routed'")
        if any(n.name == name for n in self.nodes):
            raise LabError(f"node {name} already exists")
        index = len(self.nodes)
        pod_cidr = pod_cidr or f"10.244.{index + 1}.0/24"
        ip = str(UNDERLAY_CIDR.network_address + self._next_underlay_host)
        self._next_underlay_host += 1
        node = Node(self, name, kind, pod_cidr, index, ip)
        for other in self.nodes:
            if other.pod_cidr.overlaps(node.pod_cidr):
                raise LabError(f"pod CIDR {pod_cidr} of {name} overlaps {other.name}'s")
        n, u = node.netns, self.underlay
        self._track_netns(n)
        _run(["ip", "netns", "add", n])
        _run(["ip", "-n", n, "link", "set", "lo", "up"])
        uplink = f"n{index}"
        _run(["ip", "-n", u, "link", "add", uplink, "type", "veth", "peer", "name", "eth0",
              "netns", n])
        _run(["ip", "-n", u, "link", "set", uplink, "master", "br0"])
        _run(["ip", "-n", u, "link", "set", uplink, "up"])
        _run(["ip", "-n", n, "addr", "add", f"{ip}/{UNDERLAY_CIDR.prefixlen}", "dev", "eth0"])
        _run(["ip", "-n", n, "link", "set", "eth0", "up"])
        _run(["ip", "-n", n, "route", "add", "default", "via", UNDERLAY_GATEWAY])
        sysctls = ["net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0",
                   "net.ipv4.conf.default.rp_filter=0"]
        if kind == "bridge":
            gw = node.gateway
            _run(["ip", "-n", n, "link", "add", "cni0", "address", _bridge_mac(n, "cni0"),
                  "type", "bridge"])
            _run(["ip", "-n", n, "addr", "add", f"{gw}/{node.pod_cidr.prefixlen}", "dev", "cni0"])
            _run(["ip", "-n", n, "link", "set", "cni0", "up"])
            sysctls.append("net.bridge.bridge-nf-call-iptables=1")  # as Kubernetes requires
        _run(["ip", "netns", "exec", n, "sysctl", "-qw", *sysctls])
        for other in self.nodes:
            _run(["ip", "-n", n, "route", "add", str(other.pod_cidr), "via", other.ip])
            _run(["ip", "-n", other.netns, "route", "add", str(node.pod_cidr), "via", ip])
        _run(["ip", "-n", u, "route", "add", str(node.pod_cidr), "via", ip])
        self.nodes.append(node)
        self._sync_iptables(node)
        return node

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise LabError(f"no node {name}")

    def pod(self, namespace: str, name: str) -> Pod:
        for p in self.pods:
            if p.namespace == namespace and p.name == name:
                return p
        raise LabError(f"no pod {namespace}/{name}")

    def add_outside_host(self, name: str) -> OutsideHost:
        """A namespace on the underlay that is not a node: reaches nodes' IPs (NodePort)."""
        ip = str(UNDERLAY_CIDR.network_address + self._next_outside_host)
        self._next_outside_host += 1
        netns = f"{self.prefix}-o{len(self.outside_hosts)}"
        ifname = f"o{len(self.outside_hosts)}"
        self._track_netns(netns)
        _run(["ip", "netns", "add", netns])
        _run(["ip", "-n", netns, "link", "set", "lo", "up"])
        _run(["ip", "-n", self.underlay, "link", "add", ifname, "type", "veth", "peer",
              "name", "eth0", "netns", netns])
        _run(["ip", "-n", self.underlay, "link", "set", ifname, "master", "br0"])
        _run(["ip", "-n", self.underlay, "link", "set", ifname, "up"])
        _run(["ip", "-n", netns, "addr", "add", f"{ip}/{UNDERLAY_CIDR.prefixlen}", "dev", "eth0"])
        _run(["ip", "-n", netns, "link", "set", "eth0", "up"])
        _run(["ip", "-n", netns, "route", "add", "default", "via", UNDERLAY_GATEWAY])
        host = OutsideHost(lab=self, name=name, ip=ip, netns=netns)
        self.outside_hosts.append(host)
        return host

    # ---- services

    def add_service(self, namespace: str, name: str, cluster_ip: str | None = None,
                    port: int = 80, backends: Sequence[tuple[Pod, int]] = (),
                    protocol: str = "tcp", node_port: int | None = None,
                    headless: bool = False, selector: dict[str, str] | None = None,
                    port_name: str | None = None,
                    extra_ports: Sequence[ServicePort] = ()) -> Service:
        """A Service over `backends` [(pod, target port)]: kube-proxy-shaped iptables DNAT on
        every node (none when headless) and its EndpointSlice in the metadata.
        `extra_ports` adds more ports (e.g. kube-dns's udp and tcp 53)."""
        protocol = protocol.lower()
        if protocol not in ("tcp", "udp", "sctp"):
            raise LabError(f"service {namespace}/{name}: protocol {protocol!r}")
        if headless:
            if node_port:
                raise LabError(f"service {namespace}/{name}: headless with a node_port")
            cluster_ip = None
        elif cluster_ip is None:
            raise LabError(f"service {namespace}/{name}: cluster_ip is required unless headless")
        if any(s.namespace == namespace and s.name == name for s in self.services):
            raise LabError(f"service {namespace}/{name} already exists")
        backends = list(backends)
        if selector is None:
            selector = _common_labels([p for p, _ in backends])
        ports = [ServicePort(port_name or "", port, protocol, None, node_port)]
        ports += list(extra_ports)
        if len(ports) > 1:
            for sp in ports:
                if not sp.name:
                    sp.name = f"{sp.protocol}-{sp.port}"
        svc = Service(namespace=namespace, name=name, cluster_ip=cluster_ip, ports=ports,
                      backends=backends, selector=selector,
                      uid=self._uid("Service", namespace, name), resource_version=self._next_rv())
        self.services.append(svc)
        self._services_changed()
        return svc

    def _services_changed(self) -> None:
        for node in self.nodes:
            self._sync_iptables(node)
        if self.dns is not None:
            self.dns.reload()

    def _nat_rules(self) -> str:
        """The nat table kube-proxy (iptables mode) would write for the current Services."""
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
        for svc in self.services:
            if svc.headless:
                continue
            for sp in svc.ports:
                spn = f"{svc.namespace}/{svc.name}" + (f":{sp.name}" if sp.name else "")
                svc_chain = "KUBE-SVC-" + _short_hash(spn, sp.protocol)
                chains.append(svc_chain)
                p = sp.protocol
                if svc.backends:
                    rules.append(f'-A KUBE-SERVICES -d {svc.cluster_ip}/32 -p {p} -m comment '
                                 f'--comment "{spn} cluster IP" -m {p} --dport {sp.port} '
                                 f'-j {svc_chain}')
                else:
                    # kube-proxy rejects traffic to a Service without endpoints (filter table);
                    # here it simply stays untranslated.
                    pass
                rules.append(f'-A {svc_chain} ! -s {self.cluster_cidr} -d {svc.cluster_ip}/32 '
                             f'-p {p} -m comment --comment "{spn} cluster IP" -m {p} '
                             f'--dport {sp.port} -j KUBE-MARK-MASQ')
                if sp.node_port and svc.backends:
                    ext_chain = "KUBE-EXT-" + _short_hash(spn, sp.protocol)
                    chains.append(ext_chain)
                    rules.append(f'-A KUBE-NODEPORTS -p {p} -m comment --comment "{spn}" '
                                 f'-m {p} --dport {sp.node_port} -j {ext_chain}')
                    rules.append(f'-A {ext_chain} -m comment --comment "masquerade traffic '
                                 f'for {spn} external destinations" -j KUBE-MARK-MASQ')
                    rules.append(f"-A {ext_chain} -j {svc_chain}")
                n = len(svc.backends)
                for i, (pod, backend_port) in enumerate(svc.backends):
                    target = svc.target_port(sp, backend_port)
                    sep_chain = "KUBE-SEP-" + _short_hash(spn, sp.protocol, f"{pod.ip}:{target}")
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

    def _sync_iptables(self, node: Node) -> None:
        """Rewrite the node's nat table as a whole (iptables-restore, like kube-proxy)."""
        _run(["ip", "netns", "exec", node.netns, "iptables-restore", "-w", "5"],
             input_text=self._nat_rules())

    def add_drop_rule(self, src_pod: Pod, dst_pod: Pod, port: int | None = None,
                      protocol: str = "tcp", node: Node | None = None) -> list[str]:
        """A NetworkPolicy-like DROP in the FORWARD chain of the destination pod's node
        (or `node`): packets from src_pod to dst_pod (on `port`) are dropped by netfilter.
        Returns the rule (iptables arguments)."""
        node = node or dst_pod.node
        rule = ["-s", f"{src_pod.ip}/32", "-d", f"{dst_pod.ip}/32"]
        if port is not None:
            rule += ["-p", protocol, "-m", protocol, "--dport", str(port)]
        elif protocol:
            rule += ["-p", protocol]
        rule += ["-m", "comment", "--comment",
                 f"podflow-lab policy {src_pod.key} -> {dst_pod.key}", "-j", "DROP"]
        _run(["ip", "netns", "exec", node.netns, "iptables", "-w", "5", "-I", "FORWARD", *rule])
        self.drop_rules.append((node, rule))
        return rule

    def remove_drop_rule(self, rule: list[str]) -> None:
        for node, r in list(self.drop_rules):
            if r == rule:
                _run(["ip", "netns", "exec", node.netns, "iptables", "-w", "5", "-D",
                      "FORWARD", *rule])
                self.drop_rules.remove((node, r))
                return
        raise LabError("no such drop rule")

    # ---- DNS

    def add_dns_server(self, node: Node | None = None, cluster_ip: str = DEFAULT_DNS_IP,
                       namespace: str = "kube-system", pod_name: str = "coredns-0"
                       ) -> DnsServer:
        """dnsmasq in a kube-system pod on `node` (default: the first), behind the kube-dns
        Service at `cluster_ip` (udp and tcp 53), answering the lab's Service names."""
        if self.dns is not None:
            raise LabError("the lab already has a DNS server")
        if not self.nodes:
            raise LabError("add a node before the DNS server")
        node = node or self.nodes[0]
        pod = node.add_pod(namespace, pod_name, labels={"k8s-app": "kube-dns"},
                           owner=("Deployment", "coredns"))
        svc = self.add_service(namespace, "kube-dns", cluster_ip=cluster_ip, port=53,
                               protocol="udp", backends=[(pod, 53)], port_name="dns",
                               selector={"k8s-app": "kube-dns"},
                               extra_ports=[ServicePort("dns-tcp", 53, "tcp", None, None)])
        dns = DnsServer(self, pod, svc, os.path.join(self.run_dir, "dns-hosts"))
        dns.start()
        self.dns = dns
        return dns

    # ---- Kubernetes metadata

    def metadata(self) -> dict:
        """`kubectl get pods,services,endpointslices,nodes -A -o json` for this lab, plus the
        ReplicaSets that own Deployments' pods."""
        items: list[dict] = []
        created = "2026-01-01T00:00:00Z"
        for node in self.nodes:
            items.append({
                "apiVersion": "v1", "kind": "Node",
                "metadata": {"name": node.name, "uid": node.uid, "resourceVersion": "1",
                             "creationTimestamp": created,
                             "labels": {"kubernetes.io/hostname": node.name,
                                        "kubernetes.io/os": "linux",
                                        "podflow.lab/cni": node.kind}},
                "spec": {"podCIDR": str(node.pod_cidr), "podCIDRs": [str(node.pod_cidr)]},
                "status": {"addresses": [{"type": "InternalIP", "address": node.ip},
                                         {"type": "Hostname", "address": node.name}],
                           "conditions": [{"type": "Ready", "status": "True"}]},
            })
        replicasets: dict[tuple[str, str], dict] = {}
        for pod in self.pods:
            owner_refs = []
            if pod.owner is not None:
                kind, oname = pod.owner
                if kind == "Deployment":
                    rs_name = replicaset_name(oname)
                    rs_key = (pod.namespace, rs_name)
                    if rs_key not in replicasets:
                        replicasets[rs_key] = {
                            "apiVersion": "apps/v1", "kind": "ReplicaSet",
                            "metadata": {
                                "name": rs_name, "namespace": pod.namespace,
                                "uid": self._uid("ReplicaSet", pod.namespace, rs_name),
                                "resourceVersion": "1", "creationTimestamp": created,
                                "labels": dict(pod.labels),
                                "ownerReferences": [{
                                    "apiVersion": "apps/v1", "kind": "Deployment",
                                    "name": oname, "controller": True,
                                    "blockOwnerDeletion": True,
                                    "uid": self._uid("Deployment", pod.namespace, oname)}]},
                            "spec": {"replicas": 0, "selector": {"matchLabels": dict(pod.labels)}},
                        }
                    rs = replicasets[rs_key]
                    rs["spec"]["replicas"] += 1
                    owner_refs.append({"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                       "name": rs_name, "controller": True,
                                       "blockOwnerDeletion": True,
                                       "uid": rs["metadata"]["uid"]})
                else:
                    api = "batch/v1" if kind in ("Job", "CronJob") else "apps/v1"
                    owner_refs.append({"apiVersion": api, "kind": kind, "name": oname,
                                       "controller": True, "blockOwnerDeletion": True,
                                       "uid": self._uid(kind, pod.namespace, oname)})
            meta = {"name": pod.name, "namespace": pod.namespace, "uid": pod.uid,
                    "resourceVersion": str(pod.resource_version), "creationTimestamp": created,
                    "labels": dict(pod.labels)}
            if owner_refs:
                meta["ownerReferences"] = owner_refs
            items.append({
                "apiVersion": "v1", "kind": "Pod", "metadata": meta,
                "spec": {"nodeName": pod.node.name, "hostNetwork": pod.host_network,
                         "containers": [{"name": pod.name.split("-")[0] or "main",
                                         "image": "podflow-lab/app:latest"}]},
                "status": {"phase": "Running", "podIP": pod.ip, "podIPs": [{"ip": pod.ip}],
                           "hostIP": pod.node.ip, "hostIPs": [{"ip": pod.node.ip}],
                           "conditions": [{"type": "Ready", "status": "True"}]},
            })
        for svc in self.services:
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
            items.append({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": svc.name, "namespace": svc.namespace, "uid": svc.uid,
                             "resourceVersion": str(svc.resource_version),
                             "creationTimestamp": created, "labels": {}},
                "spec": {"clusterIP": cluster_ip, "clusterIPs": [cluster_ip],
                         "type": svc.type, "ports": ports, "selector": dict(svc.selector),
                         "sessionAffinity": "None", "ipFamilies": ["IPv4"]},
                "status": {"loadBalancer": {}},
            })
            slice_name = f"{svc.name}-{_short_hash(svc.namespace, svc.name, length=5).lower()}"
            items.append({
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {
                    "name": slice_name, "namespace": svc.namespace,
                    "uid": self._uid("EndpointSlice", svc.namespace, slice_name),
                    "resourceVersion": str(svc.resource_version), "creationTimestamp": created,
                    "generateName": f"{svc.name}-",
                    "labels": {"kubernetes.io/service-name": svc.name,
                               "endpointslice.kubernetes.io/managed-by":
                                   "endpointslice-controller.k8s.io"},
                    "ownerReferences": [{"apiVersion": "v1", "kind": "Service",
                                         "name": svc.name, "uid": svc.uid, "controller": True,
                                         "blockOwnerDeletion": True}]},
                "addressType": "IPv4",
                "endpoints": [{"addresses": [p.ip],
                               "conditions": {"ready": True, "serving": True,
                                              "terminating": False},
                               "nodeName": p.node.name,
                               "targetRef": {"kind": "Pod", "name": p.name,
                                             "namespace": p.namespace, "uid": p.uid}}
                              for p, _ in svc.backends],
                "ports": [{"name": sp.name, "port": svc.target_port(sp, svc.backends[0][1])
                           if svc.backends else sp.port, "protocol": sp.protocol.upper()}
                          for sp in svc.ports],
            })
        items.extend(replicasets.values())
        return {"apiVersion": "v1", "kind": "List", "items": items,
                "metadata": {"resourceVersion": ""}}

    def write_metadata(self, path: str) -> str:
        """Write `metadata()` as JSON, atomically (an agent watching the file never reads
        half of it). Returns the path."""
        tmp = f"{path}.tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(self.metadata(), fh, indent=1)
        os.replace(tmp, path)
        return path


_LIVE_LABS: set[str] = set()  # ids of the labs this process owns now


def replicaset_name(deployment: str) -> str:
    """The ReplicaSet the lab's metadata puts between a Deployment and its pods
    (`<deployment>-<10-char pod-template-hash>`), for naming pods like Kubernetes does."""
    return f"{deployment}-{hashlib.sha1(deployment.encode()).hexdigest()[:10]}"


def _common_labels(pods: Sequence[Pod]) -> dict[str, str]:
    """The labels every backend shares: the Service's selector when none is given."""
    if not pods:
        return {}
    common = dict(pods[0].labels)
    for p in pods[1:]:
        common = {k: v for k, v in common.items() if p.labels.get(k) == v}
    return common
