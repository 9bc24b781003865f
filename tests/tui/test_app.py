"""The real app driven with Pilot against real Observer servers (agent.observer.server on agent's
flow store), and against replayed files: what each view shows, keys, filters and their
errors, an agent going down and coming back, export."""

from __future__ import annotations

import gzip
import json
import time

import pytest
from google.protobuf import json_format
from textual.content import Content

from agent.wire.logformat import parse_response_line
from podflow_api.v1 import observer_pb2
from tests.tui.conftest import wait_for
from tui import app as tui_app
from tui.app import create_app
from tui.line_table import LineTable
from tui.messages import SnapshotBuilt

SIZE = (200, 50)


def text(app, selector: str) -> str:
    """What a Static shows, without markup."""
    content = app.query_one(selector).content
    return Content.from_markup(content).plain if isinstance(content, str) else str(content)


def rows(app, table_id: str) -> list[list[str]]:
    """A table's rows, cells as drawn (plain text, cut to their column's width)."""
    table = app.query_one(f"#{table_id}", LineTable)
    return [table.get_row_at(i) for i in range(table.row_count)]


ENGINES = ["thread", "process"]  # the app's engine in a thread, or in a child process (CLI)


@pytest.mark.parametrize("engine", ENGINES)
async def test_every_view_shows_the_agents_traffic(agents, engine):
    for agent in agents:
        agent.send(300)
    app = create_app(servers=[a.address for a in agents], engine=engine)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: len(rows(app, "flows-table")) == 150, what="flows rows")
        await wait_for(pilot, lambda: "600 flows seen" in text(app, "#status-bar"))
        status = text(app, "#status-bar")
        assert "nodes 2/2 connected" in status and "LIVE" in status and "lost 0" in status
        flows = rows(app, "flows-table")
        assert {r[1] for r in flows} == {"node-a", "node-b"}
        first = flows[0]
        assert first[6] == "from-pod" and " -> " in first[4] and first[5].split()[0] in ("TCP", "UDP")
        # newest first
        times = [r[0] for r in flows]
        assert times == sorted(times, reverse=True)

        await pilot.press("2")
        top = rows(app, "top-table")
        assert [r[0] for r in top] == ["shop"]        # every client in the shop namespace
        assert "Top by namespace" in text(app, "#top-header")
        await pilot.press("p")                         # namespace -> workload
        assert "Top by workload" in text(app, "#top-header")
        await wait_for(pilot, lambda: {r[0] for r in rows(app, "top-table")} == {
            "shop/frontend", "shop/cart", "shop/checkout"}, what="workload rows")
        await pilot.press("p", "p", "p")               # -> pod -> service -> port
        assert "Top by port" in text(app, "#top-header")
        await wait_for(pilot, lambda: {r[0] for r in rows(app, "top-table")} == {
            "tcp/8080", "tcp/443", "tcp/6379", "udp/53"}, what="port rows")
        await pilot.press("o")
        assert "sorted by packets" in text(app, "#top-header")

        await pilot.press("3")
        services = rows(app, "services-table")
        names = [r[0] for r in services if not r[0].startswith("  └")]
        assert set(names) == {"shop/cart", "shop/checkout", "shop/redis", "pay/payments",
                              "kube-system/kube-dns"}
        dns_row = next(r for r in services if r[0] == "kube-system/kube-dns")
        assert dns_row[4] == "2 backends"
        backends = [r for r in services if r[0].startswith("  └ kube-system/coredns")]
        assert len(backends) == 2 and all("%" in r[4] for r in backends)
        assert any(int(r[6]) > 0 for r in services if r[6].isdigit())  # refused attempts

        await pilot.press("4")
        nodes = rows(app, "nodes-table")
        assert sorted((r[0], r[2], r[4]) for r in nodes) == [("node-a", "connected", "300"),
                                                              ("node-b", "connected", "300")]
        assert "Nodes" in text(app, "#status-bar")


async def test_follow_pause_and_detail(agents):
    agents[0].send(10)
    app = create_app(servers=[agents[0].address])
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: len(rows(app, "flows-table")) == 10)
        agents[0].send(5)
        await wait_for(pilot, lambda: len(rows(app, "flows-table")) == 15, what="live flows")
        await pilot.press("space")
        assert "PAUSED" in text(app, "#status-bar")
        agents[0].send(5)
        await wait_for(pilot, lambda: "20 flows seen" in text(app, "#status-bar"))
        await pilot.pause(0.5)
        assert len(rows(app, "flows-table")) == 15     # paused: the table stays
        await pilot.press("space")
        assert "LIVE" in text(app, "#status-bar")
        await wait_for(pilot, lambda: len(rows(app, "flows-table")) == 20)

        await pilot.press("d")
        await wait_for(pilot, lambda: "node_name:" in text(app, "#flow-detail-text"))
        detail = text(app, "#flow-detail-text")
        top = rows(app, "flows-table")[0]
        for line in ("node_name: node-a", "observation_point: POD_VETH",
                     "traffic_direction: FROM_POD", "service.name:", "backend.pod_name:",
                     "source.workload.name:", "destination.labels: app=", "packets:"):
            assert line in detail
        assert f"source.pod_name: {top[2].split('/')[1]}" in detail
        await pilot.press("down")
        await wait_for(pilot, lambda: text(app, "#flow-detail-text") != detail,
                       what="the detail pane follows the highlighted row")


