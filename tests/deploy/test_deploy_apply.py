"""Re-applying the unchanged manifest changes nothing: no field the API server throws away.

The API server stores objects in Go structs; a plain (non-pointer) field marked `omitempty`
that holds its zero value (false, 0, "", an empty list or map) is not stored, so it is absent
from the live object. `kubectl apply` then finds it missing on every run and reports the
object `configured` (a GitOps tool shows permanent drift), e.g. `hostPID: false`,
`hostIPC: false`, `publishNotReadyAddresses: false`. Zero values of pointer fields are
stored and are fine; the few the chart sets on purpose are listed below, each with its type.

And `kubectl apply --server-side` must not conflict over a value the server fills in: the
downward API's `fieldRef.apiVersion` is defaulted to "v1", so the chart writes it."""

from __future__ import annotations

import re

import pytest
import yaml

from deploy_helpers import REPO, VALUE_SETS, render

# Zero values the server keeps because their Go fields are pointers (the kubernetes API
# types named): stating them is meaningful, and they round-trip unchanged.
STORED_ZERO_VALUES = {
    # core/v1 SecurityContext: Privileged *bool, AllowPrivilegeEscalation *bool,
    # RunAsUser *int64, RunAsNonRoot *bool.
    "DaemonSet:spec.template.spec.containers[*].securityContext.privileged",
    "DaemonSet:spec.template.spec.containers[*].securityContext.allowPrivilegeEscalation",
    "DaemonSet:spec.template.spec.containers[*].securityContext.runAsUser",
    "DaemonSet:spec.template.spec.containers[*].securityContext.runAsNonRoot",
    # apps/v1 RollingUpdateDaemonSet: MaxSurge *intstr.IntOrString.
    "DaemonSet:spec.updateStrategy.rollingUpdate.maxSurge",
}


# Fields that are Go maps (map[string]string): their entries are data, kept whatever the
# value (a node label selected with "" is a real selector).
MAP_FIELDS = {"labels", "annotations", "nodeSelector", "matchLabels"}


def zero_valued_paths(obj, path: str = "") -> list[str]:
    """Every field in `obj` whose value is false, 0, "", null, [] or {} (list indices as
    [*]). Scalars in lists (the core API group "" in `apiGroups`) and map entries are data,
    not fields, and are not reported."""
    if isinstance(obj, dict):
        if not obj:
            return [path]
        if path.rsplit(".", 1)[-1] in MAP_FIELDS:
            return []
        return [p for key, value in obj.items()
                for p in zero_valued_paths(value, f"{path}.{key}" if path else key)]
    if isinstance(obj, list):
        if not obj:
            return [path]
        return [p for i, value in enumerate(obj) if isinstance(value, (dict, list))
                for p in zero_valued_paths(value, f"{path}[{i}]")]
    if obj is None or obj is False or obj == "" or (obj == 0 and not isinstance(obj, bool)):
        return [path]
    return []


def _wildcard(path: str) -> str:
    return re.sub(r"\[\d+\]", "[*]", path)


def manifest_objects() -> list[dict]:
    return [d for d in yaml.safe_load_all((REPO / "deploy/podflow.yaml").read_text()) if d]


@pytest.mark.parametrize("values_name", list(VALUE_SETS))
def test_no_field_the_server_would_drop(values_name):
    found = {f"{obj['kind']}:{_wildcard(p)}" for obj in render(VALUE_SETS[values_name])
             for p in zero_valued_paths(obj)}
    assert found - STORED_ZERO_VALUES == set()


def test_the_checked_in_manifest_has_none_either():
    found = {f"{obj['kind']}:{_wildcard(p)}" for obj in manifest_objects()
             for p in zero_valued_paths(obj)}
    assert found - STORED_ZERO_VALUES == set()


def test_the_fields_this_issue_found_are_gone():
    text = (REPO / "deploy/podflow.yaml").read_text()
    for field in ("publishNotReadyAddresses", "hostPID", "hostIPC"):
        assert not re.search(rf"^\s*{field}:", text, re.M), field


def test_zero_value_finder_sees_what_it_should():
    """The checker itself, on the three fields the issue reported."""
    pod = {"metadata": {"labels": {"empty": ""}},
           "spec": {"hostPID": False, "hostIPC": False, "hostNetwork": True,
                    "nodeSelector": {"node-role.kubernetes.io/worker": ""},
                    "containers": [{"ports": [{"hostPort": 0, "containerPort": 4245}],
                                    "args": [], "command": ["", "x"]}]}}
    assert set(map(_wildcard, zero_valued_paths(pod))) == {
        "spec.hostPID", "spec.hostIPC", "spec.containers[*].ports[*].hostPort",
        "spec.containers[*].args"}


@pytest.mark.parametrize("values_name", list(VALUE_SETS))
def test_downward_api_references_name_their_api_version(values_name):
    for obj in render(VALUE_SETS[values_name]):
        if obj["kind"] != "DaemonSet":
            continue
        for container in obj["spec"]["template"]["spec"]["containers"]:
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("fieldRef")
                if ref is not None:
                    assert ref.get("apiVersion") == "v1", env
