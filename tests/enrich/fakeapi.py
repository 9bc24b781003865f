"""A faithful fake of the Kubernetes API server's list/watch, over real HTTP.

No API server can be installed here, so the agent's real `kubernetes` client code talks to
this instead, through a kubeconfig pointing at it. What the agent relies on is kept:

- one global resourceVersion, bumped by every write; each object carries the version of
  its last write; lists report the version they were taken at, paged with limit/continue
  over a consistent snapshot;
- watch from a resourceVersion replays every later event of that resource and then
  streams new ones (chunked JSON lines: ADDED, MODIFIED, DELETED, BOOKMARK when
  allowWatchBookmarks), ends cleanly after timeoutSeconds, and answers a version older than
  the compacted history with an ERROR event carrying a 410 Expired Status (as the real
  watch cache does); watch without a version (or "0") starts with ADDED for everything;
- the namespaced paths too (`/api/v1/namespaces/NS/pods`, one object at `.../pods/NAME`),
  and equality-based label selectors on lists (`k=v`, `k==v`, `k!=v`, `k`, `!k`);
- on demand: compaction, abrupt disconnects of every open watch, 403 Forbidden for a chosen
  resource and verb (with the real Status message), the whole server down and back up on
  the same port.

Subresources (`.../pods/NAME/portforward`) answer 404 here; a fake that needs one subclasses
the handler (`FakeAPIServer.handler_class`) and overrides `subresource`, as the TUI's does.
"""

from __future__ import annotations

import base64
import copy
import json
import socket
import ssl
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

# path -> (resource, kind, apiVersion, API group for RBAC messages)
RESOURCES = {
    "/api/v1/pods": ("pods", "Pod", "v1", ""),
    "/api/v1/services": ("services", "Service", "v1", ""),
    "/api/v1/nodes": ("nodes", "Node", "v1", ""),
    "/api/v1/namespaces": ("namespaces", "Namespace", "v1", ""),
    "/apis/discovery.k8s.io/v1/endpointslices": ("endpointslices", "EndpointSlice",
                                                 "discovery.k8s.io/v1", "discovery.k8s.io"),
    "/apis/apps/v1/replicasets": ("replicasets", "ReplicaSet", "apps/v1", "apps"),
    "/apis/batch/v1/jobs": ("jobs", "Job", "batch/v1", "batch"),
    "/apis/networking.k8s.io/v1/networkpolicies": ("networkpolicies", "NetworkPolicy",
                                                   "networking.k8s.io/v1", "networking.k8s.io"),
}
KIND_TO_RESOURCE = {kind: res for res, kind, _v, _g in RESOURCES.values()}
RESOURCE_INFO = {res: (kind, version, group) for res, kind, version, group in RESOURCES.values()}


@dataclass
class Event:
    rv: int
    resource: str
    type: str
    obj: dict


def status(code: int, reason: str, message: str, **extra) -> dict:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code, **extra}


