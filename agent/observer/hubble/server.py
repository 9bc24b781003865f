"""The agent's Hubble server: Hubble's API (observer.Observer, peer.Peer, gRPC health for
`hubble.server.Observer`) on its own port, beside podflow's own API, over the same flow store.

Its own port because Hubble clients expect Hubble's services, names and health there, and
because podflow's API keeps its own (richer) wire. The default port is 4247, not Hubble's
4244: on a node where Cilium also runs, Cilium's Hubble server holds :4244 on the host network,
as a podflow agent (also host network) would; Relay learns every agent's port from
Peer/Notify, so nothing needs 4244. Without --hubble-listen the server follows --listen: a
unix socket beside podflow's (`X.sock` -> `X.hubble.sock`), else port 4247 on the same host.

Every response carries the `hubble-server-version` header (the hubble CLI warns when it is
older than the server it reads). TLS uses podflow's --tls-* flags; Relay then verifies each
agent against the name Peer/Notify gives (--hubble-tls-server-name, default the node name).
"""

from __future__ import annotations

import logging
import socket
from concurrent import futures
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from agent.errors import ConfigError
from agent.flowstore import FlowStore
from agent.observer.hubble.peer import (ClusterPeers, PeerInfo, PeerServicer, StaticPeers,
                                        host_port, parse_static_peer)
from agent.observer.hubble.servicer import (OBSERVER_SERVICE, HubbleObserverServicer,
                                            observer_handler)
from agent.observer.server import (ListenAddress, bind_port, remove_stale_socket,
                                   report_datapath_health, server_credentials)
from agent.stage import Stage
from agent.stats import AgentStats
from podflow_hubble.peer import peer_pb2

if TYPE_CHECKING:
    from agent.config import HubbleSection, ObserverSection

log = logging.getLogger("podflow.hubble")

DEFAULT_PORT = 4247
PEER_SERVICE = peer_pb2.DESCRIPTOR.services_by_name["Peer"].full_name
# What `hubble status` checks: the health of this service name.
HEALTH_SERVICE = "hubble.server.Observer"
VERSION_HEADER = "hubble-server-version"
_WILDCARDS = ("", "0.0.0.0", "::")


def default_listen(listen: str | None) -> str:
    """--hubble-listen's default, following --listen (see the module docstring)."""
    if not listen or listen == "none":
        return f":{DEFAULT_PORT}"
    addr = ListenAddress.parse(listen)
    if addr.unix_path:
        stem = addr.unix_path.removesuffix(".sock")
        return f"unix:{stem}.hubble.sock"
    port = 0 if addr.bind.endswith(":0") else DEFAULT_PORT  # port 0 (tests): a free port
    return f"[{addr.host}]:{port}" if ":" in addr.host else f"{addr.host}:{port}"


def primary_address() -> str:
    """The address this host reaches others from (the default route's source), for a
    server bound to every interface; nothing is sent."""
    for family, probe in ((socket.AF_INET, "192.0.2.1"), (socket.AF_INET6, "2001:db8::1")):
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as sock:
                sock.connect((probe, 9))
                return sock.getsockname()[0]
        except OSError:
            continue
    return "127.0.0.1"


class _VersionHeader(grpc.ServerInterceptor):
    """Sends `hubble-server-version` as initial metadata of every call."""

    def __init__(self, version: str):
        self._metadata = ((VERSION_HEADER, version),)

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        metadata = self._metadata

        def wrap(behavior):
            def with_header(request, context):
                context.send_initial_metadata(metadata)
                return behavior(request, context)
            return with_header

        if handler.unary_unary is not None:
            return handler._replace(unary_unary=wrap(handler.unary_unary))
        if handler.unary_stream is not None:
            return handler._replace(unary_stream=wrap(handler.unary_stream))
        return handler


