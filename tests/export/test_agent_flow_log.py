"""The flow log and metrics inside a real `podflow agent` process: SIGHUP reopens the file
(external log rotation), the metrics endpoint answers, SIGTERM closes the log cleanly."""

from __future__ import annotations

import os
import signal
import sys
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent.lab import Lab, spawn_agent
from tests.export.conftest import read_lines, wait_for

pytestmark = pytest.mark.root


@pytest.fixture
def agent(tmp_path, ebpf_ready):
    """An agent tracing no interface (its datapath loads, nothing matches the glob)."""
    log_path = tmp_path / "flows.jsonl"
    with spawn_agent(str(tmp_path / "agent"), "--interfaces", "pfnomatch*",
                     "--flow-log", str(log_path), "--metrics", "127.0.0.1:0",
                     node_name="hup-node") as handle:
        yield handle, handle.wait_ready(60), log_path


def test_sighup_reopens_the_flow_log(agent, tmp_path):
    handle, ready, log_path = agent
    assert ready["flow_log"] == str(log_path)
    wait_for(lambda: log_path.exists())
    header = read_lines(str(log_path))[0]["podflow_flow_log"]
    assert header["node_name"] == "hup-node"

    rotated = tmp_path / "flows.jsonl.1"
    os.rename(log_path, rotated)
    os.kill(handle.pid, signal.SIGHUP)
    wait_for(lambda: log_path.exists(), timeout_s=5)
    new_header = read_lines(str(log_path))[0]["podflow_flow_log"]
    assert new_header["start_time"] != header["start_time"]
    assert handle.process.poll() is None, "SIGHUP must not stop the agent"
    assert read_lines(str(rotated))[0]["podflow_flow_log"] == header

    assert handle.stop(timeout_s=20) == 0  # SIGTERM
    for path in (log_path, rotated):  # every line whole after a clean shutdown
        read_lines(str(path))


def test_agent_serves_metrics(agent):
    _handle, ready, _log_path = agent
    text = urllib.request.urlopen(f"http://{ready['metrics']}/metrics", timeout=5).read().decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name in ("podflow_flows", "podflow_packets", "podflow_bytes", "podflow_drops",
                 "podflow_lost_events", "podflow_interfaces_traced", "podflow_exporter_failing",
                 "podflow_metadata_stale"):
        assert name in families, name
    assert families["podflow_exporter_failing"].samples[0].value == 0
    assert families["podflow_interfaces_traced"].samples[0].value == 0


# -- with real traffic: an agent on a lab node ---------------------------------------------------

def _scrape_in(node, address: str) -> dict:
    """Scrape the agent's metrics from inside its node's namespace (where it listens)."""
    code = ("import sys, urllib.request; "
            "print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())")
    res = node.run([sys.executable, "-c", code, f"http://{address}/metrics"],
                   capture_output=True, text=True)
    out: dict = {}
    for family in text_string_to_metric_families(res.stdout):
        for sample in family.samples:
            if not sample.name.endswith("_created"):
                out[(family.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def _flows_to(path, pod_name: str, port: int) -> list[dict]:
    if not path.exists():
        return []
    return [r for r in read_lines(str(path))
            if "flow" in r and r["flow"].get("destination", {}).get("pod_name") == pod_name
            and r["flow"].get("l4", {}).get("tcp", {}).get("destination_port") == port]


def test_real_traffic_reaches_flow_log_and_metrics_and_sighup_splits_it(tmp_path, ebpf_ready):
    with Lab(f"pfexport{os.getpid() % 10000}") as lab:
        node = lab.add_node("node-a", kind="bridge")
        client = node.add_pod("shop", "fe-1", labels={"app": "fe"})
        server = node.add_pod("db", "pg-1", labels={"app": "pg"})
        meta = lab.write_metadata(str(tmp_path / "meta.json"))
        server.serve(5432)
        log_path = tmp_path / "flows.jsonl"
        agent = node.start_agent("--flow-log", str(log_path), "--metrics", "127.0.0.1:0",
                                 "--active-timeout", "1", "--idle-timeout", "1",
                                 metadata_file=meta)
        try:
            for _ in range(3):
                client.fetch(server.ip, 5432)
            before = wait_for(lambda: _flows_to(log_path, "pg-1", 5432), timeout_s=20)
            assert before[0]["flow"]["source"]["namespace"] == "shop"
            assert read_lines(str(log_path))[0]["podflow_flow_log"]["node_name"] == "node-a"

            key = ("podflow_flows", (("destination_namespace", "db"), ("service", ""),
                                     ("source_namespace", "shop"), ("verdict", "FORWARDED")))
            wait_for(lambda: _scrape_in(node, agent.ready["metrics"]).get(key, 0) > 0,
                     timeout_s=20)

            rotated = tmp_path / "flows.jsonl.1"
            os.rename(log_path, rotated)
            agent.process.send_signal(signal.SIGHUP)
            wait_for(lambda: log_path.exists(), timeout_s=5)
            time.sleep(2.5)  # records of the first connections (idle timeout) are out
            old_count = len(read_lines(str(rotated)))
            client.fetch(server.ip, 5432)
            wait_for(lambda: _flows_to(log_path, "pg-1", 5432), timeout_s=20)
        finally:
            assert agent.stop() == 0
        assert len(read_lines(str(rotated))) == old_count, "nothing written to the renamed file after HUP"
        assert read_lines(str(log_path))[0]["podflow_flow_log"]["node_name"] == "node-a"
