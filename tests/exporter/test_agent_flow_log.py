"""The flow log and metrics inside a real `podflow agent` process: SIGHUP reopens the file
(external log rotation), the metrics endpoint answers, SIGTERM closes the log cleanly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.exporter.conftest import read_lines, wait_for

pytestmark = pytest.mark.root


@pytest.fixture
def agent(tmp_path, ebpf_ready):
    """An agent tracing no interface (its datapath loads, nothing matches the glob)."""
    ready = tmp_path / "ready.json"
    log_path = tmp_path / "flows.jsonl"
    stderr = open(tmp_path / "agent.err", "w+")
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "agent", "--node-name", "hup-node",
         "--interfaces", "pfnomatch*", "--listen", f"unix:{tmp_path}/agent.sock",
         "--flow-log", str(log_path), "--metrics", "127.0.0.1:0", "--ready-file", str(ready)],
        stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        wait_for(lambda: ready.exists() or proc.poll() is not None, timeout_s=60)
        if proc.poll() is not None:
            stderr.seek(0)
            pytest.fail(f"agent exited {proc.returncode}: {stderr.read()}")
        yield proc, json.loads(ready.read_text()), log_path
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        stderr.close()


def test_sighup_reopens_the_flow_log(agent, tmp_path):
    proc, ready, log_path = agent
    assert ready["flow_log"] == str(log_path)
    wait_for(lambda: log_path.exists())
    header = read_lines(str(log_path))[0]["podflow_flow_log"]
    assert header["node_name"] == "hup-node"

    rotated = tmp_path / "flows.jsonl.1"
    os.rename(log_path, rotated)
    os.kill(proc.pid, signal.SIGHUP)
    wait_for(lambda: log_path.exists(), timeout_s=5)
    new_header = read_lines(str(log_path))[0]["podflow_flow_log"]
    assert new_header["start_time"] != header["start_time"]
    assert proc.poll() is None, "SIGHUP must not stop the agent"
    assert read_lines(str(rotated))[0]["podflow_flow_log"] == header

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0
    for path in (log_path, rotated):  # every line whole after a clean shutdown
        read_lines(str(path))


def test_agent_serves_metrics(agent):
    _proc, ready, _log_path = agent
    text = urllib.request.urlopen(f"http://{ready['metrics']}/metrics", timeout=5).read().decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name in ("podflow_flows", "podflow_packets", "podflow_bytes", "podflow_drops",
                 "podflow_lost_events", "podflow_interfaces_traced", "podflow_exporter_failing",
                 "podflow_metadata_stale"):
        assert name in families, name
    assert families["podflow_exporter_failing"].samples[0].value == 0
    assert families["podflow_interfaces_traced"].samples[0].value == 0
