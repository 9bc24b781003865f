/* podflow: packets the kernel dropped, with its reason (tracepoint skb:kfree_skb).
 *
 * Included by podflow.c with -DPODFLOW_DROPS. Drops are aggregated in the kernel like flows:
 * one `drops` entry per (5-tuple, interface, reason) with packets, bytes, first/last seen,
 * and one ring-buffer event per NEW entry, so a drop flood costs a map update per packet and
 * never an event per packet. When the map is full the drop itself is sent as an event
 * (PF_DROP_EV_MAP_FULL, accumulated by the agent); when that fails too it is counted
 * (PF_ERR_DROP_LOST -> lost events at stage KERNEL_DROP_MAP).
 *
 * struct sk_buff / struct net_device are kernel-internal and change between kernels: their
 * offsets come from the running kernel's BTF (agent/datapath/btf.py) as -D cflags, never from
 * headers. Required: PF_SKB_{HEAD,DATA,LEN,DEV,PROTOCOL,NETWORK_HEADER,TRANSPORT_HEADER}_OFF,
 * PF_NETDEV_IFINDEX_OFF, PF_TP_*_OFF, PF_DROP_REASON_NOT_SPECIFIED (and PF_DROP_REASON_CONSUMED when the
 * kernel has it): those two reasons are the kernel's normal frees and are ignored.
 * Optional: PF_DROP_NETNS_INO, the inode of the agent's network namespace (only drops on
 * devices of that namespace are kept).
 *
 * bcc rewrites map calls only in its main file: load podflow.c through
 * expand_includes in agent/datapath/loader.py (one text), not with #include search paths.
 *
 * Python mirror: agent/annotate/drops.py (DropKey, DropValue, DropEvent);
 * tests/annotate/test_layout.py compiles this header with gcc and compares sizes and offsets.
 */
#ifndef PODFLOW_DROP_H
#define PODFLOW_DROP_H

#include "types.h"
#include "maps.h"
#include "parse.h"

#ifndef PODFLOW_DROP_MAP_SIZE
#define PODFLOW_DROP_MAP_SIZE 16384
#endif
#ifndef PF_DROP_REASON_CONSUMED
#define PF_DROP_REASON_CONSUMED 0xffffffff /* kernel without SKB_CONSUMED: never matches */
#endif

/* enum pf_error values owned by drop.h (PF_ERR_EXT_FIRST..) */
#define PF_ERR_DROP_MAP_FULL   16 /* drops map full: the drop went out as a MAP_FULL event */
#define PF_ERR_DROP_LOST       17 /* ... and the ring buffer was full too: drop not reported */
#define PF_ERR_DROP_EVENT_LOST 18 /* NEW event lost: the entry is still counted and swept */
#define PF_ERR_DROP_NO_HEADER  19 /* an IP skb whose headers could not be read */
#define PF_ERR_DROP_UPDATE     20 /* drops map update failed for another reason */

/* pf_drop_event.flags */
#define PF_DROP_EV_NEW      0x01 /* first drop of a new entry (counted in the map) */
#define PF_DROP_EV_MAP_FULL 0x02 /* not counted in the map: the agent accumulates it */

/* The flow part reuses pf_flow_key: ifindex = skb->dev's ifindex (0 when none), direction
 * unused (0). 48 bytes. */
struct pf_drop_key {
    struct pf_flow_key flow;
    __u32 reason;          /* enum skb_drop_reason value of the running kernel */
};

/* 32 bytes. */
struct pf_drop_value {
    __u64 packets;
    __u64 bytes;           /* sum of skb->len at the drop point (headers already pulled
                            * by the stack are not counted) */
    __u64 first_seen_ns;   /* bpf_ktime_get_ns */
    __u64 last_seen_ns;
};

/* PF_EVENT_DROP. 72 bytes. */
struct pf_drop_event {
    struct pf_event_hdr hdr;
    struct pf_drop_key key;
    __u32 pkt_len;         /* skb->len of this drop */
    __u32 flags;           /* PF_DROP_EV_* */
    __u64 ts_ns;
};

/* drops: struct pf_drop_key -> struct pf_drop_value. Swept by the agent, which reports
 * deltas and deletes idle entries. */
BPF_HASH(drops, struct pf_drop_key, struct pf_drop_value, PODFLOW_DROP_MAP_SIZE);

#define PF_SKB_FIELD(skb, off, var) bpf_probe_read_kernel(&(var), sizeof(var), (char *)(skb) + (off))

static __always_inline void pf_emit_drop(const struct pf_drop_key *key, __u32 len,
                                         __u64 now_ns, __u32 flags)
{
    struct pf_drop_event ev;
    __builtin_memset(&ev, 0, sizeof(ev));
    ev.hdr.kind = PF_EVENT_DROP;
    __builtin_memcpy(&ev.key, key, sizeof(ev.key));
    ev.pkt_len = len;
    ev.flags = flags;
    ev.ts_ns = now_ns;
    if (events.ringbuf_output(&ev, sizeof(ev), BPF_RB_NO_WAKEUP) < 0)
        pf_count_error(flags & PF_DROP_EV_MAP_FULL ? PF_ERR_DROP_LOST : PF_ERR_DROP_EVENT_LOST);
}

