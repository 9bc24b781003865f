"""Connection outcomes from hand-built records of both directions (no root needed)."""

from __future__ import annotations

import pytest

from agent.annotate.outcome import OutcomeTracker
from podflow_api.v1 import flow_pb2

O = flow_pb2.ConnectionOutcome
CLIENT, SERVER = ("10.244.1.2", 40000), ("10.244.2.3", 80)


class FakeClock:
    def __init__(self):
        self.ns = 1_000_000_000

    def __call__(self):
        return self.ns


def rec(src, dst, flags="", proto="tcp", ifindex=7, packets=1, reply=False, end=False, t=0):
    f = flow_pb2.Flow(packets=packets, bytes=60 * packets, is_reply=reply, flow_end=end,
                      verdict=flow_pb2.FORWARDED)
    f.interface.index = ifindex
    f.ip.source, f.ip.destination = src[0], dst[0]
    f.first_seen.seconds = t
    l4 = getattr(f.l4, proto)
    l4.source_port, l4.destination_port = src[1], dst[1]
    if proto == "tcp":
        for flag in filter(None, flags.split(",")):
            setattr(l4.flags, flag, True)
    return f


# Each case: batches of records; the outcome expected on the last record of the last batch.
CASES = [
    ("established", [[rec(CLIENT, SERVER, "SYN,ACK"), rec(SERVER, CLIENT, "SYN,ACK", reply=True, t=1)]],
     O.ESTABLISHED),
    ("refused", [[rec(CLIENT, SERVER, "SYN"), rec(SERVER, CLIENT, "RST,ACK", reply=True, t=1)]],
     O.REFUSED),
    ("refused-reply-in-later-batch", [[rec(CLIENT, SERVER, "SYN")],
                                      [rec(SERVER, CLIENT, "RST,ACK", reply=True)]], O.REFUSED),
    ("syn-waiting", [[rec(CLIENT, SERVER, "SYN")]], O.IN_PROGRESS),
    ("reset-after-established", [[rec(CLIENT, SERVER, "SYN,ACK"), rec(SERVER, CLIENT, "SYN,ACK", reply=True)],
                                 [rec(SERVER, CLIENT, "RST", reply=True)]], O.RESET),
    ("closed", [[rec(CLIENT, SERVER, "SYN,ACK"), rec(SERVER, CLIENT, "SYN,ACK", reply=True)],
                [rec(CLIENT, SERVER, "FIN,ACK", end=True)]], O.CLOSED),
    ("mid-connection-both-ways", [[rec(CLIENT, SERVER, "ACK"), rec(SERVER, CLIENT, "ACK")]],
     O.ESTABLISHED),
    ("udp-reply", [[rec(CLIENT, SERVER, proto="udp"), rec(SERVER, CLIENT, proto="udp", reply=True)]],
     O.ESTABLISHED),
    ("udp-waiting", [[rec(CLIENT, SERVER, proto="udp")]], O.IN_PROGRESS),
    ("other-interface-is-another-connection",
     [[rec(CLIENT, SERVER, "SYN"), rec(SERVER, CLIENT, "RST,ACK", ifindex=9, reply=True)],
      [rec(CLIENT, SERVER, "SYN")]], O.IN_PROGRESS),
]


