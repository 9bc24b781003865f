"""`--metadata kubernetes` against the fake API server, through the real `kubernetes` client:
list+watch, resume from a version, bookmarks, relist on 410, API server down and back,
RBAC errors."""

from __future__ import annotations

import time

import pytest

from agent.errors import MetadataError
from agent.enrich.k8s.kubesource import KubeSource
from agent.enrich.k8s.state import ClusterState
from agent.stats import AgentStats
from tests.enrich import objs
from tests.enrich.fakeapi import FakeAPIServer
from podflow_api.v1 import flow_pb2
from tests.waiting import wait_until


@pytest.fixture
def api():
    server = FakeAPIServer(bookmark_interval_s=0.3).start()
    yield server
    server.stop()


@pytest.fixture
def connect(api, tmp_path):
    """connect(**kwargs) -> (state, stats, source), started against the fake."""
    sources = []

    def make(watch_timeout_s: int = 30, sync_timeout_s: float = 5.0, rbac_wait_s: float = 0.0):
        state, stats = ClusterState(), AgentStats("node-a", "test")
        kubeconfig = api.write_kubeconfig(str(tmp_path / "kubeconfig"))
        source = KubeSource(state, stats, kubeconfig=kubeconfig, context="fake",
                            watch_timeout_s=watch_timeout_s, sync_timeout_s=sync_timeout_s,
                            rbac_wait_s=rbac_wait_s)
        sources.append(source)
        source.start()
        return state, stats, source

    yield make
    for source in sources:
        source.stop()


def reflector(source: KubeSource, kind: str):
    return next(r for r in source.reflectors if r.spec.kind == kind)


def test_initial_list_names_everything(api, connect):
    api.create(objs.node("node-a", "172.18.0.2"))
    api.create(objs.pod("cart-1", "10.0.0.2", labels={"app": "cart"}))
    api.create(objs.service("cart", "10.96.0.12"))
    api.create(objs.endpointslice("cart", [("10.0.0.2", "cart-1", True)]))
    api.create(objs.replicaset("web-5f4", "web"))
    api.create(objs.pod("web-5f4-x", "10.0.0.3", owner=("ReplicaSet", "web-5f4")))
    state, stats, _ = connect()
    assert state.peer("10.0.0.2").endpoint.pod_name == "cart-1"
    assert state.peer("10.0.0.3").endpoint.workload.name == "web"
    assert state.peer("172.18.0.2").kind == flow_pb2.NODE
    svc, _port = state.service_at("10.96.0.12", 80, "TCP")
    assert state.has_endpoints(svc)
    assert not stats.metadata_stale and stats.metadata_error == ""


LIFECYCLE = [
    pytest.param(lambda api: api.create(objs.pod("new", "10.0.0.9")),
                 lambda s: s.peer("10.0.0.9").endpoint.pod_name == "new", id="created"),
    pytest.param(lambda api: api.update(objs.pod("cart-1", "10.0.0.2", labels={"app": "cart", "v": "2"})),
                 lambda s: "v=2" in s.peer("10.0.0.2").endpoint.labels, id="relabelled"),
    pytest.param(lambda api: api.delete("Pod", "shop", "cart-1"),
                 lambda s: s.peer("10.0.0.2").kind == flow_pb2.WORLD, id="deleted"),
    pytest.param(lambda api: (api.update(objs.pod("cart-1", "10.0.0.2", phase="Succeeded")),
                              api.create(objs.pod("cart-2", "10.0.0.2", created="2026-11-21T10:00:00Z"))),
                 lambda s: s.peer("10.0.0.2").endpoint.pod_name == "cart-2", id="ip-reused"),
]


@pytest.mark.parametrize("change,named", LIFECYCLE)
def test_pod_changes_are_reflected_within_a_second(api, connect, change, named):
    api.create(objs.pod("cart-1", "10.0.0.2", labels={"app": "cart"}))
    state, _stats, _ = connect()
    started = time.monotonic()
    change(api)
    assert state.wait_for(named, 1.0), "not reflected within a second"
    assert time.monotonic() - started < 1.0


