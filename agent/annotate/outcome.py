"""Connection outcomes: did the connection work, and if not, how did it fail?

A flow record carries the packets of one direction at one observation point, so it cannot
say "refused" or "unanswered" by itself. The datapath's flow table pairs each flow with the
reverse 5-tuple seen at the SAME interface (a pod's veth sees both directions of every
connection of its pod) and hands over both sides with every record: the flags, packets and
first packet of this side (`own`) and of the other (`rev`), whatever the order in which the
two sides' records go out (agent/datapath/flowtable.py). This module judges them, for a
whole batch at once, with array operations. Bridge records get no outcome: a bridge sees
requests after kube-proxy's DNAT and replies before the reverse translation, so the two
directions do not pair up there.

    TCP  SYN, then the other side's SYN+ACK            -> ESTABLISHED
         SYN, then the other side's RST (no SYN+ACK)    -> REFUSED
         SYN and nothing back within --syn-timeout      -> UNANSWERED (IN_PROGRESS before)
         established, then RST from either side         -> RESET
         established, then FIN                          -> CLOSED
         no handshake seen (agent started mid-connection) but both directions -> ESTABLISHED
    UDP  packets both ways                              -> ESTABLISHED
         one way only, for --syn-timeout                -> NO_REPLY (IN_PROGRESS before)

The side that opened a connection is the one whose first packet came first among the sides
that sent a SYN (TCP), or the earlier one (UDP). No record is made for an outcome: it rides
on the flow's records, and an outcome known only after a flow's last record reaches users
with its end (an end notice, agent/datapath/flowtable.py). Plain numpy: the tests build the
columns by hand.
"""

from __future__ import annotations

import numpy as np

from podflow_api.v1 import flow_pb2

TCP_FIN, TCP_SYN, TCP_RST = 0x01, 0x02, 0x04
IPPROTO_TCP, IPPROTO_UDP = 6, 17
_ESTABLISHED = flow_pb2.ESTABLISHED
_REFUSED = flow_pb2.REFUSED
_UNANSWERED = flow_pb2.UNANSWERED
_RESET = flow_pb2.RESET
_CLOSED = flow_pb2.CLOSED
_NO_REPLY = flow_pb2.NO_REPLY
_IN_PROGRESS = flow_pb2.IN_PROGRESS
_UNKNOWN = flow_pb2.OUTCOME_UNKNOWN


def judge(proto: np.ndarray, paired: np.ndarray, own_flags: np.ndarray,
          own_packets: np.ndarray, own_first_ns: np.ndarray, rev_flags: np.ndarray,
          rev_packets: np.ndarray, rev_first_ns: np.ndarray, ended: np.ndarray,
          now_ns: int, syn_timeout_ns: int) -> np.ndarray:
    """The outcome (flow_pb2.ConnectionOutcome values, uint8) of each record.

    `paired`: records whose connection can be judged (TCP/UDP at a pod veth, not a drop or
    a fragment); the others get OUTCOME_UNKNOWN. Times are of one clock (ns); a side never
    seen has 0 packets and first 0. `ended`: the flow ended (its last record), which settles
    a connection still waiting."""
    n = len(proto)
    out = np.zeros(n, np.uint8)
    if not n:
        return out
    own_flags = own_flags.astype(np.uint8)
    rev_flags = rev_flags.astype(np.uint8)
    own_seen = own_packets > 0
    rev_seen = rev_packets > 0
    opened = np.where(rev_seen & (rev_first_ns > 0),
                      np.minimum(own_first_ns, np.where(rev_first_ns > 0, rev_first_ns,
                                                        own_first_ns)),
                      own_first_ns).astype(np.int64)
    timed_out = (now_ns - opened >= syn_timeout_ns) | ended

    udp = paired & (proto == IPPROTO_UDP)
    both = own_seen & rev_seen
    out[udp] = np.where(both[udp], _ESTABLISHED,
                        np.where(timed_out[udp], _NO_REPLY, _IN_PROGRESS))

    tcp = paired & (proto == IPPROTO_TCP)
    if tcp.any():
        own_syn = (own_flags & TCP_SYN) != 0
        rev_syn = (rev_flags & TCP_SYN) != 0
        # The opener: the side with a SYN whose first packet came first.
        own_opened = own_syn & (~rev_syn | (own_first_ns <= np.where(rev_first_ns > 0,
                                                                     rev_first_ns,
                                                                     own_first_ns)))
        rev_opened = rev_syn & ~own_opened
        mine = np.where(own_opened, own_flags, np.where(rev_opened, rev_flags, 0))
        theirs = np.where(own_opened, rev_flags, np.where(rev_opened, own_flags, 0))
        any_flags = own_flags | rev_flags
        rst = (any_flags & TCP_RST) != 0
        fin = (any_flags & TCP_FIN) != 0
        opener = own_opened | rev_opened
        handshake = opener & ((theirs & TCP_SYN) != 0)
        no_opener = np.select([rst, fin, both], [_RESET, _CLOSED, _ESTABLISHED], _UNKNOWN)
        shook = np.select([rst, fin], [_RESET, _CLOSED], _ESTABLISHED)
        waiting = np.select([(theirs & TCP_RST) != 0, ((mine & TCP_SYN) != 0) & timed_out,
                             (mine & TCP_SYN) != 0],
                            [_REFUSED, _UNANSWERED, _IN_PROGRESS], _UNKNOWN)
        result = np.where(~opener, no_opener, np.where(handshake, shook, waiting))
        out[tcp] = result[tcp]
    return out
