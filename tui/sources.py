"""Where the TUI's flows come from: agents over gRPC, replayed flow-log files, and agents
found through the Kubernetes API and reached over the API server's port-forward.

Every source runs in its own daemon thread that only does I/O: it reads responses and hands
them to the aggregator (`Aggregator.feed`), and reports its state there too. A lost agent is
retried with exponential backoff (with jitter) while the others keep streaming; state changes
are also told to the app through `notify(event, source_id, message)` so the status bar
changes at once instead of at the next refresh.
"""

from __future__ import annotations

import gzip
import json
import logging
import random
import socket
import threading
from typing import Callable

import grpc
from google.protobuf import json_format

from agent.client.streams import TLSOptions, get_flow_batches, open_channel
from podflow_api.v1 import observer_pb2, observer_pb2_grpc

from tui.aggregator import Aggregator

log = logging.getLogger("podflow.tui.sources")

Notify = Callable[[str, str, str], None]  # (event: "connected"|"lost"|"gone", source_id, msg)
STATUS_POLL_S = 3.0
_NS = 1_000_000_000
BACKOFF_START_S = 0.5
BACKOFF_MAX_S = 30.0


def _no_notify(_event: str, _source_id: str, _message: str) -> None:
    return None


class AgentSource:
    """One agent's stream: GetFlows(follow, last `history` flows), plus ServerStatus polled
    every few seconds, reconnecting with backoff when the agent goes away."""

    def __init__(self, address: str, aggregator: Aggregator, *, history: int = 1000,
                 notify: Notify = _no_notify, kind: str = "agent", source_id: str | None = None,
                 label: str = "", tls: TLSOptions | None = None, status_poll_s: float = STATUS_POLL_S,
                 backoff_max_s: float = BACKOFF_MAX_S):
        self.address = address
        self.source_id = source_id or address
        self.agg = aggregator
        self.history = history
        self.notify = notify
        self.tls = tls
        self.status_poll_s = status_poll_s
        self.backoff_max_s = backoff_max_s
        self._stop = threading.Event()
        self._call = None
        self._resume_ns = 0  # newest flow time received: where a reconnect resumes
        self._thread = threading.Thread(target=self._run, name=f"tui-src-{self.source_id}",
                                        daemon=True)
        aggregator.add_source(self.source_id, address, kind, name=label)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        call = self._call
        if call is not None:
            call.cancel()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def _run(self) -> None:
        backoff = BACKOFF_START_S
        attempts = 0
        while not self._stop.is_set():
            if attempts:
                self.agg.set_state(self.source_id, "reconnecting", f"attempt {attempts + 1}")
            channel = open_channel(self.address, self.tls)
            poller = None
            stream_done = threading.Event()
            try:
                stub = observer_pb2_grpc.ObserverStub(channel)
                status = stub.ServerStatus(observer_pb2.ServerStatusRequest(), timeout=5)
                self.agg.set_status(self.source_id, status)
                self.agg.set_state(self.source_id, "connected")
                self.notify("connected", self.source_id, status.node_name)
                backoff, attempts = BACKOFF_START_S, 0
                poller = threading.Thread(target=self._poll_status, args=(stub, stream_done),
                                          daemon=True,
                                          name=f"tui-status-{self.source_id}")
                poller.start()
                self._stream(channel)
                message = "the agent ended the stream"
            except grpc.RpcError as exc:
                code = exc.code() if hasattr(exc, "code") else None
                message = f"{code.name if code else 'error'}: {exc.details() if hasattr(exc, 'details') else exc}"
            finally:
                self._call = None
                stream_done.set()
                channel.close()
                if poller is not None:
                    poller.join(timeout=1)
            if self._stop.is_set():
                return
            attempts += 1
            delay = min(backoff, self.backoff_max_s) * random.uniform(0.8, 1.2)
            self.agg.set_state(self.source_id, "unavailable",
                               f"{message}; retrying in {delay:.1f}s", retry_in_s=delay)
            self.notify("lost", self.source_id, message)
            backoff = min(backoff * 2, self.backoff_max_s)
            if self._stop.wait(delay):
                return

    def _stream(self, channel) -> None:
        """GetFlowsBatched (GetFlows from older agents) via agent.client.streams. The first stream
        asks for `history` flows; a reconnect resumes just after the newest flow received,
        so nothing is counted twice."""
        request = observer_pb2.GetFlowsRequest(follow=True)
        if self._resume_ns:
            request.since.seconds, request.since.nanos = divmod(self._resume_ns + 1, _NS)
        else:
            request.number = self.history
        sid = self.source_id
        feed_many = self.agg.feed_many
        for batch in get_flow_batches(channel, request, on_call=self._on_call):
            for resp in reversed(batch):
                if resp.HasField("flow"):
                    t = resp.flow.time
                    self._resume_ns = max(self._resume_ns, t.seconds * _NS + t.nanos)
                    break
            feed_many(sid, batch)

    def _on_call(self, call) -> None:
        self._call = call
        if self._stop.is_set():
            call.cancel()

    def _poll_status(self, stub, stream_done: threading.Event) -> None:
        """ServerStatus every few seconds while the stream is up: lost events by stage,
        interfaces traced, flows/s as the agent sees them."""
        while not stream_done.wait(self.status_poll_s):
            try:
                status = stub.ServerStatus(observer_pb2.ServerStatusRequest(), timeout=5)
            except grpc.RpcError:
                return  # the stream notices too; the main loop reports it
            self.agg.set_status(self.source_id, status)


