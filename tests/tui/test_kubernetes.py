"""`--kubernetes`: agent pods found through the API (namespace + label selector), each
reached through the API server's port-forward, new and removed agents picked up while the
app runs. The API server is a faithful fake (tests/tui/fake_kube.py); the agents and the
port-forwarded gRPC streams are real."""

from __future__ import annotations

import pytest

from tests.tui.conftest import wait_for
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