@pytest.mark.parametrize("batches,expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_outcome(batches, expected):
    tracker = OutcomeTracker(syn_timeout_s=3, clock=FakeClock())
    for batch in batches:
        tracker.annotate(batch)
    assert batches[-1][-1].outcome == expected


@pytest.mark.parametrize("proto,flags,expected", [("tcp", "SYN", O.UNANSWERED),
                                                  ("udp", "", O.NO_REPLY)], ids=["tcp", "udp"])
def test_timeout_emits_final_record(proto, flags, expected):
    clock = FakeClock()
    tracker = OutcomeTracker(syn_timeout_s=3, clock=clock)
    first = rec(CLIENT, SERVER, flags, proto=proto, packets=2)
    assert tracker.annotate([first]) == []
    assert first.outcome == O.IN_PROGRESS
    clock.ns += 2_000_000_000
    assert tracker.annotate([]) == []
    clock.ns += 1_500_000_000
    extra = tracker.annotate([])
    assert [(f.outcome, f.packets, f.bytes, f.ip.source) for f in extra] == \
        [(expected, 0, 0, CLIENT[0])]
    clock.ns += 5_000_000_000
    assert tracker.annotate([]) == []  # emitted once


def test_late_record_carries_timeout_outcome():
    clock = FakeClock()
    tracker = OutcomeTracker(syn_timeout_s=3, clock=clock)
    tracker.annotate([rec(CLIENT, SERVER, "SYN")])
    clock.ns += 3_500_000_000
    retransmit = rec(CLIENT, SERVER, "SYN")
    assert tracker.annotate([retransmit]) == []
    assert retransmit.outcome == O.UNANSWERED


def test_bounded():
    tracker = OutcomeTracker(max_connections=10, clock=FakeClock())
    tracker.annotate([rec(("10.0.0.1", p), SERVER, "SYN") for p in range(1000, 1050)])
    assert len(tracker) == 10 and tracker.evicted == 40


def test_drops_and_icmp_are_left_alone():
    tracker = OutcomeTracker(clock=FakeClock())
    dropped = rec(CLIENT, SERVER, "SYN")
    dropped.verdict = flow_pb2.DROPPED
    icmp = flow_pb2.Flow()
    icmp.l4.icmpv4.type = 8
    tracker.annotate([dropped, icmp])
    assert (dropped.outcome, icmp.outcome, len(tracker)) == (O.OUTCOME_UNKNOWN, O.OUTCOME_UNKNOWN, 0)


def test_bridge_records_get_no_outcome():
    tracker = OutcomeTracker(clock=FakeClock())
    syn = rec(CLIENT, SERVER, "SYN")
    syn.observation_point = flow_pb2.BRIDGE
    tracker.annotate([syn])
    assert syn.outcome == O.OUTCOME_UNKNOWN and len(tracker) == 0


def test_finished_connections_are_forgotten_after_linger():
    clock = FakeClock()
    tracker = OutcomeTracker(syn_timeout_s=3, linger_s=30, clock=clock)
    tracker.annotate([rec(CLIENT, SERVER, "SYN,ACK"), rec(SERVER, CLIENT, "SYN,ACK", reply=True)])
    tracker.annotate([rec(CLIENT, SERVER, "FIN,ACK", end=True)])
    tracker.annotate([rec(("10.0.0.9", 1), SERVER, "SYN")])  # another, still waiting
    clock.ns += 31_000_000_000
    tracker.annotate([rec(("10.0.0.9", 1), SERVER, "SYN")])
    assert len(tracker) == 1


# is_reply as the agent really sets it: the enrich stage knows it for Service connections
# (conntrack, or which side is the Service address) and leaves it False elsewhere, and the
# pipeline annotates BEFORE it enriches (agent/main.py), so the tracker sees False on every
# record of a batch and True only on final records copied from an enriched one. Outcomes
# must come out the same either way: the opener is the side whose SYN has no ACK, and a
# reply never makes itself the opener.
def _service_connection(reply_flags: str, reply_first: bool) -> list:
    from tests.enrich.test_enrich import CART_VIP, FRONTEND

    client = rec((FRONTEND, 40000), (CART_VIP, 80), "SYN", t=5)
    answer = rec((CART_VIP, 80), (FRONTEND, 40000), reply_flags, t=5)  # same first_seen second
    return [answer, client] if reply_first else [client, answer]


@pytest.mark.parametrize("reply_flags,expected", [("SYN,ACK", O.ESTABLISHED),
                                                  ("RST,ACK", O.REFUSED)],
                         ids=["established", "refused"])
@pytest.mark.parametrize("order", ["annotate-then-enrich", "enrich-then-annotate"])
@pytest.mark.parametrize("reply_first", [False, True], ids=["request-first", "reply-first"])
def test_outcomes_hold_with_is_reply_as_enrich_sets_it(reply_flags, expected, order,
                                                       reply_first):
    from agent.enrich.names import FlowEnricher
    from tests.enrich.test_enrich import cluster, conntrack

    batch = _service_connection(reply_flags, reply_first)
    enricher = FlowEnricher(cluster(), conntrack())
    tracker = OutcomeTracker(syn_timeout_s=3, clock=FakeClock())
    steps = ([tracker.annotate, enricher.enrich] if order == "annotate-then-enrich"
             else [enricher.enrich, tracker.annotate])
    for step in steps:
        step(batch)
    by_source = {f.ip.source: f for f in batch}
    assert by_source["10.96.0.12"].is_reply and not by_source["10.244.1.2"].is_reply
    assert [f.outcome for f in batch] == [expected, expected]
