"""The agent's gRPC server: the Observer API (GetFlows, ServerStatus, GetNodes) over the flow
store, plus gRPC health checking and server reflection so standard tools (grpcurl,
grpc_health_probe, kubelet gRPC probes) work against an agent.

A synchronous grpc server with a thread pool: each GetFlows stream runs in its own worker
thread and blocks only on its own client. grpc.aio was measured too: both cost ~110-120 us of
server CPU per message here (8-9k one-flow messages/s), so what decides throughput is flows
per message, not the server flavour: GetFlowsBatched sends up to 2048 flows per message,
joined from the bytes the store already holds them as (bench/observer.py: ~2 us of server CPU
per flow).
"""

from __future__ import annotations

import argparse
import logging
import os
import stat
import threading
import time
from concurrent import futures
from dataclasses import dataclass

import grpc
from google.protobuf import field_mask_pb2, timestamp_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from agent.errors import ConfigError, InvalidRequest
from agent.filters.engine import FilterError, compile_filters
from agent.flowstore import (DEFAULT_CLIENT_QUEUE, DEFAULT_STORE_SIZE, FlowStore, Lost,
                             StoredFlow, frame_flow, node_prefix, timestamp_bytes, varint)
from agent.stats import AgentStats
from podflow_api.v1 import flow_pb2, observer_pb2, observer_pb2_grpc

log = logging.getLogger("podflow.server")

OBSERVER_SERVICE = observer_pb2.DESCRIPTOR.services_by_name["Observer"].full_name
DEFAULT_LISTEN = ":4245"
FOLLOW_POLL_S = 0.5     # how often a follower with nothing to send checks it is still wanted
STATS_NOTICE_S = 1.0    # how often a follower is told about loss at other stages
MAX_BATCH = 2048        # flows taken from the store per wake-up of a follower
MAX_BATCH_BYTES = 1 << 20  # one GetFlowsBatch message stays under this
_NS = 1_000_000_000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("Observer API (gRPC)")
    g.add_argument("--listen", default=DEFAULT_LISTEN, metavar="HOST:PORT|unix:PATH",
                   help="where to serve the Observer API (default :4245, all interfaces; "
                        "port 0 picks a free port; 'none' disables the server)")
    g.add_argument("--tls-cert", metavar="PATH", help="server certificate (PEM); enables TLS")
    g.add_argument("--tls-key", metavar="PATH", help="private key of --tls-cert (PEM)")
    g.add_argument("--tls-ca", metavar="PATH",
                   help="CA bundle (PEM): clients must present a certificate signed by it")
    g.add_argument("--health-listen", metavar="HOST:PORT",
                   help="also serve gRPC health checking (and nothing else) in plaintext here, "
                        "for kubelet gRPC probes, which cannot speak TLS (default: off)")
    g.add_argument("--store-size", type=int, default=DEFAULT_STORE_SIZE, metavar="N",
                   help=f"flows kept for history (default {DEFAULT_STORE_SIZE})")
    g.add_argument("--client-queue-size", type=int, default=DEFAULT_CLIENT_QUEUE, metavar="N",
                   help="flows a following client may lag behind before its oldest are "
                        f"dropped and it is told how many (default {DEFAULT_CLIENT_QUEUE})")
    g.add_argument("--grpc-max-streams", type=int, default=64, metavar="N",
                   help="concurrent RPCs served (each GetFlows stream holds one; default 64)")


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


def server_credentials(cert: str | None, key: str | None, ca: str | None,
                       ) -> grpc.ServerCredentials | None:
    """TLS credentials from the --tls-* flags; None for plaintext."""
    if not cert and not key:
        if ca:
            raise ConfigError("--tls-ca needs --tls-cert and --tls-key (client certificates "
                              "are only checked over TLS)")
        return None
    if not cert or not key:
        raise ConfigError("--tls-cert and --tls-key must be given together")
    cert_pem = _read_pem(cert, "--tls-cert")
    key_pem = _read_pem(key, "--tls-key")
    ca_pem = _read_pem(ca, "--tls-ca")
    return grpc.ssl_server_credentials([(key_pem, cert_pem)], root_certificates=ca_pem,
                                       require_client_auth=ca_pem is not None)


@dataclass
class FlowsPlan:
    """A validated GetFlowsRequest."""

    predicate: object
    number: int
    first: bool
    follow: bool
    since_ns: int | None
    until_ns: int | None
    mask: field_mask_pb2.FieldMask | None


def _ts_ns(ts: timestamp_pb2.Timestamp) -> int:
    return ts.seconds * _NS + ts.nanos


