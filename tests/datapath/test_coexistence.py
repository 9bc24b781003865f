"""podflow next to another tool's programs that end the chain (Cilium's, on kernels >= 6.6: tcx
links returning TCX_PASS or a redirect). Exact counts on real veths:

- tcx: podflow's links go to the head of the chain, so behind nothing; a program put at the
  head later is passed again within about a second; a tool that keeps taking the head is
  left there after three moves, and the agent says so instead of fighting forever;
- tcx in front of a legacy chain: a clsact filter that ends the chain runs after podflow's
  tcx programs, so it hides nothing from them;
- legacy tc (clsact + cls_bpf): a foreign direct-action filter with a lower priority number
  runs first and can end the chain; podflow cannot see those packets and says so, naming the
  interface, the hook and the filter, in its log and in ServerStatus.
"""

from __future__ import annotations

import os
import time

import pytest

from tests.datapath.conftest import (AGENT_ARGS, podflow_filters, read_flow_log, record_totals,
                                     send_udp, server_status)
from tests.datapath.foreign import NAME, ForeignProgram

pytestmark = pytest.mark.root

COUNT, PAYLOAD = 1000, 100
FRAME = 14 + 20 + 8 + PAYLOAD


def _setup(lab_factory, lab_id: str):
    lab = lab_factory(f"{lab_id}{os.getpid() % 10000}")  # unique to this test process
    node = lab.add_node("node-a", kind="bridge", pod_cidr="10.244.1.0/24")
    client = node.add_pod("shop", "client-1")
    server = node.add_pod("shop", "server-1")
    return node, client, server


def _start(node, tmp_path, mode: str):
    log = tmp_path / f"{node.name}.flows.jsonl"
    agent = node.start_agent("--flow-log", str(log), "--attach-mode", mode, *AGENT_ARGS)
    return agent, log


def _sent_to_server(agent, log, client, server, sport: int) -> tuple[int, int]:
    """(packets, bytes) podflow recorded for the UDP flow client:sport -> server:7777 at the
    server's veth (TO_POD), once the agent stopped (every record flushed)."""
    assert agent.stop() == 0, agent.stderr_text()
    got = record_totals(read_flow_log(log), server.host_ifname, "TO_POD")
    return got.get(("udp", client.ip, server.ip, sport, 7777, False), (0, 0))


def _tcx_order(node, ifname: str, hook: str) -> list[str]:
    prefix = f"tcx-{hook}: "
    return [line[len(prefix):] for line in podflow_filters(node, ifname) if line.startswith(prefix)]


