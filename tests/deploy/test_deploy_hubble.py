"""The chart's Hubble pieces agree with the agent and with the upstream Hubble Relay and UI:
the agent's Hubble port and flags, the `hubble-peer` Service Relay dials (node-local), the
optional Relay and UI Deployments pointed at it, a Service named `hubble-relay` (what `hubble
observe -P` finds), TLS names Relay verifies, and valid, lint-clean objects."""

from __future__ import annotations

import re

import helm_python as helm
import pytest

import deploy_helpers
from agent.client import deploy_names
from deploy_helpers import CHART_DIR, agent_container, by_kind, one, render, strict_problems
from test_deploy_agreement import parse_agent_args

RELAY = {"hubble": {"relay": {"enabled": True}}}
RELAY_UI = {"hubble": {"relay": {"enabled": True}, "ui": {"enabled": True}}}
RELAY_TLS = {"hubble": {"relay": {"enabled": True}},
             "tls": {"enabled": True, "certManager": {
                 "enabled": True, "issuerRef": {"name": "podflow-ca", "kind": "ClusterIssuer"}}}}
VALUE_SETS = {"defaults": {}, "relay": RELAY, "relay-ui": RELAY_UI, "relay-tls": RELAY_TLS,
              "hubble-off": {"hubble": {"enabled": False}}}


@pytest.fixture(autouse=True)
def deployment_models(monkeypatch):
    """Relay and UI render kinds the agent's chart otherwise has not: check them too."""
    monkeypatch.setitem(deploy_helpers.MODELS, ("apps/v1", "Deployment"), "V1Deployment")
    monkeypatch.setitem(deploy_helpers.MODELS, ("v1", "ConfigMap"), "V1ConfigMap")


def container(objects, deployment: str, name: str) -> dict:
    pod = one(objects, "Deployment", deployment)["spec"]["template"]["spec"]
    return next(c for c in pod["containers"] if c["name"] == name)


def flag(args: list[str], name: str) -> str:
    values = [a.split("=", 1)[1] for a in args if a.startswith(f"{name}=")]
    assert len(values) == 1, (name, args)
    return values[0]


@pytest.mark.parametrize("values_name", list(VALUE_SETS))
def test_valid_objects_and_lint_clean(values_name):
    objects = render(VALUE_SETS[values_name])
    assert [p for obj in objects for p in strict_problems(obj)] == []
    report = helm.lint(CHART_DIR, VALUE_SETS[values_name], strict=True, namespace="podflow")
    assert ([m for m in report["messages"] if m["severity"] >= 2], report["errors"]) == ([], [])


def test_the_agent_serves_hubble_on_its_own_port_and_hubble_peer_selects_it():
    objects = render()
    agent = agent_container(objects)
    args = parse_agent_args(agent)
    ports = {p["name"]: p["containerPort"] for p in agent["ports"]}
    from agent.observer.hubble.server import DEFAULT_PORT

    assert args.hubble_listen == f":{deploy_names.HUBBLE_PORT}"
    assert DEFAULT_PORT == deploy_names.HUBBLE_PORT  # the agent's own default agrees
    assert ports[deploy_names.HUBBLE_PORT_NAME] == deploy_names.HUBBLE_PORT != 4244
    peer = one(objects, "Service", deploy_names.HUBBLE_PEER_SERVICE)["spec"]
    assert peer["internalTrafficPolicy"] == "Local"
    assert peer["ports"] == [{"name": "peer-service", "port": 80, "targetPort": "hubble",
                              "protocol": "TCP"}]
    pod_labels = one(objects, "DaemonSet")["spec"]["template"]["metadata"]["labels"]
    assert peer["selector"].items() <= pod_labels.items()
    # The agent finds its peers by the same labels (agent/observer/hubble/peer.py).
    assert deploy_names.AGENT_LABELS.items() <= pod_labels.items()
    assert by_kind(objects, "Deployment") == []  # Relay and UI only when asked


def test_hubble_off_turns_the_agents_server_off_too():
    objects = render({"hubble": {"enabled": False}})
    agent = agent_container(objects)
    assert parse_agent_args(agent).hubble_listen == ""  # not the default beside --listen
    assert deploy_names.HUBBLE_PORT_NAME not in {p["name"] for p in agent["ports"]}
    assert [s["metadata"]["name"] for s in by_kind(objects, "Service")] == ["podflow-agent"]