/* Fill key->flow from the skb's IP and L4 headers (skb->head + network_header). */
static __always_inline int pf_drop_parse(void *skb, __u16 eth_proto, struct pf_drop_key *key)
{
    unsigned char *head = 0;
    __u16 nh = 0, th = 0;
    PF_SKB_FIELD(skb, PF_SKB_HEAD_OFF, head);
    PF_SKB_FIELD(skb, PF_SKB_NETWORK_HEADER_OFF, nh);
    PF_SKB_FIELD(skb, PF_SKB_TRANSPORT_HEADER_OFF, th);
    if (!head || nh == 0xffff)
        return -1;

    __u32 l4 = 0;
    if (eth_proto == 0x0800) {
        __u8 ip[20];
        if (bpf_probe_read_kernel(ip, sizeof(ip), head + nh) < 0 || (ip[0] >> 4) != 4)
            return -1;
        key->flow.family = PF_FAMILY_IPV4;
        key->flow.proto = ip[9];
        __builtin_memcpy(key->flow.src_addr, &ip[12], 4);
        __builtin_memcpy(key->flow.dst_addr, &ip[16], 4);
        if (((((__u16)ip[6] << 8) | ip[7]) & 0x1fff) != 0) {
            key->flow.flags |= PF_KEY_FRAGMENT;
            return 0;
        }
        l4 = nh + (ip[0] & 0x0f) * 4;
    } else {
        __u8 ip6[40];
        if (bpf_probe_read_kernel(ip6, sizeof(ip6), head + nh) < 0 || (ip6[0] >> 4) != 6)
            return -1;
        key->flow.family = PF_FAMILY_IPV6;
        key->flow.proto = ip6[6];
        __builtin_memcpy(key->flow.src_addr, &ip6[8], 16);
        __builtin_memcpy(key->flow.dst_addr, &ip6[24], 16);
        /* Extension headers: trust the stack's transport header when it was set past the
         * fixed header; otherwise ports stay unknown unless the next header is L4. */
        l4 = (th != 0xffff && th > nh + 40) ? th : nh + 40;
    }
    __u8 p[4];
    switch (key->flow.proto) {
    case PF_IPPROTO_TCP:
    case PF_IPPROTO_UDP:
    case PF_IPPROTO_SCTP:
        if (bpf_probe_read_kernel(p, sizeof(p), head + l4) == 0) {
            key->flow.src_port = ((__u16)p[0] << 8) | p[1];
            key->flow.dst_port = ((__u16)p[2] << 8) | p[3];
        }
        break;
    case PF_IPPROTO_ICMP:
    case PF_IPPROTO_ICMPV6:
        if (bpf_probe_read_kernel(p, 2, head + l4) == 0) {
            key->flow.src_port = p[0];
            key->flow.dst_port = p[1];
        }
        break;
    }
    return 0;
}

/* Attached to skb:kfree_skb by the agent. The record layout (struct
 * trace_event_raw_kfree_skb) comes from BTF too: PF_TP_{SKBADDR,PROTOCOL,REASON}_OFF. */
int pf_kfree_skb(void *ctx)
{
    __u32 reason = *(__u32 *)((char *)ctx + PF_TP_REASON_OFF);
    if (reason == PF_DROP_REASON_NOT_SPECIFIED || reason == PF_DROP_REASON_CONSUMED ||
        reason == 0 /* SKB_NOT_DROPPED_YET */)
        return 0;
    __u16 eth_proto = *(__u16 *)((char *)ctx + PF_TP_PROTOCOL_OFF); /* host order */
    if (eth_proto != 0x0800 && eth_proto != 0x86DD)
        return 0;

    void *skb = *(void **)((char *)ctx + PF_TP_SKBADDR_OFF);
    void *dev = 0;
    PF_SKB_FIELD(skb, PF_SKB_DEV_OFF, dev);
#ifdef PF_DROP_NETNS_INO
    /* The tracepoint fires for every namespace of the machine; keep the drops of the
     * agent's own (the node's), known by the device's namespace. Drops before a device
     * was assigned (local output of another namespace) are not ours to report. */
    if (!dev)
        return 0;
    void *net = 0;
    __u32 inum = 0;
    PF_SKB_FIELD(dev, PF_NETDEV_ND_NET_OFF, net);
    if (!net)
        return 0;
    PF_SKB_FIELD(net, PF_NET_NS_INUM_OFF, inum);
    if (inum != PF_DROP_NETNS_INO)
        return 0;
#endif
    struct pf_drop_key key;
    __builtin_memset(&key, 0, sizeof(key));
    if (pf_drop_parse(skb, eth_proto, &key) < 0) {
        pf_count_error(PF_ERR_DROP_NO_HEADER);
        return 0;
    }
    key.reason = reason;
    if (dev) {
        int ifindex = 0;
        PF_SKB_FIELD(dev, PF_NETDEV_IFINDEX_OFF, ifindex);
        key.flow.ifindex = ifindex;
    }
    __u32 len = 0;
    PF_SKB_FIELD(skb, PF_SKB_LEN_OFF, len);

    __u64 now_ns = bpf_ktime_get_ns();
    struct pf_drop_value *val = drops.lookup(&key);
    if (!val) {
        struct pf_drop_value init = {};
        init.packets = 1;
        init.bytes = len;
        init.first_seen_ns = now_ns;
        init.last_seen_ns = now_ns;
        int rc = drops.insert(&key, &init);
        if (rc == 0) {
            pf_emit_drop(&key, len, now_ns, PF_DROP_EV_NEW);
            return 0;
        }
        val = drops.lookup(&key); /* -EEXIST: another CPU inserted it */
        if (!val) {
            if (rc == -7 /* E2BIG */ || rc == -12 /* ENOMEM */) {
                pf_count_error(PF_ERR_DROP_MAP_FULL);
                pf_emit_drop(&key, len, now_ns, PF_DROP_EV_MAP_FULL);
            } else {
                pf_count_error(PF_ERR_DROP_UPDATE);
            }
            return 0;
        }
    }
    __sync_fetch_and_add(&val->packets, 1);
    __sync_fetch_and_add(&val->bytes, len);
    val->last_seen_ns = now_ns;
    return 0;
}

#endif /* PODFLOW_DROP_H */
