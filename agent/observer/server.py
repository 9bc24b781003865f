"""The agent's gRPC server: where the Observer API is served (--listen, TCP or a unix
socket), with TLS (--tls-*), gRPC health checking (also on a plaintext --health-listen port
for kubelet probes) and server reflection, so standard tools (grpcurl, grpc_health_probe,
kubelet gRPC probes) work against an agent. What is served is the servicer's
(agent/observer/servicer.py).

Health means what a readiness probe needs: service "" is SERVING only while the datapath is
tracing (programs attached, reader running; AgentStats.datapath_state), NOT_SERVING while it
starts and again if it fails; "podflow.v1.Observer" is SERVING as soon as the API answers.

A synchronous grpc server with a thread pool: each GetFlows stream runs in its own worker
thread and blocks only on its own client. grpc.aio was measured too: both cost ~110-120 us of
server CPU per message here (8-9k one-flow messages/s), so what decides throughput is flows
per message, not the server flavour: GetFlowsBatched sends up to 2048 flows per message,
joined from the bytes the store already holds them as (bench/observer.py: ~2 us of server CPU
per flow).
"""

from __future__ import annotations

import logging
import os
import stat
from concurrent import futures
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from agent.errors import ConfigError
from agent.flowstore import FlowStore
from agent.observer.servicer import OBSERVER_SERVICE, ObserverServicer, observer_handler
from agent.stage import Stage
from agent.stats import DATAPATH_FAILED, DATAPATH_TRACING, AgentStats

if TYPE_CHECKING:
    from agent.config import ObserverSection

log = logging.getLogger("podflow.server")


@dataclass
class ListenAddress:
    """A parsed --listen value: the address grpc binds and how it is reported."""

    bind: str
    unix_path: str | None = None
    host: str = ""

    @classmethod
    def parse(cls, value: str, flag: str = "--listen") -> ListenAddress:
        if value.startswith("unix:"):
            path = value[len("unix:"):]
            if path.startswith("//"):
                path = path[2:]
            if not path:
                raise ConfigError(f"{flag}: empty unix socket path in {value!r}")
            return cls(bind=f"unix:{path}", unix_path=path)
        host, sep, port = value.rpartition(":")
        if not sep:
            raise ConfigError(f"{flag}: expected HOST:PORT, :PORT or unix:PATH, got {value!r}")
        try:
            port_n = int(port)
        except ValueError:
            raise ConfigError(f"{flag}: port {port!r} is not a number in {value!r}") from None
        if not 0 <= port_n <= 65535:
            raise ConfigError(f"{flag}: port {port_n} out of range 0-65535")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        bind_host = host or "[::]"
        if ":" in host:
            bind_host = f"[{host}]"
        return cls(bind=f"{bind_host}:{port_n}", host=host)


def _read_pem(path: str | None, flag: str) -> bytes | None:
    if not path:
        return None
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise ConfigError(f"{flag}: cannot read {path}: {exc.strerror}") from exc
    if b"-----BEGIN" not in data:
        raise ConfigError(f"{flag}: {path} is not a PEM file")
    return data


def server_credentials(config: ObserverSection) -> grpc.ServerCredentials | None:
    """TLS credentials from --tls-cert/--tls-key (and --tls-ca to require client
    certificates), which the section has already paired; None for plaintext."""
    if not config.tls_cert:
        return None
    cert_pem = _read_pem(config.tls_cert, "--tls-cert")
    key_pem = _read_pem(config.tls_key, "--tls-key")
    ca_pem = _read_pem(config.tls_ca, "--tls-ca")
    return grpc.ssl_server_credentials([(key_pem, cert_pem)], root_certificates=ca_pem,
                                       require_client_auth=ca_pem is not None)


def report_datapath_health(servicer: health.HealthServicer, services, state: str,
                           stats: AgentStats) -> None:
    """The one readiness rule of both APIs (podflow's and Hubble's): SERVING only while the
    datapath traces (programs attached, reader running), NOT_SERVING while it starts and
    again if it fails, so a probe never calls an agent ready that counts nothing."""
    serving = state == DATAPATH_TRACING
    for service in services:
        servicer.set(service, health_pb2.HealthCheckResponse.SERVING if serving
                     else health_pb2.HealthCheckResponse.NOT_SERVING)
    if serving:
        log.info("gRPC health: SERVING (the datapath is tracing) for %s",
                 ", ".join(repr(s) for s in services))
    elif state == DATAPATH_FAILED:
        log.warning("gRPC health: NOT_SERVING (the datapath failed: %s) for %s",
                    stats.datapath_error, ", ".join(repr(s) for s in services))


