"""The C structs of bpf/drop.h and bpf/dns.h and their Python mirrors agree (gcc, no root)."""

from __future__ import annotations

import ctypes
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from agent.annotate.dnstrack import DnsEventHeader
from agent.annotate.drops import DropEvent, DropKey, DropValue

BPF = Path(__file__).resolve().parents[2] / "bpf"

MIRRORS = [
    ("pf_drop_key", DropKey, ["flow", "reason"]),
    ("pf_drop_value", DropValue, ["packets", "bytes", "first_seen_ns", "last_seen_ns"]),
    ("pf_drop_event", DropEvent, ["key", "pkt_len", "flags", "ts_ns"]),
    ("pf_dns_event", DnsEventHeader, ["key", "payload_len", "captured", "ts_ns"]),
]


def _struct_text(header: str, name: str) -> str:
    text = (BPF / header).read_text()
    match = re.search(r"struct %s \{.*?\n\};" % name, text, re.S)
    assert match, f"struct {name} not found in {header}"
    return match.group(0)


@pytest.fixture(scope="module")
def c_layout(tmp_path_factory) -> dict[str, int]:
    if shutil.which("gcc") is None:
        pytest.skip("gcc not installed")
    structs = "\n".join(_struct_text(h, n) for h, n in [
        ("drop.h", "pf_drop_key"), ("drop.h", "pf_drop_value"), ("drop.h", "pf_drop_event"),
        ("dns.h", "pf_dns_event")])
    prints = []
    for name, _mirror, fields in MIRRORS:
        prints.append(f'printf("{name}.size %zu\\n", sizeof(struct {name}));')
        for f in fields:
            prints.append(f'printf("{name}.{f} %zu\\n", offsetof(struct {name}, {f}));')
    source = ("#include <stdio.h>\n#include <stddef.h>\n#include <linux/types.h>\n"
              "#define PODFLOW_DNS_CAPTURE 512\n"
              f'#include "{BPF / "types.h"}"\n{structs}\nint main(void) {{ {"".join(prints)} return 0; }}\n')
    binary = tmp_path_factory.mktemp("layout") / "layout"
    out = subprocess.run(["gcc", "-x", "c", "-", "-o", str(binary)], input=source, text=True,
                         capture_output=True)
    assert out.returncode == 0, out.stderr
    lines = subprocess.run([str(binary)], capture_output=True, text=True,
                           check=True).stdout.split("\n")
    return {k: int(v) for k, v in (line.split() for line in lines if line)}


@pytest.mark.parametrize("name,mirror,fields", MIRRORS, ids=[m[0] for m in MIRRORS])
def test_mirror_matches_c(c_layout, name, mirror, fields):
    size = c_layout[f"{name}.size"]
    if name == "pf_dns_event":
        size -= 512  # the mirror stops before the payload
    assert ctypes.sizeof(mirror) == size
    for f in fields:
        assert getattr(mirror, f).offset == c_layout[f"{name}.{f}"], f
