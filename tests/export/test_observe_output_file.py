"""`podflow observe -o jsonl --output-file PATH`: what several agents stream, merged, into
rotated (optionally gzip) files with the flow log's header, node-status notices included."""

from __future__ import annotations

import subprocess
import sys

import pytest

from agent.config import ObserverSection, StoreSection
from agent.flowstore import FlowStore
from agent.observer.server import ObserverServer
from agent.stats import AgentStats
from tests.export.conftest import all_records, log_files, make_flow, read_lines, seq_of


@pytest.fixture
def two_agents(tmp_path):
    """Two real Observer gRPC servers on unix sockets, as node-a and node-b, with 600 flows
    each (node-a even sequence numbers, node-b odd), interleaved in time."""
    servers = []
    base_ns = 1_700_000_000_000_000_000
    for index, node in enumerate(("node-a", "node-b")):
        stats = AgentStats(node_name=node, version="test")
        store = FlowStore(StoreSection(capacity=10000), stats)
        flows = []
        for i in range(600):
            seq = 2 * i + index
            flow = make_flow(seq, time_ns=base_ns + seq * 1_000_000)
            flow.node_name = node
            flows.append(flow)
        store.extend(flows)
        server = ObserverServer(ObserverSection(listen=f"unix:{tmp_path}/{node}.sock"), store,
                                stats)
        server.start()
        servers.append(server)
    yield [s.address for s in servers]
    for server in servers:
        server.stop(0)


def observe(*argv) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agent.cli", "observe", *argv],
                          capture_output=True, text=True, timeout=60)


CASES = {
    "plain": [],
    "gzip": ["--output-compress"],
}


@pytest.mark.parametrize("extra", CASES.values(), ids=CASES.keys())
def test_merged_rotated_file_with_header_and_node_status(tmp_path, two_agents, extra):
    path = tmp_path / "cluster.jsonl"
    missing = f"unix:{tmp_path}/nobody.sock"
    result = observe("--server", two_agents[0], "--server", two_agents[1], "--server", missing,
                     "--all", "-o", "jsonl", "--output-file", str(path),
                     "--output-max-size-mb", "0.2", "--output-max-backups", "10", *extra)
    assert result.stdout == "", "output goes to the file only"
    assert "nobody.sock" in result.stderr  # the unreachable agent is reported

    files = log_files(str(path))
    assert len(files) > 2, "the output rotated"
    if extra:
        assert all(f.endswith(".gz") for f in files[:-1])
        for name in files[:-1]:
            subprocess.run(["gzip", "-t", name], check=True)
    for name in files:
        header = read_lines(name)[0]["podflow_flow_log"]
        assert header["format"] == "podflow.v1.GetFlowsResponse"
        assert header["servers"][:2] == two_agents

    records = all_records(str(path))
    flows = [r for r in records if "flow" in r]
    assert [seq_of(r) for r in flows] == list(range(1200)), "both agents, merged in time order"
    assert {r["node_name"] for r in flows} == {"node-a", "node-b"}
    notices = [r["node_status"] for r in records if "node_status" in r]
    assert any(n.get("state") in ("NODE_UNAVAILABLE", "NODE_RECONNECTING") for n in notices)


def test_text_output_to_a_file_has_no_json_header(tmp_path, two_agents):
    path = tmp_path / "cluster.txt"
    result = observe("--server", two_agents[0], "--last", "5", "-o", "compact",
                     "--output-file", str(path))
    assert result.returncode == 0, result.stderr
    lines = path.read_text().splitlines()
    assert len(lines) == 5 and "node-a" in lines[0]


def test_unwritable_output_file_is_a_config_error(tmp_path, two_agents):
    result = observe("--server", two_agents[0], "-o", "jsonl",
                     "--output-file", str(tmp_path / "no" / "such" / "dir" / "f.jsonl"))
    assert result.returncode == 2
    assert "--output-file" in result.stderr
