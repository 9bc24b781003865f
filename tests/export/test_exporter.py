"""The flow log stage with a real FlowStore: line format, header, filters, field masks,
aggregation, and lost records when it falls behind."""

from __future__ import annotations

import collections
import json
import random
import time

import pytest
from google.protobuf import json_format

from agent.config import AgentConfig
from agent.errors import ConfigError
from agent.export.flowlog import FlowLogExporter
from agent.wire import logformat
from podflow_api.v1 import flow_pb2, observer_pb2
from tests.export.conftest import NODE, all_records, make_flow, read_lines, seq_of, wait_for


def build(path, store, stats, *argv):
    """The flow log stage as `podflow agent --flow-log PATH ARGV...` builds it."""
    config = AgentConfig.from_flags(["--node-name", NODE, "--flow-log", str(path), *argv])
    return FlowLogExporter(config.flow_log, store, stats)


def run(tmp_path, store, stats, flows, *argv):
    """Start an exporter, feed `flows`, stop it (drain, flush, close); return the records."""
    path = tmp_path / "flows.jsonl"
    exp = build(path, store, stats, *argv)
    exp.start()
    store.extend(flows)
    exp.stop()
    return read_lines(str(path))


def test_every_flow_is_one_get_flows_response_line_after_a_header(tmp_path, store, stats):
    flows = [make_flow(i, service="shop/db") for i in range(50)]
    records = run(tmp_path, store, stats, flows)
    header = records[0]["podflow_flow_log"]
    assert header["node_name"] == NODE
    assert header["agent_version"] == "test"
    assert header["format"] == "podflow.v1.GetFlowsResponse"
    assert {"allowlist", "denylist", "field_mask", "aggregate", "start_time"} <= header.keys()
    assert len(records) == 51
    for flow, record in zip(flows, records[1:]):
        # the record's own time is in the flow; the node is named once, in the header
        without_node = flow_pb2.Flow()
        without_node.CopyFrom(flow)
        without_node.ClearField("node_name")
        resp = observer_pb2.GetFlowsResponse(flow=without_node)
        assert record == json_format.MessageToDict(resp, preserving_proto_field_name=True)
        # and it parses back into the API message
        json_format.ParseDict(record, observer_pb2.GetFlowsResponse())
    # the reader puts the node back
    read = list(logformat.FlowLogReader(str(tmp_path / "flows.jsonl")))
    assert [r.flow for r in read] == flows and {r.node_name for r in read} == {NODE}


def test_lines_reach_the_file_within_a_second_while_running(tmp_path, store, stats):
    path = tmp_path / "live.jsonl"
    exp = build(path, store, stats)
    exp.start()
    try:
        store.extend([make_flow(i) for i in range(10)])
        t0 = time.monotonic()
        wait_for(lambda: path.exists() and len(read_lines(str(path))) == 11, timeout_s=3)
        assert time.monotonic() - t0 < 2.0
    finally:
        exp.stop()


def _mixed_flows():
    return [make_flow(0, src_ns="shop", dst_ns="db", dport=5432),
            make_flow(1, src_ns="shop", dst_ns="web", dport=80),
            make_flow(2, src_ns="kube-system", dst_ns="shop", dport=53),
            make_flow(3, src_ns="web", dst_ns="db", dport=5432),
            make_flow(4, src_ns="shop", dst_ns="db", dport=6379)]


FILTER_CASES = {
    "allow-json-source-ns": (['--flow-log-allow', '{"source_namespace": ["shop"]}'], [0, 1, 4]),
    "allow-json-two-filters-any": (['--flow-log-allow', '{"source_namespace": ["web"]}',
                                    '--flow-log-allow', '{"destination_port": ["53"]}'], [2, 3]),
    "deny-json": (['--flow-log-deny', '{"destination_namespace": ["db"]}'], [1, 2]),
    "allow-and-deny-json": (['--flow-log-allow', '{"source_namespace": ["shop"]}',
                             '--flow-log-deny', '{"destination_port": ["6379"]}'], [0, 1]),
    "flag-namespace-either-side": (["--flow-log-namespace", "web"], [1, 3]),
    "flag-not-port": (["--flow-log-not", "--flow-log-to-port", "5432"], [1, 2, 4]),
    "flag-and-json-combined": (["--flow-log-from-namespace", "shop",
                                '--flow-log-deny', '{"destination_namespace": ["web"]}'], [0, 4]),
}


