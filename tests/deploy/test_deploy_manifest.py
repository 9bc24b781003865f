"""The checked-in plain manifest is exactly what the chart renders today, and
`kubectl apply -k deploy/` applies that same file."""

from __future__ import annotations

import subprocess
import sys

import yaml

from deploy_helpers import REPO, render, render_manifest


def test_checked_in_manifest_equals_a_fresh_render():
    checked_in = (REPO / "deploy/podflow.yaml").read_text(encoding="utf-8")
    assert checked_in == render_manifest.manifest_text(), (
        "deploy/podflow.yaml is stale: run `.venv/bin/python scripts/render-manifest.py`")


def test_render_script_check_mode_agrees():
    done = subprocess.run([sys.executable, str(REPO / "scripts/render-manifest.py"), "--check"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_manifest_holds_the_default_objects_plus_the_namespace_in_apply_order():
    docs = [d for d in yaml.safe_load_all((REPO / "deploy/podflow.yaml").read_text()) if d]
    # ClusterRoles: the agent's and the TUI's Policies view's; Services: hubble-peer and the
    # agents'
    assert [d["kind"] for d in docs] == ["Namespace", "ServiceAccount", "ClusterRole",
                                         "ClusterRole", "ClusterRoleBinding", "Role", "Service",
                                         "Service", "DaemonSet"]
    rendered = render({"namespace": {"create": True}})
    key = lambda o: (o["kind"], o["metadata"]["name"])  # noqa: E731
    assert sorted(docs, key=key) == sorted(rendered, key=key)


def test_kustomization_applies_the_manifest():
    kustomization = yaml.safe_load((REPO / "deploy/kustomization.yaml").read_text())
    assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert kustomization["kind"] == "Kustomization"
    assert kustomization["resources"] == ["podflow.yaml"]
