"""Batches of records (agent/datapath/batch.py FlowBatch) built from a few words, for the tests
of every stage that reads them: annotate, enrich, the store, the flow log, metrics."""

from __future__ import annotations

import ipaddress
import time

import numpy as np

from agent.datapath import abi
from agent.datapath.batch import FlowBatch
from agent.datapath.decode import InterfaceInfo, InterfaceKind

PROTOS = {"tcp": abi.IPPROTO_TCP, "udp": abi.IPPROTO_UDP, "sctp": abi.IPPROTO_SCTP,
          "icmp": abi.IPPROTO_ICMP}
FLAGS = {"FIN": 1, "SYN": 2, "RST": 4, "PSH": 8, "ACK": 16}
T0 = 1_800_000_000 * 1_000_000_000


def key(src: str, dst: str, sport: int, dport: int, proto: str = "udp", ifindex: int = 5,
        hook: int = abi.PF_DIR_INGRESS) -> bytes:
    a, b = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    k = abi.FlowKey(ifindex=ifindex, direction=hook,
                    family=abi.PF_FAMILY_IPV4 if a.version == 4 else abi.PF_FAMILY_IPV6,
                    proto=PROTOS[proto], src_port=sport, dst_port=dport)
    k.src_addr[:len(a.packed)] = list(a.packed)
    k.dst_addr[:len(b.packed)] = list(b.packed)
    return bytes(k)


def rec(src: str, dst: str, sport: int, dport: int, proto: str = "udp", *, ifindex: int = 5,
        hook: int = abi.PF_DIR_INGRESS, packets: int = 1, nbytes: int = 80, first_ns: int = T0,
        last_ns: int | None = None, flags: str = "", end: bool = False, update: bool = False,
        rev_packets: int = 0, rev_flags: str = "", rev_first_ns: int = 0) -> dict:
    """One record: `hook` ingress at a pod veth is FROM_POD, egress TO_POD."""
    return dict(key=key(src, dst, sport, dport, proto, ifindex, hook), packets=packets,
                nbytes=0 if update else nbytes, first_ns=first_ns,
                last_ns=first_ns if last_ns is None else last_ns,
                flags=sum(FLAGS[f] for f in flags.split(",") if f), end=end or update,
                update=update, rev_packets=rev_packets,
                rev_flags=sum(FLAGS[f] for f in rev_flags.split(",") if f),
                rev_first_ns=rev_first_ns)


def batch(*records: dict, time_ns: int | None = None, node: str = "node-a",
          interfaces: dict | None = None) -> FlowBatch:
    """A FlowBatch of `records` (rec(...)); every interface a pod veth named vethN unless
    `interfaces` ({ifindex: InterfaceInfo}) says otherwise."""
    n = len(records)
    keys = np.frombuffer(b"".join(r["key"] for r in records), np.uint8).reshape(n, abi.KEY_SIZE)
    if interfaces is None:
        interfaces = {}
        for r in records:
            index = int.from_bytes(r["key"][:4], "little")
            interfaces[index] = InterfaceInfo(index, f"veth{index}", InterfaceKind.POD_VETH)

    def col(name, dtype):
        return np.array([r[name] for r in records], dtype)

    updates = col("update", bool)
    return FlowBatch(keys.copy(), np.where(updates, 0, col("packets", np.uint64)).astype(np.uint64),
                     col("nbytes", np.uint64), col("first_ns", np.int64), col("last_ns", np.int64),
                     col("flags", np.uint8), col("end", bool), updates,
                     time_ns if time_ns is not None else time.time_ns(), node, interfaces,
                     own_packets=col("packets", np.uint64), rev_packets=col("rev_packets", np.uint64),
                     rev_flags=col("rev_flags", np.uint8), rev_first_ns=col("rev_first_ns", np.int64))