@pytest.mark.parametrize("argv,expected", FILTER_CASES.values(), ids=FILTER_CASES.keys())
def test_filters(tmp_path, store, stats, argv, expected):
    records = run(tmp_path, store, stats, _mixed_flows(), *argv)
    assert [seq_of(r) for r in records[1:]] == expected
    header = records[0]["podflow_flow_log"]
    assert header["allowlist"] or header["denylist"]


def test_bad_filter_json_names_the_flag(tmp_path, store, stats):
    with pytest.raises(ConfigError, match="--flow-log-allow"):
        build(tmp_path / "x", store, stats, "--flow-log-allow", '{"no_such_field": 1}')


MASK_CASES = {
    "whole-messages": ("source,destination,l4",
                       {"source", "destination", "l4"}),
    "sub-fields": ("source.pod_name,destination.namespace,packets,bytes",
                   {"source", "destination", "packets", "bytes"}),
    "nested-tcp-ports": ("l4.tcp.destination_port,verdict", {"l4", "verdict"}),
}


@pytest.mark.parametrize("fields,keys", MASK_CASES.values(), ids=MASK_CASES.keys())
def test_field_mask_keeps_only_the_chosen_fields(tmp_path, store, stats, fields, keys):
    flow = make_flow(1)
    records = run(tmp_path, store, stats, [flow], "--flow-log-fields", fields)
    assert records[0]["podflow_flow_log"]["field_mask"] == fields.split(",")
    record = records[1]
    assert set(record) == {"flow"}, "the response envelope is kept"
    assert set(record["flow"]) == keys
    # Same result as protobuf's own FieldMask.MergeMessage on the Flow.
    from google.protobuf import field_mask_pb2
    from podflow_api.v1 import flow_pb2

    expected = flow_pb2.Flow()
    field_mask_pb2.FieldMask(paths=fields.split(",")).MergeMessage(flow, expected)
    assert record["flow"] == json_format.MessageToDict(expected, preserving_proto_field_name=True)


def test_bad_field_mask_names_the_flag(tmp_path, store, stats):
    with pytest.raises(ConfigError, match="--flow-log-fields.*sauce"):
        build(tmp_path / "x", store, stats, "--flow-log-fields", "source,sauce")


