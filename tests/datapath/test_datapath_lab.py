"""The datapath on nodes built from namespaces: exact counts against tcpdump on the same
interface and direction, pods coming and going, coexistence with another tool's TC filter,
a killed agent's leftovers, malformed frames. Real kernel, real `podflow agent` processes."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from podflow_api.v1 import observer_pb2
from tests.datapath.conftest import (AGENT_ARGS, Capture, podflow_filters, read_flow_log,
                                     record_totals, send_udp, server_status, tcp_transfer)

pytestmark = pytest.mark.root

PING_COUNT, PING_FRAME = 7, 14 + 20 + 8 + 56
UDP_COUNT, UDP_PAYLOAD = 11, 333
TCP_BYTES = 300_000


def _start(node, tmp_path, *extra):
    log = tmp_path / f"{node.name}.flows.jsonl"
    agent = node.start_agent("--flow-log", str(log), *AGENT_ARGS, *extra)
    return agent, log


def _pair(totals: dict, a: str, b: str) -> dict:
    return {k: v for k, v in totals.items() if {k[1], k[2]} == {a, b}}


@pytest.mark.parametrize("topology,mode", [("bridge-node", "tc"), ("routed-node", "tc"),
                                           ("across-nodes", "tc"), ("bridge-node", "tcx")],
                         ids=["bridge-node", "routed-node", "across-nodes", "bridge-node-tcx"])
def test_exact_counts_match_tcpdump_on_the_same_interface(ebpf_ready, lab_factory, tmp_path,
                                                          topology, mode):
    lab = lab_factory(f"dpc{topology[:2]}{mode}")
    kind_a = "routed" if topology == "routed-node" else "bridge"
    node_a = lab.add_node("node-a", kind=kind_a, pod_cidr="10.244.1.0/24")
    node_b = node_a
    if topology == "across-nodes":
        node_b = lab.add_node("node-b", kind="routed", pod_cidr="10.244.2.0/24")
    client = node_a.add_pod("shop", "client-1")
    server = node_b.add_pod("shop", "server-1")
    agents = {node_a.name: _start(node_a, tmp_path, "--attach-mode", mode)}
    if node_b is not node_a:
        agents[node_b.name] = _start(node_b, tmp_path, "--attach-mode", mode)
    assert all(agent.ready["attach_mode"] == mode for agent, _log in agents.values())

    pair = f"host {client.ip} and host {server.ip}"
    # (node, interface, tcpdump direction, pod direction the records must carry)
    points = [(node_a, client.host_ifname, "in", "FROM_POD"),
              (node_a, client.host_ifname, "out", "TO_POD"),
              (node_b, server.host_ifname, "in", "FROM_POD"),
              (node_b, server.host_ifname, "out", "TO_POD")]
    if topology == "across-nodes":  # the bridge sees what leaves for / comes from node-b
        points += [(node_a, "cni0", "in", "FROM_POD"), (node_a, "cni0", "out", "TO_POD")]
    captures = [(node, ifname, pod_dir, Capture(node, ifname, q, pair, tmp_path))
                for node, ifname, q, pod_dir in points]

    client.run(["ping", "-q", "-c", str(PING_COUNT), "-i", "0.05", server.ip],
               stdout=subprocess.DEVNULL)
    send_udp(client, server.ip, 7777, UDP_COUNT, UDP_PAYLOAD, sport=40000)
    assert tcp_transfer(client, server, 8080, TCP_BYTES) == TCP_BYTES

    truths = [(node, ifname, pod_dir, cap.stop()) for node, ifname, pod_dir, cap in captures]
    for name, (agent, _log) in agents.items():
        assert agent.stop() == 0, agent.stderr_text()
    flows = {name: read_flow_log(log) for name, (_agent, log) in agents.items()}

    for node, ifname, pod_dir, truth in truths:
        got = _pair(record_totals(flows[node.name], ifname, pod_dir), client.ip, server.ip)
        assert got == truth, f"{node.name} {ifname} {pod_dir}"
        assert truth, f"no traffic captured on {ifname} {pod_dir}"

    # and the counts we know without tcpdump
    sent = record_totals(flows[node_a.name], client.host_ifname, "FROM_POD")
    assert sent[("icmpv4", client.ip, server.ip, 8, 0, False)] == (PING_COUNT,
                                                                   PING_COUNT * PING_FRAME)
    assert sent[("udp", client.ip, server.ip, 40000, 7777, False)] == (
        UDP_COUNT, UDP_COUNT * (14 + 20 + 8 + UDP_PAYLOAD))
    tcp = [f for f in flows[node_a.name] if f["interface"]["name"] == client.host_ifname
           and "tcp" in f.get("l4", {}) and f["ip"]["destination"] == server.ip]
    assert sum(int(f.get("packets", 0)) for f in tcp) > 0
    assert tcp[-1]["flow_end"] is True
    assert all(f["observation_point"] == "POD_VETH" for f in tcp)


def test_new_pod_is_traced_within_a_second_and_deleted_pod_releases_cleanly(
        ebpf_ready, lab_factory, tmp_path):
    lab = lab_factory("dpnew")
    node = lab.add_node("node-a", kind="bridge", pod_cidr="10.244.1.0/24")
    agent, log = _start(node, tmp_path)
    assert agent.ready["interfaces"] == []  # cni0 has no veth port yet: not a pod bridge

    first = node.add_pod("shop", "first-1")  # its veth, and with it the bridge
    created = time.monotonic()
    while len(podflow_filters(node, first.host_ifname)) < 2 \
            or len(podflow_filters(node, "cni0")) < 2:
        assert time.monotonic() - created < 1.0, "first pod veth / bridge not traced in 1 s"
        time.sleep(0.02)
    late = node.add_pod("shop", "late-1")
    created = time.monotonic()
    while len(podflow_filters(node, late.host_ifname)) < 2:
        assert time.monotonic() - created < 1.0, "new pod veth not traced within 1 s"
        time.sleep(0.02)
    late.run(["ping", "-q", "-c", "3", "-i", "0.05", first.ip], stdout=subprocess.DEVNULL)
    time.sleep(0.5)
    assert late.host_ifname in [i.name for i in server_status(agent.address).interfaces]

    # CNIs often create a veth under a temporary name and rename it: records follow
    renamed_from = late.host_ifname
    node.run(["ip", "link", "set", late.host_ifname, "down"])
    node.run(["ip", "link", "set", late.host_ifname, "name", "vethrenamed0"])
    node.run(["ip", "link", "set", "vethrenamed0", "up"])
    deadline = time.monotonic() + 3
    while "vethrenamed0" not in [i.name for i in server_status(agent.address).interfaces]:
        assert time.monotonic() < deadline, "renamed veth not reported under its new name"
        time.sleep(0.1)
    late.host_ifname = "vethrenamed0"
    late.run(["ping", "-q", "-c", "2", "-i", "0.05", first.ip], stdout=subprocess.DEVNULL)

    node.remove_pod(late)
    deadline = time.monotonic() + 3
    while late.host_ifname in [i.name for i in server_status(agent.address).interfaces]:
        assert time.monotonic() < deadline, "deleted pod's veth still listed as traced"
        time.sleep(0.1)
    status = server_status(agent.address)
    assert "detach_failed" not in status.datapath_errors
    assert agent.process.poll() is None
    assert agent.stop() == 0
    stderr = agent.stderr_text()
    assert "ERROR" not in stderr and "Traceback" not in stderr, stderr
    flows = read_flow_log(log)
    before = record_totals(flows, renamed_from, "FROM_POD")
    after = record_totals(flows, "vethrenamed0", "FROM_POD")
    key = ("icmpv4", late.ip, first.ip, 8, 0, False)
    assert before.get(key, (0, 0))[0] + after.get(key, (0, 0))[0] == 5
    assert after.get(key, (0, 0))[0] >= 2


# Another tool's filter: classic BPF, direct-action, dropping IPv4 UDP to port 9999
# (ldh [12]; jeq IPv4; ldb [23]; jeq UDP; ldh [36]; jeq 9999 -> TC_ACT_SHOT else UNSPEC).
OTHER_FILTER = ["prio", "1", "handle", "7", "bpf", "da", "bytecode",
                "8,40 0 0 12,21 0 5 2048,48 0 0 23,21 0 3 17,40 0 0 36,21 0 1 9999,"
                "6 0 0 2,6 0 0 4294967295"]

UDP_COUNT_RECV = """
import socket, sys
socks = []
for port in (9998, 9999):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", port))
    s.settimeout(0.05); socks.append(s)
