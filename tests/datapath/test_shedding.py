"""The load governor sheds work in a fixed order, one step per sweep, and comes back."""

from __future__ import annotations

from agent.datapath.shedding import NO_DETAIL, NO_DNS, NORMAL, LoadGovernor
from agent.stats import AgentStats


class Clocks:
    def __init__(self):
        self.wall = self.cpu = 0.0

    def tick(self, wall_s: float, busy: float) -> None:
        self.wall += wall_s
        self.cpu += wall_s * busy


def test_levels_step_up_when_busy_and_down_when_idle():
    stats = AgentStats("n", "t")
    clocks = Clocks()
    gov = LoadGovernor(stats, clock=lambda: clocks.wall, cpu_clock=lambda: clocks.cpu)
    levels = []
    for busy in (0.2, 0.9, 0.9, 0.9, 0.5, 0.1, 0.1, 0.1):
        clocks.tick(1.0, busy)
        levels.append(gov.sweep())
    assert levels == [NORMAL, NO_DNS, NO_DETAIL, NO_DETAIL, NO_DETAIL, NO_DNS, NORMAL, NORMAL]
    assert "shed_level" not in stats.snapshot_datapath_errors()


def test_shed_dns_is_counted_not_decoded():
    from agent.annotate.dnstrack import DnsPacket
    from agent.annotate.stage import Annotator
    from agent.config import AnnotateSection

    stats = AgentStats("n", "t")
    stats.shed_level = NO_DNS
    ann = Annotator(AnnotateSection(), stats)
    ann.dns_packet(DnsPacket(5, "udp", "10.0.0.1", "10.0.0.2", 40000, 53, b"\x00" * 12, 12, 1))
    errors = stats.snapshot_datapath_errors()
    assert errors["dns_not_decoded"] == 1 and errors["shed_level"] == NO_DNS
    assert ann.dns.messages == 0