class HubbleServer(Stage):
    """The agent stage: binds, serves, stops."""

    def __init__(self, listen: str, store: FlowStore, stats: AgentStats,
                 credentials: grpc.ServerCredentials | None = None, max_streams: int = 64,
                 tls_server_name: str | None = None, state=None,
                 static_peers: list[PeerInfo] = ()):
        self.listen = ListenAddress.parse(listen, "--hubble-listen")
        if max_streams < 1:
            raise ConfigError(f"--grpc-max-streams must be at least 1, got {max_streams}")
        self.store = store
        self.stats = stats
        self.credentials = credentials
        self.max_streams = max_streams
        self.tls_server_name = tls_server_name
        self.state = state
        self.static_peers = list(static_peers)
        self.address = ""      # where the server listens, once started
        self.advertised = ""   # how other hosts reach it (Peer/Notify, GetNodes)
        self.observer = HubbleObserverServicer(store, stats, tls_server_name=self._tls_name(
            stats.node_name))
        self.peer: PeerServicer | None = None
        self.health = health.HealthServicer()
        self._stopping = False
        self._server: grpc.Server | None = None

    def _tls_name(self, node: str) -> str | None:
        if self.credentials is None:
            return None
        return self.tls_server_name or node

    def start(self) -> None:
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=self.max_streams + 4,
                                       thread_name_prefix="hubble"),
            interceptors=(_VersionHeader(self.stats.version),),
            maximum_concurrent_rpcs=self.max_streams + 4,
            options=[("grpc.so_reuseport", 0)])
        listen = self.listen
        port = bind_port(server, listen, "--hubble-listen", self.credentials)
        if listen.unix_path:
            self.address = f"unix:{listen.unix_path}"
            self.advertised = f"unix://{listen.unix_path}"
        else:
            self.address = host_port(listen.host or "0.0.0.0", port)
            self.advertised = host_port(
                primary_address() if listen.host in _WILDCARDS else listen.host, port)
        self.observer.address = self.advertised
        self.peer = PeerServicer(self._peer_source(port if not listen.unix_path else None))
        server.add_generic_rpc_handlers((observer_handler(self.observer), _peer_handler(self.peer)))
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            [OBSERVER_SERVICE, PEER_SERVICE,
             health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
             reflection.SERVICE_NAME], server)
        server.start()
        # `hubble status` asks HEALTH_SERVICE: like podflow's own API, SERVING only while
        # the datapath traces.
        self.stats.on_datapath_state(self._datapath_state_changed)
        self._server = server
        log.info("Hubble API listening on %s (peers reach it at %s)%s", self.address,
                 self.advertised, " (TLS)" if self.credentials is not None else "")

    def _datapath_state_changed(self, state: str) -> None:
        if not self._stopping:  # enter_graceful_shutdown said NOT_SERVING for good
            report_datapath_health(self.health, ("", HEALTH_SERVICE), state, self.stats)

    def _peer_source(self, port: int | None):
        itself = PeerInfo(self.stats.node_name, self.advertised,
                          self._tls_name(self.stats.node_name))
        if self.state is None or port is None:
            return StaticPeers(itself, self.static_peers)
        return ClusterPeers(self.state, self.stats.node_name, port, itself, self.static_peers,
                            tls_name=self._tls_name)

    def ready_info(self) -> dict:
        return {"hubble_listen": self.address}

    def stop(self, grace_s: float = 1.0) -> None:
        if self._server is None:
            return
        self._stopping = True
        self.health.enter_graceful_shutdown()
        self.observer.shutdown()
        if self.peer is not None:
            self.peer.shutdown()
        self._server.stop(grace_s).wait()
        self._server = None
        if self.listen.unix_path:
            remove_stale_socket(self.listen.unix_path)


def _peer_handler(servicer: PeerServicer) -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler(PEER_SERVICE, {
        "Notify": grpc.unary_stream_rpc_method_handler(
            servicer.Notify, request_deserializer=peer_pb2.NotifyRequest.FromString,
            response_serializer=peer_pb2.ChangeNotification.SerializeToString)})


def from_config(config: HubbleSection, observer: ObserverSection, store: FlowStore,
                stats: AgentStats, state=None) -> HubbleServer | None:
    """The stage `podflow agent` runs, or None when --hubble-listen turns it off. `state`:
    the agent's Kubernetes state (ClusterState; None with --metadata none), where the agent
    pods Peer/Notify lists are found. TLS is the Observer's (--tls-*)."""
    listen = config.listen if config.listen is not None else default_listen(observer.listen)
    if listen in ("", "none"):
        return None
    credentials = server_credentials(observer)
    if config.tls_server_name and credentials is None:
        raise ConfigError("--hubble-tls-server-name needs --tls-cert and --tls-key")
    return HubbleServer(listen, store, stats, credentials=credentials,
                        max_streams=observer.max_streams,
                        tls_server_name=config.tls_server_name, state=state,
                        static_peers=[parse_static_peer(v) for v in config.peers])
