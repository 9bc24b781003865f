"""Hubble's observer.Observer over podflow's flow store: GetFlows, ServerStatus, GetNodes,
GetNamespaces, as Cilium's agent answers them, so the hubble CLI, Hubble Relay and Hubble UI
read a podflow agent unchanged.

The same store as podflow's own Observer (agent/observer/server.py) and the same follow loop
(agent/observer/follow.py); what differs is the wire. Each record is mapped by one shared
HubbleMapper (agent/observer/hubble/mapping.py) straight into GetFlowsResponse bytes, and the
generic handler sends those bytes as they are. Filters are Hubble's (filters.py) and read a
cached Hubble view of each record's unchanging parts, so a filtered stream maps in full only
the records it sends.

Request semantics are Cilium's (pkg/hubble/observer): `first` with `follow` is refused; with
`since` a stream starts at the first flow at or after it (then `number` bounds how many are
sent); with `first` at the oldest flow held; with `follow` and nothing else, at the next
flow; otherwise at the `number`th newest matching flow (0: everything held). `until` ends
the stream at the first flow after it. Without `follow` the stream ends after the history.
Lost events are sent in-band and never count towards `number`.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass

import grpc
from google.protobuf import timestamp_pb2

from agent.flowstore.evictions import Lost
from agent.flowstore import FlowStore
from agent.observer.follow import MAX_BATCH, Followers, read_flows
from agent.observer.hubble.filters import HubbleFilterError, compile_filters
from agent.observer.hubble.encode import FlowMask
from agent.observer.hubble.mapper import HubbleMapper
from agent.stats import AgentStats
from podflow_api.v1 import observer_pb2 as pf_observer
from podflow_hubble.flow import flow_pb2 as hb
from podflow_hubble.observer import observer_pb2
from podflow_hubble.relay import relay_pb2

OBSERVER_SERVICE = observer_pb2.DESCRIPTOR.services_by_name["Observer"].full_name
# The cluster every namespace is reported in: podflow knows no cluster names; Cilium's
# default cluster is "default".
CLUSTER_NAME = "default"
NAMESPACE_TTL_S = 3600   # a namespace without flows for this long is no longer listed (Cilium)
PREFETCH_CHUNKS = 2      # mapped chunks a stream's producer may run ahead of its sender
PREFETCH_FLOWS = 32      # history records mapped per chunk (short GIL holds)
_NS = 1_000_000_000

# podflow's loss stages in Hubble's terms. The flow log's own losses (EXPORTER_*) are not a
# loss of a GetFlows stream, so they are not reported here.
LOST_SOURCES = {
    pf_observer.KERNEL_RING_BUFFER: hb.PERF_EVENT_RING_BUFFER,
    pf_observer.KERNEL_FLOW_MAP: hb.PERF_EVENT_RING_BUFFER,
    pf_observer.KERNEL_DROP_MAP: hb.PERF_EVENT_RING_BUFFER,
    pf_observer.AGENT_QUEUE: hb.OBSERVER_EVENTS_QUEUE,
    pf_observer.CLIENT_QUEUE: hb.HUBBLE_RING_BUFFER,
    pf_observer.STORE_OVERWRITTEN: hb.HUBBLE_RING_BUFFER,
}


class BadRequest(ValueError):
    """A request that cannot be served; the message names the field."""


@dataclass
class HubblePlan:
    """A checked GetFlowsRequest: which records, which of them, which fields."""

    match: object            # predicate over podflow records, or None for all
    mask: FlowMask | None
    follow: bool
    history: bool            # read the store's history before following
    number: int              # 0: no bound
    first: bool              # the first `number` (from `since`, or the oldest held)
    since_ns: int | None
    until_ns: int | None


def _ts_ns(ts: timestamp_pb2.Timestamp) -> int:
    return ts.seconds * _NS + ts.nanos


def plan_request(request: observer_pb2.GetFlowsRequest, mapper: HubbleMapper) -> HubblePlan:
    """Cilium's reading of a GetFlowsRequest; BadRequest names what is wrong."""
    if request.first and request.follow:
        raise BadRequest("first cannot be specified with follow")
    since_ns = _ts_ns(request.since) if request.HasField("since") else None
    until_ns = _ts_ns(request.until) if request.HasField("until") else None
    try:
        predicate = compile_filters(request.whitelist, request.blacklist)
    except HubbleFilterError as exc:
        raise BadRequest(str(exc)) from None
    match = None
    if predicate is not None:
        # uuid is the only filtered field that changes between intervals of a flow; other
        # filters read the cached view of the parts that do not.
        if any(f.uuid for f in (*request.whitelist, *request.blacklist)):
            match = lambda flow: predicate(mapper.to_hubble(flow))  # noqa: E731
        else:
            match = lambda flow: predicate(mapper.static_flow(flow))  # noqa: E731
    mask = FlowMask(request.field_mask.paths) if request.field_mask.paths else None
    number = request.number
    if since_ns is not None:
        # since takes precedence: from `since` on, at most `number` flows without follow.
        first, number = True, (0 if request.follow else number)
    else:
        first = request.first
    history = not request.follow or bool(request.number) or since_ns is not None
    return HubblePlan(match=match, mask=mask, follow=request.follow, history=history,
                      number=number, first=first, since_ns=since_ns, until_ns=until_ns)


