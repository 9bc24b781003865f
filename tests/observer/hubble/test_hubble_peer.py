"""peer.Peer/Notify, what Hubble Relay reads to find agents: outside a cluster (itself, plus
--hubble-peer ones), and in a cluster from the agent's real Kubernetes watch against the fake
API server (every agent pod of the installation, as pods come, go and move); TLS server
names exactly when TLS is on. Also the --hubble-* flags."""

from __future__ import annotations

import queue
import threading

import grpc
import pytest
from tests.observer.test_observer_tls import pki  # noqa: F401  (the fixture, used by name)

from agent.config import AgentConfig, ObserverSection, StoreSection
from agent.enrich.k8s.kubesource import KubeSource
from agent.enrich.k8s.state import ClusterState
from agent.errors import ConfigError
from agent.flowstore import FlowStore
from agent.observer.hubble import peer as peer_module
from agent.observer.hubble import server as hubble
from agent.observer.hubble.server import HubbleServer
from agent.observer.server import server_credentials
from agent.stats import AgentStats
from podflow_hubble.peer import peer_pb2, peer_pb2_grpc
from tests.enrich import objs
from tests.enrich.fakeapi import FakeAPIServer

ADDED, DELETED, UPDATED = peer_pb2.PEER_ADDED, peer_pb2.PEER_DELETED, peer_pb2.PEER_UPDATED
AGENT_LABELS = {"app.kubernetes.io/name": "podflow", "app.kubernetes.io/component": "agent",
                "app.kubernetes.io/instance": "podflow"}


@pytest.fixture(autouse=True)
def quick_notify(monkeypatch):
    monkeypatch.setattr(peer_module, "MIN_INTERVAL_S", 0.05)


class Notifications:
    """A Notify stream read by a thread: take() the next few notifications."""

    def __init__(self, address: str, credentials=None, server_name: str | None = None):
        options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
        self.channel = (grpc.secure_channel(address, credentials, options) if credentials
                        else grpc.insecure_channel(address))
        self.call = peer_pb2_grpc.PeerStub(self.channel).Notify(peer_pb2.NotifyRequest(),
                                                                timeout=30)
        self.queue: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        try:
            for note in self.call:
                self.queue.put(note)
        except grpc.RpcError:
            pass

    def take(self, n: int) -> list[tuple]:
        """n notifications as (type, name, address, TLS server name or None), sorted."""
        out = []
        for _ in range(n):
            note = self.queue.get(timeout=10)
            out.append((note.type, note.name, note.address,
                        note.tls.server_name if note.HasField("tls") else None))
        return sorted(out)

    def quiet(self, seconds: float = 0.5) -> bool:
        try:
            self.queue.get(timeout=seconds)
            return False
        except queue.Empty:
            return True

    def close(self):
        self.call.cancel()
        self.channel.close()


def store(stats: AgentStats) -> FlowStore:
    return FlowStore(StoreSection(capacity=64), stats)


def make_server(listen="127.0.0.1:0", state=None, static_peers=(), credentials=None,
                tls_server_name=None, node="node-a") -> HubbleServer:
    stats = AgentStats(node_name=node, version="0.1.0")
    server = HubbleServer(listen, store(stats), stats, credentials=credentials,
                          state=state, static_peers=list(static_peers),
                          tls_server_name=tls_server_name)
    server.start()
    return server


# -- outside a cluster -----------------------------------------------------------------------

def test_outside_a_cluster_an_agent_lists_itself_and_the_peers_it_was_given():
    others = [peer_module.parse_static_peer("node-b=10.0.0.12:4247"),
              peer_module.parse_static_peer("node-c=unix:/run/c.hubble.sock")]
    server = make_server(static_peers=others)
    notes = Notifications(server.address)
    try:
        port = server.address.rsplit(":", 1)[1]
        assert notes.take(3) == [
            (ADDED, "node-a", f"127.0.0.1:{port}", None),
            (ADDED, "node-b", "10.0.0.12:4247", None),
            (ADDED, "node-c", "unix:///run/c.hubble.sock", None)]
        assert notes.quiet()  # the stream stays open, nothing changes
    finally:
        notes.close()
        server.stop(0.2)


def test_a_unix_socket_agent_is_listed_as_relay_dials_it(tmp_path):
    path = tmp_path / "agent.hubble.sock"
    server = make_server(listen=f"unix:{path}")
    notes = Notifications(f"unix:{path}")
    try:
        assert notes.take(1) == [(ADDED, "node-a", f"unix://{path}", None)]
    finally:
        notes.close()
        server.stop(0.2)


def test_with_tls_every_peer_carries_a_server_name(pki):  # noqa: F811
    crt, key = pki["server"]
    creds = server_credentials(ObserverSection(tls_cert=crt, tls_key=key))
    with open(pki["ca"], "rb") as fh:
        client_creds = grpc.ssl_channel_credentials(fh.read())
    server = make_server(credentials=creds, tls_server_name="agent.podflow.test")
    notes = Notifications(server.address, client_creds, "agent.podflow.test")
    try:
        ((kind, name, _address, server_name),) = notes.take(1)
        assert (kind, name, server_name) == (ADDED, "node-a", "agent.podflow.test")
    finally:
        notes.close()
        server.stop(0.2)
    by_node = make_server(credentials=creds)  # default: each agent's node name
    assert by_node.observer.tls_server_name == "node-a"
    by_node.stop(0.2)


# -- in a cluster --------------------------------------------------------------------------

