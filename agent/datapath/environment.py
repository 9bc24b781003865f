"""What the datapath needs from the node before bcc is asked for anything: capabilities,
kernel BTF, kernel headers, a bpf() that answers, and tracefs.

bcc reports a missing header directory or capability with a wall of compiler output or a
bare EPERM, and blames neither; these checks fail first, saying what is missing and how to
fix it. The Datapath runs them at the start of `start()`.

An EPERM from bpf() or perf_event_open() has three possible causes, and each has another
fix: a missing capability (named exactly: "missing CAP_BPF"), a seccomp filter (the container
runtime's default profile keeps both calls for CAP_SYS_ADMIN on several runtimes; named with
the filter mode read from /proc/self/status), or a Linux security module. `explain_refusal`
tells them apart for the loader, which also uses it when the drop tracer cannot attach.

No bpffs here: podflow pins nothing, and the chart does not mount the node's /sys/fs/bpf.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import platform
from collections.abc import Callable
from pathlib import Path

from agent.datapath import bpfsys
from agent.errors import DatapathError

log = logging.getLogger("podflow.datapath")

_CAP_NET_ADMIN, _CAP_SYS_ADMIN, _CAP_PERFMON, _CAP_BPF = 12, 21, 38, 39

# Each capability the datapath needs, what for, and whether CAP_SYS_ADMIN stands in for it
# (kernels before 5.8 had no CAP_BPF/CAP_PERFMON; CAP_SYS_ADMIN still grants both).
NEEDED_CAPABILITIES = (
    ("CAP_BPF", _CAP_BPF, True, "bpf(): maps and programs"),
    ("CAP_NET_ADMIN", _CAP_NET_ADMIN, False, "TC/tcx programs, qdiscs and filters"),
    ("CAP_PERFMON", _CAP_PERFMON, True,
     "the drop tracer's program and perf_event_open() of skb:kfree_skb"),
)
NEEDS = "the datapath needs root, or CAP_BPF + CAP_NET_ADMIN + CAP_PERFMON"
SECCOMP_MODES = {0: "disabled", 1: "strict", 2: "filter"}

_SYS_PERF_EVENT_OPEN = {"x86_64": 298, "aarch64": 241, "ppc64le": 319,
                        "s390x": 331}.get(platform.machine(), 298)
_PERF_TYPE_SOFTWARE, _PERF_TYPE_TRACEPOINT = 1, 2
_PERF_COUNT_SW_DUMMY = 9
_PERF_FLAG_FD_CLOEXEC = 8
_PERF_ATTR_SIZE = 128  # PERF_ATTR_SIZE_VER7: every kernel since 5.13 takes it, older ones too

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _status_fields(path: str = "/proc/self/status") -> dict[str, str]:
    with open(path, encoding="ascii") as fh:
        return dict(line.rstrip("\n").split(":", 1) for line in fh if ":" in line)


def _effective_caps() -> int:
    return int(_status_fields().get("CapEff", "0").strip() or "0", 16)


def missing_capabilities(caps: int) -> list[str]:
    """The names of the capabilities the datapath needs and `caps` (a CapEff bit mask)
    lacks, e.g. ["CAP_BPF"]."""
    has = lambda cap: bool(caps & (1 << cap))  # noqa: E731
    return [name for name, bit, sys_admin_will_do, _why in NEEDED_CAPABILITIES
            if not has(bit) and not (sys_admin_will_do and has(_CAP_SYS_ADMIN))]


def seccomp_mode(status_path: str = "/proc/self/status") -> tuple[int, int]:
    """(Seccomp mode, number of filters) of this process: 0 none, 1 strict, 2 filter."""
    fields = _status_fields(status_path)
    mode = int(fields.get("Seccomp", "0").strip() or "0")
    filters = int(fields.get("Seccomp_filters", "0").strip() or "0")
    return mode, filters


def explain_refusal(syscall: str, capability: str, err: int,
                    status_path: str = "/proc/self/status") -> str:
    """Why `syscall()` failed with `err` although the capability checks passed: a seccomp
    filter (the usual cause in a container), else a security module. One sentence with the
    fix, for an operator."""
    mode, filters = seccomp_mode(status_path)
    code = errno.errorcode.get(err, str(err))
    if mode == 2:
        return (f"{syscall}() was refused ({code}) although the agent holds {capability}: a "
                f"seccomp filter is in force (/proc/self/status Seccomp: 2, filter mode, "
                f"{filters} filter{'s' if filters != 1 else ''}), most likely the container "
                f"runtime's default profile, which allows {syscall}() only with CAP_SYS_ADMIN "
                "on several runtimes. Run the agent with seccompProfile Unconfined (the "
                "chart's default) or a Localhost profile that allows bpf() and "
                "perf_event_open()")
    if mode == 1:
        return (f"{syscall}() was refused ({code}): the agent runs in strict seccomp mode "
                "(/proc/self/status Seccomp: 1), which allows no other system call")
    hint = ""
    if syscall == "bpf" and _kernel_before(5, 11):
        hint = ("; on this kernel (before 5.11) bpf memory is charged to RLIMIT_MEMLOCK: "
                "grant CAP_SYS_RESOURCE so it can be raised")
    return (f"{syscall}() was refused ({code}) although the agent holds {capability} and no "
            "seccomp filter is in force (/proc/self/status Seccomp: 0): a Linux security "
            f"module (lockdown, SELinux, AppArmor) refuses it{hint}")


def _kernel_before(major: int, minor: int) -> bool:
    try:
        parts = platform.release().split("-")[0].split(".")
        return (int(parts[0]), int(parts[1])) < (major, minor)
    except (ValueError, IndexError):
        return False


def probe_perf_event_open(tracepoint: str = "skb/kfree_skb",
                          tracefs: str = "/sys/kernel/tracing") -> int:
    """Open (and close) a perf event as the drop tracer's attach does (the tracepoint, or
    a software dummy event when tracefs does not name it): 0, or the errno."""
    attr = (ctypes.c_uint8 * _PERF_ATTR_SIZE)()
    try:
        config = int(Path(tracefs, "events", tracepoint, "id").read_text())
        kind, pid, cpu = _PERF_TYPE_TRACEPOINT, -1, 0
    except (OSError, ValueError):
        config, kind, pid, cpu = _PERF_COUNT_SW_DUMMY, _PERF_TYPE_SOFTWARE, 0, -1
    ctypes.c_uint32.from_buffer(attr, 0).value = kind
    ctypes.c_uint32.from_buffer(attr, 4).value = _PERF_ATTR_SIZE
    ctypes.c_uint64.from_buffer(attr, 8).value = config
    ctypes.c_uint64.from_buffer(attr, 16).value = 1  # sample_period
    fd = _libc.syscall(_SYS_PERF_EVENT_OPEN, ctypes.byref(attr), pid, cpu, -1,
                       _PERF_FLAG_FD_CLOEXEC)
    if fd < 0:
        return ctypes.get_errno()
    os.close(fd)
    return 0


def check_environment(caps: int | None = None, btf_path: str = "/sys/kernel/btf/vmlinux",
                      modules_dir: str = "/lib/modules",
                      kheaders_path: str = "/sys/kernel/kheaders.tar.xz",
                      bpf_probe: Callable[[], int] = bpfsys.probe_map_create) -> None:
    """Fail early, with what to do, on what bcc would report obscurely. (Parameters exist
    for tests; the agent uses the defaults.)"""
    caps = _effective_caps() if caps is None else caps
    missing = missing_capabilities(caps)
    if missing:
        why = "; ".join(f"{name}: {what}" for name, _bit, _sa, what in NEEDED_CAPABILITIES
                        if name in missing)
        raise DatapathError(f"missing {', '.join(missing)}: {NEEDS} ({why}; effective "
                            f"capabilities here: {caps:#x}); run the agent as root or grant "
                            "them (the DaemonSet's securityContext.capabilities.add)")
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
    err = bpf_probe()
    if err:
        raise DatapathError(explain_refusal("bpf", "CAP_BPF", err))
    _ensure_tracefs("/sys/kernel/tracing")


def _ensure_tracefs(path: str) -> None:
    """`ip netns exec` gives a fresh /sys without tracefs: mount it when we can (the drop
    tracer's tracepoint needs it; in a pod the node's tracefs is mounted instead)."""
    if os.path.ismount(path) or not os.path.isdir(path):
        return
    if _libc.mount(b"tracefs", path.encode(), b"tracefs", 0, None) != 0:
        err = ctypes.get_errno()
        log.warning("tracefs is not mounted at %s and mounting it failed (%s); run `mount -t "
                    "tracefs tracefs %s`", path, os.strerror(err), path)
