"""Kernel struct layouts and enum names read from the running kernel's BTF.

The drop tracer reads packet headers out of `struct sk_buff`, whose layout changes between
kernel versions and configs; header files on the host may not match the running kernel (here
they do not). /sys/kernel/btf/vmlinux describes the running kernel exactly, so the offsets
passed to bpf/drop.h as -D cflags and the names of `enum skb_drop_reason` come from it.

The BTF format (Documentation/bpf/btf.rst) is parsed here in plain Python; the result is
cached in memory and on disk (keyed by the BTF file's identity), so agent restarts are cheap.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import asdict, dataclass, field
from functools import lru_cache

from agent.errors import BtfError

VMLINUX = "/sys/kernel/btf/vmlinux"
CACHE_DIR = "/run/podflow"
BTF_MAGIC = 0xEB9F

# BTF kinds (include/uapi/linux/btf.h)
INT, PTR, ARRAY, STRUCT, UNION, ENUM, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT = range(1, 12)
FUNC, FUNC_PROTO, VAR, DATASEC, FLOAT, DECL_TAG, TYPE_TAG, ENUM64 = range(12, 20)
_MODIFIERS = (TYPEDEF, VOLATILE, CONST, RESTRICT, TYPE_TAG)

# Fields bpf/drop.h reads: (struct, member) -> the -D name carrying its byte offset.
FIELDS = {
    ("sk_buff", "head"): "PF_SKB_HEAD_OFF",
    ("sk_buff", "data"): "PF_SKB_DATA_OFF",
    ("sk_buff", "len"): "PF_SKB_LEN_OFF",
    ("sk_buff", "dev"): "PF_SKB_DEV_OFF",
    ("sk_buff", "protocol"): "PF_SKB_PROTOCOL_OFF",
    ("sk_buff", "network_header"): "PF_SKB_NETWORK_HEADER_OFF",
    ("sk_buff", "transport_header"): "PF_SKB_TRANSPORT_HEADER_OFF",
    ("net_device", "ifindex"): "PF_NETDEV_IFINDEX_OFF",
    # dev -> its network namespace's inode number: drops are traced machine-wide, an agent
    # reports those of its own namespace (the node's).
    ("net_device", "nd_net"): "PF_NETDEV_ND_NET_OFF",
    ("net", "ns.inum"): "PF_NET_NS_INUM_OFF",
    # The skb:kfree_skb tracepoint's record (what the tracepoint program's ctx points to).
    ("trace_event_raw_kfree_skb", "skbaddr"): "PF_TP_SKBADDR_OFF",
    ("trace_event_raw_kfree_skb", "protocol"): "PF_TP_PROTOCOL_OFF",
    ("trace_event_raw_kfree_skb", "reason"): "PF_TP_REASON_OFF",
}
# Expected member sizes: drop.h reads exactly these widths.
SIZES = {"nd_net": 8, "ns.inum": 4, "head": 8, "data": 8, "len": 4, "dev": 8, "protocol": 2, "network_header": 2,
         "transport_header": 2, "ifindex": 4, "skbaddr": 8, "reason": 4}
DROP_REASON_PREFIX = "SKB_DROP_REASON_"


class Btf:
    """An index over one BTF blob: enough to find struct members and enum values."""

    def __init__(self, blob: bytes):
        if len(blob) < 24:
            raise BtfError("BTF blob shorter than its header")
        magic, _version, _flags, hdr_len = struct.unpack_from("<HBBI", blob)
        if magic != BTF_MAGIC:
            raise BtfError(f"bad BTF magic {magic:#x} (big-endian BTF is not supported)")
        type_off, type_len, str_off, str_len = struct.unpack_from("<IIII", blob, 8)
        self._blob = blob
        self._types_start = hdr_len + type_off
        self._types_end = self._types_start + type_len
        self._str_start = hdr_len + str_off
        self._str_end = self._str_start + str_len
        if self._types_end > len(blob) or self._str_end > len(blob):
            raise BtfError("BTF sections run past the end of the blob")
        self._offsets: list[int] = [0]     # type id -> offset of its btf_type (id 0 = void)
        self._by_name: dict[tuple[int, str], list[int]] = {}
        self._index()

    def _str(self, off: int) -> str:
        start = self._str_start + off
        end = self._blob.index(b"\0", start, self._str_end)
        return self._blob[start:end].decode("utf-8", errors="replace")

    def _index(self) -> None:
        blob, pos, end = self._blob, self._types_start, self._types_end
        unpack = struct.unpack_from
        while pos < end:
            name_off, info, _size = unpack("<III", blob, pos)
            kind = (info >> 24) & 0x1F
            vlen = info & 0xFFFF
            self._offsets.append(pos)
            if name_off and kind in (STRUCT, UNION, ENUM, ENUM64, TYPEDEF):
                self._by_name.setdefault((kind, self._str(name_off)), []).append(len(self._offsets) - 1)
            pos += 12
            if kind in (INT, VAR, DECL_TAG):
                pos += 4
            elif kind == ARRAY:
                pos += 12
            elif kind in (STRUCT, UNION, DATASEC, ENUM64):
                pos += 12 * vlen
            elif kind in (ENUM, FUNC_PROTO):
                pos += 8 * vlen
            elif kind not in (PTR, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT, FUNC, FLOAT, TYPE_TAG):
                raise BtfError(f"unknown BTF kind {kind} at offset {pos - 12}")
        if pos != end:
            raise BtfError("BTF type section does not end on a type boundary")

    def _type(self, type_id: int) -> tuple[int, int, int, int, int]:
        """(kind, vlen, kind_flag, size_or_type, offset) of a type id."""
        if not 0 < type_id < len(self._offsets):
            raise BtfError(f"BTF type id {type_id} out of range")
        off = self._offsets[type_id]
        _name, info, size = struct.unpack_from("<III", self._blob, off)
        return (info >> 24) & 0x1F, info & 0xFFFF, info >> 31, size, off

    def size_of(self, type_id: int) -> int:
        for _ in range(32):
            kind, _vlen, _kf, size_or_type, off = self._type(type_id)
            if kind in _MODIFIERS:
                type_id = size_or_type
                continue
            if kind == PTR:
                return 8
            if kind == ARRAY:
                elem, _index, nelems = struct.unpack_from("<III", self._blob, off + 12)
                return self.size_of(elem) * nelems
            return size_or_type
        raise BtfError(f"type chain of {type_id} too deep")

    def struct_id(self, name: str) -> int:
        ids = self._by_name.get((STRUCT, name))
        if not ids:
            raise BtfError(f"struct {name} not found in BTF")
        return ids[0]

    def member(self, struct_name: str, member: str) -> tuple[int, int]:
        """(byte offset, byte size) of `member` in `struct struct_name`, looking through
        anonymous structs and unions (sk_buff keeps most fields in them). A dotted path
        ("ns.inum") walks into embedded structs."""
        type_id, offset, size = self.struct_id(struct_name), 0, 0
        for part in member.split("."):
            found = self._find_member(self._strip(type_id), part, 0)
            if found is None:
                raise BtfError(f"struct {struct_name} has no member {member}")
            part_offset, size, type_id = found
            offset += part_offset
        return offset, size

    def _find_member(self, type_id: int, member: str,
                     base_bits: int) -> tuple[int, int, int] | None:
        kind, vlen, kind_flag, _size, off = self._type(type_id)
        anonymous: list[tuple[int, int]] = []
        for i in range(vlen):
            name_off, mtype, moffset = struct.unpack_from("<III", self._blob, off + 12 + 12 * i)
            bit_offset = moffset & 0xFFFFFF if kind_flag else moffset
            bitfield_size = moffset >> 24 if kind_flag else 0
            if name_off == 0:
                anonymous.append((mtype, base_bits + bit_offset))
                continue
            if self._str(name_off) == member:
                if bitfield_size or (base_bits + bit_offset) % 8:
                    raise BtfError(f"member {member} is a bitfield")
                return (base_bits + bit_offset) // 8, self.size_of(mtype), mtype
        for mtype, bits in anonymous:
            resolved = self._strip(mtype)
            if self._type(resolved)[0] in (STRUCT, UNION):
                found = self._find_member(resolved, member, bits)
                if found is not None:
                    return found
        return None

    def _strip(self, type_id: int) -> int:
        for _ in range(32):
            kind, _vlen, _kf, size_or_type, _off = self._type(type_id)
            if kind not in _MODIFIERS:
                return type_id
            type_id = size_or_type
        raise BtfError(f"type chain of {type_id} too deep")

    def enum(self, name: str) -> dict[int, str]:
        """value -> enumerator name of `enum name` (ENUM or ENUM64)."""
        for kind in (ENUM, ENUM64):
            for type_id in self._by_name.get((kind, name), []):
                _kind, vlen, kind_flag, _size, off = self._type(type_id)
                values: dict[int, str] = {}
                for i in range(vlen):
                    if kind == ENUM:
                        name_off, val = struct.unpack_from("<Ii" if kind_flag else "<II",
                                                           self._blob, off + 12 + 8 * i)
                    else:
                        name_off, lo, hi = struct.unpack_from("<III", self._blob, off + 12 + 12 * i)
                        val = (hi << 32) | lo
                    values[val] = self._str(name_off)
                return values
        raise BtfError(f"enum {name} not found in BTF")


@dataclass
class KernelLayout:
    """What the drop tracer needs to know about the running kernel."""

    offsets: dict[str, int]                 # -D name -> byte offset
    drop_reasons: dict[int, str] = field(default_factory=dict)  # code -> name, no prefix

    def cflags(self) -> list[str]:
        flags = [f"-D{name}={off}" for name, off in sorted(self.offsets.items())]
        for special in ("NOT_SPECIFIED", "CONSUMED"):
            code = self.reason_code(special)
            if code is not None:
                flags.append(f"-DPF_DROP_REASON_{special}={code}")
        return flags

    def reason_code(self, name: str) -> int | None:
        for code, reason in self.drop_reasons.items():
            if reason == name:
                return code
        return None

    def reason_name(self, code: int) -> str:
        return self.drop_reasons.get(code, f"REASON_{code}")


def layout_from_btf(btf: Btf) -> KernelLayout:
    offsets: dict[str, int] = {}
    for (struct_name, member), define in FIELDS.items():
        offset, size = btf.member(struct_name, member)
        if size != SIZES[member]:
            raise BtfError(f"{struct_name}.{member} is {size} bytes, drop.h reads {SIZES[member]}")
        offsets[define] = offset
    try:
        reasons = btf.enum("skb_drop_reason")
    except BtfError:
        reasons = {}  # kernels before 5.17: no reasons; every kfree_skb is then unexplained
    # SKB_DROP_REASON_NETFILTER_DROP -> NETFILTER_DROP; SKB_CONSUMED -> CONSUMED
    names = {code: name.removeprefix(DROP_REASON_PREFIX).removeprefix("SKB_")
             for code, name in reasons.items()}
    return KernelLayout(offsets=offsets, drop_reasons=names)


def _cache_path(path: str) -> str | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    ident = f"{os.uname().release}:{path}:{st.st_size}:{st.st_mtime_ns}:{sorted(FIELDS.items())}"
    digest = hashlib.sha256(ident.encode()).hexdigest()[:16]
    return os.path.join(CACHE_DIR, f"btf-layout-{digest}.json")


@lru_cache(maxsize=4)
def kernel_layout(path: str = VMLINUX) -> KernelLayout:
    """The running kernel's layout, from the disk cache when the BTF file is unchanged."""
    cache = _cache_path(path)
    if cache is not None:
        try:
            with open(cache, encoding="utf-8") as fh:
                data = json.load(fh)
            return KernelLayout(offsets=data["offsets"],
                                drop_reasons={int(k): v for k, v in data["drop_reasons"].items()})
        except (OSError, ValueError, KeyError):
            pass
    try:
        with open(path, "rb") as fh:
            blob = fh.read()
    except OSError as exc:
        raise BtfError(f"cannot read kernel BTF at {path}: {exc}") from exc
    layout = layout_from_btf(Btf(blob))
    if cache is not None:
        try:
            os.makedirs(CACHE_DIR, exist_ok=True)
            tmp = f"{cache}.{os.getpid()}.tmp"
            with open(tmp, "w", encoding="utf-8") as fh:
                json.dump(asdict(layout), fh)
            os.replace(tmp, cache)
        except OSError:
            pass  # a read-only /run only costs a re-parse next start
    return layout