class FileSource:
    """Replays a flow log (.jsonl or .jsonl.gz): one GetFlowsResponse JSON per line. Header
    lines and other objects that are not responses are skipped and counted; lines that are
    not JSON are counted as malformed; nothing stops the replay."""

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

    def _open(self):
        with open(self.path, "rb") as fh:
            magic = fh.read(2)
        if magic == b"\x1f\x8b":
            return gzip.open(self.path, "rt", encoding="utf-8", errors="replace")
        return open(self.path, encoding="utf-8", errors="replace")

    def _run(self) -> None:
        self.agg.set_state(self.source_id, "replaying")
        malformed = skipped = flows = 0
        try:
            with self._open() as fh:
                for line in fh:
                    if self._stop.is_set():
                        return
                    line = line.strip()
                    if not line:
                        continue
                    resp = parse_response_line(line)
                    if resp is None:
                        malformed += 1
                    elif resp is False:
                        skipped += 1
                    else:
                        self.agg.feed(self.source_id, resp)
                        flows += 1
                    if (malformed + skipped + flows) % self.BATCH == 0:
                        self.agg.count_file_lines(self.source_id, malformed, skipped)
                        malformed = skipped = 0
        except (OSError, EOFError, gzip.BadGzipFile) as exc:
            self.agg.count_file_lines(self.source_id, malformed, skipped)
            self.agg.set_state(self.source_id, "unavailable", f"cannot read: {exc}")
            self.notify("lost", self.source_id, str(exc))
            return
        self.agg.count_file_lines(self.source_id, malformed, skipped)
        self.agg.set_state(self.source_id, "replayed", "end of file")
        self.notify("connected", self.source_id, "replayed")


_RESPONSE_FIELDS = {f.name for f in observer_pb2.GetFlowsResponse.DESCRIPTOR.fields}


def parse_response_line(line: str):
    """One flow-log line -> GetFlowsResponse; False for a JSON object that is not one (a
    header); None for a malformed line."""
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    if not isinstance(obj, dict):
        return None
    if not obj.keys() & {"flow", "lost_events", "node_status"} or not obj.keys() <= _RESPONSE_FIELDS:
        return False
    resp = observer_pb2.GetFlowsResponse()
    try:
        json_format.ParseDict(obj, resp, ignore_unknown_fields=True)
    except json_format.ParseError:
        return None
    return resp


# ---- Kubernetes discovery ---------------------------------------------------------------


class PortForwardProxy:
    """A local TCP listener per agent pod; each accepted connection is piped through the API
    server's port-forward to the pod's gRPC port, like `kubectl port-forward`. gRPC then
    talks to 127.0.0.1:PORT as if the agent were local.

    `connect()` returns a socket-like object for one new forwarded connection (for the
    kubernetes client: `portforward(...).socket(port)`)."""

    def __init__(self, connect: Callable[[], object], name: str):
        self._connect = connect
        self.name = name
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
                remote = self._connect()
            except Exception as exc:  # noqa: BLE001  the kubernetes client raises many kinds
                log.warning("port-forward to %s failed: %s", self.name, exc)
                local.close()
                continue
            for a, b in ((local, remote), (remote, local)):
                threading.Thread(target=_pipe, args=(a, b), daemon=True,
                                 name=f"tui-pf-pipe-{self.name}").start()


def _pipe(src, dst) -> None:
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
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
            return pf.socket(port)
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
                                 label=pod.spec.node_name or "")
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
