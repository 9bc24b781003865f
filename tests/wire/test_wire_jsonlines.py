"""The one loss-reporting JSON-lines sink (agent.wire.jsonlines.JsonLinesSink) of the flow
log, `observe --output-file` and the TUI's export: nothing it cannot write goes unsaid.
(A disk that fills mid-write: tests/export/test_disk_errors.py, on a real small tmpfs.)"""

from __future__ import annotations

import json

from agent.wire import logformat
from agent.wire.jsonlines import JsonLinesSink
from agent.wire.rotation import NO_ROTATION, RotationConfig
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


# -- a file deleted or moved while open (an operator freeing disk space, logrotate without HUP)

def _sink(path, lost=None) -> JsonLinesSink:
    return JsonLinesSink(str(path), RotationConfig(), logformat.header_fields(node_name="n"),
                         node_name="n", on_lost=lambda stage, n, _packets: lost.append((stage, n))
                         if lost is not None else None)


def test_a_deleted_file_is_followed_before_the_next_write_and_nothing_is_lost(tmp_path, caplog):
    path = tmp_path / "flows.jsonl"
    lost = []
    sink = _sink(path, lost)
    sink.open()
    sink.add_many([_line(0), _line(1)], [T0, T0 + 1])
    assert sink.flush()
    path.unlink()  # rm flows.jsonl: the writer still holds the old file open
    sink.add_many([_line(2), _line(3)], [T0 + 2, T0 + 3])
    assert sink.flush()
    sink.close()
    records = _records(path)
    assert "podflow_flow_log" in records[0]  # a new file, with its header
    assert [r["flow"]["summary"] for r in records[1:]] == ["seq=2", "seq=3"]
    assert lost == [] and sink.lost_total == 0  # nothing went into the deleted file
    assert f"{path} was deleted while open; writing to a new {path}" in caplog.text


def test_a_file_moved_away_keeps_its_lines_and_a_new_one_is_started(tmp_path, caplog):
    path = tmp_path / "flows.jsonl"
    sink = _sink(path)
    sink.open()
    sink.add(_line(0), T0)
    assert sink.flush()
    path.rename(tmp_path / "flows.jsonl.old")  # logrotate without a SIGHUP
    sink.add(_line(1), T0 + 1)
    assert sink.flush()
    sink.close()
    assert [r["flow"]["summary"] for r in _records(tmp_path / "flows.jsonl.old")
            if "flow" in r] == ["seq=0"]
    assert [r["flow"]["summary"] for r in _records(path) if "flow" in r] == ["seq=1"]
    assert f"{path} was moved while open" in caplog.text


def test_records_written_into_a_file_deleted_meanwhile_are_counted_and_reported(tmp_path):
    """The file is unlinked while a write is under way (forced here by deleting it right after
    the writer's own write call): those records reach no reader. Counted as EXPORTER_WRITE,
    and the new file says so at its top."""
    path = tmp_path / "flows.jsonl"
    lost = []
    sink = _sink(path, lost)
    sink.open()
    sink.add(_line(0), T0)
    assert sink.flush()
    write_all = sink.writer._write_all

    def write_while_deleted(data: bytes) -> None:
        write_all(data)
        sink.writer._write_all = write_all  # once
        path.unlink()
    sink.writer._write_all = write_while_deleted
    sink.add_many([_line(1), _line(2), _line(3)], [T0 + 10, T0 + 30, T0 + 20])
    assert sink.flush()
    sink.add(_line(4), T0 + 40)
    assert sink.flush()
    sink.close()
    assert lost == [(observer_pb2.EXPORTER_WRITE, 3)]
    assert sink.records_written == 2  # seq 0 (in the deleted file before) and seq 4
    records = _records(path)
    assert "podflow_flow_log" in records[0]
    assert records[1]["lost_events"]["stage"] == "EXPORTER_WRITE"
    assert records[1]["lost_events"]["num_events_lost"] == "3"
    assert (records[1]["lost_events"]["first"], records[1]["lost_events"]["last"]) == \
        (rfc3339_ns(T0 + 10), rfc3339_ns(T0 + 30))
    assert [r["flow"]["summary"] for r in records if "flow" in r] == ["seq=4"]


def test_blocks_count_their_lines_written_and_lost(tmp_path):
    """add_block: one bytes object holding many lines counts as that many records, written
    or lost (with the block's record time)."""
    path = tmp_path / "later" / "flows.jsonl"
    sink = JsonLinesSink(str(path), NO_ROTATION, logformat.header_fields(node_name="n"),
                         node_name="n")
    sink.add_block(_line(0) + _line(1) + _line(2), 3, T0 + 5)
    sink.add(_line(3), T0 + 9)
    assert sink.pending_lines == 4
    assert not sink.flush()  # the directory does not exist
    assert sink.lost_total == 4 and sink.records_written == 0 and sink.pending_lines == 0
    path.parent.mkdir()
    sink.add_block(_line(4) + _line(5), 2, T0 + 20)
    assert sink.flush()
    sink.close()
    records = _records(path)
    lost = [r["lost_events"] for r in records if "lost_events" in r]
    assert [(x["num_events_lost"], x["first"], x["last"]) for x in lost] == \
        [("4", rfc3339_ns(T0 + 5), rfc3339_ns(T0 + 9))]
    assert [r["flow"]["summary"] for r in records if "flow" in r] == ["seq=4", "seq=5"]
    assert sink.records_written == 2
