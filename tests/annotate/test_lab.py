"""Drops, connection outcomes and DNS on a real lab cluster with a real agent (root, eBPF).

One lab for the module (two nodes, kube-dns as dnsmasq, a Service) and one agent on node-a,
the client's node; each test makes its own traffic with its own ports and reads the agent's
flow log (and ServerStatus) until what it expects shows up.
"""

from __future__ import annotations

import json
import os
import sys
import time

import grpc
import pytest

from agent.wire.flowupdate import records_with_updates
from podflow_api.v1 import observer_pb2, observer_pb2_grpc
from tests.annotate.dnswire import header, query, tcp

pytestmark = pytest.mark.root

# --flow-log-every-point: these tests read each veth's records
AGENT_ARGS = ("--active-timeout", "1", "--idle-timeout", "2", "--sweep-interval", "0.2",
              "--syn-timeout", "1", "--flow-log-every-point")
SERVICE_IP = "10.96.0.12"
SERVICE_NAME = "cart.shop.svc.cluster.local"


class Cluster:
    def __init__(self, lab, agent, log_path, client, server, dns):
        self.lab, self.agent, self.log_path = lab, agent, log_path
        self.client, self.server, self.dns = client, server, dns

    def flows(self) -> list[dict]:
        """The records of the flow log, each with the end notices that followed applied."""
        with open(self.log_path, encoding="utf-8") as fh:
            lines = [json.loads(line) for line in fh if line.strip()]
        return records_with_updates(lines)

    def wait_for(self, predicate, timeout_s: float = 15.0, what: str = "") -> list[dict]:
        """Flows matching `predicate`, once at least one did (fails after the timeout)."""
        deadline = time.monotonic() + timeout_s
        while True:
            found = [f for f in self.flows() if predicate(f)]
            if found or time.monotonic() > deadline:
                assert found, f"no flow for {what} in {self.log_path} after {timeout_s}s"
                return found
            time.sleep(0.2)

    def status(self) -> observer_pb2.ServerStatusResponse:
        with grpc.insecure_channel(self.agent.address) as channel:
            return observer_pb2_grpc.ObserverStub(channel).ServerStatus(
                observer_pb2.ServerStatusRequest(), timeout=5)


@pytest.fixture(scope="module")
def cluster(ebpf_ready, tmp_path_factory):
    from agent.lab import Lab

    with Lab(f"drops{os.getpid() % 10000}") as lab:
        a = lab.add_node("node-a", kind="bridge", pod_cidr="10.244.1.0/24")
        b = lab.add_node("node-b", kind="routed", pod_cidr="10.244.2.0/24")
        client = a.add_pod("shop", "frontend-1", labels={"app": "frontend"})
        server = b.add_pod("shop", "cart-1", labels={"app": "cart"})
        dns = lab.add_dns_server(node=a)
        lab.add_service("shop", "cart", cluster_ip=SERVICE_IP, port=80, backends=[(server, 8080)])
        servers = [server.serve(port) for port in (8080, 8081)]
        log_path = str(tmp_path_factory.mktemp("drops") / "flows.jsonl")
        meta = os.path.join(lab.run_dir, "metadata.json")
        lab.write_metadata(meta)
        agent = a.start_agent("--flow-log", log_path, *AGENT_ARGS, metadata_file=meta)
        try:
            yield Cluster(lab, agent, log_path, client, server, dns)
        finally:
            agent.stop()
            for proc in servers:
                proc.kill()
                proc.wait()


def _port(flow: dict, side: str) -> int:
    l4 = flow.get("l4", {})
    proto = l4.get("tcp") or l4.get("udp") or {}
    return int(proto.get(f"{side}_port", 0))