print("ready", flush=True)
counts = {9998: 0, 9999: 0}
import time
deadline = time.monotonic() + 3
while time.monotonic() < deadline:
    for port, s in zip((9998, 9999), socks):
        try:
            s.recv(2048); counts[port] += 1
        except socket.timeout:
            pass
    if counts[9998] >= 5:
        time.sleep(0.2)
        for port, s in zip((9998, 9999), socks):
            s.setblocking(False)
            try:
                while True:
                    s.recv(2048); counts[port] += 1
            except BlockingIOError:
                pass
        break
print(counts[9998], counts[9999], flush=True)
"""


def _received(client, server) -> tuple[int, int]:
    recv = server.popen([sys.executable, "-c", UDP_COUNT_RECV], stdout=subprocess.PIPE,
                        text=True)
    assert recv.stdout.readline().strip() == "ready"
    send_udp(client, server.ip, 9999, 5, 100, sport=40001)
    send_udp(client, server.ip, 9998, 5, 100, sport=40002)
    ok, dropped = map(int, recv.stdout.readline().split())
    recv.wait(5)
    return ok, dropped


def _other_filter(node, ifname) -> list[str]:
    return [line for line in podflow_filters(node, ifname) if "bytecode" in line]


@pytest.mark.parametrize("mode", ["tc", "tcx"])
def test_other_tools_filter_keeps_working_and_is_never_removed(ebpf_ready, lab_factory,
                                                                tmp_path, mode):
    lab = lab_factory(f"dpcoex{mode}")
    node = lab.add_node("node-a", kind="bridge", pod_cidr="10.244.1.0/24")
    client = node.add_pod("shop", "client-1")
    server = node.add_pod("shop", "server-1")
    veth = server.host_ifname
    node.run(["tc", "qdisc", "add", "dev", veth, "clsact"])
    node.run(["tc", "filter", "add", "dev", veth, "egress", *OTHER_FILTER])
    before = _other_filter(node, veth)
    assert len(before) == 1
    assert _received(client, server) == (5, 0)

    agent, log = _start(node, tmp_path, "--attach-mode", mode)
    lines = podflow_filters(node, veth)
    assert sum("podflow_ingress" in line for line in lines) == 1
    assert sum("podflow_egress" in line for line in lines) == 1
    assert _received(client, server) == (5, 0)
    assert agent.stop() == 0

    assert _other_filter(node, veth) == before
    assert not [line for line in podflow_filters(node, veth) if "podflow" in line]
    qdiscs = node.run(["tc", "qdisc", "show", "dev", veth], capture_output=True, text=True).stdout
    assert "clsact" in qdiscs  # not ours to delete
    assert _received(client, server) == (5, 0)
    # podflow counted what reached its hook at the server's veth egress: the allowed port;
    # with tc the other filter (a lower priority number) ran first and dropped port 9999,
    # with tcx podflow runs first and sees those packets too
    got = record_totals(read_flow_log(log), veth, "TO_POD")
    assert got[("udp", client.ip, server.ip, 40002, 9998, False)][0] == 5
    dropped_seen = got.get(("udp", client.ip, server.ip, 40001, 9999, False), (0, 0))[0]
    assert dropped_seen == (5 if mode == "tcx" else 0)


@pytest.mark.parametrize("mode", ["tc", "tcx"])
def test_kill_9_then_new_agent_no_duplicates_no_leftovers(ebpf_ready, lab_factory, tmp_path,
                                                          mode):
    lab = lab_factory(f"dpkill{mode}")
    node = lab.add_node("node-a", kind="bridge", pod_cidr="10.244.1.0/24")
    client = node.add_pod("shop", "client-1")
    server = node.add_pod("shop", "server-1")
    veth = server.host_ifname
    node.run(["tc", "qdisc", "add", "dev", veth, "clsact"])
    node.run(["tc", "filter", "add", "dev", veth, "egress", *OTHER_FILTER])
    other = _other_filter(node, veth)
    traced = [client.host_ifname, server.host_ifname, "cni0"]

    first, _ = _start(node, tmp_path, "--attach-mode", mode)
    first.kill()
    for ifname in traced:
        # a killed agent cannot clean up: its tc filters are still there; tcx links die
        # with their file descriptors
        left = [line for line in podflow_filters(node, ifname) if "podflow" in line]
        assert len(left) == (2 if mode == "tc" else 0), left

    second = node.start_agent("--attach-mode", mode, *AGENT_ARGS)
    for ifname in traced:
        lines = podflow_filters(node, ifname)
        assert sum("podflow_ingress" in line for line in lines) == 1, lines
        assert sum("podflow_egress" in line for line in lines) == 1, lines
    assert _other_filter(node, veth) == other
    assert _received(client, server) == (5, 0)
    assert second.stop() == 0
    for ifname in traced:
        assert not [line for line in podflow_filters(node, ifname) if "podflow" in line]
    assert _other_filter(node, veth) == other


# Frames sent from inside a pod with AF_PACKET; they reach the host side of its veth (TC
# ingress) whatever they contain. Sources 10.99.0.N / fd99::N name the case. On receive the
# kernel strips the outer VLAN tag before TC ingress (skb_vlan_untag), so "vlan3" leaves two
# tags in the frame (parsed), "vlan4" three (too deep), and "trunc_vlan" cuts the second.
# A routed node: no bridge to flood the frames back (hairpin) and count them twice.
MALFORMED = r"""
import socket, struct, sys
count = int(sys.argv[1])
eth = lambda et: b"\x02\x00\x00\x00\x00\x01" + b"\x02\x00\x00\x00\x00\x02" + struct.pack("!H", et)
def ip4(n, proto, payload, ihl=5, frag=0, opts=b""):
    hdr = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, 20 + len(opts) + len(payload), 1, frag,
                      64, proto, 0, bytes([10, 99, 0, n]), bytes([10, 99, 1, 1]))
    return hdr + opts + payload
