"""The annotate stage: what a single flow record cannot say about itself.

It sits between the datapath and enrichment (see agent/main.py) and adds, in place:
- `outcome`: established / refused / unanswered / reset / closed / no reply, judged from both
  directions of a connection at one observation point (agent/outcome.py);
- `dns`: the decoded DNS message of flows on port 53 (agent/dns.py), fed by the datapath
  through `dns_packet(...)`, and `destination.names` / `source.names` on later flows to
  addresses a pod looked up.

It may append records to the batch: the final record of a connection that timed out
silently (e.g. UNANSWERED), so downstream stages see it like any other record.
"""

from __future__ import annotations

import argparse
import logging
import threading

from agent.dnstrack import DnsPacket, DnsTracker
from agent.errors import ConfigError
from agent.outcome import OutcomeTracker
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


class Annotator:
    """Holds the outcome and DNS state. The datapath's reader thread calls `dns_packet` for
    each captured DNS packet and `annotate` for each batch of flows (one lock: cheap, and
    safe if a datapath ever calls from two threads)."""

    def __init__(self, stats: AgentStats, syn_timeout_s: float = 3.0,
                 max_connections: int = 65536):
        self.stats = stats
        self.outcomes = OutcomeTracker(syn_timeout_s=syn_timeout_s,
                                       max_connections=max_connections)
        self.dns = DnsTracker(max_entries=max_connections)
        self._lock = threading.Lock()

    def dns_packet(self, packet: DnsPacket) -> None:
        """Learn from one captured DNS packet; malformed ones are counted as
        `dns_malformed` in ServerStatus.datapath_errors."""
        with self._lock:
            if self.dns.packet(packet) is None:
                self.stats.add_error("dns_malformed")

    def annotate(self, flows: list[flow_pb2.Flow]) -> None:
        """Annotate `flows` in place; may append final records of timed-out connections."""
        with self._lock:
            extra = self.outcomes.annotate(flows)
            flows.extend(extra)
            self.dns.annotate(flows)


def from_args(args: argparse.Namespace, stats: AgentStats) -> Annotator:
    syn_timeout = getattr(args, "syn_timeout", 3.0)
    max_connections = getattr(args, "max_connections", 65536)
    if syn_timeout <= 0:
        raise ConfigError(f"--syn-timeout must be > 0 seconds, got {syn_timeout}")
    if max_connections < 1:
        raise ConfigError(f"--max-connections must be >= 1, got {max_connections}")
    return Annotator(stats, syn_timeout_s=syn_timeout, max_connections=max_connections)