def _wait(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def test_tcx_counts_everything_behind_a_chain_ending_program_attached_before(
        ebpf_ready, lab_factory, tmp_path):
    node, client, server = _setup(lab_factory, "cxbefore")
    with ForeignProgram(node, server.host_ifname, "egress", "tcx-last"):
        assert _tcx_order(node, server.host_ifname, "egress") == [NAME]
        agent, log = _start(node, tmp_path, "tcx")
        assert _tcx_order(node, server.host_ifname, "egress") == ["podflow_egress", NAME]
        send_udp(client, server.ip, 7777, COUNT, PAYLOAD, sport=40100)
        assert _sent_to_server(agent, log, client, server, 40100) == (COUNT, COUNT * FRAME)
    assert "Traceback" not in agent.stderr_text()


def test_tcx_moves_back_to_the_head_when_a_program_is_put_before_it(ebpf_ready, lab_factory,
                                                                      tmp_path):
    node, client, server = _setup(lab_factory, "cxafter")
    agent, log = _start(node, tmp_path, "tcx")
    with ForeignProgram(node, server.host_ifname, "egress", "tcx-first"):
        _wait(lambda: _tcx_order(node, server.host_ifname, "egress") == ["podflow_egress", NAME],
              5, "podflow did not move back to the head of the chain")
        status = server_status(agent.address)
        assert not status.interface_notes  # first again: nothing limits what it sees
        send_udp(client, server.ip, 7777, COUNT, PAYLOAD, sport=40101)
        assert _sent_to_server(agent, log, client, server, 40101) == (COUNT, COUNT * FRAME)
    stderr = agent.stderr_text()
    assert (f"{server.host_ifname} egress: tcx program '{NAME}' was attached before podflow's; "
            "moved podflow back to the head of the chain") in stderr


def test_tcx_leaves_the_head_to_a_tool_that_keeps_taking_it_and_says_so(ebpf_ready,
                                                                        lab_factory, tmp_path):
    node, client, server = _setup(lab_factory, "cxfight")
    agent, log = _start(node, tmp_path, "tcx")
    with ForeignProgram(node, server.host_ifname, "egress", "tcx-fight"):
        def noted():
            notes = server_status(agent.address).interface_notes
            return [n for n in notes if n.interface == server.host_ifname and n.hook == "egress"]
        _wait(noted, 15, "no note about the program that keeps taking the head")
        (note,) = noted()
        assert f"tcx program '{NAME}' keeps taking the head of the chain (3 moves back" in note.note
        assert "podflow stays behind it" in note.note
        # it stops fighting: the other tool keeps the head
        time.sleep(2)
        assert _tcx_order(node, server.host_ifname, "egress") == [NAME, "podflow_egress"]
        send_udp(client, server.ip, 7777, 10, PAYLOAD, sport=40102)
        assert _sent_to_server(agent, log, client, server, 40102) == (0, 0)
    assert agent.stderr_text().count("moved podflow back to the head") == 3


def test_tcx_counts_everything_in_front_of_a_legacy_filter_that_ends_the_chain(
        ebpf_ready, lab_factory, tmp_path):
    """tcx links run before a clsact qdisc's filters: a foreign direct-action cls_bpf filter
    that ends the legacy chain cannot hide a packet from podflow's tcx programs."""
    node, client, server = _setup(lab_factory, "cxtcxlegacy")
    with ForeignProgram(node, server.host_ifname, "egress", "tc"):
        pass  # the filter stays after the helper exits
    agent, log = _start(node, tmp_path, "tcx")
    send_udp(client, server.ip, 7777, COUNT, PAYLOAD, sport=40104)
    assert _sent_to_server(agent, log, client, server, 40104) == (COUNT, COUNT * FRAME)
    assert "Traceback" not in agent.stderr_text()


def test_legacy_tc_behind_a_foreign_direct_action_filter_says_so(ebpf_ready, lab_factory,
                                                                  tmp_path):
    node, client, server = _setup(lab_factory, "cxlegacy")
    with ForeignProgram(node, server.host_ifname, "egress", "tc"):
        pass  # the filter stays after the helper exits
    agent, log = _start(node, tmp_path, "tc")
    notes = [n for n in server_status(agent.address).interface_notes
             if n.interface == server.host_ifname]
    assert [n.hook for n in notes] == ["egress"]
    assert (f"foreign cls_bpf filter '{NAME}' (pref 1, direct-action) runs before podflow's "
            "(pref 20304): packets it ends the chain for") in notes[0].note
    # the client's veth has no foreign filter: no note there
    send_udp(client, server.ip, 7777, COUNT, PAYLOAD, sport=40103)
    assert _sent_to_server(agent, log, client, server, 40103) == (0, 0)  # ended before us
    sent = record_totals(read_flow_log(log), client.host_ifname, "FROM_POD")
    assert sent[("udp", client.ip, server.ip, 40103, 7777, False)] == (COUNT, COUNT * FRAME)
    stderr = agent.stderr_text()
    assert f"{server.host_ifname} egress: foreign cls_bpf filter '{NAME}'" in stderr
    assert f"{client.host_ifname} egress" not in stderr


def test_legacy_tc_behind_a_tcx_program_says_so(ebpf_ready, lab_factory, tmp_path):
    node, client, server = _setup(lab_factory, "cxtctcx")
    with ForeignProgram(node, server.host_ifname, "egress", "tcx-last"):
        agent, log = _start(node, tmp_path, "tc")
        notes = [n for n in server_status(agent.address).interface_notes
                 if n.interface == server.host_ifname]
        assert [n.hook for n in notes] == ["egress"]
        assert f"tcx program '{NAME}' runs before podflow's tc filter" in notes[0].note
        send_udp(client, server.ip, 7777, 10, PAYLOAD, sport=40104)
        assert _sent_to_server(agent, log, client, server, 40104) == (0, 0)


def test_legacy_tc_notices_a_foreign_filter_added_later(ebpf_ready, lab_factory, tmp_path):
    node, _client, server = _setup(lab_factory, "cxlater")
    agent, _log = _start(node, tmp_path, "tc")
    assert not server_status(agent.address).interface_notes
    with ForeignProgram(node, server.host_ifname, "ingress", "tc"):
        pass

    def noted():
        return [n for n in server_status(agent.address).interface_notes
                if n.interface == server.host_ifname and n.hook == "ingress"]
    _wait(noted, 12, "a foreign filter added after the start was not noticed")
    assert f"'{NAME}' (pref 1, direct-action)" in noted()[0].note
    assert agent.stop() == 0
