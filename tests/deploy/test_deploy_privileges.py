"""The DaemonSet asks for nothing beyond the documented privileges, with any values: exactly
the documented capabilities (each one is justified in deploy/helm/podflow/README.md and
proven needed by test_deploy_capabilities.py), not privileged, no privilege escalation, the
documented seccomp choice, no host PID/IPC, host network, read-only host mounts (but the flow
log directory, when the user puts it on the node) and no bpffs, RBAC limited to get/list/watch
on what agent/metadata reads, and the TUI's Role exactly what `podflow tui --kubernetes` does."""

from __future__ import annotations

import pytest

from deploy_helpers import VALUE_SETS, agent_container, by_kind, one, render

DOCUMENTED_CAPABILITIES = {"BPF", "PERFMON", "NET_ADMIN", "SYS_RESOURCE"}
# Node paths the agent may mount, and whether it may write there.
HOST_PATHS_WRITABLE = {
    # No /sys/fs/bpf: the agent pins nothing, and the node's bpffs holds other tools' pins.
    "/sys/kernel/tracing": False,
    "/lib/modules": False,
    "/usr/src": False,
}
RBAC_RULES = {
    ("", "pods"), ("", "services"), ("", "nodes"), ("", "namespaces"),
    ("discovery.k8s.io", "endpointslices"), ("apps", "replicasets"), ("batch", "jobs"),
    ("networking.k8s.io", "networkpolicies"),
}


def _values_ids():
    return list(VALUE_SETS)


@pytest.mark.parametrize("values_name", _values_ids())
def test_exact_capabilities(values_name):
    values = VALUE_SETS[values_name]
    sc = agent_container(render(values))["securityContext"]
    expected = set(DOCUMENTED_CAPABILITIES)
    if values.get("compat", {}).get("sysAdmin"):
        expected.add("SYS_ADMIN")  # only for kernels < 5.8, which have no CAP_BPF/CAP_PERFMON
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert sorted(sc["capabilities"]["add"]) == sorted(expected)
    assert len(sc["capabilities"]["add"]) == len(expected), "duplicate capability"


@pytest.mark.parametrize("values_name", _values_ids())
def test_not_privileged_and_no_host_namespaces_but_network(values_name):
    objects = render(VALUE_SETS[values_name])
    pod = one(objects, "DaemonSet")["spec"]["template"]["spec"]
    container = agent_container(objects)
    sc = container["securityContext"]
    assert sc["privileged"] is False
    assert sc["readOnlyRootFilesystem"] is True
    sys_admin = bool(VALUE_SETS[values_name].get("compat", {}).get("sysAdmin"))
    # false unless SYS_ADMIN is added (Kubernetes rejects false together with SYS_ADMIN).
    assert sc["allowPrivilegeEscalation"] is sys_admin
    # The documented choice (README "Seccomp"): Unconfined unless the user picks a profile.
    chosen = VALUE_SETS[values_name].get("seccompProfile", {"type": "Unconfined"})
    assert sc["seccompProfile"] == chosen
    assert pod["hostNetwork"] is True
    assert pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert pod.get("hostPID", False) is False
    assert pod.get("hostIPC", False) is False
    assert "securityContext" not in pod  # no pod-level sysctls or supplemental groups
    assert "initContainers" not in pod and "ephemeralContainers" not in pod
    assert len(pod["containers"]) == 1
    assert all("hostPort" not in p or p["hostPort"] == p["containerPort"]
               for p in container["ports"])


@pytest.mark.parametrize("values_name", _values_ids())
def test_host_mounts_are_read_only(values_name):
    values = VALUE_SETS[values_name]
    objects = render(values)
    pod = one(objects, "DaemonSet")["spec"]["template"]["spec"]
    allowed = dict(HOST_PATHS_WRITABLE)
    flow_log_node_dir = values.get("flowLog", {}).get("hostPath")
    if flow_log_node_dir and values.get("flowLog", {}).get("enabled", True):
        allowed[flow_log_node_dir] = True  # the user asked for the flow log on the node
    host_volumes = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    assert set(host_volumes.values()) <= set(allowed)
    mounts = pod["containers"][0]["volumeMounts"]
    for mount in mounts:
        path = host_volumes.get(mount["name"])
        if path is None:
            continue
        if allowed[path]:
            assert not mount.get("readOnly", False), f"{path} should be writable"
        else:
            assert mount.get("readOnly") is True, f"{path} mounted writable"
    # Every volume is either from the node (above) or pod-local: no sockets, no devices.
    for volume in pod["volumes"]:
        assert set(volume) - {"name"} <= {"hostPath", "emptyDir", "secret"}, volume


