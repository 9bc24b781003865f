"""Suite-wide rules. As root (CI), tests marked `root` must RUN: when eBPF cannot load, the
session fails loudly instead of skipping. Without root they are skipped with a reason."""

from __future__ import annotations

import os

import pytest

IS_ROOT = os.geteuid() == 0


def pytest_collection_modifyitems(config, items):
    if IS_ROOT:
        return
    skip = pytest.mark.skip(reason="needs root (eBPF, network namespaces)")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def ebpf_ready():
    """Proves bcc can compile and load a TC program here; fails (never skips) as root."""
    if not IS_ROOT:
        pytest.skip("needs root")
    try:
        from bcc import BPF  # noqa: F401  (only place outside agent.datapath.loader: a readiness probe)

        prog = BPF(text=b"int probe(struct __sk_buff *skb) { return -1; }")
        prog.load_func(b"probe", BPF.SCHED_CLS)
    except Exception as exc:  # any failure here means the suite cannot test the datapath
        pytest.fail(f"running as root but eBPF cannot load: {exc!r}. "
                    "Run `make test` (it installs bcc and kernel headers).", pytrace=False)
    return True