async def test_filter_applies_everywhere_and_bad_expression_keeps_old(agents):
    for agent in agents:
        agent.send(200)
    app = create_app(servers=[a.address for a in agents])
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: len(rows(app, "flows-table")) == 150)
        await pilot.press("slash")
        await pilot.press(*"proto=udp node=node-b")
        await pilot.press("enter")
        await wait_for(pilot, lambda: all(r[5].startswith("UDP") and r[1] == "node-b"
                                          for r in rows(app, "flows-table")))
        assert rows(app, "flows-table")
        assert "filter: proto=udp node=node-b" in text(app, "#status-bar")
        await pilot.press("3")
        await wait_for(pilot, lambda: [r[0] for r in rows(app, "services-table")
                                       if not r[0].startswith("  └")] == ["kube-system/kube-dns"])
        await pilot.press("2")
        await wait_for(pilot, lambda: [r[0] for r in rows(app, "top-table")] == ["shop"])

        # a bad expression: says what is wrong, the old filter stays
        await pilot.press("slash")
        await pilot.press("ctrl+u", *"port=http")
        await pilot.press("enter")
        assert "'http' is not a port" in text(app, "#filter-error")
        assert app.flt.text == "proto=udp node=node-b"
        assert "filter: proto=udp node=node-b" in text(app, "#status-bar")
        await pilot.press("escape")
        assert not app.query_one("#filter-line").has_class("open")

        # negation, and keys typed in the filter line do not switch views
        await pilot.press("slash", "ctrl+u", *"!svc=kube-system/kube-dns !proto=udp 1")
        await pilot.press("enter")
        assert "unknown" in text(app, "#filter-error") or "expected key=value" in text(app, "#filter-error")
        assert app.current_view == "top"
        await pilot.press("ctrl+u", *"!svc=kube-system/kube-dns pod=cart-*")
        await pilot.press("enter")
        await pilot.press("3")

        def services():
            return [r[0] for r in rows(app, "services-table") if not r[0].startswith("  └")]
        await wait_for(pilot, lambda: "kube-system/kube-dns" not in services()
                       and "shop/cart" in services())
        await pilot.press("1")
        assert all("cart-" in r[2] or "cart-" in r[3] for r in rows(app, "flows-table"))


@pytest.mark.parametrize("engine", ENGINES)
async def test_agent_down_and_back(agents, engine):
    a, b = agents
    a.send(50)
    b.send(50)
    app = create_app(servers=[a.address, b.address], backoff_max_s=0.5, status_poll_s=0.5,
                     engine=engine)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: "nodes 2/2 connected" in text(app, "#status-bar"))
        await wait_for(pilot, lambda: "100 flows seen" in text(app, "#status-bar"))
        b.stop()
        await wait_for(pilot, lambda: "nodes 1/2 connected" in text(app, "#status-bar"),
                       what="node-b unavailable")
        await pilot.press("4")
        node_b = next(r for r in rows(app, "nodes-table") if r[0] == "node-b")
        assert (node_b[2] == "UNAVAILABLE" and "retrying in" in node_b[7]) \
            or node_b[2] == "reconnecting"
        # the other agent keeps streaming
        a.send(30)
        await wait_for(pilot, lambda: "130 flows seen" in text(app, "#status-bar"))
        # b comes back on the same address with 20 new flows: the stream resumes after the
        # last flow received, so b's first 50 are not counted twice
        b.store.extend(b.cluster.flows(20, node="node-b", spread_ns=1_000_000))
        b.start()
        await wait_for(pilot, lambda: "nodes 2/2 connected" in text(app, "#status-bar"),
                       what="node-b back")
        await wait_for(pilot, lambda: "150 flows seen" in text(app, "#status-bar"),
                       what="150 flows")
        await pilot.pause(0.5)
        assert "150 flows seen" in text(app, "#status-bar")
        await wait_for(pilot, lambda: next(r for r in rows(app, "nodes-table")
                                           if r[0] == "node-b")[2] == "connected")