def test_relay_reads_the_peer_service_and_is_found_by_its_name():
    objects = render(RELAY)
    relay = container(objects, "hubble-relay", "hubble-relay")
    assert relay["args"][0] == "serve"
    peer_port = one(objects, "Service", "hubble-peer")["spec"]["ports"][0]["port"]
    assert flag(relay["args"], "--peer-service") == \
        f"hubble-peer.podflow.svc.cluster.local.:{peer_port}"
    assert "--disable-client-tls" in relay["args"] and "--disable-server-tls" in relay["args"]
    listen = int(flag(relay["args"], "--listen-address").rsplit(":", 1)[1])
    health = int(flag(relay["args"], "--health-listen-address").rsplit(":", 1)[1])
    assert {p["name"]: p["containerPort"] for p in relay["ports"]} == {"grpc": listen}
    assert relay["readinessProbe"]["grpc"]["port"] == relay["livenessProbe"]["grpc"]["port"] \
        == health
    service = one(objects, "Service", deploy_names.HUBBLE_RELAY_SERVICE)
    assert service["spec"]["ports"][0]["targetPort"] == "grpc"
    deployment = one(objects, "Deployment", "hubble-relay")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    # never mistaken for an agent by the agents' Services or their peer list
    agent_selector = one(objects, "Service", "podflow-agent")["spec"]["selector"]
    assert not agent_selector.items() <= pod_labels.items()
    assert not deploy_names.AGENT_LABELS.items() <= pod_labels.items()
    security = relay["securityContext"]
    assert security["readOnlyRootFilesystem"] and security["capabilities"]["drop"] == ["ALL"]


def test_with_tls_relay_presents_the_agents_certificate_and_the_names_match():
    objects = render(RELAY_TLS)
    relay = container(objects, "hubble-relay", "hubble-relay")
    assert "--disable-client-tls" not in relay["args"]
    mount = relay["volumeMounts"][0]["mountPath"]
    for name, file in (("--tls-hubble-client-cert-file", "tls.crt"),
                       ("--tls-hubble-client-key-file", "tls.key"),
                       ("--tls-hubble-server-ca-files", "ca.crt")):
        assert flag(relay["args"], name) == f"{mount}/{file}"
    pod = one(objects, "Deployment", "hubble-relay")["spec"]["template"]["spec"]
    certificate = one(objects, "Certificate")["spec"]
    assert pod["volumes"][0]["secret"]["secretName"] == certificate["secretName"]
    assert one(objects, "Service", "hubble-peer")["spec"]["ports"][0]["port"] == 443
    # Relay checks the peer service against Cilium's fixed name, each agent against the
    # name Peer/Notify gives: both must be in the certificate.
    assert "hubble-peer.default.hubble-grpc.cilium.io" in certificate["dnsNames"]
    server_name = parse_agent_args(agent_container(objects)).hubble_tls_server_name
    assert server_name in certificate["dnsNames"]


def test_the_ui_reads_relay_through_its_backend():
    objects = render(RELAY_UI)
    backend = container(objects, "hubble-ui", "backend")
    env = {e["name"]: e["value"] for e in backend["env"]}
    relay_port = one(objects, "Service", "hubble-relay")["spec"]["ports"][0]["port"]
    assert env["FLOWS_API_ADDR"] == f"hubble-relay:{relay_port}"
    nginx = one(objects, "ConfigMap", "hubble-ui-nginx")["data"]["nginx.conf"]
    assert f"proxy_pass http://127.0.0.1:{env['EVENTS_SERVER_PORT']};" in nginx
    frontend = container(objects, "hubble-ui", "frontend")
    listen = int(re.search(r"listen (\d+);", nginx).group(1))
    assert {p["name"]: p["containerPort"] for p in frontend["ports"]} == {"http": listen}
    assert one(objects, "Service", "hubble-ui")["spec"]["ports"][0]["targetPort"] == "http"
    role = one(objects, "ClusterRole", "podflow-hubble-ui")
    assert all(rule["verbs"] == ["get", "list", "watch"] for rule in role["rules"])


def test_the_ui_without_relay_is_refused_naming_the_value():
    with pytest.raises(Exception, match="hubble.ui.enabled needs hubble.relay.enabled"):
        render({"hubble": {"ui": {"enabled": True}}})


@pytest.mark.parametrize("values,where", [
    ({"hubble": {"port": "4247x"}}, "/hubble/port"),
    ({"hubble": {"relay": {"enabeld": True}}}, "'enabeld' not allowed"),
    ({"hubble": {"ui": {"backend": {"image": {"tag": ""}}}}}, "/hubble/ui/backend/image/tag"),
], ids=["port", "misspelt", "empty-tag"])
def test_schema_rejects_bad_hubble_values(values, where):
    with pytest.raises(helm.HelmValuesError, match=where):
        render(values)


# Zero values Relay's and UI's Deployments state on purpose, all pointer fields the API server
# stores (core/v1 PodSpec.AutomountServiceAccountToken *bool, SecurityContext
# .AllowPrivilegeEscalation *bool, Volume.EmptyDir *EmptyDirVolumeSource).
HUBBLE_STORED_ZERO_VALUES = {
    "Deployment:spec.template.spec.automountServiceAccountToken",
    "Deployment:spec.template.spec.containers[*].securityContext.allowPrivilegeEscalation",
    "Deployment:spec.template.spec.volumes[*].emptyDir",
}


@pytest.mark.parametrize("values_name", ["relay", "relay-ui", "relay-tls"])
def test_relay_and_ui_have_no_field_the_server_would_drop(values_name):
    from test_deploy_apply import STORED_ZERO_VALUES, _wildcard, zero_valued_paths

    found = {f"{obj['kind']}:{_wildcard(p)}" for obj in render(VALUE_SETS[values_name])
             for p in zero_valued_paths(obj)}
    assert found - STORED_ZERO_VALUES - HUBBLE_STORED_ZERO_VALUES == set()
