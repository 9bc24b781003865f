"""The one loss-reporting JSON-lines sink (agent.wire.jsonlines.JsonLinesSink) of the flow
log, `observe --output-file` and the TUI's export: nothing it cannot write goes unsaid.
(A disk that fills mid-write: tests/export/test_disk_errors.py, on a real small tmpfs.)"""

from __future__ import annotations

import json

from agent.wire import logformat
from agent.wire.jsonlines import NO_ROTATION, JsonLinesSink, RotationConfig
from agent.wire.timefmt import rfc3339_ns
from podflow_api.v1 import observer_pb2

T0 = 1_700_000_000_000_000_000


def _records(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _line(i: int) -> bytes:
    return (json.dumps({"flow": {"summary": f"seq={i}"}}) + "\n").encode()


def test_losses_are_counted_then_written_into_the_file(tmp_path):
    path = tmp_path / "later" / "flows.jsonl"  # the directory does not exist yet
    events = []
    sink = JsonLinesSink(str(path), RotationConfig(), logformat.header_fields(node_name="n"),
                         node_name="n",
                         on_failure=lambda exc, first: events.append(("failure", first)),
                         on_recovery=lambda total: events.append(("recovered", total)),
                         on_lost=lambda stage, n, _packets: events.append(("lost", stage, n)))
    assert not sink.open() and sink.failing
    sink.count_lost(observer_pb2.EXPORTER_QUEUE, 2, T0 + 1, T0 + 2)
    sink.add_many([_line(0), _line(1), _line(2)], [T0 + 10, T0 + 30, T0 + 20])
    assert not sink.flush()
    assert sink.lost_total == 5 and sink.records_written == 0
    path.parent.mkdir()
    sink.add(_line(3), T0 + 40)
    assert sink.flush() and not sink.failing
    sink.close()
    assert events == [("failure", True), ("lost", observer_pb2.EXPORTER_QUEUE, 2),
                      ("lost", observer_pb2.EXPORTER_WRITE, 3), ("failure", False),
                      ("recovered", 5)]
    records = _records(path)
    assert records[0]["podflow_flow_log"]["node_name"] == "n"
    lost = {r["lost_events"]["stage"]: r["lost_events"] for r in records if "lost_events" in r}
    assert lost["EXPORTER_QUEUE"]["num_events_lost"] == "2"
    assert (lost["EXPORTER_QUEUE"]["first"], lost["EXPORTER_QUEUE"]["last"]) == \
        (rfc3339_ns(T0 + 1), rfc3339_ns(T0 + 2))
    assert lost["EXPORTER_WRITE"]["num_events_lost"] == "3"
    assert (lost["EXPORTER_WRITE"]["first"], lost["EXPORTER_WRITE"]["last"]) == \
        (rfc3339_ns(T0 + 10), rfc3339_ns(T0 + 30))
    assert [r["flow"]["summary"] for r in records if "flow" in r] == ["seq=3"]
    assert all(r["node_name"] == "n" for r in records if "lost_events" in r)
    assert sink.records_written == 1


def test_a_loss_is_reported_once(tmp_path):
    path = tmp_path / "flows.jsonl"
    sink = JsonLinesSink(str(path), RotationConfig(), logformat.header_fields())
    sink.open()
    sink.count_lost(observer_pb2.EXPORTER_QUEUE, 7)
    sink.add(_line(0))
    sink.flush()
    sink.add(_line(1))
    sink.close()
    kinds = [next(k for k in r if k not in ("node_name", "time")) for r in _records(path)]
    assert kinds == ["podflow_flow_log", "lost_events", "flow", "flow"]


def test_text_output_counts_losses_without_json_records(tmp_path):
    path = tmp_path / "later" / "out.txt"
    sink = JsonLinesSink(str(path), NO_ROTATION, None)
    sink.write_line("first")
    assert not sink.flush()
    path.parent.mkdir()
    sink.write_line("second")
    sink.close()
    assert path.read_text() == "second\n"
    assert sink.lost_total == 1


def test_flush_bytes_flushes_on_its_own(tmp_path):
    path = tmp_path / "flows.jsonl"
    sink = JsonLinesSink(str(path), RotationConfig(), None, flush_bytes=100)
    sink.open()
    for i in range(10):
        sink.add(_line(i))
    assert len(path.read_text().splitlines()) >= 8  # written without a flush() call
    sink.close()
