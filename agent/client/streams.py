"""Client side of the Observer API, shared by `podflow observe`, `podflow status` and the TUI:
channels (plaintext, TLS, mTLS, unix sockets), the flow stream of one agent (batched when the
agent offers it), and a time-ordered merge of several agents' streams.

The merge is what makes several agents look like one: each agent is read by its own thread;
responses are released in time order once every live agent has sent something at least as
recent, or has been quiet for a short window, so one silent or dead agent delays the others by
at most that window. An agent that cannot be reached becomes a NodeStatusEvent in the stream
(UNAVAILABLE, then RECONNECTING / CONNECTED when following) and the others keep streaming.
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import grpc
from google.protobuf import timestamp_pb2

from agent.errors import ConfigError
from podflow_api.v1 import observer_pb2, observer_pb2_grpc

DEFAULT_SERVER = "localhost:4245"
DEFAULT_PORT = 4245
MAX_MESSAGE_BYTES = 64 << 20
_NS = 1_000_000_000


# -- channels -----------------------------------------------------------------------------------

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


# -- one agent --------------------------------------------------------------------------------

def get_flow_batches(channel: grpc.Channel, request: observer_pb2.GetFlowsRequest,
                     on_call=None, yield_empty: bool = False,
                     ) -> Iterator[Sequence[observer_pb2.GetFlowsResponse]]:
    """GetFlows of one agent as the batches it sends (GetFlowsBatched; one response per batch
    from an agent that only has GetFlows). `on_call(call)` receives each call so another
    thread can cancel it. With `yield_empty`, the empty batch an agent sends when the stream
    starts is passed on too (it means "connected")."""
    stub = observer_pb2_grpc.ObserverStub(channel)
    call = stub.GetFlowsBatched(request)
    if on_call is not None:
        on_call(call)
    try:
        for batch in call:
            if batch.responses or yield_empty:
                yield batch.responses
        return
    except grpc.RpcError as exc:
        if exc.code() != grpc.StatusCode.UNIMPLEMENTED:
            raise
    call = stub.GetFlows(request)
    if on_call is not None:
        on_call(call)
    for resp in call:
        yield (resp,)


def get_flows(channel: grpc.Channel, request: observer_pb2.GetFlowsRequest,
              on_call=None) -> Iterator[observer_pb2.GetFlowsResponse]:
    """GetFlows of one agent, one response at a time."""
    for batch in get_flow_batches(channel, request, on_call):
        yield from batch


def server_status(address: str, tls: TLSOptions | None = None, timeout_s: float = 5.0,
                  ) -> observer_pb2.ServerStatusResponse:
    with open_channel(address, tls) as channel:
        stub = observer_pb2_grpc.ObserverStub(channel)
        return stub.ServerStatus(observer_pb2.ServerStatusRequest(), timeout=timeout_s)


def response_time_ns(resp: observer_pb2.GetFlowsResponse) -> int:
    return resp.time.seconds * _NS + resp.time.nanos


def node_status(address: str, state: int, message: str,
                node_names: Sequence[str] = ()) -> observer_pb2.GetFlowsResponse:
    now = time.time_ns()
    return observer_pb2.GetFlowsResponse(
        node_name=node_names[0] if node_names else address,
        time=timestamp_pb2.Timestamp(seconds=now // _NS, nanos=now % _NS),
        node_status=observer_pb2.NodeStatusEvent(state=state,
                                                 node_names=list(node_names) or [address],
                                                 message=message))


# -- several agents, merged ---------------------------------------------------------------------

_DONE = object()


class _Source:
    """One agent's reader thread and what the merge knows of it."""

    def __init__(self, address: str):
        self.address = address
        self.node_names: list[str] = []
        self.last_time_ns = 0
        self.last_arrival = time.monotonic()
        self.done = False
        self.call = None


