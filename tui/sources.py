"""Where the TUI's flows come from: agents over gRPC, replayed flow-log files, and agents
found through the Kubernetes API and reached over the API server's port-forward.

Every source runs in its own daemon thread that only does I/O: it reads responses and hands
them to the aggregator (`Aggregator.feed`), and reports its state there too. An agent's
stream is the client's resumable stream (agent.client.stream.AgentStream, the one `podflow
observe` uses): a lost agent is retried with exponential backoff and jitter and resumes after
the last flow received, while the others keep streaming. State changes are also told to the
app through `notify(event, source_id, message)` so the status bar changes at once instead of
at the next refresh. Files are read with the flow-log reader (agent.wire.logformat).

Through a port-forward, a failure gRPC sees is the local proxy's (`failed to connect to all
addresses; ... 127.0.0.1:42151: Connection reset by peer`); the reason is the API server's,
given to the proxy: a refused upgrade (403: RBAC), `error dialing backend: ...` (the kubelet
cannot be reached), or a message on the port's error channel (nothing listens in the pod).
PortForwardProxy keeps the last one, and the agent's source shows it instead.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import threading
from http import HTTPStatus
from typing import Callable

import grpc

from agent.client.channel import TLSOptions
from agent.client.stream import BACKOFF_MAX_S, AgentStream, Backoff, StreamState
from agent.errors import RequestRejected
from agent.wire.logformat import FlowLogReader
from podflow_api.v1 import observer_pb2, observer_pb2_grpc

from tui.aggregator import Aggregator

log = logging.getLogger("podflow.tui.sources")

Notify = Callable[[str, str, str], None]  # (event: "connected"|"lost"|"gone", source_id, msg)
STATUS_POLL_S = 3.0


def _no_notify(_event: str, _source_id: str, _message: str) -> None:
    return None


class AgentSource:
    """One agent's stream: GetFlows(follow, the last `history` flows first), plus
    ServerStatus read on every connection and polled every few seconds while it lasts."""

    def __init__(self, address: str, aggregator: Aggregator, *, history: int = 1000,
                 notify: Notify = _no_notify, kind: str = "agent", source_id: str | None = None,
                 label: str = "", tls: TLSOptions | None = None, status_poll_s: float = STATUS_POLL_S,
                 backoff_max_s: float = BACKOFF_MAX_S,
                 why_unreachable: Callable[[], str] | None = None):
        """`why_unreachable()`: the reason a failed connection has beyond what gRPC says
        (a port-forward's API server answer), or "" when there is none."""
        self.address = address
        self.source_id = source_id or address
        self.label = label
        self.agg = aggregator
        self.notify = notify
        self._why_unreachable = why_unreachable
        self.status_poll_s = status_poll_s
        self._node_name = ""
        self.stream = AgentStream(address, observer_pb2.GetFlowsRequest(follow=True,
                                                                         number=history),
                                  tls, backoff=Backoff(max_s=backoff_max_s), notices=False,
                                  on_state=self._on_state, on_connect=self._on_connect)
        self._thread = threading.Thread(target=self._run, name=f"tui-src-{self.source_id}",
                                        daemon=True)
        aggregator.add_source(self.source_id, address, kind, name=label)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.stream.close()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def _run(self) -> None:
        sid = self.source_id
        feed_many = self.agg.feed_many
        try:
            for batch in self.stream:
                feed_many(sid, batch)
        except RequestRejected as exc:  # this TUI asked for something the agent refuses
            self.agg.set_state(sid, "unavailable", f"rejected: {exc.details}")
            self.notify("lost", sid, str(exc))

    def _on_state(self, st: StreamState) -> None:
        sid = self.source_id
        if st.state == "connected":
            self.agg.set_state(sid, "connected")
            self.notify("connected", sid, self._node_name)
            return
        reason = self._why_unreachable() if self._why_unreachable is not None else ""
        message = reason or st.message
        if st.state == "reconnecting":
            self.agg.set_state(sid, "reconnecting", message)
        elif st.retry_in_s:
            self.agg.set_state(sid, "unavailable",
                               f"{message}; retrying in {st.retry_in_s:.1f}s",
                               retry_in_s=st.retry_in_s)
            self.notify("lost", sid, f"{self.label}: {message}" if self.label else message)

    def _on_connect(self, channel: grpc.Channel) -> Callable[[], None]:
        """Before the stream: the agent's ServerStatus (its node name, lost events,
        interfaces), then a poller that refreshes it until the connection ends."""
        stub = observer_pb2_grpc.ObserverStub(channel)
        status = stub.ServerStatus(observer_pb2.ServerStatusRequest(), timeout=5)
        self._node_name = status.node_name
        self.agg.set_status(self.source_id, status)
        ended = threading.Event()
        poller = threading.Thread(target=self._poll_status, args=(stub, ended), daemon=True,
                                  name=f"tui-status-{self.source_id}")
        poller.start()

        def finish() -> None:
            ended.set()
            poller.join(timeout=1)
        return finish

    def _poll_status(self, stub, ended: threading.Event) -> None:
        """ServerStatus every few seconds while the stream is up: lost events by stage,
        interfaces traced, flows/s as the agent sees them."""
        while not ended.wait(self.status_poll_s):
            try:
                status = stub.ServerStatus(observer_pb2.ServerStatusRequest(), timeout=5)
            except (grpc.RpcError, ValueError):
                # ValueError: the channel was closed under us (the stream ended and its
                # finish() gave up waiting); the stream notices too and reports it.
                return
            self.agg.set_status(self.source_id, status)


class FileSource:
    """Replays a flow log (.jsonl or .jsonl.gz, any header form): malformed lines and
    objects that are not responses are counted and shown; nothing stops the replay."""

    BATCH = 2000

    def __init__(self, path: str, aggregator: Aggregator, notify: Notify = _no_notify):
        self.path = path
        self.source_id = f"file:{path}"
        self.agg = aggregator
        self.notify = notify
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"tui-file-{path}", daemon=True)
        aggregator.add_source(self.source_id, path, "file")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def _run(self) -> None:
        sid = self.source_id
        self.agg.set_state(sid, "replaying")
        reader = FlowLogReader(self.path)
        told = [0, 0]  # malformed, skipped lines already counted in the aggregator

        def tell() -> None:
            self.agg.count_file_lines(sid, reader.malformed - told[0], reader.skipped - told[1])
            told[:] = [reader.malformed, reader.skipped]

        try:
            for n, resp in enumerate(reader, 1):
                if self._stop.is_set():
                    return
                self.agg.feed(sid, resp)
                if n % self.BATCH == 0:
                    tell()
        except (OSError, EOFError) as exc:  # also a truncated gzip stream
            tell()
            self.agg.set_state(sid, "unavailable", f"cannot read: {exc}")
            self.notify("lost", sid, str(exc))
            return
        tell()
        self.agg.set_state(sid, "replayed", "end of file")
        self.notify("connected", sid, "replayed")