def test_policy_drop_yields_exactly_the_blocked_attempts(cluster):
    c = cluster
    rule = c.lab.add_drop_rule(c.client, c.server, port=8080, node=c.client.node)
    try:
        for _ in range(3):
            assert c.client.fetch(c.server.ip, 8080, timeout_s=0.5, check=False) == ""
        assert c.client.fetch(c.server.ip, 8081, timeout_s=3) != ""  # not blocked
        out = c.client.node.run(["iptables", "-w", "5", "-L", "FORWARD", "-v", "-x", "-n"],
                                capture_output=True, text=True).stdout
        netfilter_dropped = sum(int(line.split()[0]) for line in out.splitlines()
                                if "podflow-lab policy" in line and "dpt:8080" in line)
    finally:
        c.lab.remove_drop_rule(rule)
    # Each blocked attempt is a connection of its own (its own source port).
    def attempts() -> set[int]:
        return {_port(f, "source") for f in c.flows()
                if f.get("verdict") == "FORWARDED" and f.get("observation_point") == "POD_VETH"
                and f["ip"]["destination"] == c.server.ip and _port(f, "destination") == 8080}

    def dropped() -> list[dict]:
        return [f for f in c.flows() if f.get("verdict") == "DROPPED"
                and f["ip"]["destination"] == c.server.ip]

    deadline = time.monotonic() + 15
    while (len(attempts()) < 3
           or sum(int(f["packets"]) for f in dropped()) < netfilter_dropped):
        assert time.monotonic() < deadline, (netfilter_dropped, attempts(), dropped())
        time.sleep(0.2)
    blocked, drops = attempts(), dropped()
    # every packet netfilter dropped is reported, once
    assert sum(int(f["packets"]) for f in drops) == netfilter_dropped >= 3
    assert {_port(f, "source") for f in drops} == blocked and len(blocked) == 3
    for f in drops:
        assert (f["drop_reason"], f["ip"]["source"], _port(f, "destination")) == \
            ("NETFILTER_DROP", c.client.ip, 8080)
        assert f["drop_reason_code"] > 0 and f["observation_point"] == "HOST_STACK"
        assert f["traffic_direction"] == "FROM_POD"
        # It entered the host stack from the pod's side: cni0 on a bridge node.
        assert f["interface"]["name"] == "cni0"
        assert (f["source"]["pod_name"], f["destination"]["pod_name"]) == ("frontend-1", "cart-1")
    assert not [f for f in c.flows() if f.get("verdict") == "DROPPED" and _port(f, "destination") == 8081]


def test_policy_on_the_destination_node_names_the_pod_it_protected(cluster):
    """A NetworkPolicy is enforced on the destination pod's node: the packet arrives on the
    uplink, and the drop is still pod traffic (the node routes the address to a pod veth)."""
    c = cluster
    log_path = c.log_path + ".node-b"
    agent = c.server.node.start_agent("--flow-log", log_path, *AGENT_ARGS)
    try:
        time.sleep(1)
        rule = c.lab.add_drop_rule(c.client, c.server, port=8080)  # on node-b
        try:
            c.client.fetch(c.server.ip, 8080, timeout_s=0.5, check=False)
        finally:
            c.lab.remove_drop_rule(rule)
        node_b = Cluster(c.lab, agent, log_path, c.client, c.server, c.dns)
        (drop, *_) = node_b.wait_for(lambda f: f.get("verdict") == "DROPPED"
                                     and f["ip"]["destination"] == c.server.ip, what="node-b's drop")
        assert (drop["drop_reason"], drop["traffic_direction"], drop["interface"]["name"]) == \
            ("NETFILTER_DROP", "TO_POD", "eth0")
        with open(log_path, encoding="utf-8") as fh:  # the flow log names its node once
            assert json.loads(fh.readline())["podflow_flow_log"]["node_name"] == "node-b"
    finally:
        agent.stop()


_SEND_FROM_MANY_PORTS = r"""
import socket, sys
socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(int(sys.argv[2]))]
for _ in range(int(sys.argv[3])):
    for s in socks:
        s.sendto(b"x" * 8, (sys.argv[1], 9999))
"""


def test_full_drop_map_still_reports_every_drop(cluster):
    """With a 4-entry drop map, 20 flows of drops overflow it: the kernel sends those drops
    as events, the agent accumulates them, and the totals still match netfilter's."""
    c = cluster
    log_path = c.log_path + ".mapfull"
    agent = c.server.node.start_agent("--flow-log", log_path, "--drop-map-size", "4", *AGENT_ARGS)
    node_b = Cluster(c.lab, agent, log_path, c.client, c.server, c.dns)
    try:
        time.sleep(1)
        rule = c.lab.add_drop_rule(c.client, c.server, port=9999, protocol="udp")
        try:
            c.client.run([sys.executable, "-I", "-S", "-c", _SEND_FROM_MANY_PORTS, c.server.ip,
                          "20", "3"])
            time.sleep(0.3)
            out = c.server.node.run(["iptables", "-w", "5", "-L", "FORWARD", "-v", "-x", "-n"],
                                    capture_output=True, text=True).stdout
            netfilter = sum(int(line.split()[0]) for line in out.splitlines()
                            if "podflow-lab policy" in line and "dpt:9999" in line)
        finally:
            c.lab.remove_drop_rule(rule)
        assert netfilter == 60

        def reported() -> int:
            return sum(int(f["packets"]) for f in node_b.flows() if f.get("verdict") == "DROPPED"
                       and f["ip"]["destination"] == c.server.ip and _port(f, "destination") == 9999)

        deadline = time.monotonic() + 15
        while reported() < netfilter:
            assert time.monotonic() < deadline, reported()
            time.sleep(0.2)
        assert reported() == netfilter
        errors = node_b.status().datapath_errors
        assert errors.get("drop_map_full", 0) > 0 and errors.get("drop_lost", 0) == 0
    finally:
        agent.stop()


