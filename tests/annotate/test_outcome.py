"""Connection outcomes judged from both sides of a connection, as the flow table hands them
over with each record (no root needed): one case per row, all judged in one call."""

from __future__ import annotations

import numpy as np
import pytest

from agent.annotate.outcome import judge
from podflow_api.v1 import flow_pb2

O = flow_pb2.ConnectionOutcome
S = 1_000_000_000
NOW = 100 * S
SYN_TIMEOUT = 3 * S
TCP, UDP = 6, 17
FLAGS = {"FIN": 1, "SYN": 2, "RST": 4, "PSH": 8, "ACK": 16}


def bits(text: str) -> int:
    return sum(FLAGS[f] for f in text.split(",") if f)


# (id, proto, own flags, own first (s before NOW), rev flags or None, rev first, ended, want)
CASES = [
    ("tcp-established-opener", TCP, "SYN,ACK", 2, "SYN,ACK", 1.9, False, O.ESTABLISHED),
    ("tcp-established-answerer", TCP, "SYN,ACK", 1.9, "SYN,ACK", 2, False, O.ESTABLISHED),
    ("tcp-refused", TCP, "SYN", 1, "RST,ACK", 0.9, False, O.REFUSED),
    ("tcp-refused-seen-from-the-rst", TCP, "RST,ACK", 0.9, "SYN", 1, False, O.REFUSED),
    ("tcp-syn-waiting", TCP, "SYN", 1, None, 0, False, O.IN_PROGRESS),
    ("tcp-unanswered", TCP, "SYN", 5, None, 0, False, O.UNANSWERED),
    ("tcp-unanswered-at-its-end", TCP, "SYN", 1, None, 0, True, O.UNANSWERED),
    ("tcp-reset", TCP, "SYN,ACK,RST", 9, "SYN,ACK", 8.9, False, O.RESET),
    ("tcp-closed", TCP, "SYN,ACK,FIN", 9, "SYN,ACK,FIN", 8.9, False, O.CLOSED),
    ("tcp-mid-connection-both-ways", TCP, "ACK", 9, "ACK", 8.9, False, O.ESTABLISHED),
    ("tcp-mid-connection-one-way", TCP, "ACK", 9, None, 0, False, O.OUTCOME_UNKNOWN),
    ("tcp-mid-connection-reset", TCP, "ACK,RST", 9, None, 0, False, O.RESET),
    ("udp-reply", UDP, "", 1, "", 0.9, False, O.ESTABLISHED),
    ("udp-waiting", UDP, "", 1, None, 0, False, O.IN_PROGRESS),
    ("udp-no-reply", UDP, "", 4, None, 0, False, O.NO_REPLY),
    ("udp-no-reply-at-its-end", UDP, "", 1, None, 0, True, O.NO_REPLY),
]


def columns(cases, paired=True):
    n = len(cases)
    cols = {"proto": np.array([c[1] for c in cases], np.uint8),
            "paired": np.full(n, paired),
            "own_flags": np.array([bits(c[2]) for c in cases], np.uint8),
            "own_packets": np.ones(n, np.uint64),
            "own_first_ns": np.array([NOW - int(c[3] * S) for c in cases], np.int64),
            "rev_flags": np.array([bits(c[4] or "") for c in cases], np.uint8),
            "rev_packets": np.array([0 if c[4] is None else 1 for c in cases], np.uint64),
            "rev_first_ns": np.array([0 if c[4] is None else NOW - int(c[5] * S)
                                      for c in cases], np.int64),
            "ended": np.array([c[6] for c in cases])}
    return cols


def test_every_case_in_one_call():
    got = judge(**columns(CASES), now_ns=NOW, syn_timeout_ns=SYN_TIMEOUT)
    want = [c[7] for c in CASES]
    wrong = [(c[0], O.Name(g), O.Name(w)) for c, g, w in zip(CASES, got, want) if g != w]
    assert not wrong


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_each_case_alone(case):
    assert judge(**columns([case]), now_ns=NOW, syn_timeout_ns=SYN_TIMEOUT)[0] == case[7]


def test_unpaired_records_get_no_outcome():
    """Bridge records, drops, fragments and ICMP are not judged."""
    got = judge(**columns(CASES, paired=False), now_ns=NOW, syn_timeout_ns=SYN_TIMEOUT)
    assert not got.any()
    icmp = columns(CASES[:1])
    icmp["proto"][:] = 1
    assert judge(**icmp, now_ns=NOW, syn_timeout_ns=SYN_TIMEOUT)[0] == O.OUTCOME_UNKNOWN


def test_empty():
    cols = columns([])
    assert len(judge(**cols, now_ns=NOW, syn_timeout_ns=SYN_TIMEOUT)) == 0
