"""The raw bpf(2) calls podflow makes itself, in one place: what bcc 0.26 does not offer
(tcx links, program queries) or offers too slowly (batch reads of the flow map).

- drain_map: BPF_MAP_LOOKUP_AND_DELETE_BATCH into numpy arrays: a half of the flow map that no
  program writes any more, read and emptied in a few syscalls (batch calls are about 10x
  faster than one per entry: ../shared/PERFORMANCE-NOTES.md);
- update_elem: single elements (the flow-map selector, map-in-map slots);
- link_create / query_tcx / prog_name / prog_id / link_id: tcx links (BPF_LINK_CREATE, at
  the head of the chain) and what is attached where, in which order, at which revision
  (BPF_PROG_QUERY), for agent/datapath/tc.py;
- probe_map_create: whether bpf() itself is allowed here (agent/datapath/environment.py
  tells a seccomp refusal from a missing capability with it).

Only file descriptors and bytes cross this module's edge; loading programs stays with bcc
(agent/datapath/loader.py). The attr structs follow union bpf_attr in <linux/bpf.h>.
"""

from __future__ import annotations

import ctypes
import os
import platform
from dataclasses import dataclass

import numpy as np

from agent.datapath import abi
from agent.errors import DatapathError

_SYS_BPF = {"x86_64": 321, "aarch64": 280, "ppc64le": 361,
            "s390x": 351}.get(platform.machine(), 321)  # __NR_bpf
BPF_MAP_CREATE = 0
BPF_PROG_GET_FD_BY_ID = 13
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_PROG_QUERY = 16
BPF_MAP_UPDATE_ELEM = 2
BPF_MAP_LOOKUP_AND_DELETE_BATCH = 25
BPF_LINK_CREATE = 28
BPF_LINK_DETACH = 34
TCX_ATTACH_TYPES = {"ingress": 46, "egress": 47}  # BPF_TCX_INGRESS, BPF_TCX_EGRESS
# BPF_F_BEFORE without a relative program or link: the new link goes first in the chain.
BPF_F_BEFORE = 1 << 3
BPF_MAP_TYPE_ARRAY = 2
_ENOENT = 2

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class _ElemAttr(ctypes.Structure):
    _fields_ = [("map_fd", ctypes.c_uint32), ("_pad", ctypes.c_uint32),
                ("key", ctypes.c_uint64), ("value", ctypes.c_uint64), ("flags", ctypes.c_uint64)]


class _BatchAttr(ctypes.Structure):
    _fields_ = [("in_batch", ctypes.c_uint64), ("out_batch", ctypes.c_uint64),
                ("keys", ctypes.c_uint64), ("values", ctypes.c_uint64),
                ("count", ctypes.c_uint32), ("map_fd", ctypes.c_uint32),
                ("elem_flags", ctypes.c_uint64), ("flags", ctypes.c_uint64)]


class _LinkCreateAttr(ctypes.Structure):
    _fields_ = [("prog_fd", ctypes.c_uint32), ("target_ifindex", ctypes.c_uint32),
                ("attach_type", ctypes.c_uint32), ("flags", ctypes.c_uint32),
                ("relative_fd", ctypes.c_uint32), ("_pad", ctypes.c_uint32),
                ("expected_revision", ctypes.c_uint64)]


class _ProgQueryAttr(ctypes.Structure):
    _fields_ = [("target_ifindex", ctypes.c_uint32), ("attach_type", ctypes.c_uint32),
                ("query_flags", ctypes.c_uint32), ("attach_flags", ctypes.c_uint32),
                ("prog_ids", ctypes.c_uint64), ("count", ctypes.c_uint32),
                ("_pad", ctypes.c_uint32), ("prog_attach_flags", ctypes.c_uint64),
                ("link_ids", ctypes.c_uint64), ("link_attach_flags", ctypes.c_uint64),
                ("revision", ctypes.c_uint64)]


class _MapCreateAttr(ctypes.Structure):
    _fields_ = [("map_type", ctypes.c_uint32), ("key_size", ctypes.c_uint32),
                ("value_size", ctypes.c_uint32), ("max_entries", ctypes.c_uint32),
                ("map_flags", ctypes.c_uint32)]