def agent_pod(node: str, ip: str, instance: str = "podflow", namespace: str = "podflow",
              name: str | None = None, created: str = "2026-12-07T08:00:00Z") -> dict:
    labels = {**AGENT_LABELS, "app.kubernetes.io/instance": instance}
    return objs.pod(name or f"podflow-agent-{node}", ip, namespace=namespace, labels=labels,
                    node=node, host_network=True, owner=("DaemonSet", "podflow-agent"),
                    created=created)


@pytest.fixture
def cluster(tmp_path):
    """The fake API server and an agent's state synced from it by the real watch."""
    api = FakeAPIServer(bookmark_interval_s=0.3).start()
    state = ClusterState()
    source = KubeSource(state, AgentStats("node-a", "test"),
                        kubeconfig=api.write_kubeconfig(str(tmp_path / "kubeconfig")),
                        context="fake")
    yield api, state, source
    source.stop()
    api.stop()


def test_in_a_cluster_relay_learns_every_agent_pod_as_they_come_go_and_move(cluster):
    api, state, source = cluster
    api.create(objs.node("node-a", "172.18.0.2"))
    api.create(agent_pod("node-a", "172.18.0.2"))
    api.create(agent_pod("node-b", "172.18.0.3"))
    api.create(agent_pod("node-x", "172.18.0.9", instance="other"))   # another installation
    api.create(objs.pod("cart-1", "10.244.1.5", labels={"app": "cart"}))  # not an agent
    source.start()
    server = make_server(state=state)
    port = server.address.rsplit(":", 1)[1]
    notes = Notifications(server.address)
    try:
        assert notes.take(2) == [(ADDED, "node-a", f"172.18.0.2:{port}", None),
                                 (ADDED, "node-b", f"172.18.0.3:{port}", None)]
        api.create(agent_pod("node-c", "172.18.0.4"))
        assert notes.take(1) == [(ADDED, "node-c", f"172.18.0.4:{port}", None)]
        api.delete("Pod", "podflow", "podflow-agent-node-b")
        assert notes.take(1) == [(DELETED, "node-b", f"172.18.0.3:{port}", None)]
        # a rollout: the newer pod on a node replaces the older one (new address here)
        api.create(agent_pod("node-c", "172.18.0.44", name="podflow-agent-new",
                             created="2026-12-07T09:00:00Z"))
        assert notes.take(1) == [(UPDATED, "node-c", f"172.18.0.44:{port}", None)]
        assert notes.quiet()
    finally:
        notes.close()
        server.stop(0.2)


def test_before_its_own_pod_is_known_an_agent_lists_itself(cluster):
    api, state, source = cluster
    api.create(agent_pod("node-b", "172.18.0.3"))
    source.start()
    server = make_server(state=state)
    notes = Notifications(server.address)
    try:
        ((kind, name, _address, _tls),) = notes.take(1)
        assert (kind, name) == (ADDED, "node-a")  # itself, not node-b's installation
        api.create(agent_pod("node-a", "172.18.0.2"))
        port = server.address.rsplit(":", 1)[1]
        assert notes.take(2) == [(ADDED, "node-b", f"172.18.0.3:{port}", None),
                                 (UPDATED, "node-a", f"172.18.0.2:{port}", None)]
    finally:
        notes.close()
        server.stop(0.2)


# -- flags ---------------------------------------------------------------------------------

def server_from(*argv: str):
    """The Hubble stage `podflow agent ARGV` would run (None: off)."""
    config = AgentConfig.from_flags(["--node-name", "node-a", *argv])
    stats = AgentStats("node-a", "0.1.0")
    return hubble.from_config(config.hubble, config.observer, store(stats), stats)


@pytest.mark.parametrize("listen,expected", [
    (":4245", ":4247"), ("127.0.0.1:4245", "127.0.0.1:4247"), ("[::1]:4245", "[::1]:4247"),
    ("127.0.0.1:0", "127.0.0.1:0"), ("unix:/run/podflow/a.sock", "unix:/run/podflow/a.hubble.sock"),
    ("none", ":4247")])
def test_the_default_follows_listen(listen, expected):
    assert hubble.default_listen(listen) == expected


def test_the_agent_serves_hubble_beside_its_listen_address_by_default(tmp_path):
    server = server_from("--listen", f"unix:{tmp_path}/agent.sock")
    assert server.listen.unix_path == f"{tmp_path}/agent.hubble.sock"
    explicit = server_from("--hubble-listen", "127.0.0.1:0", "--hubble-peer", "b=10.0.0.2:1")
    assert explicit.listen.bind == "127.0.0.1:0" and explicit.static_peers[0].name == "b"


def test_an_empty_hubble_listen_turns_the_server_off():
    assert server_from("--hubble-listen", "") is None
    assert server_from("--hubble-listen", "none") is None


@pytest.mark.parametrize("argv,message", [
    (("--hubble-peer", "node-b"), "--hubble-peer: expected NAME=HOST:PORT"),
    (("--hubble-peer", "node-b=10.0.0.2"), "has no port"),
    (("--hubble-tls-server-name", "x"), "--hubble-tls-server-name needs --tls-cert"),
    (("--hubble-listen", "4247"), "--hubble-listen: expected HOST:PORT"),
], ids=["peer-without-address", "peer-without-port", "server-name-without-tls", "bad-listen"])
def test_bad_flags_are_named(argv, message):
    with pytest.raises(ConfigError, match=message):
        server_from(*argv)
