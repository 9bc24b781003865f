/* podflow: DNS capture at the TC hooks (UDP and TCP port 53).
 *
 * Included by podflow.c with -DPODFLOW_DNS; pf_handle calls pf_dns_hook for every parsed
 * TCP/UDP packet after counting it. The L4 payload of a port-53 packet goes to the ring
 * buffer as PF_EVENT_DNS, cut at PODFLOW_DNS_CAPTURE bytes (the agent decodes what it got
 * and knows from payload_len whether the message was cut). DNS is a small share of traffic,
 * so one event per DNS packet is affordable; a full ring buffer is counted
 * (PF_ERR_DNS_LOST), never blocks.
 *
 * Python mirror: agent/annotate/dnstrack.py (DnsEventHeader); tests/annotate/test_layout.py
 * compares layouts.
 */
#ifndef PODFLOW_DNS_H
#define PODFLOW_DNS_H

#include "types.h"
#include "maps.h"
#include "parse.h"

#ifndef PODFLOW_DNS_CAPTURE
#define PODFLOW_DNS_CAPTURE 512 /* bytes of DNS payload kept; a power of two */
#endif
#define PF_DNS_PORT 53

/* enum pf_error values owned by dns.h */
#define PF_ERR_DNS_LOST 24 /* ring buffer full: a DNS packet was not captured */

/* PF_EVENT_DNS. 64 bytes of header, then the payload. */
struct pf_dns_event {
    struct pf_event_hdr hdr;
    struct pf_flow_key key;      /* ifindex, hook direction, addresses, ports */
    __u16 payload_len;           /* L4 payload bytes on the wire (TCP: with length prefix) */
    __u16 captured;              /* bytes of payload[] filled */
    __u64 ts_ns;                 /* bpf_ktime_get_ns */
    __u8 payload[PODFLOW_DNS_CAPTURE];
};

static __always_inline void pf_dns_hook(struct __sk_buff *skb, const struct pf_flow_key *key,
                                        __u32 l4_off)
{
    if (key->src_port != PF_DNS_PORT && key->dst_port != PF_DNS_PORT)
        return;
    if (key->flags & PF_KEY_FRAGMENT)
        return;
    __u32 payload_off = l4_off + 8;
    if (key->proto == PF_IPPROTO_TCP) {
        __u8 doff = 0;
        if (bpf_skb_load_bytes(skb, l4_off + 12, &doff, 1) < 0)
            return;
        payload_off = l4_off + (doff >> 4) * 4;
    }
    if (skb->len <= payload_off)
        return; /* no payload: a TCP handshake or a pure ACK */
    __u32 payload_len = skb->len - payload_off;
    __u32 captured = payload_len;
    if (captured > PODFLOW_DNS_CAPTURE)
        captured = PODFLOW_DNS_CAPTURE;

    struct pf_dns_event *ev = events.ringbuf_reserve(sizeof(struct pf_dns_event));
    if (!ev) {
        pf_count_error(PF_ERR_DNS_LOST);
        return;
    }
    ev->hdr.kind = PF_EVENT_DNS;
    __builtin_memcpy(&ev->key, key, sizeof(ev->key));
    ev->payload_len = payload_len > 0xffff ? 0xffff : payload_len;
    ev->ts_ns = bpf_ktime_get_ns();
    /* The verifier wants a length provably in [1, CAPTURE]: captured is already there
     * (payload_len >= 1), and this form keeps the bounds visible after optimisation. */
    captured = ((captured - 1) & (PODFLOW_DNS_CAPTURE - 1)) + 1;
    if (bpf_skb_load_bytes(skb, payload_off, ev->payload, captured) < 0)
        captured = 0;
    ev->captured = captured;
    events.ringbuf_submit(ev, BPF_RB_NO_WAKEUP);
}

#endif /* PODFLOW_DNS_H */
