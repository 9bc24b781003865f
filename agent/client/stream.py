"""ONE agent's flow stream that survives the agent going away, for every client: `podflow
observe` (through the merge), the TUI's agent sources and its Kubernetes port-forwarded ones.

When following, a broken stream is retried with exponential backoff and jitter (so agents
that went away together, a node reboot or a DaemonSet rollout, are not retried in lockstep),
and resumes just after the newest flow received instead of repeating the history it asked
for. What happens is said twice, for two kinds of reader: in-band, as NodeStatusEvent
responses in the stream (UNAVAILABLE once per outage, CONNECTED when it is back: what
`observe` prints and writes to its files), and through `on_state` (every attempt and the
delay before the next: what the TUI's Nodes view shows).

An agent that refuses the request itself (INVALID_ARGUMENT) raises RequestRejected:
retrying cannot help.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import grpc

from agent.client.channel import TLSOptions, open_channel
from agent.errors import RequestRejected
from agent.wire.timefmt import set_ts, ts_ns
from podflow_api.v1 import observer_pb2, observer_pb2_grpc

BACKOFF_START_S = 0.5
BACKOFF_MAX_S = 10.0
BACKOFF_JITTER = 0.2  # each delay is drawn within +-20% of its nominal value


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
    """GetFlows of one agent, one response at a time (no reconnection)."""
    for batch in get_flow_batches(channel, request, on_call):
        yield from batch


def node_status(address: str, state: int, message: str, node_names: Sequence[str] = (),
                now_ns: int | None = None) -> observer_pb2.GetFlowsResponse:
    """An in-band notice about one agent, named by its nodes once known, else its address."""
    resp = observer_pb2.GetFlowsResponse(
        node_name=node_names[0] if node_names else address,
        node_status=observer_pb2.NodeStatusEvent(state=state,
                                                 node_names=list(node_names) or [address],
                                                 message=message))
    set_ts(resp.time, time.time_ns() if now_ns is None else now_ns)
    return resp


class Backoff:
    """Delays between attempts: `start_s`, doubling up to `max_s`, each drawn within
    +-`jitter` of its nominal value. `reset()` after a success."""

    def __init__(self, start_s: float = BACKOFF_START_S, max_s: float = BACKOFF_MAX_S,
                 jitter: float = BACKOFF_JITTER, rng: random.Random | None = None):
        self.start_s = start_s
        self.max_s = max_s
        self.jitter = jitter
        self._rng = rng or random.Random()
        self._nominal_s = start_s

    def reset(self) -> None:
        self._nominal_s = self.start_s

    def next_s(self) -> float:
        nominal = min(self._nominal_s, self.max_s)
        self._nominal_s = min(self._nominal_s * 2, self.max_s)
        return nominal * self._rng.uniform(1 - self.jitter, 1 + self.jitter)


@dataclass(frozen=True)
class StreamState:
    """What `on_state` is told. `state`: "connected" (the stream is up), "lost" (it broke or
    could not start; `retry_in_s` until the next attempt, 0 when none follows) or
    "reconnecting" (attempt number `attempt` is starting)."""

    state: str
    message: str = ""
    retry_in_s: float = 0.0
    attempt: int = 0


def _describe(exc: grpc.RpcError) -> str:
    code = exc.code() if hasattr(exc, "code") else None
    details = exc.details() if hasattr(exc, "details") else str(exc)
    return f"{code.name if code is not None else 'error'}: {details}"


class AgentStream:
    """GetFlows of one agent, resumable. Iterate it (in one thread) for lists of responses;
    `close()` from any thread ends the iteration.

    * `reconnect` (default: `request.follow`): retry a broken stream with `backoff`;
      without it, the first failure ends the stream (with an UNAVAILABLE notice).
    * `notices`: put NodeStatusEvent responses in the stream (see the module docstring).
    * `on_state(StreamState)`: called from the iterating thread at every change.
    * `on_connect(channel)`: called on each new channel before GetFlows (the TUI reads the
      agent's ServerStatus there); a grpc.RpcError from it fails the attempt like a broken
      stream. What it returns, if callable, is called when that connection ends.
    """

    def __init__(self, address: str, request: observer_pb2.GetFlowsRequest,
                 tls: TLSOptions | None = None, *, reconnect: bool | None = None,
                 backoff: Backoff | None = None, notices: bool = True,
                 on_state: Callable[[StreamState], None] | None = None,
                 on_connect: Callable[[grpc.Channel], Callable[[], None] | None] | None = None):
        self.address = address
        self.request = observer_pb2.GetFlowsRequest()
        self.request.CopyFrom(request)
        self.tls = tls
        self.reconnect = request.follow if reconnect is None else reconnect
        self.backoff = backoff or Backoff()
        self.notices = notices
        self.on_state = on_state
        self.on_connect = on_connect
        self.node_names: list[str] = []   # nodes this agent's flows came from
        self.resume_ns = 0                # newest flow time received: where a retry resumes
        self._closed = threading.Event()
        self._call = None

    def close(self) -> None:
        """Stop: cancel the running call and any wait for a retry."""
        self._closed.set()
        call = self._call
        if call is not None:
            call.cancel()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def _on_call(self, call) -> None:
        self._call = call
        if self._closed.is_set():
            call.cancel()

    def _state(self, state: str, message: str = "", retry_in_s: float = 0.0,
               attempt: int = 0) -> None:
        if self.on_state is not None:
            self.on_state(StreamState(state, message, retry_in_s, attempt))

    def _notice(self, state: int, message: str) -> list[observer_pb2.GetFlowsResponse]:
        return [node_status(self.address, state, f"{self.address}: {message}", self.node_names)]

    def _remember(self, batch: list[observer_pb2.GetFlowsResponse]) -> None:
        """The newest flow of the batch is where a retry resumes; its node names the agent."""
        for resp in reversed(batch):
            if resp.HasField("flow"):
                t = ts_ns(resp.time) or ts_ns(resp.flow.time)
                if t > self.resume_ns:
                    self.resume_ns = t
                node = resp.node_name or resp.flow.node_name
                if node and node not in self.node_names:
                    self.node_names.append(node)
                return

    def __iter__(self) -> Iterator[list[observer_pb2.GetFlowsResponse]]:
        request = self.request
        attempt = 0
        in_outage = False  # said UNAVAILABLE, not yet CONNECTED again
        while not self._closed.is_set():
            if attempt:
                self._state("reconnecting", f"attempt {attempt + 1}", attempt=attempt + 1)
            channel = open_channel(self.address, self.tls)
            done = None
            try:
                if self.on_connect is not None:
                    done = self.on_connect(channel)
                started = False
                for batch in get_flow_batches(channel, request, self._on_call, yield_empty=True):
                    if not started:
                        started = True
                        attempt = 0
                        self.backoff.reset()
                        self._state("connected")
                        if in_outage and self.notices:
                            yield self._notice(observer_pb2.NODE_CONNECTED, "connected again")
                        in_outage = False
                    if batch:
                        batch = list(batch)
                        self._remember(batch)
                        yield batch
                if not self.reconnect:
                    return
                message = "the agent ended the stream"
            except grpc.RpcError as exc:
                if self._closed.is_set() or (hasattr(exc, "code")
                                             and exc.code() == grpc.StatusCode.CANCELLED):
                    return
                if hasattr(exc, "code") and exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
                    raise RequestRejected(self.address, exc.details()) from exc
                message = _describe(exc)
                if not self.reconnect:
                    self._state("lost", message)
                    if self.notices:
                        yield self._notice(observer_pb2.NODE_UNAVAILABLE, message)
                    return
            finally:
                self._call = None
                channel.close()
                if callable(done):
                    done()
            if self._closed.is_set():
                return
            delay_s = self.backoff.next_s()
            self._state("lost", message, retry_in_s=delay_s, attempt=attempt)
            if not in_outage and self.notices:  # said once per outage, not at every retry
                in_outage = True
                yield self._notice(observer_pb2.NODE_UNAVAILABLE, f"{message}; retrying")
            attempt += 1
            # Resume after the newest flow instead of repeating the history asked for (when
            # nothing came yet, the history asked for is still what is wanted).
            if self.resume_ns:
                request.number = 0
                request.first = False
                set_ts(request.since, self.resume_ns + 1)
            if self._closed.wait(delay_s):
                return
