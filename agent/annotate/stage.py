"""The annotate stage: what a single flow record cannot say about itself.

It sits between the datapath and enrichment (see agent/main.py) and adds, in place, to a
batch of records (agent/datapath/batch.py, `annotate_batch`):
- `outcome`: established / refused / unanswered / reset / closed / no reply, judged from both
  directions of a connection at one observation point (agent/annotate/outcome.py), for the
  whole batch at once;
- `dns`: the decoded DNS message of records on port 53 (agent/annotate/dns.py), fed by the
  datapath through `dns_packet(...)`, and `destination.names` / `source.names` for the
  address pairs a pod looked up (per address pair, not per record);
- the pods' addresses the drop scope needs, from the pod-veth records.

Drop records (Flow objects from bpf/drop.h, `annotate`): those that are not pod traffic are
removed, the others get their direction (agent/annotate/drops.py DropScope).

It also owns the kernel side of drops and DNS: `datapath_extensions(...)` builds the drop
tracer (bpf/drop.h) and the DNS capture (bpf/dns.h) unless --no-drops / --no-dns, and
agent/main.py hands them to the Datapath.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from agent.annotate.dnstrack import DnsExtension, DnsPacket, DnsTracker
from agent.annotate.drops import DropScope
from agent.annotate.outcome import judge
from agent.datapath.abi import PF_KEY_FRAGMENT
from agent.datapath.batch import FlowBatch
from agent.datapath.extension import DatapathExtension
from agent.stats import AgentStats
from podflow_api.v1 import flow_pb2

if TYPE_CHECKING:
    from agent.config import AnnotateSection

log = logging.getLogger("podflow.annotate")


class Annotator:
    """Holds the DNS state. The datapath's reader thread calls `dns_packet` for each captured
    DNS packet, `annotate_batch` for each batch of records and `annotate` for drop records
    (one lock: cheap, and safe if a datapath ever calls from two threads)."""

    def __init__(self, config: AnnotateSection, stats: AgentStats):
        self.config = config
        self.stats = stats
        self.syn_timeout_ns = int(config.syn_timeout_s * 1e9)
        self.dns = DnsTracker(max_entries=config.max_connections)
        self.drop_scope = DropScope(config.drop_cidrs)
        self._lock = threading.Lock()

    def datapath_extensions(self, active_timeout_s: float,
                            idle_timeout_s: float) -> list[DatapathExtension]:
        """The kernel features this stage consumes, for the Datapath to load: the drop tracer
        (its records follow the datapath's active/idle timeouts, like flows) and the DNS
        capture, each unless switched off. Reads the kernel's BTF when drops are on."""
        found: list[DatapathExtension] = []
        if self.config.drops:
            from agent.annotate import drops  # noqa: PLC0415  (reads kernel BTF: only when on)
            from agent.datapath import btf  # noqa: PLC0415

            try:
                layout = btf.kernel_layout()
            except btf.BtfError as exc:
                log.error("drops are not reported: %s", exc)
                self.stats.add_error("drops_disabled_no_btf")
            else:
                reporter = drops.DropReporter(layout, self.stats.node_name, self.stats,
                                              drops.KtimeClock.now(),
                                              active_timeout_s=active_timeout_s,
                                              idle_timeout_s=idle_timeout_s)
                found.append(drops.DropExtension(reporter, self.config.drop_map_size,
                                                 drops.netns_inode(), scope=self.drop_scope))
        if self.config.dns:
            found.append(DnsExtension(self.dns_packet, self.config.dns_capture_bytes))
        return found

    def dns_packet(self, packet: DnsPacket) -> None:
        """Learn from one captured DNS packet; malformed ones are counted as
        `dns_malformed` in ServerStatus.datapath_errors. Under overload (shed level 1 and
        up, agent/datapath/shedding.py) the packet is counted as `dns_not_decoded` instead."""
        if self.stats.shed_level:
            self.stats.add_error("dns_not_decoded")
            return
        with self._lock:
            if self.dns.packet(packet) is None:
                self.stats.add_error("dns_malformed")

    def annotate_batch(self, batch: FlowBatch) -> None:
        """Outcomes, DNS and the pods' addresses for a batch of records, in place."""
        with self._lock:
            paired = (batch.obs == flow_pb2.POD_VETH) & ((batch.keys[:, 7] & PF_KEY_FRAGMENT) == 0)
            batch.outcome = judge(batch.proto, paired, batch.tcp_flags, batch.own_packets,
                                  batch.first_ns, batch.rev_flags, batch.rev_packets,
                                  batch.rev_first_ns, batch.flow_end, batch.time_ns,
                                  self.syn_timeout_ns)
            for g, group in enumerate(batch.groups):
                if group.observation_point != flow_pb2.POD_VETH:
                    continue
                if group.traffic_direction == flow_pb2.FROM_POD:
                    self.drop_scope.learn_address(group.source, group.ifindex)
                elif group.traffic_direction == flow_pb2.TO_POD:
                    self.drop_scope.learn_address(group.destination, group.ifindex)
            self.dns.annotate_batch(batch)

    def annotate(self, flows: list[flow_pb2.Flow]) -> None:
        """Annotate drop records (Flow objects) in place: only pod traffic stays."""
        with self._lock:
            self._scope_drops(flows)
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
