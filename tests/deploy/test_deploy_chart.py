"""The chart renders offline (Helm's own library, via helm-python-sdk) with default and
non-default values, passes `helm lint --strict`, and every object it renders is a valid
Kubernetes object: no unknown fields, right types, required fields present."""

from __future__ import annotations

import helm_python as helm
import pytest

from deploy_helpers import (AGENT_SERVICE, CERT_MANAGER_USAGES, CHART_DIR, VALUE_SETS, by_kind, one, render,
                            strict_problems)


@pytest.mark.parametrize("values_name", list(VALUE_SETS))
def test_every_object_parses_into_typed_models(values_name):
    objects = render(VALUE_SETS[values_name])
    assert objects, "nothing rendered"
    problems = [p for obj in objects for p in strict_problems(obj)]
    assert problems == []


@pytest.mark.parametrize("values_name", list(VALUE_SETS))
def test_helm_lint_strict(values_name):
    report = helm.lint(CHART_DIR, VALUE_SETS[values_name], strict=True, namespace="podflow")
    # Severity 1 is INFO (e.g. "icon is recommended"); warnings and errors fail --strict.
    bad = [m for m in report["messages"] if m["severity"] >= 2]
    assert (bad, report["errors"]) == ([], [])


def test_strict_check_catches_an_unknown_field():
    """The checker itself: a misspelt key deep in the pod spec must be reported by path."""
    ds = one(render(), "DaemonSet")
    ds["spec"]["template"]["spec"]["containers"][0]["securityContext"]["privilegd"] = False
    assert strict_problems(ds) == [
        "DaemonSet/podflow-agent.spec.template.spec.containers[0].securityContext.privilegd: "
        "unknown field of V1SecurityContext"]


def test_strict_check_catches_a_wrong_type():
    svc = one(render(), "Service", AGENT_SERVICE)
    svc["spec"]["ports"][0]["port"] = "4245"
    assert strict_problems(svc) == ["Service/podflow-agent.spec.ports[0].port: expected int, got '4245'"]


ALWAYS = {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "Service", "DaemonSet"}


@pytest.mark.parametrize("values_name,kinds", [
    ("defaults", ALWAYS),
    ("plain-manifest", ALWAYS | {"Namespace"}),
    ("service-monitor", ALWAYS | {"ServiceMonitor"}),
    ("metrics-off", ALWAYS),
    ("tls-mtls-cert-manager", ALWAYS | {"Certificate"}),
    ("tls-server-only-own-secret", ALWAYS),
])
def test_optional_objects_only_when_asked(values_name, kinds):
    assert {o["kind"] for o in render(VALUE_SETS[values_name])} == kinds


def test_namespaced_objects_go_to_the_release_namespace():
    for obj in render({"namespace": {"create": True}}, namespace="observability"):
        if obj["kind"] in ("ClusterRole", "ClusterRoleBinding"):
            continue
        if obj["kind"] == "Namespace":
            assert obj["metadata"]["name"] == "observability"
        else:
            assert obj["metadata"]["namespace"] == "observability", obj["kind"]


def test_certificate_fills_the_secret_the_daemonset_mounts():
    objects = render(VALUE_SETS["tls-mtls-cert-manager"])
    cert = one(objects, "Certificate")["spec"]
    volumes = one(objects, "DaemonSet")["spec"]["template"]["spec"]["volumes"]
    secret_volumes = [v["secret"]["secretName"] for v in volumes if "secret" in v]
    assert secret_volumes == [cert["secretName"]]
    assert set(cert["usages"]) <= CERT_MANAGER_USAGES
    assert cert["issuerRef"] == {"name": "podflow-ca", "kind": "ClusterIssuer",
                                 "group": "cert-manager.io"}
    assert "podflow-agent.podflow.svc" in cert["dnsNames"]


def test_cert_manager_without_issuer_fails_with_the_value_name():
    with pytest.raises(helm.HelmError, match="tls.certManager.issuerRef.name"):
        render({"tls": {"enabled": True, "certManager": {"enabled": True}}})