def _write_log(path, flows, opener=open):
    with opener(path, "wt", encoding="utf-8") as fh:
        fh.write(json.dumps({"podflow_flow_log": {"version": 1, "node": "node-a"}}) + "\n")
        for i, f in enumerate(flows):
            resp = observer_pb2.GetFlowsResponse(node_name=f.node_name, time=f.time, flow=f)
            fh.write(json_format.MessageToJson(resp, preserving_proto_field_name=True,
                                               indent=None) + "\n")
            if i == 10:
                fh.write('{"flow": {"packets": \n')      # a torn line
                fh.write("not json at all\n")


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz"])
async def test_file_replay(tmp_path, cluster, suffix):
    t0 = 1_700_000_000_000_000_000
    a = cluster.flows(120, now_ns=t0 + 20_000_000_000, node="node-a", spread_ns=20_000_000_000)
    b = cluster.flows(80, now_ns=t0 + 20_000_000_000, node="node-b", spread_ns=20_000_000_000)
    opener = gzip.open if suffix.endswith(".gz") else open
    _write_log(tmp_path / f"a{suffix}", a, opener)
    _write_log(tmp_path / f"b{suffix}", b, opener)
    app = create_app(files=[str(tmp_path / f"a{suffix}"), str(tmp_path / f"b{suffix}")])
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: "200 flows seen" in text(app, "#status-bar"))
        await wait_for(pilot, lambda: len(rows(app, "flows-table")) == 150)
        flows = rows(app, "flows-table")
        assert {r[1] for r in flows} == {"node-a", "node-b"}
        assert [r[0] for r in flows] == sorted((r[0] for r in flows), reverse=True)  # merged
        assert "nodes 2/2 connected" in text(app, "#status-bar")
        await pilot.press("4")
        nodes = rows(app, "nodes-table")
        assert {r[2] for r in nodes} == {"replayed"}
        assert all("2 malformed, 1 skipped lines" in r[6] for r in nodes)
        await pilot.press("2")
        top = rows(app, "top-table")
        assert top[0][0] == "shop" and top[0][4] != "0 B/s"  # the replay's last seconds
        await pilot.press("slash", *"node=node-b", "enter")
        await pilot.press("1")
        await wait_for(pilot, lambda: len(rows(app, "flows-table")) == 80)


async def test_export_key(agents, tmp_path):
    sent = [agent.send(100) for agent in agents]
    expected = sum(1 for f in sent[0] if f.l4.WhichOneof("protocol") == "tcp")
    app = create_app(servers=[a.address for a in agents], export_dir=str(tmp_path / "out"))
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: "200 flows seen" in text(app, "#status-bar"))
        await wait_for(pilot, lambda: "200 kept" in text(app, "#status-bar"))
        await pilot.press("slash", *"node=node-a proto=tcp", "enter")
        await pilot.press("e")
        await wait_for(pilot, lambda: "exported" in text(app, "#status-bar"), what="export")
        status = text(app, "#status-bar")
        [path] = list((tmp_path / "out").glob("podflow-export-*.jsonl"))
        assert f"exported {expected} flows to {path}" in status
        lines = path.read_text().splitlines()
        parsed = [parse_response_line(line) for line in lines]
        assert parsed[0] is False                 # the header is skipped by readers
        flows = [p.flow for p in parsed[1:]]
        assert len(flows) == expected > 0
        assert all(f.node_name == "node-a" and f.l4.WhichOneof("protocol") == "tcp" for f in flows)
        # the export replays in the same views
    replay = create_app(files=[str(path)])
    async with replay.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: f"{expected} flows seen" in text(replay, "#status-bar"))


async def test_snapshot_waits_for_a_key_press_screen_update(agents, monkeypatch):
    """A snapshot arriving just after a key press is drawn after the key's own update. The
    quiet moment is stretched to 2 s here so a busy machine cannot make the first check
    late; the rule is the same at its real 150 ms."""
    monkeypatch.setattr(tui_app, "KEY_QUIET_S", 2.0)
    for agent in agents:
        agent.send(200)
    app = create_app(servers=[a.address for a in agents])
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.snapshot is not None and rows(app, "flows-table"),
                       what="first snapshot")
        await pilot.press("space", "space")  # pause and back to live: a key press just now
        app.engine.stop()                    # no more snapshots but the ones posted here
        flows = app.query_one("#flows")
        drawn = flows.rows
        snapshot = app.snapshot
        snapshot.flows = snapshot.flows[1:]  # a "newer" snapshot: one row fewer
        app._key_at = time.monotonic()
        app.post_message(SnapshotBuilt(snapshot))
        await pilot.pause(0.05)
        assert flows.rows is drawn           # held back while the key's update is drawn
        await wait_for(pilot, lambda: flows.rows == snapshot.flows,
                       what="the held-back snapshot drawn once the moment has passed")