# ---- Kubernetes discovery ---------------------------------------------------------------


class PortForwardProxy:
    """A local TCP listener per agent pod; each accepted connection is piped through the API
    server's port-forward to the pod's gRPC port, like `kubectl port-forward`. gRPC then
    talks to 127.0.0.1:PORT as if the agent were local.

    `connect()` returns (socket-like object, error()) for one new forwarded connection (for
    the kubernetes client: `pf = portforward(...)`, `(pf.socket(port), lambda:
    pf.error(port))`); error() is what the API server said on the port's error channel, or
    None. `failure` is the API server's reason for the last forward that failed ("" after one
    that worked), for AgentSource to show instead of gRPC's view of the local end."""

    def __init__(self, connect: Callable[[], tuple[object, Callable[[], str | None]]],
                 name: str):
        self._connect = connect
        self.name = name
        self.failure = ""
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(8)
        self.port = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, name=f"tui-pf-{name}", daemon=True)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        try:
            self._listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._listener.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                local, _ = self._listener.accept()
            except OSError:
                return
            try:
                remote, error = self._connect()
            except Exception as exc:  # noqa: BLE001  the kubernetes client raises many kinds
                # Said before the local end closes: gRPC's failure comes after it.
                self.failure = f"port-forward: {portforward_reason(exc)}"
                log.warning("port-forward to %s failed: %s", self.name, self.failure)
                local.close()
                continue
            self.failure = ""

            def ended(error=error) -> None:
                """The pod's end closed: an error channel message says why."""
                reason = error()
                if reason:
                    self.failure = f"port-forward: {reason.strip()}"
                    log.warning("port-forward to %s: %s", self.name, reason.strip())

            threading.Thread(target=_pipe, args=(local, remote), daemon=True,
                             name=f"tui-pf-pipe-{self.name}").start()
            threading.Thread(target=_pipe, args=(remote, local, ended), daemon=True,
                             name=f"tui-pf-pipe-{self.name}").start()