def test_service_monitor_scrapes_the_metrics_port_of_the_service():
    objects = render(VALUE_SETS["service-monitor"])
    monitor = one(objects, "ServiceMonitor")
    svc = one(objects, "Service", AGENT_SERVICE)
    assert monitor["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["metrics"]
    assert "metrics" in [p["name"] for p in svc["spec"]["ports"]]
    assert monitor["metadata"]["labels"]["release"] == "prom"


def test_non_default_scheduling_values_reach_the_pod():
    values = VALUE_SETS["scheduling-and-agent-flags"]
    ds = one(render(values), "DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    # Helm merges maps with the defaults (a user removes a default key by setting it to null).
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux", **values["nodeSelector"]}
    assert pod["tolerations"] == values["tolerations"]
    assert pod["affinity"] == values["affinity"]
    assert pod["priorityClassName"] == "system-node-critical"
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["terminationGracePeriodSeconds"] == 90
    assert ds["spec"]["updateStrategy"]["rollingUpdate"] == {"maxUnavailable": "20%", "maxSurge": 0}
    container = pod["containers"][0]
    assert container["image"] == "registry.example/podflow:1.2.3"
    assert container["imagePullPolicy"] == "Always"
    assert container["resources"] == values["resources"]
    assert {"name": "PYTHONFAULTHANDLER", "value": "1"} in container["env"]
    assert ds["spec"]["template"]["metadata"]["labels"]["team"] == "net"
    assert ds["spec"]["template"]["metadata"]["annotations"] == {"example.com/team": "net"}


def test_defaults_run_everywhere_and_update_one_node_at_a_time():
    ds = one(render(), "DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    assert pod["tolerations"] == [{"operator": "Exists"}]
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert ds["spec"]["updateStrategy"] == {"type": "RollingUpdate",
                                            "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}}
    # Long enough for the agent to detach its programs and flush the flow log on SIGTERM.
    assert pod["terminationGracePeriodSeconds"] >= 30
    resources = pod["containers"][0]["resources"]
    assert set(resources) == {"requests", "limits"}
    assert set(resources["requests"]) == set(resources["limits"]) == {"cpu", "memory"}


def test_service_is_headless_and_selects_the_agents():
    objects = render()
    svc = one(objects, "Service", AGENT_SERVICE)
    ds = one(objects, "DaemonSet")
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["selector"] == ds["spec"]["selector"]["matchLabels"]
    assert by_kind(objects, "ServiceMonitor") == []


BAD_VALUES = [
    ("port-not-a-number", {"ports": {"grpc": "4245x"}}, "/ports/grpc"),
    ("misspelt-top-level-key", {"toleratons": []}, "'toleratons' not allowed"),
    ("extra-arg-not-a-flag", {"agent": {"extraArgs": ["syn-timeout=5"]}}, "/agent/extraArgs/0"),
    ("relative-flow-log-path", {"flowLog": {"path": "flows.jsonl"}}, "/flowLog/path"),
    ("unknown-log-level", {"agent": {"logLevel": "verbose"}}, "/agent/logLevel"),
    ("grace-too-short-to-detach", {"terminationGracePeriodSeconds": 5},
     "/terminationGracePeriodSeconds"),
    ("issuer-kind", {"tls": {"certManager": {"issuerRef": {"kind": "Vault"}}}},
     "/tls/certManager/issuerRef/kind"),
    ("localhost-seccomp-without-a-profile", {"seccompProfile": {"type": "Localhost"}},
     "/seccompProfile"),
    ("seccomp-profile-path-but-not-localhost",
     {"seccompProfile": {"type": "RuntimeDefault", "localhostProfile": "p.json"}},
     "/seccompProfile"),
    ("bpffs-is-no-longer-mounted", {"hostPaths": {"bpffs": "/sys/fs/bpf"}}, "'bpffs' not allowed"),
]


@pytest.mark.parametrize("values,where", [b[1:] for b in BAD_VALUES], ids=[b[0] for b in BAD_VALUES])
def test_schema_rejects_bad_values_naming_them(values, where):
    with pytest.raises(helm.HelmValuesError, match=where):
        render(values)
