"""Helpers for the flow log and metrics tests: sequence-numbered flows, a real FlowStore and
readers of the files the exporter writes."""

from __future__ import annotations

import gzip
import json
import os
import time

import pytest

from agent.config import StoreSection
from agent.flowstore import FlowStore
from agent.stats import AgentStats
from podflow_api.v1 import flow_pb2

NODE = "node-t"


def make_flow(seq: int, *, src_ns: str = "shop", dst_ns: str = "db", sport: int = 40000,
              dport: int = 80, packets: int = 1, nbytes: int = 100, time_ns: int | None = None,
              verdict: int = flow_pb2.FORWARDED, direction: int = flow_pb2.FROM_POD,
              point: int = flow_pb2.POD_VETH, flags: tuple[str, ...] = ("ACK",),
              service: str = "", drop_reason: str = "") -> flow_pb2.Flow:
    """A flow whose `summary` carries its sequence number, so a test can tell which are missing."""
    now = time.time_ns() if time_ns is None else time_ns
    f = flow_pb2.Flow(node_name=NODE, packets=packets, bytes=nbytes, verdict=verdict,
                      traffic_direction=direction, observation_point=point,
                      summary=f"seq={seq}", drop_reason=drop_reason)
    f.time.FromNanoseconds(now)
    f.first_seen.FromNanoseconds(now - 1_000_000)
    f.last_seen.FromNanoseconds(now)
    f.interface.index = 7
    f.interface.name = "vethabc"
    f.ip.source = "10.0.1.5"
    f.ip.destination = "10.0.2.9"
    f.ip.ip_version = flow_pb2.IPV4
    f.l4.tcp.source_port = sport
    f.l4.tcp.destination_port = dport
    for name in flags:
        setattr(f.l4.tcp.flags, name, True)
    f.source.kind = flow_pb2.POD
    f.source.namespace = src_ns
    f.source.pod_name = f"{src_ns}-pod"
    f.source.node_name = NODE
    f.destination.kind = flow_pb2.POD
    f.destination.namespace = dst_ns
    f.destination.pod_name = f"{dst_ns}-pod"
    if service:
        ns, name = service.split("/")
        f.service.namespace = ns
        f.service.name = name
    return f


def seq_of(record: dict) -> int:
    return int(record["flow"]["summary"].split("=")[1])


def read_lines(path: str) -> list[dict]:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def log_files(path: str) -> list[str]:
    """PATH's backups, oldest first, then PATH."""
    out = []
    for i in range(100, 0, -1):
        for name in (f"{path}.{i}.gz", f"{path}.{i}"):
            if os.path.exists(name):
                out.append(name)
    if os.path.exists(path):
        out.append(path)
    return out


def all_records(path: str) -> list[dict]:
    return [r for name in log_files(path) for r in read_lines(name)]


def wait_for(predicate, timeout_s: float = 10.0, interval_s: float = 0.05):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError("condition not met in time")


@pytest.fixture
def stats() -> AgentStats:
    return AgentStats(node_name=NODE, version="test")


@pytest.fixture
def store(stats) -> FlowStore:
    return FlowStore(StoreSection(capacity=65535), stats)