def test_kernel_filesystems_and_headers_are_mounted_where_the_entrypoint_looks():
    container = agent_container(render())
    pod = one(render(), "DaemonSet")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    where = {}
    for m in container["volumeMounts"]:
        source = volumes[m["name"]].get("hostPath", {}).get("path", m["name"])
        where[source] = m["mountPath"]
    assert "/sys/fs/bpf" not in where
    assert where["/sys/kernel/tracing"] == "/sys/kernel/tracing"
    assert where["/lib/modules"] == "/host/lib/modules"
    assert where["/usr/src"] == "/usr/src"  # same path: the node's absolute links resolve
    assert volumes["lib-modules"]["emptyDir"] and where["lib-modules"] == "/lib/modules"
    assert where["tmp"] == "/tmp"  # bcc unpacks kheaders there; the root filesystem is read-only


@pytest.mark.parametrize("values_name", _values_ids())
def test_rbac_is_read_only_on_what_the_agent_reads(values_name):
    objects = render(VALUE_SETS[values_name])
    assert by_kind(objects, "RoleBinding") == []
    role = one(objects, "ClusterRole", one(objects, "ClusterRoleBinding")["roleRef"]["name"])
    granted = set()
    for rule in role["rules"]:
        assert sorted(rule["verbs"]) == ["get", "list", "watch"], rule
        assert set(rule) == {"apiGroups", "resources", "verbs"}, rule  # no resourceNames/URLs
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                assert "*" not in (group, resource)
                granted.add((group, resource))
    assert granted == RBAC_RULES
    binding = one(objects, "ClusterRoleBinding")
    account = one(objects, "ServiceAccount")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io",
                                  "kind": "ClusterRole", "name": role["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount",
                                    "name": account["metadata"]["name"],
                                    "namespace": account["metadata"]["namespace"]}]
    pod = one(objects, "DaemonSet")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == account["metadata"]["name"]


def test_rbac_matches_what_the_metadata_watcher_lists():
    """Every resource agent/enrich/k8s watches is granted, and nothing else."""
    watched = _watched_resources()
    if watched is None:
        pytest.skip("agent/enrich/k8s does not expose its watched resources as data")
    assert watched == RBAC_RULES


def _watched_resources() -> set[tuple[str, str]] | None:
    """(apiGroup, resource) pairs from agent.enrich.k8s.kubesource.RESOURCES ("endpointslices.discovery.k8s.io")."""
    try:
        from agent.enrich.k8s.kubesource import RESOURCES
    except ImportError:
        return None
    pairs = set()
    for res in RESOURCES:
        name, _, group = res.resource.partition(".")
        pairs.add((group, name))
    return pairs


# What `podflow tui --kubernetes` calls as its user (tui/sources.py): list the agent pods, then
# a port-forward to each, which Kubernetes 1.35+ authorises as get AND create.
TUI_RULES = {("", "pods", "list"), ("", "pods/portforward", "get"),
             ("", "pods/portforward", "create")}


@pytest.mark.parametrize("values_name", _values_ids())
def test_tui_role_is_what_the_tui_does_and_bound_to_no_one(values_name):
    values = VALUE_SETS[values_name]
    objects = render(values)
    if not values.get("tui", {}).get("rbac", {}).get("create", True):
        assert by_kind(objects, "Role") == []
        return
    role = one(objects, "Role")
    assert role["metadata"]["name"] == "podflow-tui"
    assert role["metadata"]["namespace"] == one(objects, "DaemonSet")["metadata"]["namespace"]
    assert role["metadata"]["labels"]["app.kubernetes.io/component"] == "tui"
    granted = {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"]
               for r in rule["resources"] for v in rule["verbs"]}
    assert granted == TUI_RULES
    assert by_kind(objects, "RoleBinding") == []
    # the Policies view's one cluster-wide list, also bound to no one
    policies = [r for r in by_kind(objects, "ClusterRole")
                if r["metadata"]["name"] == "podflow-tui-policies"]
    assert len(policies) == 1
    assert [(tuple(r["apiGroups"]), tuple(r["resources"]), tuple(r["verbs"]))
            for r in policies[0]["rules"]] == [(("networking.k8s.io",), ("networkpolicies",),
                                                ("list",))]
    assert not [b for b in by_kind(objects, "ClusterRoleBinding")
                if b["roleRef"]["name"] == "podflow-tui-policies"]




def test_documented_tui_rbac_names_get_and_create_on_pods_portforward():
    """Both READMEs tell a TUI user the same, complete set (the Role's rules)."""
    from deploy_helpers import REPO

    for readme in (REPO / "README.md", REPO / "deploy/helm/podflow/README.md"):
        text = " ".join(readme.read_text(encoding="utf-8").split())
        assert "`get` and `create` on `pods/portforward`" in text, readme
        assert "`list` on `pods`" in text, readme