def test_udp_without_reply_is_no_reply(cluster):
    c = cluster
    c.client.fetch(c.server.ip, 7999, protocol="udp", timeout_s=0.5, check=False)
    flows = c.wait_for(lambda f: f.get("observation_point") == "POD_VETH"
                       and f["ip"]["destination"] == c.server.ip and "udp" in f["l4"]
                       and _port(f, "destination") == 7999 and f.get("outcome") == "NO_REPLY",
                       what="the unanswered datagram")
    assert flows[0]["traffic_direction"] == "FROM_POD"


def test_closed_port_is_refused(cluster):
    c = cluster
    c.client.fetch(c.server.ip, 9, timeout_s=2, check=False)
    refused = c.wait_for(lambda f: f.get("observation_point") == "POD_VETH"
                         and f["ip"]["destination"] == c.server.ip and _port(f, "destination") == 9
                         and f.get("outcome") == "REFUSED", what="the refused SYN")
    assert refused[0]["traffic_direction"] == "FROM_POD"


def test_blackholed_address_is_unanswered(cluster):
    c = cluster
    c.client.node.run(["ip", "route", "add", "blackhole", "10.244.9.9/32"])
    try:
        c.client.fetch("10.244.9.9", 80, timeout_s=0.5, check=False)
    finally:
        c.client.node.run(["ip", "route", "del", "blackhole", "10.244.9.9/32"])
    flows = c.wait_for(lambda f: f.get("observation_point") == "POD_VETH"
                       and f["ip"]["destination"] == "10.244.9.9"
                       and f.get("outcome") == "UNANSWERED", what="the unanswered SYN")
    assert flows[0]["l4"]["tcp"]["flags"].get("SYN")


def test_established_connection_to_a_service_carries_its_looked_up_name(cluster):
    c = cluster
    rcode, ips = c.client.resolve(SERVICE_NAME)
    assert (rcode, ips) == ("NOERROR", [SERVICE_IP])
    assert c.client.fetch(SERVICE_IP, 80, timeout_s=3)
    flows = c.wait_for(lambda f: f.get("observation_point") == "POD_VETH"
                       and f["ip"]["destination"] == SERVICE_IP
                       and SERVICE_NAME in f.get("destination", {}).get("names", [])
                       and f.get("outcome") in ("ESTABLISHED", "CLOSED"), what="the named flow")
    assert flows[0]["traffic_direction"] == "FROM_POD"


@pytest.mark.parametrize("name,rcode,ips", [
    (SERVICE_NAME, "NOERROR", [SERVICE_IP]),
    ("nope.shop.svc.cluster.local", "NXDOMAIN", []),
], ids=["service-name", "nxdomain"])
def test_dns_lookup_shows_name_answer_and_rcode(cluster, name, rcode, ips):
    c = cluster
    assert c.client.resolve(name) == (rcode, ips)
    answers = c.wait_for(lambda f: f.get("dns", {}).get("response")
                         and f["dns"]["query"] == name and f["ip"]["destination"] == c.client.ip
                         and f.get("observation_point") == "POD_VETH", what=f"the answer for {name}")
    answer = answers[0]["dns"]
    assert (answer["rcode"], answer.get("ips", []), answer["qtypes"]) == (rcode, ips, ["A"])
    assert int(answer["latency_ns"]) > 0
    queries = c.wait_for(lambda f: f.get("dns", {}).get("query") == name
                         and not f["dns"].get("response") and f["ip"]["source"] == c.client.ip,
                         what=f"the query for {name}")
    assert queries[0]["dns"]["id"] == answer["id"]


_TCP_DNS_CLIENT = r"""
import socket, sys
s = socket.create_connection((sys.argv[1], 53), timeout=3)
s.sendall(bytes.fromhex(sys.argv[2]))
data = b""
while len(data) < 2 or len(data) < 2 + int.from_bytes(data[:2], "big"):
    chunk = s.recv(4096)
    if not chunk:
        break
    data += chunk
print(len(data))
"""


