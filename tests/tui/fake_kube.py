"""The Kubernetes API as `podflow tui --kubernetes` uses it, over real HTTP, since no API
server can run here: the faithful fake of tests/enrich/fakeapi.py (pod lists in a namespace
with a label selector, as the TUI asks) plus the one call only the TUI makes:

- GET /api/v1/namespaces/{ns}/pods/{name}/portforward?ports=P upgraded to a WebSocket with
  the `v4.channel.k8s.io` subprotocol, framed as the API server does: per port a data
  channel (2i) and an error channel (2i+1), each opened by a frame carrying the port number
  (little endian), then binary frames `channel byte + payload`. The bytes are relayed to
  the address the test gave the pod (a real agent's unix socket), like the kubelet would.

A port-forward can be made to fail as a real cluster's does (`break_portforward`):
- "forbidden": the upgrade is refused with 403 and the API server's Status, as when the TUI's
  user lacks `create` (or, on 1.35+, `get`) on pods/portforward;
- "dial": refused with 500 `error dialing backend: dial tcp ...:10250: connect: connection
  refused`, as when the API server cannot reach the node's kubelet;
- "pod-port": upgraded, then the kubelet's message on the port's error channel (nothing
  listens on the port inside the pod) and the end of the stream.

The kubernetes Python client talks to it unchanged through a kubeconfig.
"""

from __future__ import annotations

import base64
import hashlib
import socket
import struct
import threading

from tests.enrich.fakeapi import FakeAPIServer, _Handler, status

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


class _PortForwardHandler(_Handler):
    api: "FakeKube"

    def subresource(self, resource: str, namespace: str, name: str, sub: str,
                    query: dict) -> None:
        if (resource, sub) == ("pods", "portforward"):
            self._portforward(namespace, name, query)
        else:
            super().subresource(resource, namespace, name, sub, query)

    def _portforward(self, ns: str, name: str, query: dict) -> None:
        target = self.api.target_of(ns, name)
        if target is None:
            self.not_found(f'pods "{name}" not found')
            return
        broken = self.api.portforward_broken(ns, name)
        if broken == "forbidden":
            self.send_json(403, status(
                403, "Forbidden",
                f'pods "{name}" is forbidden: User "alice" cannot create resource '
                f'"pods/portforward" in API group "" in the namespace "{ns}"',
                details={"name": name, "kind": "pods"}))
            return
        if broken == "dial":
            self.send_json(500, status(
                500, "InternalError", "error dialing backend: dial tcp 10.0.0.5:10250: "
                "connect: connection refused"))
            return
        key = self.headers.get("Sec-WebSocket-Key")
        protocols = [p.strip() for p in self.headers.get("Sec-WebSocket-Protocol", "").split(",")]
        if self.headers.get("Upgrade", "").lower() != "websocket" or not key \
                or "v4.channel.k8s.io" not in protocols:
            self.send_json(400, {"kind": "Status", "status": "Failure", "code": 400,
                                 "message": "upgrade request required"})
            return
        port = int(query.get("ports", "0"))
        upstream = _dial(target) if broken is None else None
        accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
        self.send_response(101, "Switching Protocols")
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        self.send_header("Sec-WebSocket-Protocol", "v4.channel.k8s.io")
        self.end_headers()
        self.wfile.flush()
        self.api.forward_opened()
        sock = self.connection
        send_lock = threading.Lock()

        def send(payload: bytes) -> None:
            with send_lock:
                sock.sendall(_frame(payload))

        port_le = struct.pack("<H", port)
        send(b"\x00" + port_le)   # data channel opened
        send(b"\x01" + port_le)   # error channel opened
        if upstream is None:  # "pod-port": the kubelet cannot connect inside the pod
            _read_frame(self.rfile)  # the client's first bytes
            send(b"\x01" + (f"an error occurred forwarding {port} -> {port}: error forwarding "
                            f"port {port} to pod {name}: failed to connect to localhost:{port} "
                            "inside namespace: connect: connection refused").encode())
            with send_lock:
                sock.sendall(_frame(b"", opcode=8))
            self.close_connection = True
            return

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


class FakeKube(FakeAPIServer):
    """The k8s fake whose pods each have a `target`: where a port-forward to them goes."""

    handler_class = _PortForwardHandler

    def __init__(self) -> None:
        super().__init__()
        self._targets: dict[tuple[str, str], str] = {}  # pod -> "unix:/path" or "host:port"
        self._broken: dict[tuple[str, str], str] = {}   # pod -> how its port-forward fails
        self.forwards = 0                                # port-forward sessions opened

    def add_pod(self, obj: dict, target: str) -> None:
        meta = obj["metadata"]
        with self._lock:
            self._targets[(meta["namespace"], meta["name"])] = target
        self.apply(obj)

    def delete_pod(self, namespace: str, name: str) -> None:
        with self._lock:
            known = self._targets.pop((namespace, name), None) is not None
        if known:
            self.delete("Pod", namespace, name)

    def target_of(self, namespace: str, name: str) -> str | None:
        """The pod's forward target, or None when no such pod exists (now)."""
        with self._lock:
            if (namespace, name) not in self._objects["pods"]:
                return None
            return self._targets.get((namespace, name))

    def break_portforward(self, namespace: str, name: str, how: str | None) -> None:
        """Make port-forwards to the pod fail: "forbidden", "dial", "pod-port" (see the
        module docstring); None: work again."""
        assert how in (None, "forbidden", "dial", "pod-port"), how
        with self._lock:
            if how is None:
                self._broken.pop((namespace, name), None)
            else:
                self._broken[(namespace, name)] = how

    def portforward_broken(self, namespace: str, name: str) -> str | None:
        with self._lock:
            return self._broken.get((namespace, name))

    def forward_opened(self) -> None:
        with self._lock:
            self.forwards += 1


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
