"""The annotate stage: what a single flow record cannot say about itself.

It sits between the datapath and enrichment (see agent/main.py) and adds, in place:
- `outcome`: established / refused / unanswered / reset / closed / no reply, judged from both
  directions of a connection at one observation point (agent/annotate/outcome.py);
- `dns`: the decoded DNS message of flows on port 53 (agent/annotate/dns.py), fed by the datapath
  through `dns_packet(...)`, and `destination.names` / `source.names` on later flows to
  addresses a pod looked up.

- drops: the DROPPED records of bpf/drop.h that are not pod traffic are removed from the
  batch, the others get their direction (agent/annotate/drops.py DropScope).

It may append records to the batch: the final record of a connection that timed out
silently (e.g. UNANSWERED), so downstream stages see it like any other record.

It also owns the kernel side of drops and DNS: `datapath_extensions()` gives the datapath
the drop tracer (bpf/drop.h) and the DNS capture (bpf/dns.h) unless --no-drops / --no-dns.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import threading

from agent.annotate.dnstrack import DnsExtension, DnsPacket, DnsTracker
from agent.annotate.drops import DropScope
from agent.errors import ConfigError
from agent.annotate.outcome import OutcomeTracker
from agent.stats import AgentStats
from podflow_api.v1 import flow_pb2

log = logging.getLogger("podflow.annotate")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("annotate (connection outcomes, DNS)")
    group.add_argument("--syn-timeout", type=float, default=3.0, metavar="SECONDS",
                       help="a TCP SYN (or a UDP request) without any reply for this long is "
                            "UNANSWERED (NO_REPLY for UDP) (default: 3)")
    group.add_argument("--max-connections", type=int, default=65536, metavar="N",
                       help="connections whose outcome is tracked at once; the oldest is "
                            "forgotten first (default: 65536)")
    group.add_argument("--drops", action=argparse.BooleanOptionalAction, default=True,
                       help="report packets the kernel dropped, with its reason "
                            "(skb:kfree_skb; default: on)")
    group.add_argument("--drop-cidr", action="append", default=[], metavar="CIDR",
                       help="pod or Service range whose drops are reported even before a pod "
                            "of it was seen (repeatable); drops on traced interfaces and of "
                            "pods already seen are always reported")
    group.add_argument("--drop-map-size", type=int, default=16384, metavar="N",
                       help="(flow, reason) entries the kernel's drop map holds (default: "
                            "16384)")
    group.add_argument("--dns", action=argparse.BooleanOptionalAction, default=True,
                       help="decode DNS on port 53 (UDP and TCP) and name looked-up "
                            "addresses (default: on)")
    group.add_argument("--dns-capture-bytes", type=int, default=512, metavar="BYTES",
                       help="DNS payload bytes captured per packet, a power of two "
                            "(default: 512)")


class Annotator:
    """Holds the outcome and DNS state. The datapath's reader thread calls `dns_packet` for
    each captured DNS packet and `annotate` for each batch of flows (one lock: cheap, and
    safe if a datapath ever calls from two threads)."""

    def __init__(self, stats: AgentStats, syn_timeout_s: float = 3.0,
                 max_connections: int = 65536, drop_cidrs=(), extensions_factory=None):
        self.stats = stats
        self.outcomes = OutcomeTracker(syn_timeout_s=syn_timeout_s,
                                       max_connections=max_connections)
        self.dns = DnsTracker(max_entries=max_connections)
        self.drop_scope = DropScope(drop_cidrs)
        self._extensions_factory = extensions_factory
        self._lock = threading.Lock()

    def datapath_extensions(self) -> list:
        """The kernel features this stage consumes (agent/datapath/loader.py loads them)."""
        return self._extensions_factory(self) if self._extensions_factory else []

    def dns_packet(self, packet: DnsPacket) -> None:
        """Learn from one captured DNS packet; malformed ones are counted as
        `dns_malformed` in ServerStatus.datapath_errors."""
        with self._lock:
            if self.dns.packet(packet) is None:
                self.stats.add_error("dns_malformed")

    def annotate(self, flows: list[flow_pb2.Flow]) -> None:
        """Annotate `flows` in place; may append final records of timed-out connections."""
        with self._lock:
            self._scope_drops(flows)
            extra = self.outcomes.annotate(flows)
            flows.extend(extra)
            self.dns.annotate(flows)

    def _scope_drops(self, flows: list[flow_pb2.Flow]) -> None:
        """Learn pod addresses from this batch first (a pod's first packet and its drop
        often arrive together), then keep only the drops of pod traffic."""
        has_drops = False
        for flow in flows:
            if flow.verdict == flow_pb2.DROPPED:
                has_drops = True
            else:
                self.drop_scope.learn(flow)
        if has_drops:
            traced = {i.index for i in self.stats.snapshot_interfaces()}
            flows[:] = [f for f in flows if f.verdict != flow_pb2.DROPPED
                        or self.drop_scope.judge(f, traced)]


def from_args(args: argparse.Namespace, stats: AgentStats) -> Annotator:
    syn_timeout = getattr(args, "syn_timeout", 3.0)
    max_connections = getattr(args, "max_connections", 65536)
    drop_cidrs = getattr(args, "drop_cidr", [])
    drop_map_size = getattr(args, "drop_map_size", 16384)
    capture = getattr(args, "dns_capture_bytes", 512)
    if syn_timeout <= 0:
        raise ConfigError(f"--syn-timeout must be > 0 seconds, got {syn_timeout}")
    if max_connections < 1:
        raise ConfigError(f"--max-connections must be >= 1, got {max_connections}")
    for cidr in drop_cidrs:
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError as exc:
            raise ConfigError(f"--drop-cidr: {cidr!r} is not a CIDR") from exc
    if not 1 <= drop_map_size <= (1 << 22):
        raise ConfigError(f"--drop-map-size must be between 1 and {1 << 22}, got {drop_map_size}")
    if capture < 16 or capture > 4096 or capture & (capture - 1):
        raise ConfigError(f"--dns-capture-bytes must be a power of two from 16 to 4096, "
                          f"got {capture}")
    drops_on, dns_on = getattr(args, "drops", False), getattr(args, "dns", False)

    def extensions(annotator: Annotator) -> list:
        found: list = []
        layout = None
        if drops_on:
            from agent.annotate import drops  # noqa: PLC0415  (reads kernel BTF: only when on)
            from agent.datapath import btf  # noqa: PLC0415

            try:
                layout = btf.kernel_layout()
            except btf.BtfError as exc:
                log.error("drops are not reported: %s", exc)
                stats.add_error("drops_disabled_no_btf")
                layout = None
        if drops_on and layout is not None:
            reporter = drops.DropReporter(layout, args.node_name, stats,
                                          drops.KtimeClock.now(),
                                          active_timeout_s=getattr(args, "active_timeout", 5.0),
                                          idle_timeout_s=getattr(args, "idle_timeout", 15.0))
            found.append(drops.DropExtension(reporter, drop_map_size, drops.netns_inode(),
                                             scope=annotator.drop_scope))
        if dns_on:
            found.append(DnsExtension(annotator.dns_packet, capture))
        return found

    return Annotator(stats, syn_timeout_s=syn_timeout, max_connections=max_connections,
                     drop_cidrs=drop_cidrs, extensions_factory=extensions)
