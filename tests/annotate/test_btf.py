"""BTF parsing: a hand-built blob (no root), and the running kernel checked against bpftool."""

from __future__ import annotations

import re
import shutil
import struct
import subprocess

import pytest

from agent.datapath import btf


class BlobBuilder:
    """Writes a little-endian BTF blob type by type (ids from 1)."""

    def __init__(self):
        self.strings = b"\0"
        self.types = b""
        self.next_id = 1

    def s(self, text: str) -> int:
        if not text:
            return 0
        off = len(self.strings)
        self.strings += text.encode() + b"\0"
        return off

    def add(self, name: str, kind: int, vlen: int, size_or_type: int, extra: bytes = b"",
            kind_flag: int = 0) -> int:
        self.types += struct.pack("<III", self.s(name), (kind_flag << 31) | (kind << 24) | vlen,
                                  size_or_type) + extra
        self.next_id += 1
        return self.next_id - 1

    def int_(self, name: str, size: int) -> int:
        return self.add(name, btf.INT, 0, size, struct.pack("<I", size * 8))

    def struct_(self, name: str, size: int, members, kind=btf.STRUCT, kind_flag=0) -> int:
        extra = b"".join(struct.pack("<III", self.s(n), t, bits) for n, t, bits in members)
        return self.add(name, kind, len(members), size, extra, kind_flag)

    def blob(self) -> bytes:
        hdr = struct.pack("<HBBIIIII", btf.BTF_MAGIC, 1, 0, 24, 0, len(self.types),
                          len(self.types), len(self.strings))
        return hdr + self.types + self.strings


def sample_blob() -> bytes:
    b = BlobBuilder()
    u16, u32 = b.int_("u16", 2), b.int_("u32", 4)
    be16 = b.add("__be16", btf.TYPEDEF, 0, u16)
    char = b.int_("char", 1)
    ptr = b.add("", btf.PTR, 0, char)
    inner = b.struct_("", 6, [("protocol", be16, 0), ("transport_header", u16, 16),
                              ("network_header", u16, 32)])
    union = b.struct_("", 6, [("", inner, 0), ("headers", inner, 0)], kind=btf.UNION)
    const_union = b.add("", btf.CONST, 0, union)
    b.struct_("sk_buff", 64, [("dev", ptr, 64), ("len", u32, 128), ("", const_union, 256),
                              ("head", ptr, 320), ("data", ptr, 384),
                              ("flag", u32, (3 << 24) | 448)], kind_flag=1)
    b.struct_("net_device", 24, [("ifindex", u32, 96), ("nd_net", ptr, 128)])
    ns_common = b.struct_("ns_common", 16, [("stashed", ptr, 0), ("inum", u32, 64)])
    b.struct_("net", 64, [("passive", u32, 0), ("ns", ns_common, 256)])
    b.struct_("trace_event_raw_kfree_skb", 40, [("skbaddr", ptr, 64), ("protocol", u16, 256),
                                                ("reason", u32, 288)])
    enum_extra = b"".join(struct.pack("<Ii", b.s(n), v) for n, v in
                          [("SKB_NOT_DROPPED_YET", 0), ("SKB_CONSUMED", 1),
                           ("SKB_DROP_REASON_NOT_SPECIFIED", 2), ("SKB_DROP_REASON_NETFILTER_DROP", 12)])
    b.add("skb_drop_reason", btf.ENUM, 4, 4, enum_extra)
    return b.blob()


MEMBERS = [
    ("direct", "sk_buff", "len", (16, 4)),
    ("pointer", "sk_buff", "dev", (8, 8)),
    ("typedef-through-anon-union", "sk_buff", "protocol", (32, 2)),
    ("anon-struct-in-anon-union", "sk_buff", "network_header", (36, 2)),
    ("other-struct", "net_device", "ifindex", (12, 4)),
    ("dotted-path-into-embedded-struct", "net", "ns.inum", (40, 4)),
]


@pytest.mark.parametrize("struct_name,member,expected", [m[1:] for m in MEMBERS],
                         ids=[m[0] for m in MEMBERS])
def test_member_offsets_in_built_blob(struct_name, member, expected):
    assert btf.Btf(sample_blob()).member(struct_name, member) == expected


