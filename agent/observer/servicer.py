"""The Observer servicer: GetFlows / GetFlowsBatched, ServerStatus and GetNodes over one
agent's flow store.

A stream executes a FlowsPlan (agent/observer/plan.py): history from the store, then, when
following, live flows from a store subscription, with in-band notices of what this client or
another stage lost. The store holds each flow already encoded as a GetFlowsBatch entry, so
streams send stored bytes: GetFlows one response per message, GetFlowsBatched many per
message (up to MAX_BATCH_BYTES), notices framed the same way. Each stream runs in its own
worker thread of the server (agent/observer/server.py) and blocks only on its own client.
"""

from __future__ import annotations

import time

import grpc
from google.protobuf import field_mask_pb2

from agent.errors import InvalidRequest
from agent.flowstore.evictions import Lost
from agent.flowstore import FlowStore, StoredFlow
from agent.wire.protowire import frame_flow, node_prefix, timestamp_bytes, varint
from agent.observer.follow import Followers, read_flows
from agent.observer.plan import FlowsPlan, plan_request
from agent.stats import AgentStats
from agent.wire.timefmt import timestamp
from podflow_api.v1 import flow_pb2, observer_pb2, observer_pb2_grpc

OBSERVER_SERVICE = observer_pb2.DESCRIPTOR.services_by_name["Observer"].full_name
MAX_BATCH_BYTES = 1 << 20  # one GetFlowsBatch message stays under this


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
        node_name=node, time=timestamp(now),
        lost_events=observer_pb2.LostEvents(stage=lost.stage, num_events_lost=lost.count,
                                            first=timestamp(first), last=timestamp(last)))


def _identity(data: bytes) -> bytes:
    return data


class ObserverServicer(observer_pb2_grpc.ObserverServicer):
    """Serves one agent's store. Thread-safe: every method may run in several workers."""

    def __init__(self, store: FlowStore, stats: AgentStats, address: str = ""):
        self.store = store
        self.stats = stats
        self.address = address
        self.followers = Followers(store)

    def shutdown(self) -> None:
        """End every follow stream (server stopping)."""
        self.followers.shutdown()

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
        for chunk in read_flows(
                self.followers, self.stats, context, plan.predicate, follow=plan.follow,
                history=not plan.follow or bool(plan.number) or plan.since_ns is not None,
                number=plan.number, first=plan.first, since_ns=plan.since_ns,
                until_ns=plan.until_ns):
            items = self._masked(chunk.flows, plan.mask)
            if chunk.client_lost is not None:
                items.insert(0, notice_item(lost_response(node, chunk.client_lost)))
            items.extend(notice_item(lost_response(node, lost)) for lost in chunk.stage_lost)
            yield items

    def _masked(self, items: list[StoredFlow], mask) -> list[StoredFlow]:
        if mask is None:
            return items
        prefix = node_prefix(self.store.node_name)
        return [mask_flow(item, mask, prefix) for item in items]

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
            metadata_error=stats.metadata_error, exporter_error=stats.exporter_error,
            datapath_state=stats.datapath_state, datapath_error=stats.datapath_error,
            interface_notes=[observer_pb2.InterfaceNote(interface=n.interface, hook=n.hook,
                                                        note=n.note)
                             for n in stats.snapshot_notes()])

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