def portforward_reason(exc: Exception) -> str:
    """What the API server answered a port-forward upgrade with, from the kubernetes
    client's exception (it wraps websocket-client's, whose message carries the status line,
    the headers and the body: a Status object whose `message` is the reason), e.g.
    `403 Forbidden: pods "a" is forbidden: User "alice" cannot create resource
    "pods/portforward" ...` or `500 Internal Server Error: error dialing backend: ...`."""
    cause = exc.__cause__ or exc.__context__
    status = getattr(cause, "status_code", None)
    body = getattr(cause, "resp_body", None)
    text = str(getattr(exc, "reason", "") or exc)
    if status is None:
        match = re.search(r"Handshake status (\d+)", text)
        status = int(match.group(1)) if match else None
        match = re.search(r"-\+-\+- b?'(\{.*\})'\s*$", text, re.S)
        body = match.group(1) if match else None
    if status is None:
        return text
    message = ""
    if body:
        try:
            raw = body.decode() if isinstance(body, bytes) else str(body)
            message = json.loads(raw).get("message", "")
        except (ValueError, AttributeError):
            message = ""
    phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else ""
    head = f"{status} {phrase}".strip()
    return f"{head}: {message}" if message else head


def _pipe(src, dst, on_eof: Callable[[], None] | None = None) -> None:
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        if on_eof is not None:
            on_eof()
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            try:
                s.close()
            except OSError:
                pass


class KubernetesDiscovery:
    """Finds agent pods (namespace + label selector) and keeps one AgentSource per running
    pod, each through its own PortForwardProxy. Polls the pod list every `poll_s`: new agents
    are added, deleted ones shown as gone. The list and port-forward calls go through the
    kubernetes client, so a kubeconfig is all a laptop needs."""

    def __init__(self, aggregator: Aggregator, *, context: str | None, namespace: str,
                 selector: str, port_name: str, default_port: int, history: int,
                 notify: Notify = _no_notify, poll_s: float = 5.0, api=None,
                 kubeconfig: str | None = None, tls: TLSOptions | None = None):
        self.agg = aggregator
        self.context = context
        self.kubeconfig = kubeconfig
        self.tls = tls
        self.namespace = namespace
        self.selector = selector
        self.port_name = port_name
        self.default_port = default_port
        self.history = history
        self.notify = notify
        self.poll_s = poll_s
        self._api = api
        self._agents: dict[str, tuple[AgentSource, PortForwardProxy]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tui-k8s", daemon=True)
        self.source_id = f"kubernetes:{namespace}"
        aggregator.add_source(self.source_id, f"{context or 'current context'} {namespace} "
                              f"{selector}", "discovery", name="(discovery)")

    def _core_api(self):
        """A CoreV1Api of its own (no global client state), from the kubeconfig."""
        if self._api is None:
            from kubernetes import client, config
            self._api = client.CoreV1Api(config.new_client_from_config(
                config_file=self.kubeconfig, context=self.context))
        return self._api

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        for source, proxy in list(self._agents.values()):
            source.stop()
            proxy.stop()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def _pod_port(self, pod) -> int:
        for container in pod.spec.containers or []:
            for port in container.ports or []:
                if port.name == self.port_name:
                    return port.container_port
        return self.default_port

    def _connector(self, name: str, port: int):
        api = self._core_api()

        def connect():
            from kubernetes.stream import portforward
            pf = portforward(api.connect_get_namespaced_pod_portforward, name, self.namespace,
                             ports=str(port))
            return pf.socket(port), lambda: pf.error(port)
        return connect

    def sync_once(self) -> None:
        """List the agent pods once and reconcile the sources with them."""
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError
        try:
            pods = self._core_api().list_namespaced_pod(self.namespace,
                                                        label_selector=self.selector).items
        except (ApiException, HTTPError, OSError) as exc:
            self.agg.set_state(self.source_id, "unavailable", f"listing agent pods: {exc}")
            self.notify("lost", self.source_id, str(exc))
            return
        except Exception as exc:  # noqa: BLE001  kubeconfig errors come in many types
            self.agg.set_state(self.source_id, "unavailable", f"kubeconfig: {exc}")
            self.notify("lost", self.source_id, str(exc))
            return
        running = {p.metadata.name: p for p in pods
                   if p.status and p.status.phase == "Running"
                   and not p.metadata.deletion_timestamp}
        self.agg.set_state(self.source_id, "connected", f"{len(running)} agent pods")
        for name, pod in running.items():
            if name in self._agents:
                continue
            proxy = PortForwardProxy(self._connector(name, self._pod_port(pod)), name)
            proxy.start()
            source = AgentSource(proxy.address, self.agg, history=self.history,
                                 notify=self.notify, kind="kubernetes", tls=self.tls,
                                 source_id=f"pod:{self.namespace}/{name}",
                                 label=pod.spec.node_name or "",
                                 why_unreachable=lambda proxy=proxy: proxy.failure)
            self._agents[name] = (source, proxy)
            source.start()
        for name in [n for n in self._agents if n not in running]:
            source, proxy = self._agents.pop(name)
            source.stop()
            proxy.stop()
            self.agg.remove_source(source.source_id)
            self.notify("gone", source.source_id, "agent pod removed")

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sync_once()
            if self._stop.wait(self.poll_s):
                return
