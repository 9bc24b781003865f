"""A classic BPF socket filter for the conntrack event socket: only connections whose
destination was translated (IPS_DST_NAT: a Service's DNAT) reach the agent.

Why: every connection the node tracks sends a NEW and a DESTROY event, ten thousands per
second on a busy node (each new UDP 5-tuple is one), and the agent needs only the DNATed
ones. Read and decoded in Python they cost more than the flows they concern; refused in the
kernel they cost nothing and cannot overflow the socket buffer either.

The filter walks the message's top-level attributes (after nlmsghdr and nfgenmsg), host
byte order on the wire of netlink (classic BPF loads big-endian, so lengths and types are
byte-swapped here), up to MAX_ATTRS of them, to CTA_STATUS (a big-endian u32), and accepts
the message when IPS_DST_NAT is set. A message whose status it does not find is accepted:
user space still checks every tuple it decodes.
"""

from __future__ import annotations

import ctypes
import socket
import struct

SO_ATTACH_FILTER = 26
NLMSG_HDRLEN = 16
NFGENMSG_LEN = 4
CTA_STATUS = 3
IPS_DST_NAT = 1 << 5
MAX_ATTRS = 10
ACCEPT = 0xFFFF

# classic BPF opcodes
LD_H_IND = 0x48    # A = u16 BE at [X + k]
LD_W_IND = 0x40    # A = u32 BE at [X + k]
LDX_IMM = 0x01     # X = k
LDX_MEM = 0x61     # X = M[k]
LD_MEM = 0x60      # A = M[k]
ST = 0x02          # M[k] = A
STX = 0x03         # M[k] = X
ALU_AND_K = 0x54
ALU_OR_X = 0x4C
ALU_ADD_K = 0x04
ALU_ADD_X = 0x0C
ALU_LSH_K = 0x64
ALU_RSH_K = 0x74
JEQ_K = 0x15
JSET_K = 0x45
TAX = 0x07
TXA = 0x87
RET_K = 0x06


def _op(code: int, jt: int = 0, jf: int = 0, k: int = 0) -> tuple[int, int, int, int]:
    return (code, jt, jf, k & 0xFFFFFFFF)


def program() -> list[tuple[int, int, int, int]]:
    """The filter's instructions (code, jt, jf, k)."""
    ins = [_op(LDX_IMM, k=NLMSG_HDRLEN + NFGENMSG_LEN)]
    # Each step: check the attribute at X; if it is not CTA_STATUS, X += its aligned length.
    step = [
        _op(LD_H_IND, k=2),            # type, byte-swapped: (t_lo << 8) | t_hi
        _op(ALU_AND_K, k=0xFF3F),      # drop NLA_F_NESTED / NLA_F_NET_BYTEORDER
        None,                          # jeq CTA_STATUS -> status check (patched below)
        _op(STX, k=2),                 # M[2] = offset
        _op(LD_H_IND, k=0),            # len, byte-swapped
        _op(TAX),
        _op(ALU_RSH_K, k=8),           # low byte
        _op(ST, k=0),
        _op(TXA),
        _op(ALU_AND_K, k=0xFF),        # high byte
        _op(ALU_LSH_K, k=8),
        _op(LDX_MEM, k=0),
        _op(ALU_OR_X),                 # len
        _op(ALU_ADD_K, k=3),
        _op(ALU_AND_K, k=0xFFFFFFFC),  # NLA_ALIGN
        _op(LDX_MEM, k=2),
        _op(ALU_ADD_X),                # offset + len
        _op(TAX),
    ]
    for _ in range(MAX_ATTRS):
        # the jeq's target (the status check after every step) is known once all are placed
        ins.extend(("jeq",) if instr is None else instr for instr in step)
    ins.append(_op(RET_K, k=ACCEPT))        # status not found: let user space decide
    status_at = len(ins)
    ins.append(_op(LD_W_IND, k=4))          # the status, big-endian
    ins.append(_op(JSET_K, jt=0, jf=1, k=IPS_DST_NAT))
    ins.append(_op(RET_K, k=ACCEPT))
    ins.append(_op(RET_K, k=0))
    out = []
    for pos, instr in enumerate(ins):
        if isinstance(instr[0], str):
            jt = status_at - pos - 1
            out.append(_op(JEQ_K, jt=jt, jf=0, k=CTA_STATUS << 8))
        else:
            out.append(instr)
    assert all(0 <= i[1] < 256 for i in out), "jump too long for classic BPF"
    return out


def attach(sock: socket.socket) -> None:
    """Install the filter on a conntrack event socket (OSError when the kernel refuses)."""
    ins = program()
    raw = b"".join(struct.pack("=HBBI", code, jt, jf, k) for code, jt, jf, k in ins)
    buf = ctypes.create_string_buffer(raw, len(raw))
    fprog = struct.pack("HL", len(ins), ctypes.addressof(buf))  # struct sock_fprog
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)  # the kernel copies it
