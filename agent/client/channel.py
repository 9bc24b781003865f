"""Channels to agents: addresses (host:port, [v6]:port, unix:/path), TLS and mTLS, and the
gRPC options every client uses. `podflow observe`, `podflow status` and the TUI (directly or
through a Kubernetes port-forward) open their channels here, so an address or a TLS flag
means the same thing to all of them.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import grpc

from agent.errors import ConfigError
from podflow_api.v1 import observer_pb2, observer_pb2_grpc

DEFAULT_SERVER = "localhost:4245"
DEFAULT_PORT = 4245
MAX_MESSAGE_BYTES = 64 << 20


@dataclass
class TLSOptions:
    """How to reach an agent over TLS. `enabled` with no CA uses the system roots; a cert and
    key are presented to agents that require client certificates (mTLS)."""

    enabled: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    server_name: str | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> TLSOptions:
        opts = cls(enabled=bool(getattr(args, "tls", False)),
                   ca_file=getattr(args, "tls_ca", None),
                   cert_file=getattr(args, "tls_cert", None),
                   key_file=getattr(args, "tls_key", None),
                   server_name=getattr(args, "tls_server_name", None))
        if opts.ca_file or opts.cert_file or opts.key_file or opts.server_name:
            opts.enabled = True
        if bool(opts.cert_file) != bool(opts.key_file):
            raise ConfigError("--tls-cert and --tls-key must be given together")
        opts.credentials()  # read the files now so a bad path names its flag
        return opts

    def credentials(self) -> grpc.ChannelCredentials | None:
        if not self.enabled:
            return None
        ca = _read(self.ca_file, "--tls-ca")
        cert = _read(self.cert_file, "--tls-cert")
        key = _read(self.key_file, "--tls-key")
        return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key,
                                            certificate_chain=cert)


def _read(path: str | None, flag: str) -> bytes | None:
    if not path:
        return None
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError as exc:
        raise ConfigError(f"{flag}: cannot read {path}: {exc.strerror}") from exc


def add_tls_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("TLS")
    g.add_argument("--tls", action="store_true", help="connect with TLS (system CA roots "
                   "unless --tls-ca)")
    g.add_argument("--tls-ca", metavar="PATH", help="CA bundle that signed the agents' "
                   "certificates (implies --tls)")
    g.add_argument("--tls-cert", metavar="PATH", help="client certificate for agents that "
                   "require one (mTLS)")
    g.add_argument("--tls-key", metavar="PATH", help="private key of --tls-cert")
    g.add_argument("--tls-server-name", metavar="NAME", help="name to verify in the agents' "
                   "certificates instead of the host dialed")


def normalize_address(address: str, flag: str = "--server") -> str:
    """'unix:/path', 'host:port', 'host' (port 4245), ':port' (localhost) -> a grpc target."""
    address = address.strip()
    if not address:
        raise ConfigError(f"{flag}: empty address")
    if address.startswith("unix:"):
        if len(address) == len("unix:"):
            raise ConfigError(f"{flag}: empty unix socket path")
        return address
    if address.startswith("["):  # [v6]:port or [v6]
        host, _, rest = address[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
        host = f"[{host}]"
    elif address.count(":") > 1:
        host, port = f"[{address}]", ""  # bare IPv6
    else:
        host, _, port = address.partition(":")
    host = host or "localhost"
    if port:
        if not port.isdigit() or not 0 < int(port) <= 65535:
            raise ConfigError(f"{flag}: bad port {port!r} in {address!r}")
    else:
        port = str(DEFAULT_PORT)
    return f"{host}:{port}"


def open_channel(address: str, tls: TLSOptions | None = None, aio: bool = False,
                 ) -> grpc.Channel | grpc.aio.Channel:
    """A channel to one agent (`grpc.aio` with aio=True)."""
    target = normalize_address(address)
    options = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
               ("grpc.keepalive_time_ms", 30_000),
               # Fail a dead agent in seconds, not after the default 20 s backoff ceiling.
               ("grpc.max_reconnect_backoff_ms", 5_000)]
    creds = tls.credentials() if tls is not None else None
    if tls is not None and tls.server_name:
        options.append(("grpc.ssl_target_name_override", tls.server_name))
    mod = grpc.aio if aio else grpc
    if creds is None:
        return mod.insecure_channel(target, options=options)
    return mod.secure_channel(target, creds, options=options)


def server_status(address: str, tls: TLSOptions | None = None, timeout_s: float = 5.0,
                  ) -> observer_pb2.ServerStatusResponse:
    """One agent's ServerStatus (grpc.RpcError when it cannot be reached)."""
    with open_channel(address, tls) as channel:
        stub = observer_pb2_grpc.ObserverStub(channel)
        return stub.ServerStatus(observer_pb2.ServerStatusRequest(), timeout=timeout_s)