def test_dns_over_tcp(cluster):
    c = cluster
    wire = tcp(query(SERVICE_NAME, msg_id=0x5151))
    out = c.client.run([sys.executable, "-I", "-S", "-c", _TCP_DNS_CLIENT, c.dns.ip, wire.hex()],
                       capture_output=True, text=True)
    assert int(out.stdout) > 2
    answers = c.wait_for(lambda f: f.get("dns", {}).get("id") == 0x5151 and f["dns"].get("response")
                         and "tcp" in f["l4"], what="the TCP DNS answer")
    assert answers[0]["dns"]["ips"] == [SERVICE_IP] and answers[0]["dns"]["rcode"] == "NOERROR"


_CNAME_DNS = r"""
import socket, struct, sys
# A DNS server that answers every A query like CoreDNS answers an ExternalName Service:
# a CNAME to the external name, then that name's address.
listen, target, address = sys.argv[1], sys.argv[2], sys.argv[3]
def wire(name):
    return b"".join(bytes([len(l)]) + l.encode() for l in name.split(".")) + b"\0"
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((listen, 53))
while True:
    q, peer = s.recvfrom(512)
    answer = (b"\xc0\x0c" + struct.pack("!HHIH", 5, 1, 60, len(wire(target))) + wire(target)
              + wire(target) + struct.pack("!HHIH", 1, 1, 30, 4) + socket.inet_aton(address))
    s.sendto(q[:2] + b"\x81\x80" + struct.pack("!HHHH", 1, 2, 0, 0) + q[12:] + answer, peer)
"""

_ASK = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(3)
s.sendto(bytes.fromhex(sys.argv[2]), (sys.argv[1], 53))
print(len(s.recv(512)))
"""


def test_pod_to_world_flow_carries_the_external_name(cluster):
    c = cluster
    world = c.lab.add_outside_host("api")
    server = world.serve(8443)
    resolver = c.client.node.add_pod("shop", "ext-dns")
    dns_proc = resolver.popen([sys.executable, "-I", "-S", "-c", _CNAME_DNS, resolver.ip,
                               "api.example.com", world.ip])
    try:
        ext_name = "payments.shop.svc.cluster.local"  # an ExternalName Service's name
        deadline = time.monotonic() + 5
        while True:
            out = c.client.run([sys.executable, "-I", "-S", "-c", _ASK, resolver.ip,
                                query(ext_name, msg_id=0x4242).hex()],
                               capture_output=True, text=True, check=False)
            if out.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert out.returncode == 0, out.stderr
        assert c.client.fetch(world.ip, 8443, timeout_s=3)
        flows = c.wait_for(lambda f: f.get("observation_point") == "POD_VETH"
                           and f["ip"]["destination"] == world.ip
                           and f.get("destination", {}).get("names"), what="the named world flow")
        assert flows[0]["destination"]["names"] == [ext_name, "api.example.com"]
        (answer, *_) = c.wait_for(lambda f: f.get("dns", {}).get("id") == 0x4242
                                  and f["dns"].get("response"), what="the CNAME answer")
        assert answer["dns"]["ips"] == [world.ip] and answer["dns"]["query"] == ext_name
    finally:
        dns_proc.kill()
        dns_proc.wait()
        server.kill()
        server.wait()


_SEND_UDP = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for payload in sys.argv[2:]:
    s.sendto(bytes.fromhex(payload), (sys.argv[1], 53))
"""

MALFORMED = [
    b"\x12",                                              # shorter than a header
    header() + b"\xc0\x0c\x00\x01\x00\x01",               # compression pointer to itself
    header(qd=9) + b"\x03abc\x00\x00\x01\x00\x01",        # counts that lie
    header() + b"\x3f" + b"a" * 10,                       # label past the end
]


def test_malformed_dns_is_counted_and_crashes_nothing(cluster):
    c = cluster
    before = c.status().datapath_errors.get("dns_malformed", 0)
    c.client.run([sys.executable, "-I", "-S", "-c", _SEND_UDP, c.dns.ip,
                  *[m.hex() for m in MALFORMED]])
    deadline = time.monotonic() + 10
    while c.status().datapath_errors.get("dns_malformed", 0) < before + len(MALFORMED):
        assert time.monotonic() < deadline, dict(c.status().datapath_errors)
        time.sleep(0.2)
    assert c.agent.process.poll() is None, c.agent.stderr_text()[-2000:]
    assert c.client.resolve(SERVICE_NAME) == ("NOERROR", [SERVICE_IP])  # still decoding