def test_watch_resumes_from_last_version_without_relisting(api, connect):
    state, _stats, source = connect(watch_timeout_s=1)
    for i in range(20):  # keep writing while watches time out and reconnect
        api.create(objs.pod(f"p{i}", f"10.0.1.{i}"))
        time.sleep(0.12)
    assert state.wait_for(lambda s: all(f"10.0.1.{i}" in s.pod_by_ip for i in range(20)), 2.0)
    assert api.watch_count("pods") >= 2
    assert api.list_count("pods") == 1
    resumed = [r for r in api.requests if r.startswith("watch pods")][1]
    assert "resourceVersion=" in resumed and "allowWatchBookmarks=true" in resumed
    assert reflector(source, "Pod").relists == 0


def test_disconnects_resume_from_last_version(api, connect):
    state, stats, source = connect()
    for i in range(3):
        api.disconnect_watches()
        api.create(objs.pod(f"d{i}", f"10.0.2.{i}"))
        assert state.wait_for(lambda s, i=i: f"10.0.2.{i}" in s.pod_by_ip, 2.0)
    assert api.list_count("pods") == 1
    assert reflector(source, "Pod").relists == 0
    assert not stats.metadata_stale


def test_bookmarks_move_the_resume_version(api, connect):
    state, _stats, source = connect()
    listed = int(reflector(source, "Pod").resource_version)
    api.create(objs.service("other", "10.96.0.99"))  # moves the global version, not pods
    assert wait_until(lambda: int(reflector(source, "Pod").resource_version) > listed, 2.0)


def test_relist_after_410_gone(api, connect):
    api.create(objs.pod("gone-while-away", "10.0.3.1"))
    state, _stats, source = connect()
    assert "10.0.3.1" in state.pod_by_ip
    api.stop()
    api.delete("Pod", "shop", "gone-while-away")
    api.create(objs.pod("born-while-away", "10.0.3.2"))
    api.compact()  # the history the agent would resume from is gone
    api.start()
    assert state.wait_for(lambda s: "10.0.3.2" in s.pod_by_ip and "10.0.3.1" not in s.pod_by_ip, 10.0)
    assert reflector(source, "Pod").relists >= 1
    assert api.list_count("pods") >= 2


def test_api_server_down_then_back(api, connect):
    api.create(objs.pod("cart-1", "10.0.0.2"))
    state, stats, _ = connect()
    api.stop()
    assert wait_until(lambda: stats.metadata_stale, 5.0), "stale not reported"
    assert "API server unreachable" in stats.metadata_error
    assert state.peer("10.0.0.2").endpoint.pod_name == "cart-1"  # last state still served
    api.start()
    api.create(objs.pod("cart-2", "10.0.0.3"))
    assert state.wait_for(lambda s: "10.0.0.3" in s.pod_by_ip, 10.0)
    assert wait_until(lambda: not stats.metadata_stale and stats.metadata_error == "", 10.0)


def test_a_403_while_the_api_server_loads_its_rbac_is_waited_for(api, connect, caplog):
    """An API server that is still starting answers 403 until its RBAC is loaded: the agent
    waits (bounded), says "waiting for RBAC", and goes on once it is granted."""
    api.create(objs.pod("cart-1", "10.0.0.2"))
    api.forbid("pods", "list")
    state, stats, source = connect(sync_timeout_s=1.0, rbac_wait_s=30)
    assert stats.metadata_error == ("waiting for RBAC: missing RBAC permission: list pods (at "
                                    "cluster scope)")
    assert source.failure() is None
    api.allow("pods", "list")  # RBAC loaded
    assert state.wait_for(lambda s: "10.0.0.2" in s.pod_by_ip, 10.0)
    assert wait_until(lambda: stats.metadata_error == "" and not stats.metadata_stale, 5.0)
    assert source.failure() is None
    assert "waiting for RBAC: missing RBAC permission: list pods (at cluster scope); an API " \
           "server that is still starting refuses" in caplog.text
    assert "(pods)" not in caplog.text  # the resource is named once