class FakeAPIServer:
    """Start with `start()`, point a client at `url` (or `write_kubeconfig`), mutate with
    create/update/delete, and break it with compact/disconnect_watches/forbid/stop."""

    handler_class: type["_Handler"]  # set below the handler's definition

    def __init__(self, bookmark_interval_s: float = 1.0, *, host: str = "127.0.0.1",
                 ssl_context: ssl.SSLContext | None = None) -> None:
        """`ssl_context` (server side) serves HTTPS, as a real API server does: what an
        in-cluster client (service-account token + CA, tests/deploy) needs."""
        self.bookmark_interval_s = bookmark_interval_s
        self.host = host
        self.ssl_context = ssl_context
        self._lock = threading.Condition()
        self._rv = 100
        self._objects: dict[str, dict[tuple[str, str], dict]] = {r: {} for r in RESOURCE_INFO}
        self._events: list[Event] = []
        self._compacted_rv = self._rv  # watches from a version older than this get 410
        self._forbidden: set[tuple[str, str]] = set()   # (resource, verb)
        self._snapshots: dict[str, list[dict]] = {}
        self._generation = 0  # bumped by disconnect_watches; open watches compare it
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()
        self.port = 0
        self.requests: list[str] = []  # "GET /api/v1/pods?watch=1..." in order, for tests

    # ---- lifecycle ---------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"{'https' if self.ssl_context else 'http'}://{self.host}:{self.port}"

    def start(self) -> "FakeAPIServer":
        fake = self

        class Handler(self.handler_class):
            api = fake

        server = _QuietServer((self.host, self.port), Handler)
        if self.ssl_context is not None:
            server.socket = self.ssl_context.wrap_socket(server.socket, server_side=True)
        server.daemon_threads = True
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fakeapi", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """The API server goes away: the port refuses connections and open watches break."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            conns = list(self._connections)
            self._generation += 1
            self._lock.notify_all()
        for conn in conns:
            _abort(conn)
        self._server = None

    def write_kubeconfig(self, path: str, context: str = "fake") -> str:
        config = {
            "apiVersion": "v1", "kind": "Config", "current-context": context,
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "podflow", "user": {"token": "fake-token"}}],
            "contexts": [{"name": context, "context": {"cluster": "fake", "user": "podflow"}}],
        }
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(config, fh)
        return path

    # ---- writes ------------------------------------------------------------------------

    def create(self, obj: dict) -> dict:
        return self._write("ADDED", obj)

    def update(self, obj: dict) -> dict:
        return self._write("MODIFIED", obj)

    def apply(self, obj: dict) -> dict:
        """Create or update, like `kubectl apply`."""
        resource = KIND_TO_RESOURCE[obj["kind"]]
        meta = obj["metadata"]
        with self._lock:
            exists = (meta.get("namespace", ""), meta["name"]) in self._objects[resource]
        return self.update(obj) if exists else self.create(obj)

    def delete(self, kind: str, namespace: str, name: str) -> None:
        resource = KIND_TO_RESOURCE[kind]
        with self._lock:
            old = self._objects[resource].pop((namespace, name))
            self._rv += 1
            old = copy.deepcopy(old)
            old["metadata"]["resourceVersion"] = str(self._rv)
            self._events.append(Event(self._rv, resource, "DELETED", old))
            self._lock.notify_all()

    def _write(self, event_type: str, obj: dict) -> dict:
        resource = KIND_TO_RESOURCE[obj["kind"]]
        kind, version, _group = RESOURCE_INFO[resource]
        obj = copy.deepcopy(obj)
        obj.setdefault("apiVersion", version)
        meta = obj.setdefault("metadata", {})
        if kind not in ("Node", "Namespace"):
            meta.setdefault("namespace", "default")
        key = (meta.get("namespace", ""), meta["name"])
        with self._lock:
            old = self._objects[resource].get(key)
            if event_type == "ADDED" and old is not None:
                raise ValueError(f"{kind} {key} already exists")
            if event_type == "MODIFIED" and old is None:
                raise ValueError(f"{kind} {key} does not exist")
            if old is not None:
                meta["uid"] = old["metadata"]["uid"]
                meta["creationTimestamp"] = old["metadata"]["creationTimestamp"]
            else:
                meta.setdefault("uid", str(uuid.uuid4()))
                meta.setdefault("creationTimestamp",
                                time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
            self._rv += 1
            meta["resourceVersion"] = str(self._rv)
            self._objects[resource][key] = obj
            self._events.append(Event(self._rv, resource, event_type, copy.deepcopy(obj)))
            self._lock.notify_all()
        return obj

    # ---- faults ------------------------------------------------------------------------

    def compact(self) -> None:
        """Forget the event history up to now (etcd compaction): older versions get 410."""
        with self._lock:
            self._events.clear()
            self._compacted_rv = self._rv
            self._snapshots.clear()

    def disconnect_watches(self) -> None:
        """Drop every open watch connection abruptly (no terminating chunk)."""
        with self._lock:
            self._generation += 1
            self._lock.notify_all()

    def forbid(self, resource: str, verb: str = "list") -> None:
        with self._lock:
            self._forbidden.add((resource, verb))

    def allow(self, resource: str, verb: str = "list") -> None:
        with self._lock:
            self._forbidden.discard((resource, verb))

    def _events_after(self, rv: int, resource: str, namespace: str) -> list[Event]:
        """The history a watch has not sent yet (caller holds the lock)."""
        return [e for e in self._events if e.rv > rv and e.resource == resource
                and (not namespace or e.obj["metadata"].get("namespace", "") == namespace)]

    @property
    def resource_version(self) -> int:
        with self._lock:
            return self._rv

    def watch_count(self, resource: str) -> int:
        return sum(1 for r in self.requests if r.startswith(f"watch {resource}"))

    def list_count(self, resource: str) -> int:
        return sum(1 for r in self.requests if r.startswith(f"list {resource}"))


def _route(path: str) -> tuple[str, str, str, str] | None:
    """(resource, namespace, name, subresource) of an API path, "" where absent; None when
    the path names no known resource. Cluster-wide: `/api/v1/pods`; namespaced:
    `/api/v1/namespaces/NS/pods[/NAME[/SUB]]` (likewise under `/apis/GROUP/VERSION`)."""
    path = path.rstrip("/")
    if path in RESOURCES:
        return RESOURCES[path][0], "", "", ""
    for collection, (resource, kind, _version, _group) in RESOURCES.items():
        if kind in ("Node", "Namespace"):
            continue  # cluster-scoped
        prefix = collection.rsplit("/", 1)[0] + "/namespaces/"
        if not path.startswith(prefix):
            continue
        namespace, _, rest = path[len(prefix):].partition("/")
        parts = rest.split("/")
        if namespace and parts[0] == resource and len(parts) <= 3 and all(parts):
            name, sub = (parts[1:] + ["", ""])[:2]
            return resource, namespace, name, sub
    return None


def _parse_selector(text: str) -> list[tuple[str, str, str]]:
    """Equality-based label selector terms as (key, operator, value): `k=v`, `k==v`, `k!=v`,
    `k` (exists), `!k` (does not exist). Set-based terms raise ValueError."""
    terms = []
    for term in filter(None, (t.strip() for t in text.split(","))):
        if "(" in term or " in " in term or " notin " in term:
            raise ValueError(f"{term!r}: set-based terms are not supported by this fake")
        if "!=" in term:
            key, _, value = term.partition("!=")
            terms.append((key.strip(), "!=", value.strip()))
        elif "=" in term:
            key, _, value = term.partition("=")
            terms.append((key.strip(), "=", value.lstrip("=").strip()))
        elif term.startswith("!"):
            terms.append((term[1:].strip(), "!", ""))
        else:
            terms.append((term, "exists", ""))
    return terms


def _selected(labels: dict, selector: list[tuple[str, str, str]]) -> bool:
    for key, op, value in selector:
        if ((op == "=" and labels.get(key) != value) or (op == "!=" and labels.get(key) == value)
                or (op == "!" and key in labels) or (op == "exists" and key not in labels)):
            return False
    return True


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        """Clients that vanish mid-request are part of the tests, not errors."""


def _abort(conn: socket.socket) -> None:
    try:
        conn.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    api: FakeAPIServer

    def log_message(self, format, *args):  # noqa: A002 (the base class's name)
        """Quiet: tests read `api.requests` instead."""

    def setup(self):
        super().setup()
        with self.api._lock:
            self.api._connections.add(self.connection)

    def finish(self):
        with self.api._lock:
            self.api._connections.discard(self.connection)
        try:
            super().finish()
        except OSError:
            pass

    def send_json(self, code: int, body: dict) -> None:
        """Every non-streaming reply: a JSON body with its length."""
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def not_found(self, message: str) -> None:
        self.send_json(404, status(404, "NotFound", message))

    def do_GET(self):  # noqa: N802 (http.server's naming)
        url = urlparse(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        route = _route(url.path)
        if route is None:
            self.not_found(f"the server could not find the requested resource ({url.path})")
            return
        resource, namespace, name, sub = route
        if sub:
            self.subresource(resource, namespace, name, sub, query)
            return
        kind, version, group = RESOURCE_INFO[resource]
        watching = query.get("watch") in ("true", "1")
        verb = "get" if name else "watch" if watching else "list"
        api = self.api
        api.requests.append(f"{verb} {resource} {url.query}")
        with api._lock:
            forbidden = (resource, verb) in api._forbidden
        if forbidden:
            scope = f'in the namespace "{namespace}"' if namespace else "at the cluster scope"
            self.send_json(403, status(
                403, "Forbidden",
                f'{resource} is forbidden: User "system:serviceaccount:podflow:podflow" cannot '
                f'{verb} resource "{resource}" in API group "{group}" {scope}',
                details={"kind": resource, "group": group}))
            return
        try:
            selector = _parse_selector(query.get("labelSelector", ""))
        except ValueError as exc:
            self.send_json(400, status(400, "BadRequest", f"unable to parse requirement: {exc}"))
            return
        if name:
            self._get(resource, kind, namespace, name)
        elif watching:
            if selector:
                # A watch narrowed by labels must turn objects leaving the selection into
                # DELETED events; no client here needs it, so say so rather than fake it.
                self.send_json(400, status(400, "BadRequest",
                                           "labelSelector on a watch is not supported by this fake"))
                return
            self._watch(resource, kind, version, namespace, query)
        else:
            self._list(resource, kind, version, namespace, selector, query)

    def subresource(self, resource: str, namespace: str, name: str, sub: str,
                    query: dict) -> None:
        """`.../RESOURCE/NAME/SUB`: none here; subclasses add the ones they serve."""
        self.not_found(f"the server could not find the requested resource ({sub})")

    def _get(self, resource: str, kind: str, namespace: str, name: str) -> None:
        with self.api._lock:
            obj = copy.deepcopy(self.api._objects[resource].get((namespace, name)))
        if obj is None:
            self.send_json(404, status(404, "NotFound", f'{resource} "{name}" not found',
                                       details={"name": name, "kind": resource}))
        else:
            self.send_json(200, obj)

    def _list(self, resource: str, kind: str, version: str, namespace: str,
              selector: list[tuple[str, str, str]], query: dict) -> None:
        api = self.api
        limit = int(query.get("limit") or 0)
        token = query.get("continue")
        with api._lock:
            if token:
                try:
                    decoded = json.loads(base64.urlsafe_b64decode(token))
                    snapshot_id, start, list_rv = decoded["id"], decoded["start"], decoded["rv"]
                except (ValueError, KeyError):
                    self.send_json(400, status(400, "BadRequest", "invalid continue token"))
                    return
                items = api._snapshots.get(snapshot_id)
                if items is None:
                    self.send_json(410, status(410, "Expired", "The provided continue parameter is too old to display a consistent list result."))
                    return
            else:
                items = [copy.deepcopy(o) for (ns, _n), o in sorted(api._objects[resource].items())
                         if (not namespace or ns == namespace)
                         and _selected(o["metadata"].get("labels") or {}, selector)]
                snapshot_id, start, list_rv = uuid.uuid4().hex, 0, api._rv
            page = items[start:start + limit] if limit else items[start:]
            end = start + len(page)
            meta: dict = {"resourceVersion": str(list_rv)}
            if limit and end < len(items):
                api._snapshots[snapshot_id] = items
                meta["continue"] = base64.urlsafe_b64encode(json.dumps(
                    {"id": snapshot_id, "start": end, "rv": list_rv}).encode()).decode()
            else:
                api._snapshots.pop(snapshot_id, None)
        self.send_json(200, {"kind": f"{kind}List", "apiVersion": version, "metadata": meta,
                              "items": page})

    def _chunk(self, payload: dict) -> None:
        data = json.dumps(payload).encode() + b"\n"
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _watch(self, resource: str, kind: str, version: str, namespace: str,
               query: dict) -> None:
        api = self.api
        timeout_s = float(query.get("timeoutSeconds") or 1800)
        bookmarks = query.get("allowWatchBookmarks") in ("true", "1")
        rv_text = query.get("resourceVersion") or "0"
        deadline = time.monotonic() + timeout_s
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            with api._lock:
                generation = api._generation
                if rv_text == "0":
                    # "Any version": synthetic ADDED events for the current state first.
                    pending = [{"type": "ADDED", "object": copy.deepcopy(o)}
                               for (ns, _n), o in sorted(api._objects[resource].items())
                               if not namespace or ns == namespace]
                    since = api._rv
                else:
                    since = int(rv_text)
                    if since < api._compacted_rv:
                        pending = [{"type": "ERROR", "object": status(
                            410, "Expired", f"too old resource version: {since} ({api._compacted_rv})")}]
                        since = None
                    else:
                        pending = []
            for event in pending:
                self._chunk(event)
            if since is None:
                self._end()
                return
            last_bookmark = time.monotonic()
            while True:
                with api._lock:
                    events = api._events_after(since, resource, namespace)
                    if not events and api._generation == generation:
                        remaining = min(deadline - time.monotonic(),
                                        self.api.bookmark_interval_s - (time.monotonic() - last_bookmark)
                                        if bookmarks else deadline - time.monotonic())
                        if remaining > 0:
                            api._lock.wait(remaining)
                            events = api._events_after(since, resource, namespace)
                    broken = api._generation != generation
                    current_rv = api._rv
                if broken:
                    _abort(self.connection)
                    self.close_connection = True
                    return
                for event in events:
                    self._chunk({"type": event.type, "object": event.obj})
                    since = event.rv
                now = time.monotonic()
                if now >= deadline:
                    self._end()
                    return
                if bookmarks and now - last_bookmark >= self.api.bookmark_interval_s:
                    since = max(since, current_rv)
                    self._chunk({"type": "BOOKMARK", "object": {
                        "kind": kind, "apiVersion": version,
                        "metadata": {"resourceVersion": str(since)}}})
                    last_bookmark = now
        except (BrokenPipeError, ConnectionResetError, OSError):
            self.close_connection = True

    def _end(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


FakeAPIServer.handler_class = _Handler