def _timestamp(ns: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=ns // _NS, nanos=ns % _NS)


def lost_response(node: str, lost: Lost) -> bytes | None:
    """A GetFlowsResponse carrying a LostEvent, or None for a stage Hubble has no word for."""
    source = LOST_SOURCES.get(lost.stage)
    if source is None or not lost.count:
        return None
    now = time.time_ns()
    event = hb.LostEvent(source=source, num_events_lost=lost.count,
                         first=_timestamp(lost.first_ns or lost.last_ns or now),
                         last=_timestamp(lost.last_ns or now))
    return observer_pb2.GetFlowsResponse(lost_events=event, node_name=node,
                                         time=_timestamp(now)).SerializeToString()


class Namespaces:
    """The namespaces of the flows the agent saw in the last NAMESPACE_TTL_S, as Cilium's
    namespace manager keeps them. Read incrementally: a dormant store subscription is caught
    up on each GetNamespaces, so a call costs the flows since the previous one (flows that
    left the store unread are skipped; their namespaces mostly come back)."""

    def __init__(self, store: FlowStore, ttl_s: float = NAMESPACE_TTL_S):
        self._sub = store.subscribe(start_seq=store.oldest_seq, queue_size=store.capacity)
        self._ttl_ns = int(ttl_s * _NS)
        self._seen: dict[str, int] = {}  # namespace -> last time seen (wall clock ns)
        self._lock = threading.Lock()

    def list(self) -> list[str]:
        with self._lock:
            seen = self._seen
            while True:
                flows, _lost = self._sub.next_batch(0, MAX_BATCH)
                if not flows:
                    break
                for flow in flows:
                    t_ns = _ts_ns(flow.time)
                    for ns in (flow.source.namespace, flow.destination.namespace):
                        if ns and seen.get(ns, 0) < t_ns:
                            seen[ns] = t_ns
            horizon = time.time_ns() - self._ttl_ns
            for ns in [ns for ns, t in seen.items() if t < horizon]:
                del seen[ns]
            return sorted(seen)

    def close(self) -> None:
        self._sub.close()


class HubbleObserverServicer:
    """observer.Observer for one agent. Thread-safe: every method may run in several
    workers at once (the mapper's caches only ever hold complete values)."""

    def __init__(self, store: FlowStore, stats: AgentStats, mapper: HubbleMapper | None = None,
                 address: str = "", tls_server_name: str | None = None):
        self.store = store
        self.stats = stats
        self.mapper = mapper or HubbleMapper(stats.version)
        self.address = address
        self.tls_server_name = tls_server_name  # None: plaintext
        self.followers = Followers(store)
        self.namespaces = Namespaces(store)

    def shutdown(self) -> None:
        self.followers.shutdown()
        self.namespaces.close()

    # -- GetFlows -------------------------------------------------------------------------

    def GetFlows(self, request, context):
        try:
            plan = plan_request(request, self.mapper)
        except BadRequest as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            raise  # abort raises; this keeps readers sure of it
        for chunk in prefetched(self._stream(plan, context)):
            yield from chunk

    def _stream(self, plan: HubblePlan, context):
        """Lists of serialized GetFlowsResponses: history, then live flows."""
        node = self.stats.node_name
        for chunk in read_flows(
                self.followers, self.stats, context, plan.match, follow=plan.follow,
                history=plan.history, number=plan.number, first=plan.first,
                since_ns=plan.since_ns, until_ns=plan.until_ns, raw=False,
                batch=PREFETCH_FLOWS, time_of=_flow_ns):
            out = []
            for lost in (chunk.client_lost, *chunk.stage_lost):
                notice = lost and lost_response(node, lost)
                if notice:
                    out.append(notice)
            out.extend(self._encode(chunk.flows, plan.mask))
            if out:
                yield out

    def _encode(self, flows: list, mask: FlowMask | None) -> list[bytes]:
        encode = self.mapper.response_bytes
        return [encode(flow, mask) for flow in flows]

    # -- unary ----------------------------------------------------------------------------

    def ServerStatus(self, request, context):
        store = self.store
        return observer_pb2.ServerStatusResponse(
            num_flows=len(store), max_flows=store.capacity, seen_flows=store.seq,
            uptime_ns=self.stats.uptime_ns(), version=self.stats.version,
            flows_rate=store.flows_per_second())

    def GetNodes(self, request, context):
        store = self.store
        tls = observer_pb2.TLS(enabled=self.tls_server_name is not None,
                               server_name=self.tls_server_name or "")
        return observer_pb2.GetNodesResponse(nodes=[observer_pb2.Node(
            name=self.stats.node_name, version=self.stats.version, address=self.address,
            state=relay_pb2.NODE_CONNECTED, tls=tls, uptime_ns=self.stats.uptime_ns(),
            num_flows=len(store), max_flows=store.capacity, seen_flows=store.seq)])

    def GetNamespaces(self, request, context):
        return observer_pb2.GetNamespacesResponse(namespaces=[
            observer_pb2.Namespace(cluster=CLUSTER_NAME, namespace=ns)
            for ns in self.namespaces.list()])

    def GetAgentEvents(self, request, context):
        context.abort(grpc.StatusCode.UNIMPLEMENTED,
                      "GetAgentEvents: podflow has no Cilium agent events (endpoint, policy or "
                      "service changes of a Cilium agent); only flows are served")

    def GetDebugEvents(self, request, context):
        context.abort(grpc.StatusCode.UNIMPLEMENTED,
                      "GetDebugEvents: podflow has no Cilium datapath debug events; only "
                      "flows are served")


def prefetched(chunks, depth: int = PREFETCH_CHUNKS):
    """The items of `chunks`, produced by a thread of their own while the caller sends.

    A gRPC stream sends one message per flow and its thread waits (without the GIL) for
    each send to complete: mapping the next records in that wait, rather than between
    sends, is what lets Hubble's GetFlows keep pace with podflow's own (bench/observer.py).
    The producer stops when the consumer does (closed generator: client gone, stream
    ended), and its exceptions are raised in the consumer."""
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for chunk in chunks:
                if not put(chunk):
                    return
        except BaseException as exc:  # handed to the consumer, which raises it
            put(exc)
            return
        finally:
            chunks.close()
        put(done)

    threading.Thread(target=produce, name="hubble-prefetch", daemon=True).start()
    try:
        while True:
            item = ready.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


def _flow_ns(flow) -> int:
    return flow.time.seconds * _NS + flow.time.nanos


def _identity(data: bytes) -> bytes:
    return data


def observer_handler(servicer: HubbleObserverServicer) -> grpc.GenericRpcHandler:
    """observer.Observer's methods; GetFlows sends the bytes the mapper wrote."""
    req = observer_pb2
    unary = grpc.unary_unary_rpc_method_handler
    stream = grpc.unary_stream_rpc_method_handler
    handlers = {
        "GetFlows": stream(servicer.GetFlows,
                           request_deserializer=req.GetFlowsRequest.FromString,
                           response_serializer=_identity),
        "GetAgentEvents": stream(servicer.GetAgentEvents,
                                 request_deserializer=req.GetAgentEventsRequest.FromString,
                                 response_serializer=req.GetAgentEventsResponse.SerializeToString),
        "GetDebugEvents": stream(servicer.GetDebugEvents,
                                 request_deserializer=req.GetDebugEventsRequest.FromString,
                                 response_serializer=req.GetDebugEventsResponse.SerializeToString),
        "ServerStatus": unary(servicer.ServerStatus,
                              request_deserializer=req.ServerStatusRequest.FromString,
                              response_serializer=req.ServerStatusResponse.SerializeToString),
        "GetNodes": unary(servicer.GetNodes, request_deserializer=req.GetNodesRequest.FromString,
                          response_serializer=req.GetNodesResponse.SerializeToString),
        "GetNamespaces": unary(servicer.GetNamespaces,
                               request_deserializer=req.GetNamespacesRequest.FromString,
                               response_serializer=req.GetNamespacesResponse.SerializeToString),
    }
    return grpc.method_handlers_generic_handler(OBSERVER_SERVICE, handlers)
