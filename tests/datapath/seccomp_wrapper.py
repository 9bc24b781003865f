"""Run a command under a seccomp filter that refuses some system calls with EPERM, as a
container runtime's default profile does for bpf() and perf_event_open() without
CAP_SYS_ADMIN (Debian 12's podman; containers/common 0.60's for perf_event_open alone).

    python seccomp_wrapper.py bpf,perf_event_open -- COMMAND ARGS...

Sets no_new_privs (as Kubernetes does with allowPrivilegeEscalation: false), installs the
filter (classic BPF: refuse the named calls on x86_64 and aarch64, allow everything else),
then execs the command: the filter stays in force across execve, for every thread."""

import ctypes
import os
import platform
import struct
import sys

SYSCALLS = {"x86_64": {"bpf": 321, "perf_event_open": 298},
            "aarch64": {"bpf": 280, "perf_event_open": 241}}[platform.machine()]
PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2
BPF_LD_W_ABS, BPF_JEQ_K, BPF_RET_K = 0x20, 0x15, 0x06
SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO, EPERM = 0x7FFF0000, 0x00050000, 1


def install(names: list[str]) -> None:
    numbers = [SYSCALLS[name] for name in names]
    n = len(numbers)
    prog = [(BPF_LD_W_ABS, 0, 0, 0)]  # seccomp_data.nr
    for i, nr in enumerate(numbers, 1):
        prog.append((BPF_JEQ_K, n + 1 - i, 0, nr))  # match: jump to the ERRNO return
    prog.append((BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW))
    prog.append((BPF_RET_K, 0, 0, SECCOMP_RET_ERRNO | EPERM))
    filters = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *ins) for ins in prog))

    class Fprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    fprog = Fprog(len(prog), ctypes.addressof(filters))
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 or \
            libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "installing the seccomp filter")


if __name__ == "__main__":
    split = sys.argv.index("--")
    install(sys.argv[1].split(","))
    os.execvp(sys.argv[split + 1], sys.argv[split + 1:])