def ip6(n, nh, payload):
    return (struct.pack("!IHBB", 0x60000000, len(payload), nh, 64)
            + b"\xfd\x99" + bytes(13) + bytes([n]) + b"\xfd\x99" + bytes(13) + b"\x01" + payload)
udp = lambda sp, dp: struct.pack("!HHHH", sp, dp, 8, 0)
tcp = lambda sp, dp, doff=5: struct.pack("!HHIIBBHHH", sp, dp, 1, 0, doff << 4, 0x02, 1024, 0, 0)
frames = {
    "bad_ihl": eth(0x0800) + ip4(1, 17, udp(1111, 2222), ihl=4),
    "cut_tcp": eth(0x0800) + ip4(2, 6, tcp(1111, 2222)[:10]),
    "bad_doff": eth(0x0800) + ip4(3, 6, tcp(1111, 2222, doff=2)),
    "trunc_ipv4": eth(0x0800) + ip4(4, 17, b"")[:12],
    "frag4": eth(0x0800) + ip4(5, 17, udp(1111, 2222), frag=100),
    "opts4": eth(0x0800) + ip4(6, 17, udp(5555, 6666), ihl=7, opts=b"\x01" * 8),
    "vlan1": eth(0x8100) + b"\x00\x05\x08\x00" + ip4(7, 17, udp(7001, 7002)),
    "vlan3": eth(0x8100) + b"\x00\x05\x81\x00" + b"\x00\x06\x81\x00" + b"\x00\x07\x08\x00"
             + ip4(8, 17, udp(8001, 8002)),
    "vlan4": eth(0x8100) + b"\x00\x05\x81\x00" + b"\x00\x06\x81\x00" + b"\x00\x07\x81\x00"
             + b"\x00\x08\x08\x00" + ip4(9, 17, udp(1, 2)),
    "trunc_vlan": eth(0x8100) + b"\x00\x05\x81\x00" + b"\x00\x05\x08",
    "ext_long": eth(0x86DD) + ip6(1, 60, b"".join(bytes([60, 0]) + bytes(6) for _ in range(9))
                                  + bytes([17, 0]) + bytes(6) + udp(1111, 2222)),
    "ext_ok": eth(0x86DD) + ip6(2, 0, bytes([60, 0]) + bytes(6) + bytes([6, 0]) + bytes(6)
                                + tcp(8081, 8082)),
    "frag6": eth(0x86DD) + ip6(3, 44, bytes([17, 0]) + struct.pack("!H", 100 << 3) + bytes(4)
                               + udp(1111, 2222)),
    "trunc_ipv6": eth(0x86DD) + ip6(4, 17, b"")[:30],
    "cut_udp6": eth(0x86DD) + ip6(5, 17, udp(1111, 2222)[:5]),
    "sctp4": eth(0x0800) + ip4(10, 132, struct.pack("!HHII", 3868, 2905, 0, 0)),
    "cut_sctp": eth(0x0800) + ip4(11, 132, struct.pack("!HHII", 3868, 2905, 0, 0)[:8]),
}
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("eth0", 0))
for name in sys.argv[2:]:
    for _ in range(count):
        s.send(frames[name])