class ObserverServer(Stage):
    """The agent stage: binds, serves, stops. The PEM files of --tls-* are read here, once,
    so an unreadable one fails before any stage starts."""

    def __init__(self, config: ObserverSection, store: FlowStore, stats: AgentStats):
        self.config = config
        self.listen = ListenAddress.parse(config.listen)
        self.health_listen = (ListenAddress.parse(config.health_listen, "--health-listen")
                              if config.health_listen else None)
        self.store = store
        self.stats = stats
        self.credentials = server_credentials(config)
        self.max_streams = config.max_streams
        self.address = ""  # the real address once started (port 0 resolved)
        self.servicer = ObserverServicer(store, stats)
        self.health = health.HealthServicer()
        self._server: grpc.Server | None = None
        self._health_server: grpc.Server | None = None
        self.health_address = ""
        self._stopping = False

    def start(self) -> None:
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=self.max_streams + 4,
                                       thread_name_prefix="observer"),
            maximum_concurrent_rpcs=self.max_streams + 4,
            options=[("grpc.so_reuseport", 0)])
        server.add_generic_rpc_handlers((observer_handler(self.servicer),))
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            [OBSERVER_SERVICE, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
             reflection.SERVICE_NAME], server)
        listen = self.listen
        port = bind_port(server, listen, "--listen", self.credentials)
        if listen.unix_path:
            self.address = f"unix:{listen.unix_path}"
        else:
            host = listen.host or "0.0.0.0"
            self.address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.servicer.address = self.address
        server.start()
        # The Observer API answers from now on (history, status); the server as a whole
        # (service "", what the kubelet's probes ask) is SERVING only while the datapath
        # traces, and NOT_SERVING again if it fails.
        self.health.set(OBSERVER_SERVICE, health_pb2.HealthCheckResponse.SERVING)
        self.stats.on_datapath_state(self._datapath_state_changed)
        self._server = server
        log.info("Observer API listening on %s%s", self.address,
                 " (TLS)" if self.credentials is not None else "")
        if self.health_listen is not None:
            self._start_health_server(self.health_listen)

    def _datapath_state_changed(self, state: str) -> None:
        if not self._stopping:  # enter_graceful_shutdown said NOT_SERVING for good
            report_datapath_health(self.health, ("",), state, self.stats)

    def _start_health_server(self, listen: ListenAddress) -> None:
        """A second, plaintext server sharing the health state and serving nothing else:
        the Observer itself stays behind TLS."""
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2,
                                                        thread_name_prefix="health"),
                             options=[("grpc.so_reuseport", 0)])
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        port = bind_port(server, listen, "--health-listen")
        server.start()
        self._health_server = server
        self.health_address = (f"unix:{listen.unix_path}" if listen.unix_path
                               else f"{listen.host or '0.0.0.0'}:{port}")
        log.info("gRPC health (plaintext) listening on %s", self.health_address)

    def ready_info(self) -> dict:
        info = {"listen": self.address}
        if self.health_address:
            info["health_listen"] = self.health_address
        return info

    def stop(self, grace_s: float = 1.0) -> None:
        if self._server is None:
            return
        self._stopping = True
        self.health.enter_graceful_shutdown()
        self.servicer.shutdown()
        self._server.stop(grace_s).wait()
        self._server = None
        if self._health_server is not None:
            self._health_server.stop(0).wait()
            self._health_server = None
        if self.listen.unix_path:
            remove_stale_socket(self.listen.unix_path)


def bind_port(server: grpc.Server, listen: ListenAddress, flag: str,
          credentials: grpc.ServerCredentials | None = None) -> int:
    """Add the listening port (TLS when credentials are given): the port number bound.
    Also the Hubble server's (agent/observer/hubble/server.py)."""
    if listen.unix_path:
        remove_stale_socket(listen.unix_path)
    try:
        if credentials is not None:
            port = server.add_secure_port(listen.bind, credentials)
        else:
            port = server.add_insecure_port(listen.bind)
    except RuntimeError as exc:
        raise ConfigError(f"{flag}: cannot bind {listen.bind}: {exc}") from exc
    if not port:
        raise ConfigError(f"{flag}: cannot bind {listen.bind}")
    return port


def remove_stale_socket(path: str) -> None:
    """grpc cannot bind over an existing socket file (a previous agent's)."""
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
    except FileNotFoundError:
        pass
