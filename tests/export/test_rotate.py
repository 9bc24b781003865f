"""RotatingWriter: rotation at the size limit, backups kept, gzip backups readable."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from agent.errors import ConfigError
from agent.wire.rotation import RotatingWriter, RotationConfig, add_rotation_arguments, rotation_from_args
from tests.export.conftest import log_files, read_lines

HEADER = b'{"podflow_flow_log": {"format": "test"}}\n'


def _lines(n: int, start: int = 0) -> list[bytes]:
    return [(json.dumps({"seq": i, "pad": "x" * 80}) + "\n").encode() for i in range(start, start + n)]


CASES = {
    "plain-3-backups": RotationConfig(max_bytes=2000, max_backups=3, compress=False),
    "gzip-2-backups": RotationConfig(max_bytes=2000, max_backups=2, compress=True),
    "no-backups": RotationConfig(max_bytes=2000, max_backups=0, compress=False),
}


@pytest.mark.parametrize("config", CASES.values(), ids=CASES.keys())
def test_rotation_keeps_size_limit_and_backup_count(tmp_path, config):
    path = str(tmp_path / "flows.jsonl")
    writer = RotatingWriter(path, config, lambda: HEADER)
    for batch in range(20):  # 20 x 10 lines of ~100 bytes: many rotations
        writer.write_lines(_lines(10, batch * 10))
    writer.close()

    files = log_files(path)
    suffix = ".gz" if config.compress else ""
    expected = [f"{path}.{i}{suffix}" for i in range(config.max_backups, 0, -1)] + [path]
    assert files == expected
    assert sorted(os.listdir(tmp_path)) == sorted(os.path.basename(f) for f in expected)
    assert writer.rotations > config.max_backups

    seqs = []
    for name in files:
        if name.endswith(".gz"):
            subprocess.run(["gzip", "-t", name], check=True)
            raw_size = sum(len(json.dumps(r)) + 1 for r in read_lines(name))
        else:
            raw_size = os.path.getsize(name)
        assert raw_size <= config.max_bytes, name
        records = read_lines(name)
        assert records[0] == {"podflow_flow_log": {"format": "test"}}, "every file starts with the header"
        seqs.extend(r["seq"] for r in records[1:])
    # The kept files hold the newest records, contiguous, ending with the last one written.
    assert seqs == list(range(200 - len(seqs), 200))
    # A full file is filled up to the limit: the next line would not have fit.
    if config.max_backups:
        first_full = files[-2]
        size = (os.path.getsize(first_full) if not config.compress
                else sum(len(json.dumps(r)) + 1 for r in read_lines(first_full)))
        assert size > config.max_bytes - len(_lines(1)[0])


def test_line_longer_than_limit_goes_alone_into_a_file(tmp_path):
    path = str(tmp_path / "big.jsonl")
    writer = RotatingWriter(path, RotationConfig(max_bytes=150, max_backups=5), lambda: HEADER)
    writer.write_lines(_lines(1) + [(json.dumps({"seq": 1, "pad": "y" * 400}) + "\n").encode()]
                       + _lines(1, 2))
    writer.close()
    seqs = [[r.get("seq") for r in read_lines(f)[1:]] for f in log_files(path)]
    assert seqs == [[0], [1], [2]]


def test_reopen_after_external_rename_starts_a_new_file(tmp_path):
    path = str(tmp_path / "f.jsonl")
    writer = RotatingWriter(path, RotationConfig(), lambda: HEADER)
    writer.write_lines(_lines(2))
    os.rename(path, path + ".old")
    writer.write_lines(_lines(1, 2))  # still the renamed file
    writer.reopen()
    writer.write_lines(_lines(1, 3))
    writer.close()
    assert [r.get("seq") for r in read_lines(path + ".old")] == [None, 0, 1, 2]
    assert [r.get("seq") for r in read_lines(path)] == [None, 3]


ARG_CASES = {
    "defaults": ([], RotationConfig(10 * 1024 * 1024, 5, False)),
    "all-set": (["--output-max-size-mb", "0.5", "--output-max-backups", "2", "--output-compress"],
                RotationConfig(512 * 1024, 2, True)),
}


@pytest.mark.parametrize("argv,expected", ARG_CASES.values(), ids=ARG_CASES.keys())
def test_rotation_arguments(argv, expected):
    import argparse

    parser = argparse.ArgumentParser()
    add_rotation_arguments(parser, "output-")
    assert rotation_from_args(parser.parse_args(argv), "output-") == expected


@pytest.mark.parametrize("argv,flag", [(["--output-max-size-mb", "0"], "--output-max-size-mb"),
                                       (["--output-max-backups", "-1"], "--output-max-backups")],
                         ids=["zero-size", "negative-backups"])
def test_bad_rotation_arguments_name_the_flag(argv, flag):
    import argparse

    parser = argparse.ArgumentParser()
    add_rotation_arguments(parser, "output-")
    with pytest.raises(ConfigError, match=flag):
        rotation_from_args(parser.parse_args(argv), "output-")


@pytest.mark.parametrize("config", CASES.values(), ids=CASES.keys())
def test_blocks_of_lines_rotate_at_line_boundaries_like_single_lines(tmp_path, config):
    """The flow log hands over a batch's lines as one bytes block: a block that does not fit
    is cut between lines, and the files are the same as with one item per line."""
    by_line, by_block = str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")
    one = RotatingWriter(by_line, config, lambda: HEADER)
    blocks = RotatingWriter(by_block, config, lambda: HEADER)
    for batch in range(20):
        lines = _lines(7 + batch % 5, batch * 20)
        one.write_lines(lines)
        blocks.write_lines([b"".join(lines[:3]), b"".join(lines[3:])])
    one.close()
    blocks.close()
    assert blocks.rotations == one.rotations > 0
    for a, b in zip(log_files(by_line), log_files(by_block)):
        assert read_lines(a) == read_lines(b)


def test_a_block_with_a_line_larger_than_the_limit_still_writes_it_alone(tmp_path):
    path = str(tmp_path / "flows.jsonl")
    writer = RotatingWriter(path, RotationConfig(max_bytes=300, max_backups=5), lambda: HEADER)
    big = (json.dumps({"seq": 1, "pad": "y" * 400}) + "\n").encode()
    writer.write_lines([b"".join(_lines(1)) + big + b"".join(_lines(1, 2))])
    writer.close()
    seqs = [[r["seq"] for r in read_lines(f)[1:]] for f in log_files(path)]
    assert seqs == [[0], [1], [2]]