def plan_request(request: observer_pb2.GetFlowsRequest) -> FlowsPlan:
    """Validate a request; InvalidRequest names the offending field."""
    since_ns = _ts_ns(request.since) if request.HasField("since") else None
    until_ns = _ts_ns(request.until) if request.HasField("until") else None
    if request.number and since_ns is not None:
        raise InvalidRequest("number: cannot be combined with since (use one or the other)")
    if request.first and not request.number:
        raise InvalidRequest("first: needs number (the first N flows)")
    if since_ns is not None and until_ns is not None and until_ns < since_ns:
        raise InvalidRequest("until: is before since")
    try:
        predicate = compile_filters(request.allowlist, request.denylist)
    except FilterError as exc:
        raise InvalidRequest(str(exc)) from exc
    mask = None
    if request.HasField("field_mask") and request.field_mask.paths:
        mask = field_mask_pb2.FieldMask()
        mask.CopyFrom(request.field_mask)
        for path in mask.paths:
            single = field_mask_pb2.FieldMask(paths=[path])
            if not single.IsValidForDescriptor(flow_pb2.Flow.DESCRIPTOR):
                raise InvalidRequest(f"field_mask: {path!r} is not a field path of Flow")
    return FlowsPlan(predicate=predicate, number=request.number, first=request.first,
                     follow=request.follow, since_ns=since_ns, until_ns=until_ns, mask=mask)


