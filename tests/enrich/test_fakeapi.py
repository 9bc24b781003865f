"""The fake API server's namespaced paths and label selectors, through the official client
as the TUI uses them: what a real API server answers, so tests built on the fake (the TUI's
port-forward fake too) can trust it."""

from __future__ import annotations

import json

import pytest
from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

from tests.enrich import objs
from tests.enrich.fakeapi import FakeAPIServer


def pod(name: str, ip: str, **kw) -> dict:
    """objs.pod with the container list the client's typed models require."""
    obj = objs.pod(name, ip, **kw)
    obj["spec"]["containers"] = [{"name": "app", "image": "app"}]
    return obj


@pytest.fixture(scope="module")
def core(tmp_path_factory):
    """A CoreV1Api against a fake holding pods in two namespaces."""
    api = FakeAPIServer().start()
    api.create(pod("cart-1", "10.0.0.2", labels={"app": "cart", "tier": "backend"}))
    api.create(pod("web-1", "10.0.0.3", labels={"app": "web", "tier": "frontend"}))
    api.create(pod("plain", "10.0.0.4"))
    api.create(pod("cart-9", "10.0.1.2", namespace="other", labels={"app": "cart"}))
    kubeconfig = api.write_kubeconfig(str(tmp_path_factory.mktemp("fakeapi") / "kubeconfig"))
    api_client = config.new_client_from_config(config_file=kubeconfig, context="fake")
    yield api, client.CoreV1Api(api_client)
    api_client.close()
    api.stop()


@pytest.mark.parametrize("selector,names", [
    pytest.param("", ["cart-1", "plain", "web-1"], id="none"),
    pytest.param("app=cart", ["cart-1"], id="equals"),
    pytest.param("app==cart", ["cart-1"], id="double-equals"),
    pytest.param("app!=cart", ["plain", "web-1"], id="not-equals-includes-unlabelled"),
    pytest.param("tier", ["cart-1", "web-1"], id="exists"),
    pytest.param("!tier", ["plain"], id="does-not-exist"),
    pytest.param("app=web,tier=frontend", ["web-1"], id="all-terms"),
    pytest.param("app=web,tier=backend", [], id="no-match"),
])
def test_namespaced_list_with_label_selector(core, selector, names):
    _api, v1 = core
    pods = v1.list_namespaced_pod("shop", label_selector=selector).items
    assert sorted(p.metadata.name for p in pods) == names


def test_cluster_wide_list_spans_namespaces(core):
    _api, v1 = core
    pods = v1.list_pod_for_all_namespaces(label_selector="app=cart").items
    assert sorted((p.metadata.namespace, p.metadata.name) for p in pods) == [
        ("other", "cart-9"), ("shop", "cart-1")]


def test_get_one_object_and_not_found(core):
    _api, v1 = core
    assert v1.read_namespaced_pod("cart-1", "shop").status.pod_ip == "10.0.0.2"
    with pytest.raises(ApiException) as err:
        v1.read_namespaced_pod("cart-9", "shop")  # exists, but in another namespace
    status = json.loads(err.value.body)
    assert (err.value.status, status["reason"], status["message"]) == (
        404, "NotFound", 'pods "cart-9" not found')


@pytest.mark.parametrize("call,code", [
    pytest.param(lambda v1: v1.list_namespaced_pod("shop", label_selector="app in (cart)"),
                 400, id="set-based-selector"),
    pytest.param(lambda v1: v1.connect_get_namespaced_pod_proxy("cart-1", "shop"),
                 404, id="subresource-not-served"),
])
def test_what_the_fake_does_not_serve_is_an_error(core, call, code):
    _api, v1 = core
    with pytest.raises(ApiException) as err:
        call(v1)
    assert err.value.status == code


def test_namespaced_watch_sees_only_its_namespace(core):
    api, v1 = core
    listed = v1.list_namespaced_pod("other")
    api.create(pod("db-1", "10.0.0.9"))                        # shop: not seen
    api.create(pod("cart-8", "10.0.1.3", namespace="other"))  # seen
    events = watch.Watch().stream(v1.list_namespaced_pod, "other",
                                  resource_version=listed.metadata.resource_version,
                                  timeout_seconds=1)
    assert [(e["type"], e["object"].metadata.name) for e in events] == [("ADDED", "cart-8")]