def test_a_403_that_persists_past_the_wait_is_fatal(api, connect):
    api.forbid("endpointslices", "watch")
    _state, stats, source = connect(sync_timeout_s=1.0, rbac_wait_s=2.0)
    assert stats.metadata_error.startswith("waiting for RBAC: missing RBAC permission: watch "
                                           "endpointslices.discovery.k8s.io (at cluster scope)")
    assert source.failure() is None
    assert wait_until(lambda: source.failure() is not None, 5.0)
    assert source.failure() == (
        "missing RBAC permission: watch endpointslices.discovery.k8s.io (at cluster scope), "
        "still after waiting 2 s (--rbac-wait) for the API server's RBAC: grant it in the "
        "agent's ClusterRole")


def test_a_missing_permission_is_logged_naming_the_resource_once(api, connect, caplog):
    _state, stats, _source = connect()
    api.forbid("pods", "watch")
    api.disconnect_watches()
    assert wait_until(lambda: "watch pods" in stats.metadata_error, 3.0)
    line = next(r.getMessage() for r in caplog.records if "watch pods" in r.getMessage())
    assert line == ("missing RBAC permission: watch pods (at cluster scope); serving the last "
                    "known state")


def test_missing_rbac_for_pods_is_fatal_and_named(api, connect):
    api.forbid("pods", "list")
    with pytest.raises(MetadataError) as info:
        connect()
    assert "missing RBAC permission: list pods (at cluster scope)" in str(info.value)


def test_missing_rbac_for_endpointslices_names_the_group(api, connect):
    api.forbid("endpointslices", "list")
    with pytest.raises(MetadataError, match=r"list endpointslices\.discovery\.k8s\.io"):
        connect()


def test_missing_rbac_for_an_optional_resource_is_a_warning(api, connect):
    api.forbid("replicasets", "list")
    api.create(objs.pod("web-5f4-x", "10.0.0.3", owner=("ReplicaSet", "web-5f4"),
                        labels={"pod-template-hash": "5f4"}))
    state, stats, _ = connect()
    assert "missing RBAC permission: list replicasets.apps (at cluster scope)" in stats.metadata_error
    assert not stats.metadata_stale
    # Without ReplicaSets the Deployment still comes from the pod-template-hash.
    assert state.peer("10.0.0.3").endpoint.workload.kind == "Deployment"


def test_missing_watch_permission_at_start_is_fatal(api, connect):
    api.forbid("pods", "watch")
    with pytest.raises(MetadataError, match=r"missing RBAC permission: watch pods \(at cluster scope\)"):
        connect()


def test_permission_revoked_later_is_reported_as_stale(api, connect):
    state, stats, _ = connect()
    api.forbid("pods", "watch")
    api.disconnect_watches()
    assert wait_until(lambda: "missing RBAC permission: watch pods" in stats.metadata_error, 3.0)
    assert stats.metadata_stale
    api.allow("pods", "watch")
    api.create(objs.pod("after", "10.0.4.1"))
    assert state.wait_for(lambda s: "10.0.4.1" in s.pod_by_ip, 5.0)
    assert wait_until(lambda: not stats.metadata_stale, 2.0)


def test_large_lists_are_paged(api, connect):
    for i in range(1200):
        api.create(objs.pod(f"p{i}", f"10.1.{i // 250}.{i % 250}"))
    state, _stats, _ = connect()
    assert state.count("Pod") == 1200
    pages = [r for r in api.requests if r.startswith("list pods")]
    assert len(pages) == 3 and "continue=" in pages[1]


def test_api_server_away_at_start_then_arriving(api, connect):
    api.create(objs.pod("cart-1", "10.0.0.2"))
    api.stop()
    started = time.monotonic()
    state, stats, _ = connect()
    assert time.monotonic() - started < 5, "start must not wait for an absent API server"
    assert stats.metadata_stale and "API server unreachable" in stats.metadata_error
    api.start()
    assert state.wait_for(lambda s: "10.0.0.2" in s.pod_by_ip, 10.0)
    assert wait_until(lambda: not stats.metadata_stale, 5.0)
