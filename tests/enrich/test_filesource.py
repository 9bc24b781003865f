"""`--metadata FILE`: the formats kubectl prints, reload on change, errors naming the file."""

from __future__ import annotations

import json
import os
import time

import pytest
import yaml

from agent.errors import MetadataError
from agent.enrich.k8s.filesource import FileSource, parse_file
from agent.enrich.k8s.state import ClusterState
from agent.stats import AgentStats
from tests.enrich import objs

POD = objs.pod("cart-1", "10.0.0.2")
SVC = objs.service("cart", "10.96.0.12")


def _typed_list(kind: str, *items: dict) -> dict:
    """A PodList as `kubectl get pods -o json` prints it when asked for one kind."""
    stripped = [{k: v for k, v in item.items() if k != "kind"} for item in items]
    return {"apiVersion": "v1", "kind": f"{kind}List", "items": stripped}


FORMATS = [
    pytest.param(json.dumps(objs.as_list(POD, SVC)), id="json-list"),
    pytest.param(json.dumps([POD, SVC]), id="json-array"),
    pytest.param(json.dumps(objs.as_list(POD)) + "\n" + json.dumps(objs.as_list(SVC)), id="json-concatenated"),
    pytest.param(json.dumps(_typed_list("Pod", POD)) + json.dumps(SVC), id="typed-list-without-item-kinds"),
    pytest.param(yaml.safe_dump(objs.as_list(POD, SVC)), id="yaml-list"),
    pytest.param(yaml.safe_dump(POD) + "---\n" + yaml.safe_dump(SVC) + "---\n", id="yaml-documents"),
]


@pytest.mark.parametrize("text", FORMATS)
def test_formats(tmp_path, text):
    path = tmp_path / "meta"
    path.write_text(text)
    by_kind = parse_file(str(path))
    assert [p["metadata"]["name"] for p in by_kind["Pod"]] == ["cart-1"]
    assert [s["metadata"]["name"] for s in by_kind["Service"]] == ["cart"]


ERRORS = [
    pytest.param("", "the file is empty", id="empty"),
    pytest.param("{\"kind\": \"List\", \"items\": [", "invalid JSON at line 1", id="truncated-json"),
    pytest.param("a: [b", "not valid JSON or YAML", id="bad-yaml"),
    pytest.param("[1, 2]", "document 1[0] is a int", id="not-objects"),
    pytest.param(json.dumps({"metadata": {"name": "x"}}), "has no `kind`", id="no-kind"),
    pytest.param(json.dumps({"kind": "Pod", "metadata": {}}), "has no metadata.name", id="no-name"),
]


@pytest.mark.parametrize("text,message", ERRORS)
def test_errors_name_the_file_and_the_problem(tmp_path, text, message):
    path = tmp_path / "meta.json"
    path.write_text(text)
    with pytest.raises(MetadataError) as info:
        parse_file(str(path))
    assert str(path) in str(info.value)
    assert message in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(MetadataError, match="cannot read"):
        parse_file(str(tmp_path / "nope.json"))


def _write(path, doc) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as fh:
        json.dump(doc, fh)
    os.replace(tmp, path)


def test_reload_on_change_and_keep_last_state_on_error(tmp_path):
    path = tmp_path / "meta.json"
    _write(path, objs.as_list(POD))
    state, stats = ClusterState(), AgentStats("n", "v")
    source = FileSource(str(path), state, stats, poll_interval_s=0.05)
    source.start()
    try:
        assert state.peer("10.0.0.2").endpoint.pod_name == "cart-1"
        _write(path, objs.as_list(objs.pod("cart-2", "10.0.0.3")))
        assert state.wait_for(lambda s: "10.0.0.3" in s.pod_by_ip, 2.0)
        assert "10.0.0.2" not in state.pod_by_ip  # gone from the file, gone from the cache

        path.write_text("{ not json")
        deadline = time.monotonic() + 2
        while not stats.metadata_stale and time.monotonic() < deadline:
            time.sleep(0.02)
        assert stats.metadata_stale
        assert str(path) in stats.metadata_error
        assert state.peer("10.0.0.3").endpoint.pod_name == "cart-2"  # last good state kept

        _write(path, objs.as_list(objs.pod("cart-3", "10.0.0.4")))
        assert state.wait_for(lambda s: "10.0.0.4" in s.pod_by_ip, 2.0)
        deadline = time.monotonic() + 2
        while stats.metadata_stale and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not stats.metadata_stale and stats.metadata_error == ""
    finally:
        source.stop()


def test_bad_file_at_start_is_fatal(tmp_path):
    path = tmp_path / "meta.json"
    path.write_text("[")
    with pytest.raises(MetadataError, match="meta.json"):
        FileSource(str(path), ClusterState(), AgentStats("n", "v")).start()