class _InfoAttr(ctypes.Structure):
    _fields_ = [("bpf_fd", ctypes.c_uint32), ("info_len", ctypes.c_uint32),
                ("info", ctypes.c_uint64)]


def bpf(cmd: int, attr: ctypes.Structure) -> int:
    """One bpf(2) call: its result (>= 0: a file descriptor or 0) or -errno."""
    rc = _libc.syscall(_SYS_BPF, cmd, ctypes.byref(attr), ctypes.sizeof(attr))
    return rc if rc >= 0 else -ctypes.get_errno()


# ---------------------------------------------------------------------------------------
# The flow map

VALUE_DTYPE = np.dtype([("packets", "<u8"), ("bytes", "<u8"), ("first_seen_ns", "<u8"),
                        ("last_seen_ns", "<u8"), ("tcp_flags", "<u8")])  # struct pf_flow_value
assert VALUE_DTYPE.itemsize == abi.VALUE_SIZE


def drain_map(map_fd: int, max_entries: int, key_size: int = abi.KEY_SIZE,
              value_dtype: np.dtype = VALUE_DTYPE, chunk: int = 8192,
              ) -> tuple[np.ndarray, np.ndarray]:
    """Read and delete every entry of a hash map with BPF_MAP_LOOKUP_AND_DELETE_BATCH:
    (keys as an (n, key_size) uint8 array, values as a `value_dtype` array). Exact only when
    no program writes the map meanwhile (the inactive half of the flow map)."""
    chunk = min(chunk, max(max_entries, 64))
    key_parts: list[np.ndarray] = []
    value_parts: list[np.ndarray] = []
    token_in, token_out = ctypes.c_uint32(0), ctypes.c_uint32(0)
    first = True
    while True:
        keys = np.empty((chunk, key_size), dtype=np.uint8)
        values = np.empty(chunk, dtype=value_dtype)
        attr = _BatchAttr(in_batch=0 if first else ctypes.addressof(token_in),
                          out_batch=ctypes.addressof(token_out),
                          keys=keys.ctypes.data, values=values.ctypes.data,
                          count=chunk, map_fd=map_fd)
        rc = bpf(BPF_MAP_LOOKUP_AND_DELETE_BATCH, attr)
        if rc not in (0, -_ENOENT):
            raise DatapathError(f"draining a flow map: {os.strerror(-rc)}")
        if attr.count:
            key_parts.append(keys[:attr.count])
            value_parts.append(values[:attr.count])
        if rc == -_ENOENT:
            break
        token_in.value = token_out.value
        first = False
    if not key_parts:
        return np.empty((0, key_size), np.uint8), np.empty(0, value_dtype)
    if len(key_parts) == 1:
        return key_parts[0], value_parts[0]
    return np.concatenate(key_parts), np.concatenate(value_parts)


def update_elem(map_fd: int, key: bytes, value: bytes, flags: int = 0) -> None:
    """BPF_MAP_UPDATE_ELEM. For a map-in-map, the kernel returns only once every program
    that may still use the old value has finished (synchronize_rcu)."""
    kbuf = ctypes.create_string_buffer(key, len(key))
    vbuf = ctypes.create_string_buffer(value, len(value))
    attr = _ElemAttr(map_fd=map_fd, key=ctypes.addressof(kbuf), value=ctypes.addressof(vbuf),
                     flags=flags)
    rc = bpf(BPF_MAP_UPDATE_ELEM, attr)
    if rc < 0:
        raise DatapathError(f"updating a map: {os.strerror(-rc)}")


def link_create(prog_fd: int, ifindex: int, direction: str, first: bool = False) -> int:
    """A tcx link of `prog_fd` on one hook ("ingress"/"egress") of an interface: its file
    descriptor (the link lives as long as it is open). Appended after the programs already
    there, or with `first` put at the head of the chain (BPF_F_BEFORE, no relative). OSError
    with the kernel's errno when it cannot be created."""
    attr = _LinkCreateAttr(prog_fd=prog_fd, target_ifindex=ifindex,
                           attach_type=TCX_ATTACH_TYPES[direction],
                           flags=BPF_F_BEFORE if first else 0)
    rc = bpf(BPF_LINK_CREATE, attr)
    if rc < 0:
        raise OSError(-rc, os.strerror(-rc))
    return rc