class MergedFlows:
    """Iterate GetFlowsResponse from several agents in time order (within `window_s`), with
    NodeStatusEvent notices for agents that cannot be reached. With `request.follow`, broken
    streams are retried with backoff and resume after the last flow received."""

    def __init__(self, addresses: Sequence[str], request: observer_pb2.GetFlowsRequest,
                 tls: TLSOptions | None = None, window_s: float = 0.3,
                 max_buffered: int = 50_000, reconnect: bool | None = None,
                 max_backoff_s: float = 10.0):
        if not addresses:
            raise ConfigError("--server: at least one server is needed")
        self.request = request
        self.tls = tls
        self.window_s = window_s
        self.max_buffered = max_buffered
        self.reconnect = request.follow if reconnect is None else reconnect
        self.max_backoff_s = max_backoff_s
        self.sources = [_Source(normalize_address(a)) for a in addresses]
        # Batches (up to 2048 flows each) waiting for the consumer. Kept short: a consumer
        # that falls behind should make the agent drop (and count) flows for it, not grow
        # this process.
        self._queue: queue.Queue = queue.Queue(maxsize=16)
        self._closed = threading.Event()
        self._threads: list[threading.Thread] = []

    # reader side (one thread per agent)

    def _put(self, item) -> bool:
        while not self._closed.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def _read(self, src: _Source) -> None:
        request = observer_pb2.GetFlowsRequest()
        request.CopyFrom(self.request)
        backoff_s = 0.5
        reconnecting = False
        try:
            while not self._closed.is_set():
                channel = open_channel(src.address, self.tls)
                got_any = False
                try:
                    for batch in get_flow_batches(channel, request, self._remember(src),
                                                  yield_empty=True):
                        if not got_any:
                            got_any = True
                            backoff_s = 0.5
                            if reconnecting:
                                reconnecting = False
                                if not self._put((src, [node_status(
                                        src.address, observer_pb2.NODE_CONNECTED,
                                        f"{src.address}: connected again", src.node_names)])):
                                    return
                        if not batch:
                            continue
                        batch = list(batch)
                        for resp in reversed(batch):
                            if resp.HasField("flow"):
                                # Resume just after the newest flow on reconnect.
                                t_ns = response_time_ns(resp) + 1
                                request.since.seconds, request.since.nanos = divmod(t_ns, _NS)
                                break
                        if not self._put((src, batch)):
                            return
                    if not self.reconnect:
                        return
                    message = "stream ended"
                except grpc.RpcError as exc:
                    if self._closed.is_set() or exc.code() == grpc.StatusCode.CANCELLED:
                        return
                    if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
                        raise RequestRejected(src.address, exc.details()) from exc
                    message = f"{exc.code().name}: {exc.details()}"
                    if not self.reconnect:
                        self._put((src, [node_status(src.address, observer_pb2.NODE_UNAVAILABLE,
                                                     f"{src.address}: {message}",
                                                     src.node_names)]))
                        return
                finally:
                    channel.close()
                if not reconnecting:  # said once per outage, not at every retry
                    self._put((src, [node_status(src.address, observer_pb2.NODE_UNAVAILABLE,
                                                 f"{src.address}: {message}; retrying",
                                                 src.node_names)]))
                reconnecting = True
                # Resume after the last flow instead of repeating the history asked for.
                request.number = 0
                request.first = False
                if self._closed.wait(backoff_s):
                    return
                backoff_s = min(backoff_s * 2, self.max_backoff_s)
        except RequestRejected as exc:
            self._put((src, exc))
        finally:
            self._put((src, _DONE))

    def _remember(self, src: _Source):
        def on_call(call):
            src.call = call
            if self._closed.is_set():
                call.cancel()
        return on_call

    # consumer side

    def __iter__(self) -> Iterator[observer_pb2.GetFlowsResponse]:
        for src in self.sources:
            t = threading.Thread(target=self._read, args=(src,), daemon=True,
                                 name=f"flows-{src.address}")
            t.start()
            self._threads.append(t)
        heap: list = []
        counter = itertools.count()
        single = len(self.sources) == 1
        try:
            while not self._closed.is_set():
                if all(s.done for s in self.sources) and self._queue.empty():
                    break
                try:
                    src, item = self._queue.get(timeout=self.window_s / 2)
                except queue.Empty:
                    item = None
                now = time.monotonic()
                if item is _DONE:
                    src.done = True
                elif isinstance(item, RequestRejected):
                    raise item
                elif item is not None:
                    src.last_arrival = now
                    for resp in item:
                        if not resp.HasField("flow"):
                            yield resp  # notices are not held back
                            continue
                        if resp.node_name and resp.node_name not in src.node_names:
                            src.node_names.append(resp.node_name)
                        t_ns = response_time_ns(resp)
                        if t_ns > src.last_time_ns:
                            src.last_time_ns = t_ns
                        if single:
                            yield resp
                        else:
                            heapq.heappush(heap, (t_ns, next(counter), resp))
                while heap:
                    t_ns = heap[0][0]
                    if len(heap) <= self.max_buffered and not all(
                            s.done or s.last_time_ns >= t_ns
                            or now - s.last_arrival > self.window_s for s in self.sources):
                        break
                    yield heapq.heappop(heap)[2]
            while heap and not self._closed.is_set():
                yield heapq.heappop(heap)[2]
        finally:
            self.close()

    def close(self) -> None:
        """Cancel every stream and stop the reader threads."""
        self._closed.set()
        for src in self.sources:
            if src.call is not None:
                src.call.cancel()


class RequestRejected(Exception):
    """An agent refused the request itself (INVALID_ARGUMENT): retrying cannot help."""

    def __init__(self, address: str, details: str):
        super().__init__(f"{address}: {details}")
        self.address = address
        self.details = details
