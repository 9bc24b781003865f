"""`podflow observe` and `podflow status` as real subprocesses against real agents' servers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from tests.observer.agents import InProcessAgent
from google.protobuf import json_format
from tests.observer.observer_flows import make_flow

from podflow_api.v1 import flow_pb2, observer_pb2

PODFLOW = [sys.executable, "-m", "agent.cli"]
T0 = 1_800_000_000 * 10**9


def podflow(*argv, timeout=30) -> subprocess.CompletedProcess:
    return subprocess.run([*PODFLOW, *argv], capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def two_agents():
    a, b = InProcessAgent("node-a").start(), InProcessAgent("node-b").start()
    a.store.extend([make_flow(i, node="node-a", time_ns=T0 + i * 2000) for i in range(30)])
    b.store.extend([make_flow(i, node="node-b", time_ns=T0 + i * 2000 + 1000, proto="udp")
                    for i in range(30)])
    yield a, b
    a.stop()
    b.stop()


def parse_jsonl(text: str) -> list[observer_pb2.GetFlowsResponse]:
    out = []
    for line in text.splitlines():
        resp = observer_pb2.GetFlowsResponse()
        json_format.Parse(line, resp)
        out.append(resp)
    return out


def test_two_servers_one_down(two_agents, sockdir):
    a, _b = two_agents
    down = f"unix:{os.path.join(sockdir, 'gone.sock')}"
    r = podflow("observe", "--server", a.address, "--server", down, "--last", "10", "-o", "jsonl")
    assert r.returncode == 1, r.stderr
    flows = parse_jsonl(r.stdout)
    node_status = [x for x in flows if x.HasField("node_status")]
    flows = [x for x in flows if x.HasField("flow")]
    assert len(flows) == 10 and {f.node_name for f in flows} == {"node-a"}
    assert len(node_status) == 1
    warning = [ln for ln in r.stderr.splitlines() if ln.startswith("WARNING")]
    assert len(warning) == 1 and down in warning[0] and "UNAVAILABLE" in warning[0]
    assert "1 of 2 servers unreachable" in r.stderr


def test_two_servers_merged_in_time_order(two_agents):
    a, b = two_agents
    r = podflow("observe", "--server", a.address, "--server", b.address, "--all", "-o", "json")
    assert r.returncode == 0, r.stderr
    resp = parse_jsonl(r.stdout)
    assert len(resp) == 60
    times = [x.flow.time.ToNanoseconds() for x in resp]
    assert times == sorted(times)
    assert [x.node_name for x in resp[:4]] == ["node-a", "node-b", "node-a", "node-b"]
    # the JSON format is protobuf's JSON mapping with proto field names, one object per line
    first = json.loads(r.stdout.splitlines()[0])
    assert set(first) == {"node_name", "time", "flow"}
    assert first["flow"]["source"]["pod_name"] == "frontend-7d9f8c6b5-x2x4z"
    assert first["flow"]["traffic_direction"] == "FROM_POD"


def test_filters_reach_the_agents(two_agents):
    a, b = two_agents
    r = podflow("observe", "--server", a.address, "--server", b.address, "--all", "-o", "jsonl",
                "--protocol", "udp", "--not", "--from-port", "40000-40004")
    assert r.returncode == 0, r.stderr
    resp = parse_jsonl(r.stdout)
    assert len(resp) == 25 and {x.node_name for x in resp} == {"node-b"}


@pytest.mark.parametrize("fmt,expect", [
    ("table", ["TIME", "SOURCE", "DESTINATION", "SERVICE -> BACKEND",
               "shop/frontend-7d9f8c6b5-x2x4z:40029", "shop/cart:80 -> shop/cart-5c7b9d8f4-abcde:8080",
               "from-pod", "FORWARDED", "SYN,ACK"]),
    ("compact", ["[node-a] shop/frontend-7d9f8c6b5-x2x4z:40029 -> shop/cart-5c7b9d8f4-abcde:8080",
                 "svc shop/cart:80", "TCP from-pod FORWARDED", "pkts", "SYN,ACK"]),
])
def test_human_formats(two_agents, fmt, expect):
    a, _ = two_agents
    r = podflow("observe", "--server", a.address, "--last", "3", "-o", fmt)
    assert r.returncode == 0, r.stderr
    for text in expect:
        assert text in r.stdout, (text, r.stdout)
    lines = r.stdout.splitlines()
    assert len(lines) == (4 if fmt == "table" else 3)


def test_follow_prints_live_flows_and_loss_warnings(two_agents):
    a, _ = two_agents
    proc = subprocess.Popen([*PODFLOW, "observe", "--server", a.address, "--follow", "-o", "compact"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 15
        while a.store.num_subscribers == 0:
            assert time.monotonic() < deadline, "observe never subscribed"
            time.sleep(0.05)
        a.store.extend([make_flow(7, node="node-a", verdict=flow_pb2.DROPPED,
                                  drop_reason="NETFILTER_DROP")])
        a.stats.add_lost(observer_pb2.KERNEL_RING_BUFFER, 12)
        line = proc.stdout.readline()
        assert "DROPPED (NETFILTER_DROP)" in line
        err = proc.stderr.readline()
        assert err.startswith("WARNING: node node-a: 12 flows LOST at KERNEL_RING_BUFFER")
    finally:
        proc.send_signal(signal.SIGINT)
        out, _err = proc.communicate(timeout=10)
    assert proc.returncode == 0
    time.sleep(0.2)
    assert a.store.num_subscribers == 0


BAD_FLAGS = [
    (["--last", "5", "--since", "5m"], "--last"),
    (["--last", "0"], "--last"),
    (["--since", "yesterday"], "--since"),
    (["--ip", "300.1.1.1"], "--ip"),
    (["--verdict", "maybe"], "--verdict"),
    (["--server", "host:http"], "--server"),
    (["--fields", "nope"], "--fields"),
    (["--tls-ca", "/nonexistent/ca.pem"], "--tls-ca"),
    (["-o", "xml"], "--output"),
]


@pytest.mark.parametrize("argv,flag", BAD_FLAGS, ids=[" ".join(a) for a, _ in BAD_FLAGS])
def test_bad_flags_name_the_flag(argv, flag):
    r = podflow("observe", *argv)
    assert r.returncode == 2
    assert flag in r.stderr, r.stderr


def test_status(two_agents, sockdir):
    a, b = two_agents
    a.stats.add_lost(observer_pb2.KERNEL_RING_BUFFER, 3)
    r = podflow("status", "--server", a.address, "--server", b.address)
    assert r.returncode == 0, r.stderr
    assert "node node-a" in r.stdout and "node node-b" in r.stdout
    assert "30/4096 held" in r.stdout and "LOST: 3 KERNEL_RING_BUFFER" in r.stdout
    r = podflow("status", "--server", a.address, "-o", "json")
    record = json.loads(r.stdout)
    assert record["server"] == a.address
    assert record["status"]["node_name"] == "node-a" and record["status"]["num_flows"] == "30"
    down = f"unix:{os.path.join(sockdir, 'gone.sock')}"
    r = podflow("status", "--server", down, "--timeout", "2")
    assert r.returncode == 1 and "WARNING" in r.stderr and down in r.stderr



NOW = 1_800_000_000 * 10**9
TIMES = [("5m", NOW - 300 * 10**9), ("1h30m", NOW - 5400 * 10**9), ("90s", NOW - 90 * 10**9),
         ("250ms", NOW - 250 * 10**6), ("2d", NOW - 2 * 86400 * 10**9),
         ("2027-01-15T08:00:00Z", NOW),
         ("2027-01-15T08:00:00.5+01:00", None)]


@pytest.mark.parametrize("text,expected", TIMES, ids=[t for t, _ in TIMES])
def test_parse_time(text, expected):
    import datetime as dt

    from agent.wire.timefmt import parse_time
    if expected is None:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
        expected = int(when.timestamp()) * 10**9 + when.microsecond * 1000
    assert parse_time(text, now_ns=NOW) == expected


def test_first_and_since_reach_the_agent(two_agents):
    a, _ = two_agents
    r = podflow("observe", "--server", a.address, "--first", "2", "-o", "jsonl")
    assert [x.flow.bytes for x in parse_jsonl(r.stdout)] == [100, 101]
    since = "2027-01-15T08:00:00.000050Z"  # T0 + 50 us: flows 25 .. 29 (2 us apart)
    assert T0 == 1_800_000_000 * 10**9
    r = podflow("observe", "--server", a.address, "--since", since, "-o", "jsonl")
    assert r.returncode == 0, r.stderr
    assert [x.flow.bytes for x in parse_jsonl(r.stdout)] == [125, 126, 127, 128, 129]


@pytest.mark.parametrize("command", [["status"], ["observe", "--all"],
                                     ["observe", "--all", "-o", "table"]],
                         ids=["status", "observe", "observe-table"])
def test_a_closed_pipe_ends_quietly(two_agents, command):
    """`podflow status | head`: the reader is gone before the output; no traceback, no
    complaint, status 0."""
    a, b = two_agents
    proc = subprocess.Popen([*PODFLOW, command[0], "--server", a.address, "--server", b.address,
                             *command[1:]],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # like `| head -0`: nobody reads what it prints
    stderr = proc.stderr.read()
    assert proc.wait(timeout=30) == 0, stderr
    assert stderr == ""
