/* podflow: structs and enums shared by the kernel programs and the agent.
 *
 * Python mirror: agent/datapath/abi.py (ctypes classes FlowKey, FlowValue, EventHeader,
 * FlowEvent and the ERR_* / EVENT_* tables). tests/datapath/test_layout.py compiles this
 * header with gcc and checks that every size and offset agrees: change both sides together.
 *
 * Event contract (the ring buffer `events`, see maps.h)
 * -----------------------------------------------------
 * Every ring-buffer record starts with `struct pf_event_hdr`; the agent's reader dispatches
 * on `kind` (agent/datapath/loader.py). The flow kinds are the datapath's own; a feature
 * header's kinds are handled by its DatapathExtension's event_handlers()
 * (agent/datapath/extension.py), which the stage consuming the feature builds and
 * agent/main.py hands to the Datapath (drop.h and dns.h: the annotate stage's
 * datapath_extensions()).
 *   PF_EVENT_FLOW_NEW       struct pf_flow_event: the first packet of a flow the active
 *                           half of the flow map did not hold and the other half did not
 *                           either (a hint for a fast first record: the packet is counted
 *                           in the map too; events beyond a per-CPU budget are not sent,
 *                           and the agent's sweep announces those flows)
 *   2                       unused (was a per-packet event while the flow map was full;
 *                           such packets are now counted as lost, PF_ERR_MAP_FULL)
 *   PF_EVENT_DROP           bpf/drop.h (-DPODFLOW_DROPS): drops seen at skb:kfree_skb
 *   PF_EVENT_DNS            bpf/dns.h (-DPODFLOW_DNS): DNS payload capture
 *   PF_EVENT_EXT_FIRST..    free for later features
 * Emit with  events.ringbuf_output(&ev, sizeof(ev), BPF_RB_NO_WAKEUP)  (the reader polls
 * on a timer) and count a failure with pf_count_error(PF_ERR_RINGBUF_FULL_<yours>).
 * Error reasons PF_ERR_EXT_FIRST .. PF_ERR_MAX-1 belong to feature headers (drop.h, dns.h);
 * a feature names its own with DatapathExtension.error_names() (the datapath's names are
 * agent/datapath/abi.py ERROR_NAMES).
 *
 * Headers may use maps (events.ringbuf_output, their own BPF_HASH ...): bcc rewrites map
 * calls only in the main source file, so agent/datapath/loader.py inlines every quoted #include
 * of podflow.c before compiling (expand_includes, with #line markers).
 *
 * Clock: every *_ns timestamp is bpf_ktime_get_ns() (CLOCK_MONOTONIC); the agent converts
 * to wall clock with an offset taken at start.
 */
#ifndef PODFLOW_TYPES_H
#define PODFLOW_TYPES_H

/* flow_key.direction: the TC hook that saw the packet. The pod's point of view is derived
 * in user space from the interface kind (agent/datapath/decode.py pod_direction). */
#define PF_DIR_INGRESS 0
#define PF_DIR_EGRESS  1

/* flow_key.flags */
#define PF_KEY_FRAGMENT 0x01 /* a non-first IP fragment: ports unknown, left zero */

/* flow_key.family: the IP version */
#define PF_FAMILY_IPV4 4
#define PF_FAMILY_IPV6 6

/* One flow at one observation point. Zeroed before filling: it is a hash key. 44 bytes. */
struct pf_flow_key {
    __u32 ifindex;        /* interface the TC program is attached to */
    __u8  direction;      /* PF_DIR_* */
    __u8  family;         /* PF_FAMILY_* */
    __u8  proto;          /* IPPROTO_* (L4, after IPv6 extension headers) */
    __u8  flags;          /* PF_KEY_* */
    __u8  src_addr[16];   /* IPv4 in the first 4 bytes, network order */
    __u8  dst_addr[16];
    __u16 src_port;       /* host order; ICMP: type */
    __u16 dst_port;       /* host order; ICMP: code */
};

/* Counters of one flow entry. packets/bytes are updated with atomic adds. 40 bytes. */
struct pf_flow_value {
    __u64 packets;        /* skbs seen at the hook (a GSO skb counts once) */
    __u64 bytes;          /* sum of skb->len at the hook: L2 header included, no FCS */
    __u64 first_seen_ns;  /* bpf_ktime_get_ns of the entry's first packet */
    __u64 last_seen_ns;   /* bpf_ktime_get_ns of the latest packet */
    __u64 tcp_flags;      /* union of TCP flags since first_seen (FIN=0x01 .. CWR=0x80);
                             64-bit because older BPF ISAs only have 64-bit atomic OR */
};

/* Ring-buffer event kinds (pf_event_hdr.kind) */
#define PF_EVENT_FLOW_NEW      1
#define PF_EVENT_DROP          3
#define PF_EVENT_DNS           4
#define PF_EVENT_EXT_FIRST     5

/* Common header of every ring-buffer event. 8 bytes, so the body is 8-aligned. */
struct pf_event_hdr {
    __u8  kind;           /* PF_EVENT_* */
    __u8  _pad[7];
};

/* PF_EVENT_FLOW_NEW. 72 bytes. */
struct pf_flow_event {
    struct pf_event_hdr hdr;
    struct pf_flow_key key;
    __u32 pkt_len;        /* skb->len of this packet */
    __u64 ts_ns;          /* bpf_ktime_get_ns when seen */
    __u32 tcp_flags;      /* this packet's TCP flags */
    __u32 _pad;
};

/* Per-reason counters (the `errors` per-CPU array). Names in agent/datapath/abi.py. */
enum pf_error {
    PF_ERR_TRUNC_ETH = 0,          /* shorter than an Ethernet header */
    PF_ERR_TRUNC_VLAN,             /* 802.1Q/802.1ad tag cut short */
    PF_ERR_VLAN_TOO_DEEP,          /* more than two VLAN tags */
    PF_ERR_TRUNC_IPV4,             /* IPv4 header cut short */
    PF_ERR_BAD_IPV4_IHL,           /* IHL < 5 */
    PF_ERR_BAD_IP_VERSION,         /* version field does not match the ethertype */
    PF_ERR_TRUNC_IPV6,             /* IPv6 fixed header cut short */
    PF_ERR_TRUNC_IPV6_EXT,         /* an IPv6 extension header cut short */
    PF_ERR_IPV6_EXT_TOO_LONG,      /* more extension headers than the walk allows */
    PF_ERR_TRUNC_L4,               /* TCP/UDP/SCTP/ICMP header cut short */
    PF_ERR_BAD_TCP_DOFF,           /* TCP data offset < 5 */
    PF_ERR_MAP_FULL,               /* active flow-map half full: the packet is not counted
                                      (lost; its bytes in map_full_bytes) */
    PF_ERR_MAP_UPDATE,             /* flow map update failed for another reason (lost) */
    PF_ERR_RINGBUF_FULL_NEW,       /* FLOW_NEW event not sent, ring buffer full (the flow
                                      is still counted and announced by the sweep) */
    PF_ERR_NEW_COALESCED,          /* FLOW_NEW event not sent, over the CPU's budget (the
                                      same) */
    PF_ERR_OTHER_ETHERTYPE,        /* non-IP frame (ARP ...): counted, not a flow */
    PF_ERR_EXT_FIRST = 16,         /* 16..31 free for drop.h / dns.h */
    PF_ERR_MAX = 32,
};

#endif /* PODFLOW_TYPES_H */
