"""A faithful fake of the two Kubernetes API calls `podflow tui --kubernetes` makes, over
real HTTP, since no API server can run here:

- GET /api/v1/namespaces/{ns}/pods?labelSelector=k=v,... -> a PodList of the pods in that
  namespace whose labels match (equality terms, as the TUI's selector uses);
- GET /api/v1/namespaces/{ns}/pods/{name}/portforward?ports=P upgraded to a WebSocket with
  the `v4.channel.k8s.io` subprotocol, framed as the API server does: per port a data
  channel (2i) and an error channel (2i+1), each opened by a frame carrying the port number
  (little endian), then binary frames `channel byte + payload`. The bytes are relayed to
  the address the test gave the pod (a real agent's unix socket), like the kubelet would.

The kubernetes Python client talks to it unchanged through a kubeconfig.
"""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import struct
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def pod(namespace: str, name: str, node: str, labels: dict[str, str], port: int = 4245,
        phase: str = "Running") -> dict:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": labels,
                         "uid": hashlib.md5(name.encode()).hexdigest()},
            "spec": {"nodeName": node, "containers": [{
                "name": "agent", "image": "podflow",
                "ports": [{"name": "grpc", "containerPort": port, "protocol": "TCP"}]}]},
            "status": {"phase": phase}}


class FakeKube:
    def __init__(self):
        self._lock = threading.Lock()
        self.pods: dict[tuple[str, str], dict] = {}
        self.targets: dict[tuple[str, str], str] = {}  # pod -> "unix:/path" or "host:port"
        self.forwards = 0                               # port-forward sessions opened
        self._server: ThreadingHTTPServer | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add_pod(self, obj: dict, target: str) -> None:
        key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
        with self._lock:
            self.pods[key] = obj
            self.targets[key] = target

    def delete_pod(self, namespace: str, name: str) -> None:
        with self._lock:
            self.pods.pop((namespace, name), None)

    def write_kubeconfig(self, path: str, context: str = "fake") -> str:
        cfg = {"apiVersion": "v1", "kind": "Config", "current-context": context,
               "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
               "users": [{"name": "me", "user": {"token": "fake-token"}}],
               "contexts": [{"name": context, "context": {"cluster": "fake", "user": "me"}}]}
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(cfg, fh)
        return path

    def start(self) -> FakeKube:
        fake = self

        class Handler(_Handler):
            kube = fake

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True, name="fake-kube").start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def _matches(labels: dict, selector: str) -> bool:
    for term in filter(None, selector.split(",")):
        key, _, value = term.partition("=")
        if labels.get(key) != value:
            return False
    return True


class _Handler(BaseHTTPRequestHandler):
    kube: FakeKube
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # noqa: A002 (the base class's name)
        pass

    def _json(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):  # noqa: N802 (http.server's naming)
        url = urlparse(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        parts = url.path.strip("/").split("/")
        # api v1 namespaces NS pods [NAME portforward]
        if len(parts) >= 5 and parts[:3] == ["api", "v1", "namespaces"] and parts[4] == "pods":
            ns = parts[3]
            if len(parts) == 5:
                with self.kube._lock:
                    items = [p for (pns, _), p in sorted(self.kube.pods.items())
                             if pns == ns and _matches(p["metadata"].get("labels", {}),
                                                       query.get("labelSelector", ""))]
                self._json(200, {"kind": "PodList", "apiVersion": "v1",
                                 "metadata": {"resourceVersion": "1"}, "items": items})
                return
            if len(parts) == 7 and parts[6] == "portforward":
                self._portforward(ns, parts[5], query)
                return
        self._json(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                         "reason": "NotFound", "code": 404,
                         "message": f"the server could not find the requested resource"})

    # ---- port-forward over WebSocket --------------------------------------------------

    def _portforward(self, ns: str, name: str, query: dict) -> None:
        with self.kube._lock:
            target = self.kube.targets.get((ns, name)) if (ns, name) in self.kube.pods else None
        if target is None:
            self._json(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                             "reason": "NotFound", "code": 404,
                             "message": f'pods "{name}" not found'})
            return
        key = self.headers.get("Sec-WebSocket-Key")
        protocols = [p.strip() for p in self.headers.get("Sec-WebSocket-Protocol", "").split(",")]
        if self.headers.get("Upgrade", "").lower() != "websocket" or not key \
                or "v4.channel.k8s.io" not in protocols:
            self._json(400, {"kind": "Status", "status": "Failure", "code": 400,
                             "message": "upgrade request required"})
            return
        port = int(query.get("ports", "0"))
        upstream = _dial(target)
        accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
        self.send_response(101, "Switching Protocols")
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        self.send_header("Sec-WebSocket-Protocol", "v4.channel.k8s.io")
        self.end_headers()
        self.wfile.flush()
        with self.kube._lock:
            self.kube.forwards += 1
        sock = self.connection
        send_lock = threading.Lock()

        def send(payload: bytes) -> None:
            with send_lock:
                sock.sendall(_frame(payload))

        port_le = struct.pack("<H", port)
        send(b"\x00" + port_le)   # data channel opened
        send(b"\x01" + port_le)   # error channel opened

        def downstream() -> None:
            try:
                while True:
                    data = upstream.recv(65536)
                    if not data:
                        break
                    send(b"\x00" + data)
            except OSError:
                pass
            try:
                with send_lock:
                    sock.sendall(_frame(b"", opcode=8))
            except OSError:
                pass

        threading.Thread(target=downstream, daemon=True, name=f"fake-pf-{name}").start()
        try:
            while True:
                opcode, payload = _read_frame(self.rfile)
                if opcode is None or opcode == 8:
                    break
                if opcode == 9:
                    with send_lock:
                        sock.sendall(_frame(payload, opcode=10))
                elif opcode == 2 and payload and payload[0] == 0:
                    upstream.sendall(payload[1:])
        except OSError:
            pass
        finally:
            try:
                upstream.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            upstream.close()
            self.close_connection = True


def _dial(target: str) -> socket.socket:
    if target.startswith("unix:"):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(target[len("unix:"):])
        return s
    host, _, port = target.rpartition(":")
    return socket.create_connection((host, int(port)))


def _frame(payload: bytes, opcode: int = 2) -> bytes:
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", 0x80 | opcode, n)
    elif n < 65536:
        header = struct.pack("!BBH", 0x80 | opcode, 126, n)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 127, n)
    return header + payload


def _read_exact(rfile, n: int) -> bytes | None:
    data = rfile.read(n)
    return data if data is not None and len(data) == n else None


def _read_frame(rfile) -> tuple[int | None, bytes]:
    head = _read_exact(rfile, 2)
    if head is None:
        return None, b""
    opcode = head[0] & 0x0F
    masked = head[1] & 0x80
    n = head[1] & 0x7F
    if n == 126:
        ext = _read_exact(rfile, 2)
        if ext is None:
            return None, b""
        n = struct.unpack("!H", ext)[0]
    elif n == 127:
        ext = _read_exact(rfile, 8)
        if ext is None:
            return None, b""
        n = struct.unpack("!Q", ext)[0]
    mask = _read_exact(rfile, 4) if masked else b"\x00\x00\x00\x00"
    payload = _read_exact(rfile, n) if n else b""
    if mask is None or payload is None:
        return None, b""
    if masked:
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return opcode, payload
