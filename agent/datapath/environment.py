"""What the datapath needs from the node before bcc is asked for anything: capabilities,
kernel BTF, kernel headers, tracefs and bpffs.

bcc reports a missing header directory or capability with a wall of compiler output or a
bare EPERM; these checks fail first, saying what is missing and how to fix it. The
Datapath runs them at the start of `start()`.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform
from pathlib import Path

from agent.errors import DatapathError

log = logging.getLogger("podflow.datapath")

_CAP_NET_ADMIN, _CAP_SYS_ADMIN, _CAP_PERFMON, _CAP_BPF = 12, 21, 38, 39


def _effective_caps() -> int:
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0


def check_environment(caps: int | None = None, btf_path: str = "/sys/kernel/btf/vmlinux",
                      modules_dir: str = "/lib/modules",
                      kheaders_path: str = "/sys/kernel/kheaders.tar.xz") -> None:
    """Fail early, with what to do, on what bcc would report obscurely. (Parameters exist
    for tests; the agent uses the defaults.)"""
    caps = _effective_caps() if caps is None else caps
    has = lambda cap: bool(caps & (1 << cap))  # noqa: E731
    if not has(_CAP_NET_ADMIN) or not (has(_CAP_BPF) or has(_CAP_SYS_ADMIN)) \
            or not (has(_CAP_PERFMON) or has(_CAP_SYS_ADMIN)):
        raise DatapathError("the datapath needs root, or CAP_BPF + CAP_NET_ADMIN + "
                            "CAP_PERFMON (effective capabilities here: "
                            f"{caps:#x}); run the agent as root or grant them")
    if not os.path.exists(btf_path):
        raise DatapathError(f"no kernel BTF at {btf_path}: podflow needs a kernel built with "
                            "CONFIG_DEBUG_INFO_BTF=y")
    release = platform.release()
    build = Path(modules_dir) / release / "build"
    if not (build / "include").is_dir() and not os.path.exists(kheaders_path):
        raise DatapathError(
            f"bcc needs kernel headers at {build} (missing: {build / 'include'}). Install "
            f"them with `apt-get install linux-headers-{release}`, or, when the running "
            "kernel has no headers package, run scripts/setup-host.sh to link Debian's "
            "generic headers there (the documented fallback), or load the kheaders module "
            "(`modprobe kheaders`)")
    _ensure_mount("tracefs", "/sys/kernel/tracing")
    _ensure_mount("bpf", "/sys/fs/bpf")


def _ensure_mount(fstype: str, path: str) -> None:
    """`ip netns exec` gives a fresh /sys without tracefs or bpffs: mount them when we can
    (tracepoints of datapath extensions need tracefs)."""
    if os.path.ismount(path) or not os.path.isdir(path):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(fstype.encode(), path.encode(), fstype.encode(), 0, None) != 0:
        err = ctypes.get_errno()
        log.warning("%s is not mounted at %s and mounting it failed (%s); run `mount -t %s "
                    "%s %s`", fstype, path, os.strerror(err), fstype, fstype, path)
