"""The Python side of bpf/types.h: the structs and enums the kernel programs and the agent
share, as ctypes mirrors and constants.

Declared once on each side, each pointing at the other: bpf/types.h names this module, and
tests/datapath/test_layout.py compiles the header with gcc and compares every size, offset
and constant with what is here, so a change on one side alone fails there instead of
corrupting records. Keep the fields in the header's order.
"""

from __future__ import annotations

import ctypes

PF_DIR_INGRESS = 0
PF_DIR_EGRESS = 1
PF_KEY_FRAGMENT = 0x01
PF_FAMILY_IPV4 = 4
PF_FAMILY_IPV6 = 6

EVENT_FLOW_NEW = 1
EVENT_DROP = 3  # bpf/drop.h
EVENT_DNS = 4  # bpf/dns.h
EVENT_EXT_FIRST = 5

IPPROTO_ICMP = 1
IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_ICMPV6 = 58
IPPROTO_SCTP = 132


class FlowKey(ctypes.Structure):
    """struct pf_flow_key (bpf/types.h)."""

    _fields_ = [
        ("ifindex", ctypes.c_uint32),
        ("direction", ctypes.c_uint8),
        ("family", ctypes.c_uint8),
        ("proto", ctypes.c_uint8),
        ("flags", ctypes.c_uint8),
        ("src_addr", ctypes.c_uint8 * 16),
        ("dst_addr", ctypes.c_uint8 * 16),
        ("src_port", ctypes.c_uint16),
        ("dst_port", ctypes.c_uint16),
    ]


class FlowValue(ctypes.Structure):
    """struct pf_flow_value (bpf/types.h)."""

    _fields_ = [
        ("packets", ctypes.c_uint64),
        ("bytes", ctypes.c_uint64),
        ("first_seen_ns", ctypes.c_uint64),
        ("last_seen_ns", ctypes.c_uint64),
        ("tcp_flags", ctypes.c_uint64),
    ]


class EventHeader(ctypes.Structure):
    """struct pf_event_hdr (bpf/types.h): the first bytes of every ring-buffer event."""

    _fields_ = [("kind", ctypes.c_uint8), ("_pad", ctypes.c_uint8 * 7)]


class FlowEvent(ctypes.Structure):
    """struct pf_flow_event (bpf/types.h): FLOW_NEW."""

    _fields_ = [
        ("hdr", EventHeader),
        ("key", FlowKey),
        ("pkt_len", ctypes.c_uint32),
        ("ts_ns", ctypes.c_uint64),
        ("tcp_flags", ctypes.c_uint32),
        ("_pad", ctypes.c_uint32),
    ]


# enum pf_error (bpf/types.h) -> the name user space reports (ServerStatus.datapath_errors).
ERROR_NAMES: dict[int, str] = {
    0: "truncated_ethernet",
    1: "truncated_vlan",
    2: "vlan_too_deep",
    3: "truncated_ipv4",
    4: "bad_ipv4_ihl",
    5: "bad_ip_version",
    6: "truncated_ipv6",
    7: "truncated_ipv6_ext",
    8: "ipv6_ext_chain_too_long",
    9: "truncated_l4",
    10: "bad_tcp_data_offset",
    11: "flow_map_full",
    12: "flow_map_update",
    13: "ringbuf_full_new_flow",
    14: "new_flow_events_coalesced",
    15: "other_ethertype",
}
ERR_MAP_FULL = 11
ERR_MAP_UPDATE = 12
ERR_RINGBUF_FULL_NEW = 13
ERR_NEW_COALESCED = 14
ERR_EXT_FIRST = 16  # 16..31 belong to drop.h / dns.h
ERR_MAX = 32

KEY_SIZE = ctypes.sizeof(FlowKey)
VALUE_SIZE = ctypes.sizeof(FlowValue)

TCP_FLAG_NAMES = ("FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR")


def error_counts(per_reason: list[int] | dict[int, int],
                 extra_names: dict[int, str] | None = None) -> dict[str, int]:
    """Name the kernel's per-reason counters (already summed over CPUs); unnamed reasons
    (an extension without names) are reported as `reason_<n>`."""
    names = dict(ERROR_NAMES)
    names.update(extra_names or {})
    items = per_reason.items() if isinstance(per_reason, dict) else enumerate(per_reason)
    return {names.get(i, f"reason_{i}"): int(n) for i, n in items if n}