def test_layout_and_reason_names_from_built_blob():
    layout = btf.layout_from_btf(btf.Btf(sample_blob()))
    assert layout.offsets["PF_SKB_TRANSPORT_HEADER_OFF"] == 34
    assert layout.reason_name(12) == "NETFILTER_DROP" and layout.reason_name(99) == "REASON_99"
    assert "-DPF_DROP_REASON_NOT_SPECIFIED=2" in layout.cflags()
    assert "-DPF_DROP_REASON_CONSUMED=1" in layout.cflags()


ERRORS = [
    ("short", lambda blob: blob[:10], "shorter"),
    ("bad-magic", lambda blob: b"\x00\x00" + blob[2:], "magic"),
    ("sections-past-end", lambda blob: blob[:-20], "past the end"),
    ("unknown-kind", lambda blob: blob[:24] + struct.pack("<III", 0, 31 << 24, 0) + blob[36:], "kind"),
]


@pytest.mark.parametrize("mangle,message", [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_malformed_blob(mangle, message):
    with pytest.raises(btf.BtfError, match=message):
        btf.Btf(mangle(sample_blob()))


def test_missing_things_are_named():
    parsed = btf.Btf(sample_blob())
    with pytest.raises(btf.BtfError, match="no member nope"):
        parsed.member("sk_buff", "nope")
    with pytest.raises(btf.BtfError, match="bitfield"):
        parsed.member("sk_buff", "flag")
    with pytest.raises(btf.BtfError, match="struct sock not found"):
        parsed.member("sock", "x")


def _bpftool_types(raw: str) -> dict:
    """Parse `bpftool btf dump format raw`, independently of agent.datapath.btf."""
    types: dict[int, list] = {}
    current = None
    for line in raw.splitlines():
        m = re.match(r"\[(\d+)\] (\w+) '([^']*)'(?: size=(\d+))?(?: type_id=(\d+))?", line)
        if m:
            current = [m.group(2), m.group(3), int(m.group(5) or 0), []]
            types[int(m.group(1))] = current
            continue
        m = re.match(r"\t'([^']*)' type_id=(\d+) bits_offset=(\d+)", line)
        if m and current is not None:
            current[3].append((m.group(1), int(m.group(2)), int(m.group(3))))
    return types


def _bpftool_offset(types: dict, struct_name: str, path: str) -> int:
    def strip(tid):
        while types[tid][0] in ("TYPEDEF", "CONST", "VOLATILE", "RESTRICT", "TYPE_TAG"):
            tid = types[tid][2]
        return tid

    def find(tid, base, member):
        for name, mtid, bits in types[tid][3]:
            if name == member:
                return base + bits
        for name, mtid, bits in types[tid][3]:
            if name == "(anon)" and types[strip(mtid)][0] in ("STRUCT", "UNION"):
                found = find(strip(mtid), base + bits, member)
                if found is not None:
                    return found
        return None

    def member_type(tid, member):
        for name, mtid, _bits in types[tid][3]:
            if name == member:
                return strip(mtid)
        for name, mtid, _bits in types[tid][3]:
            if name == "(anon)" and types[strip(mtid)][0] in ("STRUCT", "UNION"):
                found = member_type(strip(mtid), member)
                if found is not None:
                    return found
        return None

    tid = next(i for i, t in types.items() if t[0] == "STRUCT" and t[1] == struct_name)
    total = 0
    for member in path.split("."):
        total += find(tid, 0, member)
        tid = member_type(tid, member)
    return total // 8


@pytest.mark.skipif(shutil.which("bpftool") is None, reason="bpftool not installed")
def test_running_kernel_matches_bpftool():
    try:
        raw = subprocess.run(["bpftool", "btf", "dump", "file", btf.VMLINUX, "format", "raw"],
                             check=True, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"bpftool cannot read kernel BTF: {exc}")
    layout = btf.layout_from_btf(btf.Btf(open(btf.VMLINUX, "rb").read()))
    types = _bpftool_types(raw)
    for (struct_name, member), define in btf.FIELDS.items():
        assert layout.offsets[define] == _bpftool_offset(types, struct_name, member), define
    reasons = dict(re.findall(r"\t'SKB_DROP_REASON_(\w+)' val=(\d+)", raw))
    assert layout.reason_code("NETFILTER_DROP") == int(reasons["NETFILTER_DROP"])
    assert layout.reason_code("NOT_SPECIFIED") == int(reasons["NOT_SPECIFIED"])