"""

COUNT = 3
# case -> the kernel counter it must raise by COUNT (None: it is a valid flow)
MALFORMED_CASES = {
    "bad_ihl": "bad_ipv4_ihl", "cut_tcp": "truncated_l4", "bad_doff": "bad_tcp_data_offset",
    "trunc_ipv4": "truncated_ipv4", "vlan4": "vlan_too_deep", "trunc_vlan": "truncated_vlan",
    "ext_long": "ipv6_ext_chain_too_long", "trunc_ipv6": "truncated_ipv6",
    "cut_udp6": "truncated_l4", "cut_sctp": "truncated_l4", "sctp4": None,
    "frag4": None, "opts4": None, "vlan1": None, "vlan3": None, "ext_ok": None, "frag6": None,
}
# valid cases: the flow they must produce (key as in conftest.flow_key)
VALID_FLOWS = {
    "frag4": ("udp", "10.99.0.5", "10.99.1.1", 0, 0, True),
    "opts4": ("udp", "10.99.0.6", "10.99.1.1", 5555, 6666, False),
    "vlan1": ("udp", "10.99.0.7", "10.99.1.1", 7001, 7002, False),
    "vlan3": ("udp", "10.99.0.8", "10.99.1.1", 8001, 8002, False),
    "ext_ok": ("tcp", "fd99::2", "fd99::1", 8081, 8082, False),
    "frag6": ("udp", "fd99::3", "fd99::1", 0, 0, True),
    "sctp4": ("sctp", "10.99.0.10", "10.99.1.1", 3868, 2905, False),
}


def test_malformed_frames_are_counted_per_reason_never_misread(ebpf_ready, lab_factory,
                                                               tmp_path):
    lab = lab_factory("dpmal")
    node = lab.add_node("node-a", kind="routed", pod_cidr="10.244.1.0/24")
    pod = node.add_pod("shop", "fuzz-1")
    agent, log = _start(node, tmp_path)
    before = dict(server_status(agent.address).datapath_errors)

    pod.run([sys.executable, "-c", MALFORMED, str(COUNT), *MALFORMED_CASES])
    time.sleep(0.6)  # two sweeps
    after = dict(server_status(agent.address).datapath_errors)
    assert agent.process.poll() is None
    assert agent.stop() == 0

    want: dict[str, int] = {}
    for reason in MALFORMED_CASES.values():
        if reason:
            want[reason] = want.get(reason, 0) + COUNT
    for reason, n in want.items():
        assert after.get(reason, 0) - before.get(reason, 0) == n, (reason, before, after)

    flows = [f for f in read_flow_log(log) if f["ip"]["source"].startswith(("10.99.", "fd99:"))]
    got = record_totals(flows, pod.host_ifname, "FROM_POD")
    assert {k: v[0] for k, v in got.items()} == {key: COUNT for key in VALID_FLOWS.values()}


MANY_FLOWS = """
import socket, sys
dst, flows, per_flow = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for i in range(flows):  # one socket at a time: no file-descriptor limit in the way
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", 41000 + i))
    for _ in range(per_flow):
        s.sendto(b"z" * 50, (dst, 7000))
    s.close()
