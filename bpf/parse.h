/* podflow: packet parsing for the TC programs: Ethernet, up to two VLAN tags, IPv4 (options,
 * fragments), IPv6 (bounded extension-header walk), TCP, UDP, SCTP, ICMPv4, ICMPv6.
 *
 * Everything is read through pf_load (direct packet access, else bpf_skb_load_bytes), which
 * fails cleanly past skb->len and works on non-linear skbs, so a truncated or malformed frame
 * ends up in a per-reason counter and never yields a flow with made-up ports. Malformed
 * packets are counted only there, not as flows.
 */
#ifndef PODFLOW_PARSE_H
#define PODFLOW_PARSE_H

#include "types.h"
#include "maps.h"

#define PF_ETH_HLEN       14
#define PF_ETH_P_IP       0x0800
#define PF_ETH_P_IPV6     0x86DD
#define PF_ETH_P_8021Q    0x8100
#define PF_ETH_P_8021AD   0x88A8

#define PF_IPPROTO_HOPOPTS  0
#define PF_IPPROTO_ICMP     1
#define PF_IPPROTO_TCP      6
#define PF_IPPROTO_UDP      17
#define PF_IPPROTO_ROUTING  43
#define PF_IPPROTO_FRAGMENT 44
#define PF_IPPROTO_AH       51
#define PF_IPPROTO_ICMPV6   58
#define PF_IPPROTO_DSTOPTS  60
#define PF_IPPROTO_SCTP     132
#define PF_IPPROTO_MH       135

/* How many IPv6 extension headers the walk follows before giving up
 * (PF_ERR_IPV6_EXT_TOO_LONG). Real traffic rarely carries more than two or three. */
#ifndef PODFLOW_IPV6_MAX_EXT
#define PODFLOW_IPV6_MAX_EXT 8
#endif

/* pf_parse results */
#define PF_PARSE_FLOW  0  /* key filled: count it as a flow */
#define PF_PARSE_OTHER 1  /* not IP: count per interface only */
#define PF_PARSE_ERROR 2  /* malformed: the reason was counted */

/* What the parser learned beyond the key (for the accounting and the DNS hook). */
struct pf_parsed {
    __u32 l4_off;    /* offset of the L4 header from the start of the frame (0: none) */
    __u32 tcp_flags; /* this packet's TCP flags */
};

/* Copy `len` bytes at `off` of the frame: straight from the linear packet data when they lie
 * there (the common case: it halves the parsing cost), else with bpf_skb_load_bytes (non-linear
 * skbs). Fails (< 0) past the end of the frame, so a truncated header is never read. */
#define PF_DIRECT_MAX_OFF 256

/* The frame being parsed. data/data_end are read from the context once, in pf_parse: the
 * verifier rejects context reads the compiler has folded into modified pointers. */
struct pf_pkt {
    struct __sk_buff *skb;
    void *data;
    void *data_end;
};

static __always_inline int pf_load(const struct pf_pkt *pkt, __u32 off, void *to, __u32 len)
{
    if (off <= PF_DIRECT_MAX_OFF && pkt->data + off + len <= pkt->data_end) {
        __builtin_memcpy(to, pkt->data + off, len);
        return 0;
    }
    return bpf_skb_load_bytes(pkt->skb, off, to, len);
}

static __always_inline int pf_parse_error(__u32 reason)
{
    pf_count_error(reason);
    return PF_PARSE_ERROR;
}

/* Fill ports (or ICMP type/code) and TCP flags from the L4 header at `off`. */
static __always_inline int pf_parse_l4(const struct pf_pkt *pkt, __u32 off,
                                       struct pf_flow_key *key, struct pf_parsed *out)
{
    __u8 buf[20];

    switch (key->proto) {
    case PF_IPPROTO_TCP:
        if (pf_load(pkt, off, buf, 20) < 0)
            return pf_parse_error(PF_ERR_TRUNC_L4);
        if ((buf[12] >> 4) < 5)
            return pf_parse_error(PF_ERR_BAD_TCP_DOFF);
        out->tcp_flags = buf[13];
        break;
    case PF_IPPROTO_UDP:
        if (pf_load(pkt, off, buf, 8) < 0)
            return pf_parse_error(PF_ERR_TRUNC_L4);
        break;
    case PF_IPPROTO_SCTP:
        if (pf_load(pkt, off, buf, 12) < 0)
            return pf_parse_error(PF_ERR_TRUNC_L4);
        break;
    case PF_IPPROTO_ICMP:
    case PF_IPPROTO_ICMPV6:
        if (pf_load(pkt, off, buf, 4) < 0)
            return pf_parse_error(PF_ERR_TRUNC_L4);
        key->src_port = buf[0]; /* type */
        key->dst_port = buf[1]; /* code */
        out->l4_off = off;
        return PF_PARSE_FLOW;
    default:
        /* GRE, ESP, ... : a flow without ports */
        out->l4_off = off;
        return PF_PARSE_FLOW;
    }
    key->src_port = ((__u16)buf[0] << 8) | buf[1];
    key->dst_port = ((__u16)buf[2] << 8) | buf[3];
    out->l4_off = off;
    return PF_PARSE_FLOW;
}