def test_aggregated_sums_equal_the_raw_records(tmp_path, store, stats):
    rng = random.Random(6)
    base = (time.time_ns() // 2_000_000_000 - 5) * 2_000_000_000  # a 2 s window 10 s ago
    flows = []
    for i in range(3000):
        flows.append(make_flow(i, sport=40000 + rng.randrange(5), dport=rng.choice([80, 443]),
                               packets=rng.randrange(1, 50), nbytes=rng.randrange(60, 90000),
                               time_ns=base + rng.randrange(6 * 1_000_000_000),
                               flags=(rng.choice(["SYN", "ACK", "FIN", "PSH"]),)))
    raw_path = tmp_path / "raw"
    raw_path.mkdir()
    raw = run(raw_path, store, stats, flows)[1:]
    agg = run(tmp_path, store, stats, flows, "--flow-log-aggregate", "2s")
    assert agg[0]["podflow_flow_log"]["aggregate"] == "2s"
    agg = agg[1:]

    def key(record):
        f = record["flow"]
        return (f["l4"]["tcp"]["source_port"], f["l4"]["tcp"]["destination_port"])

    def sums(records):
        out = collections.defaultdict(lambda: [0, 0, set()])
        for r in records:
            entry = out[key(r)]
            entry[0] += int(r["flow"]["packets"])
            entry[1] += int(r["flow"]["bytes"])
            entry[2] |= set(r["flow"]["l4"]["tcp"]["flags"])
        return {k: (p, b, frozenset(f)) for k, (p, b, f) in out.items()}

    assert len(raw) == 3000
    assert sums(agg) == sums(raw)
    # One record per key per 2 s window: 3 windows x 10 keys at most.
    windows = collections.Counter((r["flow"]["time"], key(r)) for r in agg)
    assert max(windows.values()) == 1
    assert len(agg) <= 30
    for r in agg:  # first/last seen span the window's raw records
        assert r["flow"]["first_seen"] <= r["flow"]["last_seen"]


def test_lag_beyond_the_queue_is_written_as_a_lost_record(tmp_path, store, stats):
    path = tmp_path / "lag.jsonl"
    exp = build(path, store, stats, "--flow-log-queue-size", "100")
    exp.start()
    flows = [make_flow(i) for i in range(5000)]
    store.extend(flows)  # one burst: the exporter is at most 100 behind, the rest is skipped
    exp.stop()
    records = read_lines(str(path))[1:]
    lost = [r["lost_events"] for r in records if "lost_events" in r]
    written = [seq_of(r) for r in records if "flow" in r]
    assert lost and all(r["stage"] == "EXPORTER_QUEUE" for r in lost)
    reported = sum(int(r["num_events_lost"]) for r in lost)
    assert len(written) + reported == 5000
    assert written == list(range(5000 - len(written), 5000)), "the newest flows are kept"
    assert stats.snapshot_lost()[observer_pb2.EXPORTER_QUEUE].count == reported
    first_lost_ns = flows[0].time.ToNanoseconds()
    assert lost[0]["first"] == flows[0].time.ToJsonString() or first_lost_ns > 0


def test_reopen_creates_a_new_file_after_rename(tmp_path, store, stats):
    path = tmp_path / "hup.jsonl"
    exp = build(path, store, stats)
    exp.start()
    try:
        store.extend([make_flow(0)])
        wait_for(lambda: path.exists() and len(read_lines(str(path))) == 2)
        path.rename(tmp_path / "hup.jsonl.rotated")
        exp.reopen()
        store.extend([make_flow(1)])
        wait_for(lambda: path.exists() and len(read_lines(str(path))) == 2)
    finally:
        exp.stop()
    assert [seq_of(r) for r in read_lines(str(path))[1:]] == [1]
    assert [seq_of(r) for r in read_lines(str(tmp_path / "hup.jsonl.rotated"))[1:]] == [0]


def test_rotation_through_the_exporter_keeps_every_record(tmp_path, store, stats):
    path = tmp_path / "rot.jsonl"
    exp = build(path, store, stats, "--flow-log-max-size-mb", "0.05", "--flow-log-max-backups",
                "20", "--flow-log-compress")
    exp.start()
    for i in range(0, 1000, 100):
        store.extend([make_flow(j) for j in range(i, i + 100)])
    exp.stop()
    records = all_records(str(path))
    assert [seq_of(r) for r in records if "flow" in r] == list(range(1000))
    headers = [r for r in records if "podflow_flow_log" in r]
    assert len(headers) == exp.writer.rotations + 1


def test_stdout(capfd, store, stats):
    exp = build("-", store, stats)
    exp.start()
    store.extend([make_flow(0)])
    exp.stop()
    lines = [json.loads(line) for line in capfd.readouterr().out.splitlines()]
    assert "podflow_flow_log" in lines[0]
    assert seq_of(lines[1]) == 0


def test_a_blocked_disk_slows_neither_the_store_nor_the_api(tmp_path, store, stats):
    """The flow log is a FIFO nobody reads: the writer blocks in write(). Flows keep going
    into the store at full speed and to an API client; the flow log skips what it cannot
    keep, and says so in the file once it can write again."""
    import os
    import threading

    from agent.client.stream import get_flows
    from agent.config import ObserverSection
    from agent.observer.server import ObserverServer

    fifo = tmp_path / "fifo.jsonl"
    os.mkfifo(fifo)
    reader_fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # lets the writer open; never read yet
    exp = build(fifo, store, stats, "--flow-log-queue-size", "2000")
    server = ObserverServer(ObserverSection(listen=f"unix:{tmp_path}/api.sock"), store, stats)
    exp.start()
    server.start()
    try:
        t0 = time.perf_counter()
        for i in range(0, 20000, 500):
            store.extend([make_flow(j) for j in range(i, i + 500)])
            time.sleep(0.01)
        feed_s = time.perf_counter() - t0
        assert feed_s < 5, f"feeding the store took {feed_s:.1f}s with a blocked flow log"
        import grpc

        with grpc.insecure_channel(server.address) as channel:
            got = [r for r in get_flows(channel, observer_pb2.GetFlowsRequest(number=100))
                   if r.HasField("flow")]
        assert [seq_of({"flow": {"summary": r.flow.summary}}) for r in got] == list(range(19900, 20000))

        chunks = []
        done = threading.Event()

        def drain():
            os.set_blocking(reader_fd, True)
            while True:
                data = os.read(reader_fd, 1 << 16)
                if not data:
                    break
                chunks.append(data)
            done.set()

        threading.Thread(target=drain, daemon=True).start()
    finally:
        exp.stop()
        server.stop(0)
    done.wait(10)
    os.close(reader_fd)
    records = [json.loads(line) for line in b"".join(chunks).decode().splitlines()]
    written = [seq_of(r) for r in records if "flow" in r]
    lost = sum(int(r["lost_events"]["num_events_lost"]) for r in records if "lost_events" in r)
    assert lost > 0
    assert len(written) + lost == 20000
    assert stats.snapshot_lost()[observer_pb2.EXPORTER_QUEUE].count == lost


def test_the_tui_replays_a_flow_log(tmp_path, store, stats):
    """The TUI's file reader skips the header and reads flows and lost records."""
    from agent.wire.logformat import parse_response_line

    path = tmp_path / "replay.jsonl"
    exp = build(path, store, stats, "--flow-log-queue-size", "10")
    exp.start()
    store.extend([make_flow(i) for i in range(50)])  # 40 skipped: a lost record
    exp.stop()
    parsed = [parse_response_line(line) for line in path.read_text().splitlines()]
    assert parsed[0] is False, "the header is not a response"
    kinds = [p.WhichOneof("response_types") for p in parsed[1:]]
    assert kinds.count("flow") == 10 and kinds.count("lost_events") == 1
    assert parsed[-1].flow.summary == "seq=49"


def test_aggregate_then_mask(tmp_path, store, stats):
    now = time.time_ns()
    flows = [make_flow(i, packets=2, nbytes=10, time_ns=now) for i in range(5)]
    records = run(tmp_path, store, stats, flows, "--flow-log-aggregate", "1h",
                  "--flow-log-fields", "packets,bytes,ip")
    header = records[0]["podflow_flow_log"]
    assert (header["aggregate"], header["field_mask"]) == ("1h", ["packets", "bytes", "ip"])
    assert [r["flow"] for r in records[1:]] == [
        {"ip": {"source": "10.0.1.5", "destination": "10.0.2.9", "ip_version": "IPV4"},
         "packets": "10", "bytes": "50"}]


def test_a_flow_log_deleted_while_written_is_reopened_and_nothing_is_lost(tmp_path, store,
                                                                         stats):
    """An operator frees disk space with `rm flows.jsonl`: the next flush (within a second)
    finds the path gone and starts a new file with a header; no record went into the deleted
    file, so none is reported lost."""
    path = tmp_path / "flows.jsonl"
    exp = build(path, store, stats)
    exp.start()
    try:
        store.extend([make_flow(i) for i in range(10)])
        wait_for(lambda: path.exists() and len(read_lines(str(path))) == 11, timeout_s=5)
        path.unlink()
        store.extend([make_flow(i) for i in range(10, 20)])
        wait_for(lambda: path.exists() and len(read_lines(str(path))) == 11, timeout_s=5)
    finally:
        exp.stop()
    records = read_lines(str(path))
    assert "podflow_flow_log" in records[0]
    assert [seq_of(r) for r in records[1:]] == list(range(10, 20))
    assert stats.snapshot_lost() == {}
    assert exp.records_written == 20


def _pod_to_pod(*, to_pod_packets: int = 1, to_pod_end: bool = True):
    """One UDP packet from pod 10.0.0.1 to pod 10.0.0.2 on this node, as both veths report it:
    leaving the client (veth5 ingress: FROM_POD), entering the server (veth7 egress: TO_POD)."""
    from agent.datapath import abi
    from tests.batches import T0, batch, rec
    return batch(
        rec("10.0.0.1", "10.0.0.2", 40000, 53, ifindex=5, hook=abi.PF_DIR_INGRESS, end=True),
        rec("10.0.0.1", "10.0.0.2", 40000, 53, ifindex=7, hook=abi.PF_DIR_EGRESS,
            packets=to_pod_packets, nbytes=80 * to_pod_packets, first_ns=T0 + 20_000,
            end=to_pod_end),
        rec("10.0.0.3", "10.0.0.2", 40001, 53, ifindex=7, hook=abi.PF_DIR_EGRESS, end=True))


def _folded(stats) -> int:
    """Records the flow log left out as receivers' repeats (what `podflow status` shows)."""
    return stats.snapshot_datapath_errors().get("flow_log_receiver_records_folded", 0)


def _write_batch(tmp_path, store, stats, batch, *argv):
    exp = build(tmp_path / "flows.jsonl", store, stats, *argv)
    exp.start()
    store.extend_batch(batch)
    exp.stop()
    return read_lines(str(tmp_path / "flows.jsonl"))


def test_a_pod_to_pod_flow_on_this_node_is_one_record_as_the_sender_s(tmp_path, store, stats):
    """Both veths report the same packet with the same counts: the flow log writes the sending
    pod's record (the one aggregates count) and says so in its header."""
    records = _write_batch(tmp_path, store, stats, _pod_to_pod())
    assert records[0]["podflow_flow_log"]["every_point"] is False
    flows = [r["flow"] for r in records[1:]]
    assert [(f["interface"]["name"], f["traffic_direction"], f["ip"]["source"]) for f in flows] \
        == [("veth5", "FROM_POD", "10.0.0.1"), ("veth7", "TO_POD", "10.0.0.3")]
    assert _folded(stats) == 1
    assert stats.snapshot_datapath_errors()["flow_log_receiver_packets_folded"] == 1


def test_records_that_differ_between_the_veths_are_both_written(tmp_path, store, stats):
    """A packet lost between the two veths (fewer at the receiver) is news: nothing folded."""
    records = _write_batch(tmp_path, store, stats, _pod_to_pod(to_pod_packets=0,
                                                               to_pod_end=False))
    assert len(records) == 4 and _folded(stats) == 0


def test_every_point_keeps_both_veths_records(tmp_path, store, stats):
    records = _write_batch(tmp_path, store, stats, _pod_to_pod(), "--flow-log-every-point")
    assert records[0]["podflow_flow_log"]["every_point"] is True
    assert [r["flow"]["interface"]["name"] for r in records[1:]] == ["veth5", "veth7", "veth7"]
    assert _folded(stats) == 0


@pytest.mark.parametrize("fields", [(), ("--flow-log-fields", "policy,interface")],
                         ids=["columns", "field-mask"])
def test_the_receiver_s_policy_finding_moves_to_the_record_written(tmp_path, store, stats,
                                                                   fields):
    """A request's delivery is proven at the receiving veth (its record's finding,
    POLICY_ALLOWED_DELIVERED): the one record written for the flow carries it."""
    batch = _pod_to_pod()
    batch.enforcement[1] = flow_pb2.POLICY_ALLOWED_DELIVERED
    records = _write_batch(tmp_path, store, stats, batch, *fields)
    flows = [r["flow"] for r in records[1:]]
    assert _folded(stats) == 1 and len(flows) == 2
    assert flows[0]["interface"]["name"] == "veth5"
    assert flows[0]["policy"]["enforcement"] == "POLICY_ALLOWED_DELIVERED"
    assert "enforcement" not in flows[1].get("policy", {})
    assert batch.enforcement[0] == 0, "the batch the API serves is not changed"


def test_records_with_different_findings_are_both_written(tmp_path, store, stats):
    batch = _pod_to_pod()
    batch.enforcement[0] = flow_pb2.POLICY_ALLOWED_DELIVERED
    batch.enforcement[1] = flow_pb2.POLICY_DROPPED_OTHERWISE
    records = _write_batch(tmp_path, store, stats, batch)
    assert _folded(stats) == 0 and len(records) == 4