"""


def test_full_flow_map_counts_what_it_cannot_hold_as_lost_packets(ebpf_ready, lab_factory,
                                                                   tmp_path):
    """With room for 8 flows per half of the map, 40 flows in a burst: every packet is in a
    record or counted as lost (KERNEL_FLOW_MAP, in packets, with their bytes), exactly."""
    lab = lab_factory("dpfull")
    node = lab.add_node("node-a", kind="routed", pod_cidr="10.244.1.0/24")
    client = node.add_pod("shop", "client-1")
    server = node.add_pod("shop", "server-1")
    agent, log = _start(node, tmp_path, "--flow-map-size", "8")
    cap = Capture(node, client.host_ifname, "in", f"udp and host {server.ip}", tmp_path)
    client.run([sys.executable, "-c", MANY_FLOWS, server.ip, "40", "5"])
    truth = cap.stop()
    time.sleep(0.5)
    status = server_status(agent.address)
    assert agent.stop() == 0
    lost = {c.stage: c for c in status.lost}
    full = status.datapath_errors["flow_map_full"]
    assert full > 0 and lost[observer_pb2.KERNEL_FLOW_MAP].count == full
    got = record_totals(read_flow_log(log), client.host_ifname, "FROM_POD")
    got = {k: v for k, v in got.items() if k[0] == "udp" and k[2] == server.ip}
    assert len(truth) == 40 and all(v[0] == 5 for v in truth.values())
    # (the server's replies, if any, and other traffic of the veths can be lost too)
    assert sum(v[0] for v in got.values()) + full >= 200
    assert all(got[k][0] <= truth[k][0] and got[k][1] <= truth[k][1] for k in got)


def test_new_flow_events_over_the_budget_or_the_ring_cost_no_packet(ebpf_ready, lab_factory,
                                                                     tmp_path):
    """A burst of 2000 new flows: events beyond the per-CPU budget are not sent (counted as
    coalesced) and a one-page ring buffer cannot hold the rest (counted too); none of that is
    a loss: the sweeps report every flow with every packet."""
    lab = lab_factory("dpring")
    node = lab.add_node("node-a", kind="routed", pod_cidr="10.244.1.0/24")
    client = node.add_pod("shop", "client-1")
    server = node.add_pod("shop", "server-1")
    agent, log = _start(node, tmp_path, "--ringbuf-size", "4096", "--new-flow-events", "20000")
    cap = Capture(node, client.host_ifname, "in", f"udp and host {server.ip}", tmp_path)
    client.run([sys.executable, "-c", MANY_FLOWS, server.ip, "2000", "1"])
    truth = cap.stop()
    time.sleep(0.5)
    status = server_status(agent.address)
    assert agent.stop() == 0
    assert not [c for c in status.lost if c.count], status
    errors = status.datapath_errors
    assert errors["ringbuf_full_new_flow"] + errors["new_flow_events_coalesced"] > 0, errors
    got = record_totals(read_flow_log(log), client.host_ifname, "FROM_POD")
    got = {k: v for k, v in got.items() if k[0] == "udp" and k[2] == server.ip}
    assert len(truth) == 2000
    assert got == truth


def test_an_interface_that_cannot_be_attached_does_not_stop_the_others(ebpf_ready,
                                                                        lab_factory, tmp_path):
    lab = lab_factory("dpbad")
    node = lab.add_node("node-a", kind="routed", pod_cidr="10.244.1.0/24")
    good = node.add_pod("shop", "good-1")
    bad = node.add_pod("shop", "bad-1")
    # another tool holds our priority with another protocol: the kernel refuses our filter
    node.run(["tc", "qdisc", "add", "dev", bad.host_ifname, "clsact"])
    node.run(["tc", "filter", "add", "dev", bad.host_ifname, "egress", "prio", "20304",
              "protocol", "ip", "u32", "match", "u32", "0", "0"])
    agent, log = _start(node, tmp_path, "--attach-mode", "tc")
    assert bad.host_ifname in agent.ready["attach_errors"]
    assert good.host_ifname in agent.ready["interfaces"]
    assert bad.host_ifname not in agent.ready["interfaces"]
    assert not [line for line in podflow_filters(node, bad.host_ifname) if "podflow" in line]
    good.run(["ping", "-q", "-c", "2", "-i", "0.05", bad.ip], stdout=subprocess.DEVNULL)
    time.sleep(0.3)
    assert server_status(agent.address).datapath_errors["attach_failed"] == 1
    assert agent.stop() == 0
    assert f"cannot attach to {bad.host_ifname}" in agent.stderr_text()
    sent = record_totals(read_flow_log(log), good.host_ifname, "FROM_POD")
    assert sent[("icmpv4", good.ip, bad.ip, 8, 0, False)][0] == 2
    assert "u32" in node.run(["tc", "filter", "show", "dev", bad.host_ifname, "egress"],
                             capture_output=True, text=True).stdout


def test_interface_globs_override_detection(ebpf_ready, lab_factory, tmp_path):
    lab = lab_factory("dpglob")
    node = lab.add_node("node-a", kind="bridge", pod_cidr="10.244.1.0/24")
    client = node.add_pod("shop", "client-1")
    server = node.add_pod("shop", "server-1")
    agent, _log = _start(node, tmp_path, "--interfaces", "veth*,eth0,nothing*",
                         "--exclude-interfaces", client.host_ifname)
    assert sorted(agent.ready["interfaces"]) == sorted([server.host_ifname, "eth0"])
    assert agent.stop() == 0
    assert "'nothing*' matches no interface" in agent.stderr_text()
    for ifname in (server.host_ifname, "eth0"):
        assert not [line for line in podflow_filters(node, ifname) if "podflow" in line]


def test_without_capabilities_the_agent_says_what_it_needs(ebpf_ready, tmp_path):
    """Root without any capability (empty bounding set): a clear message and exit 2, not
    a bcc traceback."""
    res = subprocess.run(["setpriv", "--bounding-set=-all", "--inh-caps=-all", "--",
                          sys.executable, "-m", "agent.cli", "agent", "--node-name", "n1",
                          "--listen", f"unix:{tmp_path}/a.sock"],
                         capture_output=True, text=True, timeout=60, cwd=str(tmp_path),
                         env={"PYTHONPATH": str(Path(__file__).resolve().parents[2]),
                              "PATH": "/usr/bin:/bin"})
    assert res.returncode == 2, res.stderr
    assert "needs root, or CAP_BPF + CAP_NET_ADMIN + CAP_PERFMON" in res.stderr, res.stderr


def test_host_is_clean_afterwards():
    """Nothing of ours in the root namespace: no lab namespaces, no podflow filter."""
    from agent.lab import Lab

    for lab_id in ("dpcbrtc", "dpcrotc", "dpcactc", "dpcbrtcx", "dpnew", "dpcoextc",
                   "dpcoextcx", "dpkilltc", "dpkilltcx", "dpmal", "dpfull", "dpbad", "dpglob",
                   "dpring"):
        assert not any(Lab.leftovers(lab_id).values()), lab_id
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    for line in links.splitlines():
        ifname = line.split(":")[1].strip().split("@")[0]
        for hook in ("ingress", "egress"):
            out = subprocess.run(["tc", "filter", "show", "dev", ifname, hook],
                                 capture_output=True, text=True).stdout
            assert "podflow" not in out, (ifname, out)


def test_the_flow_log_writes_a_pod_to_pod_flow_once_by_default(ebpf_ready, lab_factory,
                                                               tmp_path):
    """Without --flow-log-every-point, the packets both veths report with the same counts are
    written once, as the sending pod's record (FROM_POD): every packet is in the log once."""
    lab = lab_factory("dpfold")
    node = lab.add_node("node-a", kind="bridge", pod_cidr="10.244.1.0/24")
    client, server = node.add_pod("shop", "client-1"), node.add_pod("shop", "server-1")
    args = [a for a in AGENT_ARGS if a != "--flow-log-every-point"]
    log = tmp_path / "flows.jsonl"
    agent = node.start_agent("--flow-log", str(log), *args)
    flows = 40
    for sport in range(41000, 41000 + flows):  # one-packet flows
        send_udp(client, server.ip, 7777, 1, UDP_PAYLOAD, sport=sport)
    assert agent.stop() == 0, agent.stderr_text()
    records = read_flow_log(log)
    frame = 14 + 20 + 8 + UDP_PAYLOAD
    sent = {("udp", client.ip, server.ip, sport, 7777, False): (1, frame)
            for sport in range(41000, 41000 + flows)}
    assert _pair(record_totals(records, client.host_ifname, "FROM_POD"),
                 client.ip, server.ip) == sent
    repeated = _pair(record_totals(records, server.host_ifname, "TO_POD"), client.ip, server.ip)
    # A flow whose two packets' sightings fell into different drained intervals is written
    # at both veths (their records differ); the rest are folded.
    assert len(repeated) < flows // 2, repeated
