"""bpf/types.h and agent/datapath/abi.py declare the same structs: compile the C header with gcc
and compare every size and offset with the ctypes mirror, so a change on one side only fails
here instead of corrupting records."""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import pytest

from agent.datapath import abi

BPF_DIR = Path(__file__).resolve().parents[2] / "bpf"

STRUCTS = {
    "pf_flow_key": abi.FlowKey,
    "pf_flow_value": abi.FlowValue,
    "pf_event_hdr": abi.EventHeader,
    "pf_flow_event": abi.FlowEvent,
}
CONSTANTS = {
    "PF_DIR_INGRESS": abi.PF_DIR_INGRESS,
    "PF_DIR_EGRESS": abi.PF_DIR_EGRESS,
    "PF_KEY_FRAGMENT": abi.PF_KEY_FRAGMENT,
    "PF_FAMILY_IPV4": abi.PF_FAMILY_IPV4,
    "PF_FAMILY_IPV6": abi.PF_FAMILY_IPV6,
    "PF_EVENT_FLOW_NEW": abi.EVENT_FLOW_NEW,
    "PF_EVENT_DROP": abi.EVENT_DROP,
    "PF_EVENT_DNS": abi.EVENT_DNS,
    "PF_EVENT_EXT_FIRST": abi.EVENT_EXT_FIRST,
    "PF_ERR_MAP_FULL": abi.ERR_MAP_FULL,
    "PF_ERR_RINGBUF_FULL_NEW": abi.ERR_RINGBUF_FULL_NEW,
    "PF_ERR_MAP_UPDATE": abi.ERR_MAP_UPDATE,
    "PF_ERR_NEW_COALESCED": abi.ERR_NEW_COALESCED,
    "PF_ERR_EXT_FIRST": abi.ERR_EXT_FIRST,
    "PF_ERR_MAX": abi.ERR_MAX,
}


@pytest.fixture(scope="module")
def c_layout(tmp_path_factory) -> dict[str, int]:
    """{"sizeof pf_flow_key": 44, "offsetof pf_flow_key.proto": 6, "PF_ERR_MAX": 32 ...}"""
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.fail("gcc is needed for the layout test (Debian package gcc, in setup-host.sh)")
    lines = []
    for struct, cls in STRUCTS.items():
        lines.append(f'printf("sizeof {struct} %zu\\n", sizeof(struct {struct}));')
        for name, *_ in cls._fields_:
            lines.append(f'printf("offsetof {struct}.{name} %zu\\n", '
                         f'offsetof(struct {struct}, {name}));')
    for const in CONSTANTS:
        lines.append(f'printf("{const} %ld\\n", (long){const});')
    src = ("#include <stdio.h>\n#include <stddef.h>\n#include <linux/types.h>\n"
           '#include "types.h"\nint main(void) {\n' + "\n".join(lines)
           + "\nreturn 0; }\n")
    tmp = tmp_path_factory.mktemp("layout")
    (tmp / "layout.c").write_text(src)
    subprocess.run([gcc, f"-I{BPF_DIR}", "-o", str(tmp / "layout"), str(tmp / "layout.c")],
                   check=True, capture_output=True, text=True)
    out = subprocess.run([str(tmp / "layout")], check=True, capture_output=True, text=True).stdout
    return {line.rsplit(" ", 1)[0]: int(line.rsplit(" ", 1)[1]) for line in out.splitlines()}


@pytest.mark.parametrize("struct", list(STRUCTS))
def test_struct_layout_matches_c(c_layout, struct):
    cls = STRUCTS[struct]
    assert ctypes.sizeof(cls) == c_layout[f"sizeof {struct}"]
    for name, *_ in cls._fields_:
        assert getattr(cls, name).offset == c_layout[f"offsetof {struct}.{name}"], name


@pytest.mark.parametrize("const", list(CONSTANTS))
def test_constants_match_c(c_layout, const):
    assert CONSTANTS[const] == c_layout[const]


def test_every_kernel_error_reason_has_a_name():
    """enum pf_error values below PF_ERR_EXT_FIRST are all named in abi.ERROR_NAMES, in
    the header's order."""
    text = (BPF_DIR / "types.h").read_text()
    body = text[text.index("enum pf_error {"):text.index("PF_ERR_EXT_FIRST = 16")]
    names = [line.split("=")[0].split(",")[0].strip() for line in body.splitlines()[1:]
             if line.strip().startswith("PF_ERR_")]
    assert len(names) == len(abi.ERROR_NAMES) == abi.ERR_EXT_FIRST
