"""A flow log on a small tmpfs that fills up (or turns read-only) while flows keep coming:
the exporter stays up, reports the error (status, metric, one log line), resumes when it can
write again, and every flow missing from the log is inside a reported lost record."""

from __future__ import annotations

import logging
import os
import subprocess
import threading
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent.export import metrics
from agent.client.channel import server_status
from agent.config import MetricsSection, ObserverSection
from agent.observer.server import ObserverServer
from podflow_api.v1 import observer_pb2
from tests.export.conftest import make_flow, read_lines, seq_of, wait_for
from tests.export.test_exporter import build

pytestmark = pytest.mark.root


@pytest.fixture
def small_tmpfs(tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "pftest", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(directory) -> str:
    """Use up every free byte with a filler file; return its path."""
    filler = os.path.join(directory, "filler")
    with open(filler, "wb", buffering=0) as fh:
        block = b"\0" * 4096
        try:
            while True:
                fh.write(block)
        except OSError:
            pass
        try:
            while True:
                fh.write(b"\0")
        except OSError:
            pass
    return filler


def _break_disk_full(mnt):
    filler = _fill(mnt)
    return lambda: os.unlink(filler)


def _break_read_only(mnt):
    subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
    return lambda: subprocess.run(["mount", "-o", "remount,rw", str(mnt)], check=True)


class Feeder(threading.Thread):
    """Sequence-numbered flows into the store at a steady pace (~100/s, ~90 KB/s of log: the
    256 KiB tmpfs must not fill up by itself during the test)."""

    def __init__(self, store, per_batch=5, interval_s=0.05):
        super().__init__(daemon=True)
        self.store = store
        self.per_batch = per_batch
        self.interval_s = interval_s
        self.flows = []
        self.stop_event = threading.Event()

    def run(self):
        seq = 0
        while not self.stop_event.is_set():
            batch = [make_flow(seq + i) for i in range(self.per_batch)]
            seq += self.per_batch
            self.flows.extend(batch)
            self.store.extend(batch)
            time.sleep(self.interval_s)

    def stop(self):
        self.stop_event.set()
        self.join()


def _scrape_failing(address: str) -> float:
    text = urllib.request.urlopen(f"http://{address}/metrics", timeout=5).read().decode()
    for family in text_string_to_metric_families(text):
        if family.name == "podflow_exporter_failing":
            return family.samples[0].value
    raise AssertionError("podflow_exporter_failing missing")


# name -> (how to break the file system, break it before the exporter starts?)
# A file system with a file open for writing cannot be remounted read-only, so the read-only
# case is a flow log directory that is read-only from the start and becomes writable later.
BREAKERS = {"disk-full-while-writing": (_break_disk_full, False),
            "read-only-at-start": (_break_read_only, True)}


@pytest.mark.parametrize("breaker,at_start", BREAKERS.values(), ids=BREAKERS.keys())
def test_write_errors_are_reported_and_writing_resumes(small_tmpfs, store, stats, caplog,
                                                       breaker, at_start):
    caplog.set_level(logging.INFO, logger="podflow.exporter")
    path = small_tmpfs / "flows.jsonl"
    exp = build(path, store, stats)
    if at_start:
        repair = breaker(small_tmpfs)
    server = metrics.MetricsServer(MetricsSection(address="127.0.0.1:0", labels=()), store,
                                   stats)
    observer = ObserverServer(ObserverSection(listen=f"unix:{small_tmpfs.parent}/observer.sock"),
                              store, stats)
    exp.start()
    server.start()
    observer.start()
    address = server.ready_info()["metrics"]
    feeder = Feeder(store)
    feeder.start()
    try:
        if not at_start:
            wait_for(lambda: path.exists() and path.stat().st_size > 10_000)
            assert _scrape_failing(address) == 0
            repair = breaker(small_tmpfs)
        wait_for(lambda: stats.exporter_error, timeout_s=10)
        assert str(path) in stats.exporter_error
        assert _scrape_failing(address) == 1
        status = server_status(observer.address)
        assert str(path) in status.exporter_error
        time.sleep(1.5)  # flows keep coming while the file cannot be written
        assert stats.exporter_error, "still failing while the disk is broken"
        assert feeder.is_alive()
        lost_while_failing = stats.snapshot_lost()[observer_pb2.EXPORTER_WRITE].count
        assert lost_while_failing > 0
        repair()
        wait_for(lambda: not stats.exporter_error, timeout_s=10)
        assert _scrape_failing(address) == 0
        status = server_status(observer.address)
        assert status.exporter_error == ""
        assert {c.stage for c in status.lost} >= {observer_pb2.EXPORTER_WRITE}
        time.sleep(0.5)
    finally:
        feeder.stop()
        exp.stop()
        server.stop()
        observer.stop(0)

    errors = [r for r in caplog.records if r.name == "podflow.exporter" and r.levelno >= logging.ERROR]
    assert len(errors) == 1, "one log line per episode"

    records = read_lines(str(path))  # every line is whole JSON
    written = {seq_of(r) for r in records if "flow" in r}
    lost = [r["lost_events"] for r in records if "lost_events" in r]
    sent = {seq_of({"flow": {"summary": f.summary}}): f for f in feeder.flows}
    missing = set(sent) - written
    assert missing, "the test did lose flows while the disk was broken"
    reported = sum(int(r["num_events_lost"]) for r in lost)
    assert reported == len(missing)
    snapshot = stats.snapshot_lost()
    assert sum(snapshot[s].count for s in snapshot) == reported
    assert {r["stage"] for r in lost} <= {"EXPORTER_WRITE", "EXPORTER_QUEUE"}
    spans = [(r["first"], r["last"]) for r in lost]
    for seq in missing:
        t = sent[seq].time.ToJsonString()
        assert any(first <= t <= last for first, last in spans), f"seq {seq} not in a lost span"
    # After resuming, the flows sent later were all written.
    assert max(written) > max(missing)
    if at_start:
        assert min(written) > 0 and records[0].get("podflow_flow_log"), "the file starts with its header"


def test_observe_file_sink_counts_what_a_full_disk_refused(small_tmpfs):
    """The --output-file sink keeps going on a full disk and writes a lost record after."""
    import io

    from agent.client.observe import output_file_sink
    from agent.wire.rotation import RotationConfig

    path = small_tmpfs / "cluster.jsonl"
    stderr = io.StringIO()
    sink = output_file_sink(str(path), RotationConfig(), {"format": "test"}, stderr=stderr)
    line = '{"flow": {"summary": "seq=%d"}}'
    seq = 0

    def write(n):
        nonlocal seq
        for _ in range(n):
            sink.write_line(line % seq)
            seq += 1
            sink.flush()

    write(100)
    free = _break_disk_full(small_tmpfs)
    write(100)
    assert sink.failing and sink.lost_total > 0
    free()
    write(100)
    sink.close()
    assert not sink.failing
    assert stderr.getvalue().count("WARNING") == 2  # failing, writable again

    records = read_lines(str(path))
    written = {seq_of(r) for r in records if "flow" in r}
    lost = [r["lost_events"] for r in records if "lost_events" in r]
    assert sum(int(r["num_events_lost"]) for r in lost) == 300 - len(written) == sink.lost_total
    assert all(r["stage"] == "EXPORTER_WRITE" for r in lost)
