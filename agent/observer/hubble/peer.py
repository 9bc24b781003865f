"""Hubble's peer.Peer/Notify: which agents Hubble Relay should dial.

Relay reads one peer service (any agent's Hubble port, usually through the `hubble-peer`
Service), takes a PEER_ADDED per agent, dials each one and fans GetFlows, ServerStatus and
GetNamespaces out to all of them. An agent answers with:

- in a cluster (the agent's Kubernetes state lists podflow agent pods, and one of them on
  this node, i.e. this agent): every running agent pod of the same installation (namespace
  and `app.kubernetes.io/instance` of its own pod), named by its node, at `pod IP:Hubble port`
  (agents run on the host network, one per node, all with the same flags, so an agent's port
  is every agent's port), with the TLS server name when the agent serves TLS;
- otherwise (`--metadata none`, a file without agent pods, or before the pod list arrived):
  itself;
- in both cases, plus the agents named with `--hubble-peer NAME=ADDRESS` (agents outside
  Kubernetes: VMs, the demo's nodes).

Relay's rules, which the notifications follow: `name` is the plain node name; `address` is
"IP:port", "unix:///path" or a host name it resolves; `tls.server_name` is present exactly
when the peer serves TLS (with client TLS off Relay refuses a notification carrying it).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from agent.client.deploy_names import AGENT_LABELS
from agent.errors import ConfigError
from podflow_hubble.peer import peer_pb2

INSTANCE_LABEL = "app.kubernetes.io/instance"
POLL_S = 1.0  # how often a Notify stream without news checks that its client is still there
# The least time between two peer lists sent on one stream: a churning cluster changes its
# state many times a second, the agents on it rarely.
MIN_INTERVAL_S = 0.5


@dataclass(frozen=True)
class PeerInfo:
    """One agent as Relay sees it."""

    name: str
    address: str
    tls_server_name: str | None = None  # None: plaintext

    def notification(self, kind: int) -> peer_pb2.ChangeNotification:
        out = peer_pb2.ChangeNotification(name=self.name, address=self.address, type=kind)
        if self.tls_server_name is not None:
            out.tls.server_name = self.tls_server_name
        return out


def parse_static_peer(value: str) -> PeerInfo:
    """A --hubble-peer value, NAME=ADDRESS (ADDRESS: HOST:PORT or unix:PATH)."""
    name, sep, address = value.partition("=")
    if not sep or not name or not address:
        raise ConfigError(f"--hubble-peer: expected NAME=HOST:PORT or NAME=unix:PATH, "
                          f"got {value!r}")
    return PeerInfo(name, relay_address(address))


def relay_address(address: str) -> str:
    """An address as Relay dials it: unix sockets as unix:///path, TCP as given."""
    if address.startswith("unix:"):
        return "unix://" + "/" + address[len("unix:"):].lstrip("/")
    if ":" not in address:
        raise ConfigError(f"--hubble-peer: {address!r} has no port (HOST:PORT or unix:PATH)")
    return address


def host_port(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


class StaticPeers:
    """Outside a cluster: this agent and the --hubble-peer ones; never changes."""

    def __init__(self, itself: PeerInfo, extra: list[PeerInfo] = ()):
        self.peers = {p.name: p for p in extra}
        self.peers[itself.name] = itself

    generation = 0

    def snapshot(self) -> dict[str, PeerInfo]:
        return dict(self.peers)

    def wait_change(self, generation: int, timeout_s: float,
                    stopping: threading.Event) -> None:
        stopping.wait(timeout_s)


class ClusterPeers:
    """The agent pods of this installation, from the agent's Kubernetes state (ClusterState:
    the API watch or a file), recomputed once per change of the state."""

    def __init__(self, state, node_name: str, port: int, itself: PeerInfo,
                 extra: list[PeerInfo] = (), tls_name: Callable[[str], str | None] = None,
                 labels: dict[str, str] = AGENT_LABELS):
        self.state = state
        self.node_name = node_name
        self.port = port
        self.itself = itself
        self.extra = list(extra)
        self.tls_name = tls_name or (lambda node: None)
        self.labels = dict(labels)
        self._cached: tuple[int, dict[str, PeerInfo]] | None = None
        self._lock = threading.Lock()

    @property
    def generation(self) -> int:
        return self.state.generation

    def snapshot(self) -> dict[str, PeerInfo]:
        generation = self.state.generation
        with self._lock:
            if self._cached is None or self._cached[0] != generation:
                self._cached = (generation, self._compute())
            return dict(self._cached[1])

    def _compute(self) -> dict[str, PeerInfo]:
        labels = self.labels
        pods = [p for p in self.state.objects_of("Pod")
                if p.phase == "Running" and p.ips and p.node_name
                and all(p.label_map.get(k) == v for k, v in labels.items())]
        peers = {p.name: p for p in self.extra}
        mine = [p for p in pods if p.node_name == self.node_name]
        if not mine:
            peers[self.itself.name] = self.itself
            return peers
        own = max(mine, key=lambda p: (p.created, p.name))
        instance = own.label_map.get(INSTANCE_LABEL)
        newest: dict[str, object] = {}  # node -> its newest agent pod (a rollout overlaps)
        for pod in pods:
            if pod.namespace != own.namespace or pod.label_map.get(INSTANCE_LABEL) != instance:
                continue
            held = newest.get(pod.node_name)
            if held is None or (pod.created, pod.name) > (held.created, held.name):
                newest[pod.node_name] = pod
        for node, pod in newest.items():
            peers[node] = PeerInfo(node, host_port(pod.ips[0], self.port), self.tls_name(node))
        return peers

    def wait_change(self, generation: int, timeout_s: float,
                    stopping: threading.Event) -> None:
        """Until the state differs from `generation` (or timeout_s)."""
        self.state.wait_for(lambda s: s.generation != generation or stopping.is_set(),
                            timeout_s)


def changes(sent: dict[str, PeerInfo], current: dict[str, PeerInfo]):
    """Notifications taking a client from `sent` to `current`: deletions first."""
    for name in sorted(sent.keys() - current.keys()):
        yield sent[name].notification(peer_pb2.PEER_DELETED)
    for name in sorted(current):
        if name not in sent:
            yield current[name].notification(peer_pb2.PEER_ADDED)
        elif current[name] != sent[name]:
            yield current[name].notification(peer_pb2.PEER_UPDATED)


class PeerServicer:
    """peer.Peer: Notify streams the peer list, then its changes, until the client leaves
    or the server stops."""

    def __init__(self, source, poll_s: float = POLL_S):
        self.source = source
        self.poll_s = poll_s
        self.stopping = threading.Event()

    def Notify(self, request, context):
        sent: dict[str, PeerInfo] = {}
        while not self.stopping.is_set() and context.is_active():
            generation = self.source.generation
            current = self.source.snapshot()
            yield from changes(sent, current)
            sent = current
            if self.stopping.wait(MIN_INTERVAL_S):
                return
            self.source.wait_change(generation, self.poll_s, self.stopping)

    def shutdown(self) -> None:
        self.stopping.set()