static __always_inline int pf_parse_ipv4(const struct pf_pkt *pkt, __u32 off,
                                         struct pf_flow_key *key, struct pf_parsed *out)
{
    __u8 ip[20];

    if (pf_load(pkt, off, ip, 20) < 0)
        return pf_parse_error(PF_ERR_TRUNC_IPV4);
    if ((ip[0] >> 4) != 4)
        return pf_parse_error(PF_ERR_BAD_IP_VERSION);
    __u32 ihl = ip[0] & 0x0f;
    if (ihl < 5)
        return pf_parse_error(PF_ERR_BAD_IPV4_IHL);

    key->family = PF_FAMILY_IPV4;
    key->proto = ip[9];
    __builtin_memcpy(key->src_addr, &ip[12], 4);
    __builtin_memcpy(key->dst_addr, &ip[16], 4);

    __u16 frag_off = (((__u16)ip[6] << 8) | ip[7]) & 0x1fff;
    if (frag_off) {
        /* a non-first fragment: no L4 header here */
        key->flags |= PF_KEY_FRAGMENT;
        return PF_PARSE_FLOW;
    }
    return pf_parse_l4(pkt, off + ihl * 4, key, out);
}

static __always_inline int pf_parse_ipv6(const struct pf_pkt *pkt, __u32 off,
                                         struct pf_flow_key *key, struct pf_parsed *out)
{
    __u8 ip6[40];

    if (pf_load(pkt, off, ip6, 40) < 0)
        return pf_parse_error(PF_ERR_TRUNC_IPV6);
    if ((ip6[0] >> 4) != 6)
        return pf_parse_error(PF_ERR_BAD_IP_VERSION);

    key->family = PF_FAMILY_IPV6;
    __builtin_memcpy(key->src_addr, &ip6[8], 16);
    __builtin_memcpy(key->dst_addr, &ip6[24], 16);

    __u8 nexthdr = ip6[6];
    off += 40;

#pragma unroll
    for (int i = 0; i < PODFLOW_IPV6_MAX_EXT; i++) {
        __u8 ext[8];
        switch (nexthdr) {
        case PF_IPPROTO_HOPOPTS:
        case PF_IPPROTO_ROUTING:
        case PF_IPPROTO_DSTOPTS:
        case PF_IPPROTO_MH:
            if (pf_load(pkt, off, ext, 2) < 0)
                return pf_parse_error(PF_ERR_TRUNC_IPV6_EXT);
            nexthdr = ext[0];
            off += ((__u32)ext[1] + 1) * 8;
            continue;
        case PF_IPPROTO_AH:
            if (pf_load(pkt, off, ext, 2) < 0)
                return pf_parse_error(PF_ERR_TRUNC_IPV6_EXT);
            nexthdr = ext[0];
            off += ((__u32)ext[1] + 2) * 4;
            continue;
        case PF_IPPROTO_FRAGMENT:
            if (pf_load(pkt, off, ext, 8) < 0)
                return pf_parse_error(PF_ERR_TRUNC_IPV6_EXT);
            nexthdr = ext[0];
            off += 8;
            if (((((__u16)ext[2] << 8) | ext[3]) & 0xfff8) != 0) {
                key->proto = nexthdr;
                key->flags |= PF_KEY_FRAGMENT;
                return PF_PARSE_FLOW;
            }
            continue;
        default:
            key->proto = nexthdr;
            return pf_parse_l4(pkt, off, key, out);
        }
    }
    return pf_parse_error(PF_ERR_IPV6_EXT_TOO_LONG);
}

/* Parse the frame into `key` (ifindex and direction are the caller's). */
static __always_inline int pf_parse(struct __sk_buff *skb, struct pf_flow_key *key,
                                    struct pf_parsed *out)
{
    __u8 eth[PF_ETH_HLEN];
    struct pf_pkt frame = {
        .skb = skb,
        .data = (void *)(long)skb->data,
        .data_end = (void *)(long)skb->data_end,
    };
    const struct pf_pkt *pkt = &frame;

    if (pf_load(pkt, 0, eth, PF_ETH_HLEN) < 0)
        return pf_parse_error(PF_ERR_TRUNC_ETH);
    __u16 proto = ((__u16)eth[12] << 8) | eth[13];
    __u32 off = PF_ETH_HLEN;

#pragma unroll
    for (int i = 0; i < 2; i++) {
        if (proto != PF_ETH_P_8021Q && proto != PF_ETH_P_8021AD)
            break;
        __u8 tag[4];
        if (pf_load(pkt, off, tag, 4) < 0)
            return pf_parse_error(PF_ERR_TRUNC_VLAN);
        proto = ((__u16)tag[2] << 8) | tag[3];
        off += 4;
    }
    if (proto == PF_ETH_P_8021Q || proto == PF_ETH_P_8021AD)
        return pf_parse_error(PF_ERR_VLAN_TOO_DEEP);

    if (proto == PF_ETH_P_IP)
        return pf_parse_ipv4(pkt, off, key, out);
    if (proto == PF_ETH_P_IPV6)
        return pf_parse_ipv6(pkt, off, key, out);
    return PF_PARSE_OTHER;
}

#endif /* PODFLOW_PARSE_H */