def link_detach(link_fd: int) -> None:
    """Detach a link now (BPF_LINK_DETACH), whoever else holds it; the fd stays to close."""
    rc = bpf(BPF_LINK_DETACH, ctypes.c_uint32(link_fd))
    if rc < 0:
        raise OSError(-rc, os.strerror(-rc))


@dataclass(frozen=True)
class TcxChain:
    """What runs on one tcx hook, in run order, and the hook's revision (the kernel bumps
    it at every attach, detach or replace: an unchanged revision means an unchanged chain)."""

    prog_ids: tuple[int, ...]
    link_ids: tuple[int, ...]  # 0 for a program attached without a link
    revision: int


def query_tcx(ifindex: int, direction: str, max_progs: int = 64) -> TcxChain:
    """The tcx chain of one hook of an interface (in the current network namespace)."""
    ids = (ctypes.c_uint32 * max_progs)()
    links = (ctypes.c_uint32 * max_progs)()
    attr = _ProgQueryAttr(target_ifindex=ifindex, attach_type=TCX_ATTACH_TYPES[direction],
                          prog_ids=ctypes.addressof(ids), link_ids=ctypes.addressof(links),
                          count=max_progs)
    rc = bpf(BPF_PROG_QUERY, attr)
    if rc < 0:
        raise OSError(-rc, f"querying tcx programs: {os.strerror(-rc)}")
    n = min(attr.count, max_progs)
    return TcxChain(tuple(ids[:n]), tuple(links[:n]), attr.revision)


def prog_ids(ifindex: int, direction: str, max_progs: int = 64) -> list[int]:
    """Ids of the programs attached with tcx to one hook of an interface (in the current
    network namespace), in run order."""
    return list(query_tcx(ifindex, direction, max_progs).prog_ids)


def _object_id(fd: int) -> int:
    """The id of a program or link from its file descriptor: bpf_prog_info.id and
    bpf_link_info.id both follow a u32 type field."""
    info = (ctypes.c_uint8 * 64)()
    attr = _InfoAttr(bpf_fd=fd, info_len=64, info=ctypes.addressof(info))
    rc = bpf(BPF_OBJ_GET_INFO_BY_FD, attr)
    if rc < 0:
        raise OSError(-rc, f"reading a bpf object's id: {os.strerror(-rc)}")
    return int.from_bytes(bytes(info[4:8]), "little")


def prog_id(prog_fd: int) -> int:
    return _object_id(prog_fd)


def link_id(link_fd: int) -> int:
    return _object_id(link_fd)


def probe_map_create() -> int:
    """Create (and close) a one-entry array map: 0 when bpf() works here, else the errno
    (EPERM: a seccomp filter, a missing capability or an LSM refused it)."""
    attr = _MapCreateAttr(map_type=BPF_MAP_TYPE_ARRAY, key_size=4, value_size=4, max_entries=1)
    rc = bpf(BPF_MAP_CREATE, attr)
    if rc < 0:
        return -rc
    os.close(rc)
    return 0


def prog_name(program_id: int) -> str | None:
    """A loaded program's name (bpf_prog_info.name), or None when it is gone."""
    fd = bpf(BPF_PROG_GET_FD_BY_ID, ctypes.c_uint32(program_id))
    if fd < 0:
        return None
    try:
        info = (ctypes.c_uint8 * 256)()
        attr = _InfoAttr(bpf_fd=fd, info_len=256, info=ctypes.addressof(info))
        if bpf(BPF_OBJ_GET_INFO_BY_FD, attr) != 0:
            return None
        return bytes(info[64:80]).split(b"\0", 1)[0].decode()  # bpf_prog_info.name
    finally:
        os.close(fd)
