"""`--kubernetes`: agent pods found through the API (namespace + label selector), each
reached through the API server's port-forward, new and removed agents picked up while the
app runs. The API server is a faithful fake (tests/tui/fake_kube.py); the agents and the
port-forwarded gRPC streams are real."""

from __future__ import annotations

import pytest

from tests.tui.conftest import screen_lines, wait_for
from tests.tui.fake_kube import FakeKube, pod
from tests.tui.test_app import SIZE, rows, text
from tui.app import KubernetesOptions, create_app

LABELS = {"app.kubernetes.io/name": "podflow", "app.kubernetes.io/component": "agent"}


@pytest.fixture
def kube(tmp_path):
    fake = FakeKube().start()
    yield fake
    fake.stop()


async def test_agents_found_and_followed_through_port_forward(tmp_path, kube, agents):
    a, b = agents
    a.send(40)
    b.send(60)
    kube.add_pod(pod("podflow", "podflow-agent-a1", "node-a", LABELS), a.address)
    # not an agent (wrong labels) and not in the namespace: both ignored
    kube.add_pod(pod("podflow", "other", "node-a", {"app": "other"}), a.address)
    kube.add_pod(pod("default", "podflow-agent-x", "node-a", LABELS), a.address)
    options = KubernetesOptions(kubeconfig=kube.write_kubeconfig(str(tmp_path / "kubeconfig")),
                                context="fake", poll_s=0.3)
    app = create_app(kubernetes=options, backoff_max_s=0.5, status_poll_s=0.5)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: "nodes 1/1 connected" in text(app, "#status-bar"))
        await wait_for(pilot, lambda: "40 flows seen" in text(app, "#status-bar"))
        assert kube.forwards >= 1   # the stream really went through the port-forward

        # a new agent pod appears
        kube.add_pod(pod("podflow", "podflow-agent-b1", "node-b", LABELS), b.address)
        await wait_for(pilot, lambda: "nodes 2/2 connected" in text(app, "#status-bar"))
        await wait_for(pilot, lambda: "100 flows seen" in text(app, "#status-bar"))
        b.send(10)  # live flows keep coming through the forward
        await wait_for(pilot, lambda: "110 flows seen" in text(app, "#status-bar"))
        await pilot.press("4")
        nodes = {r[0]: r for r in rows(app, "nodes-table")}
        assert nodes["node-a"][2] == nodes["node-b"][2] == "connected"
        assert nodes["node-b"][1].startswith("127.0.0.1:")   # the local end of the forward
        assert "2 agent pods" in nodes["(discovery)"][7]

        # the agent pod is deleted: shown as gone, no longer counted as known
        kube.delete_pod("podflow", "podflow-agent-b1")
        await wait_for(pilot, lambda: "nodes 1/1 connected" in text(app, "#status-bar"))
        nodes = {r[0]: r for r in rows(app, "nodes-table")}
        assert nodes["node-b"][2] == "GONE"


async def test_api_server_unreachable_is_shown(tmp_path, kube):
    path = kube.write_kubeconfig(str(tmp_path / "kubeconfig"))
    kube.stop()
    app = create_app(kubernetes=KubernetesOptions(kubeconfig=path, poll_s=0.3))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("4")
        await wait_for(pilot, lambda: any(r[2] == "UNAVAILABLE" and "listing agent pods" in r[7]
                                          for r in rows(app, "nodes-table")), timeout_s=15)
        assert "nodes 0/0 connected" in text(app, "#status-bar")


FAILED_FORWARDS = {
    # how the API server refuses -> what the status bar and the Nodes view must say
    "forbidden": ('port-forward: 403 Forbidden: pods "podflow-agent-a1" is forbidden: User '
                  '"alice" cannot create resource "pods/portforward" in API group "" in the '
                  'namespace "podflow"'),
    "dial": ("port-forward: 500 Internal Server Error: error dialing backend: dial tcp "
             "10.0.0.5:10250: connect: connection refused"),
    "pod-port": ("port-forward: an error occurred forwarding 4245 -> 4245: error forwarding "
                 "port 4245 to pod podflow-agent-a1: failed to connect to localhost:4245"),
}


@pytest.mark.parametrize("how", FAILED_FORWARDS)
async def test_a_failed_port_forward_shows_the_api_servers_reason(tmp_path, kube, agents, how):
    """Not gRPC's view of the local proxy (`failed to connect to all addresses; ...
    127.0.0.1:42151`), but what the API server said: on the status bar and per agent in the
    Nodes view; gone once the port-forward works again."""
    a, _b = agents
    a.send(5)
    kube.add_pod(pod("podflow", "podflow-agent-a1", "node-a", LABELS), a.address)
    kube.break_portforward("podflow", "podflow-agent-a1", how)
    reason = FAILED_FORWARDS[how]
    options = KubernetesOptions(kubeconfig=kube.write_kubeconfig(str(tmp_path / "kubeconfig")),
                                context="fake", poll_s=0.3)
    app = create_app(kubernetes=options, backoff_max_s=0.5, status_poll_s=0.5)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: f"node-a: {reason}" in text(app, "#status-bar"),
                       what=f"the reason on the status bar: {text(app, '#status-bar')}")
        await pilot.press("4")

        def row():
            return {r[0]: r for r in rows(app, "nodes-table")}.get("node-a")
        await wait_for(pilot, lambda: row() is not None and row()[7].startswith(reason[:40]),
                       what="the reason in the Nodes view")
        assert row()[2] in ("UNAVAILABLE", "reconnecting")
        assert "127.0.0.1" not in row()[7] and "failed to connect to all" not in row()[7]
        assert any(reason[:40] in line for line in screen_lines(app))

        kube.break_portforward("podflow", "podflow-agent-a1", None)
        await wait_for(pilot, lambda: "nodes 1/1 connected" in text(app, "#status-bar"),
                       timeout_s=15, what="connected once the port-forward works")
        assert reason not in text(app, "#status-bar")
        await wait_for(pilot, lambda: "5 flows seen" in text(app, "#status-bar"),
                       what=f"the flows: {text(app, '#status-bar')}")