def _timestamp(ns: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=ns // _NS, nanos=ns % _NS)


def mask_flow(item: StoredFlow, mask: field_mask_pb2.FieldMask, prefix: bytes) -> StoredFlow:
    """The stored flow with only the mask's fields, framed like the store frames flows."""
    t_ns, framed, _resp_off, flow_off = item
    masked = flow_pb2.Flow()
    mask.MergeMessage(flow_pb2.Flow.FromString(memoryview(framed)[flow_off:]), masked)
    framed, resp_off, flow_off = frame_flow(prefix, timestamp_bytes(t_ns),
                                            masked.SerializeToString())
    return t_ns, framed, resp_off, flow_off


def notice_item(resp: observer_pb2.GetFlowsResponse) -> StoredFlow:
    """A notice framed like a stored flow, so one stream carries both."""
    body = resp.SerializeToString()
    frame = b"\n" + varint(len(body))
    return 0, frame + body, len(frame), len(frame) + len(body)


def frame_batches(items: list[StoredFlow], max_bytes: int = MAX_BATCH_BYTES):
    """GetFlowsBatch messages holding `items` (already framed as its field 1), each under
    max_bytes so clients' default 4 MiB message limit is never reached."""
    parts: list[bytes] = []
    size = 0
    for item in items:
        framed = item[1]
        if parts and size + len(framed) > max_bytes:
            yield b"".join(parts)
            parts, size = [], 0
        parts.append(framed)
        size += len(framed)
    if parts:
        yield b"".join(parts)


def lost_response(node: str, lost: Lost) -> observer_pb2.GetFlowsResponse:
    now = time.time_ns()
    first = lost.first_ns or lost.last_ns or now
    last = lost.last_ns or now
    return observer_pb2.GetFlowsResponse(
        node_name=node, time=_timestamp(now),
        lost_events=observer_pb2.LostEvents(stage=lost.stage, num_events_lost=lost.count,
                                            first=_timestamp(first), last=_timestamp(last)))


def _identity(data: bytes) -> bytes:
    return data


class ObserverServicer(observer_pb2_grpc.ObserverServicer):
    """Serves one agent's store. Thread-safe: every method may run in several workers."""

    def __init__(self, store: FlowStore, stats: AgentStats, address: str = ""):
        self.store = store
        self.stats = stats
        self.address = address
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._subs: set = set()

    def shutdown(self) -> None:
        """End every follow stream (server stopping)."""
        self._stopping.set()
        with self._lock:
            subs = list(self._subs)
        for sub in subs:
            sub.close()

    # -- GetFlows -------------------------------------------------------------------------
    #
    # The store holds each flow already encoded as a GetFlowsBatch entry (a GetFlowsResponse
    # with node name, time and flow), so streams send stored bytes: GetFlows one response per
    # message, GetFlowsBatched many per message. Notices are framed the same way.

    def GetFlows(self, request, context):
        plan = self._plan(request, context)
        for chunk in self._stream(plan, context):
            for _t, framed, resp_off, _f in chunk:
                yield framed[resp_off:]

    def GetFlowsBatched(self, request, context):
        plan = self._plan(request, context)
        # An empty batch at once tells the client the agent is there and accepted the request
        # (a follower may otherwise hear nothing until the next flow).
        yield b""
        for chunk in self._stream(plan, context):
            yield from frame_batches(chunk)

    @staticmethod
    def _plan(request, context) -> FlowsPlan:
        try:
            return plan_request(request)
        except InvalidRequest as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            raise  # abort raises; this keeps type checkers and readers sure of it

    def _stream(self, plan: FlowsPlan, context):
        """Chunks (lists) of StoredFlow-shaped items: history, then live flows."""
        node = self.stats.node_name
        store = self.store
        sub = None
        if plan.follow:
            sub = store.subscribe(plan.predicate)
            with self._lock:
                self._subs.add(sub)
            # Runs on the client's disconnect even while this thread is blocked sending.
            context.add_callback(lambda: self._release(sub))
            end_seq = sub.cursor
        else:
            end_seq = store.seq
        try:
            want_history = not plan.follow or plan.number or plan.since_ns is not None
            if want_history and plan.since_ns is not None:
                gone = store.evicted_since(plan.since_ns)
                if gone is not None:
                    yield [notice_item(lost_response(node, gone))]
            if want_history:
                flows = store.history_raw(plan.predicate, number=plan.number,
                                          first=plan.first, since_ns=plan.since_ns,
                                          until_ns=plan.until_ns, end_seq=end_seq)
                for i in range(0, len(flows), MAX_BATCH):
                    yield self._masked(flows[i:i + MAX_BATCH], plan.mask)
            if sub is not None:
                yield from self._follow(sub, plan, context, node)
        finally:
            if sub is not None:
                self._release(sub)

    def _masked(self, items: list[StoredFlow], mask) -> list[StoredFlow]:
        if mask is None:
            return items
        prefix = node_prefix(self.store.node_name)
        return [mask_flow(item, mask, prefix) for item in items]

    def _release(self, sub) -> None:
        sub.close()
        with self._lock:
            self._subs.discard(sub)

    def _follow(self, sub, plan: FlowsPlan, context, node: str):
        stats = self.stats
        baseline = {stage: span.count for stage, span in stats.snapshot_lost().items()}
        last_check = time.monotonic()
        until_ns = plan.until_ns
        while not self._stopping.is_set() and context.is_active():
            flows, lost = sub.next_raw(FOLLOW_POLL_S, MAX_BATCH)
            if sub.closed:
                return
            if until_ns is not None:
                flows = [item for item in flows if item[0] <= until_ns]
            chunk = self._masked(flows, plan.mask)
            if lost is not None and lost.count:
                stats.add_lost(observer_pb2.CLIENT_QUEUE, lost.count)
                chunk.insert(0, notice_item(lost_response(node, lost)))
            now = time.monotonic()
            if now - last_check >= STATS_NOTICE_S:
                last_check = now
                chunk.extend(notice_item(r) for r in self._stats_notices(node, baseline))
            if chunk:
                yield chunk
            if until_ns is not None and time.time_ns() > until_ns:
                return

    def _stats_notices(self, node: str, baseline: dict[int, int]):
        """Loss at other stages (kernel ring buffer, exporter ...) since this client last
        heard; CLIENT_QUEUE is per client and reported by its own stream."""
        for stage, span in self.stats.snapshot_lost().items():
            if stage == observer_pb2.CLIENT_QUEUE:
                continue
            before = baseline.get(stage, 0)
            if span.count > before:
                baseline[stage] = span.count
                yield lost_response(node, Lost(stage, span.count - before,
                                               span.first_ns if not before else 0,
                                               span.last_ns))

    # -- status ---------------------------------------------------------------------------

    def ServerStatus(self, request, context):
        stats = self.stats
        store = self.store
        return observer_pb2.ServerStatusResponse(
            num_flows=len(store), max_flows=store.capacity, seen_flows=store.seq,
            lost=stats.lost_counts(), uptime_ns=stats.uptime_ns(), node_name=stats.node_name,
            version=stats.version, interfaces=stats.snapshot_interfaces(),
            flows_per_second=store.flows_per_second(),
            datapath_errors=stats.snapshot_datapath_errors(),
            metadata_source=stats.metadata_source, metadata_stale=stats.metadata_stale,
            metadata_error=stats.metadata_error, exporter_error=stats.exporter_error)

    def GetNodes(self, request, context):
        stats = self.stats
        store = self.store
        return observer_pb2.GetNodesResponse(nodes=[observer_pb2.Node(
            name=stats.node_name, version=stats.version, address=self.address,
            state=observer_pb2.NODE_CONNECTED, uptime_ns=stats.uptime_ns(),
            num_flows=len(store), max_flows=store.capacity, seen_flows=store.seq)])


def observer_handler(servicer: ObserverServicer) -> grpc.GenericRpcHandler:
    """Like the generated add_ObserverServicer_to_server, but the flow streams carry bytes
    the servicer already encoded."""
    req = observer_pb2
    handlers = {
        "GetFlows": grpc.unary_stream_rpc_method_handler(
            servicer.GetFlows, request_deserializer=req.GetFlowsRequest.FromString,
            response_serializer=_identity),
        "GetFlowsBatched": grpc.unary_stream_rpc_method_handler(
            servicer.GetFlowsBatched, request_deserializer=req.GetFlowsRequest.FromString,
            response_serializer=_identity),
        "ServerStatus": grpc.unary_unary_rpc_method_handler(
            servicer.ServerStatus, request_deserializer=req.ServerStatusRequest.FromString,
            response_serializer=req.ServerStatusResponse.SerializeToString),
        "GetNodes": grpc.unary_unary_rpc_method_handler(
            servicer.GetNodes, request_deserializer=req.GetNodesRequest.FromString,
            response_serializer=req.GetNodesResponse.SerializeToString),
    }
    return grpc.method_handlers_generic_handler(OBSERVER_SERVICE, handlers)


class ObserverServer:
    """The agent stage: binds, serves, stops."""

    def __init__(self, listen: str, store: FlowStore, stats: AgentStats,
                 credentials: grpc.ServerCredentials | None = None, max_streams: int = 64,
                 health_listen: str | None = None):
        self.listen = ListenAddress.parse(listen)
        self.health_listen = (ListenAddress.parse(health_listen, "--health-listen")
                              if health_listen else None)
        if max_streams < 1:
            raise ConfigError(f"--grpc-max-streams must be at least 1, got {max_streams}")
        self.store = store
        self.stats = stats
        self.credentials = credentials
        self.max_streams = max_streams
        self.address = ""  # the real address once started (port 0 resolved)
        self.servicer = ObserverServicer(store, stats)
        self.health = health.HealthServicer()
        self._server: grpc.Server | None = None
        self._health_server: grpc.Server | None = None
        self.health_address = ""

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
        if listen.unix_path:
            _remove_stale_socket(listen.unix_path)
        try:
            if self.credentials is not None:
                port = server.add_secure_port(listen.bind, self.credentials)
            else:
                port = server.add_insecure_port(listen.bind)
        except RuntimeError as exc:
            raise ConfigError(f"--listen: cannot bind {listen.bind}: {exc}") from exc
        if not port:
            raise ConfigError(f"--listen: cannot bind {listen.bind}")
        if listen.unix_path:
            self.address = f"unix:{listen.unix_path}"
        else:
            host = listen.host or "0.0.0.0"
            self.address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.servicer.address = self.address
        server.start()
        for service in ("", OBSERVER_SERVICE):
            self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        self._server = server
        log.info("Observer API listening on %s%s", self.address,
                 " (TLS)" if self.credentials is not None else "")
        if self.health_listen is not None:
            self._start_health_server(self.health_listen)

    def _start_health_server(self, listen: ListenAddress) -> None:
        """A second, plaintext server sharing the health state and serving nothing else:
        the Observer itself stays behind TLS."""
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2,
                                                        thread_name_prefix="health"),
                             options=[("grpc.so_reuseport", 0)])
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        if listen.unix_path:
            _remove_stale_socket(listen.unix_path)
        try:
            port = server.add_insecure_port(listen.bind)
        except RuntimeError as exc:
            raise ConfigError(f"--health-listen: cannot bind {listen.bind}: {exc}") from exc
        if not port:
            raise ConfigError(f"--health-listen: cannot bind {listen.bind}")
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
        self.health.enter_graceful_shutdown()
        self.servicer.shutdown()
        self._server.stop(grace_s).wait()
        self._server = None
        if self._health_server is not None:
            self._health_server.stop(0).wait()
            self._health_server = None
        if self.listen.unix_path:
            _remove_stale_socket(self.listen.unix_path)


def _remove_stale_socket(path: str) -> None:
    """grpc cannot bind over an existing socket file (a previous agent's)."""
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
    except FileNotFoundError:
        pass


def from_args(args: argparse.Namespace, store: FlowStore, stats: AgentStats,
              ) -> ObserverServer | None:
    listen = getattr(args, "listen", DEFAULT_LISTEN)
    if listen in ("", "none"):
        return None
    creds = server_credentials(getattr(args, "tls_cert", None), getattr(args, "tls_key", None),
                               getattr(args, "tls_ca", None))
    return ObserverServer(listen, store, stats, credentials=creds,
                          max_streams=getattr(args, "grpc_max_streams", 64),
                          health_listen=getattr(args, "health_listen", None))
