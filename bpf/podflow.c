/* podflow: TC programs (clsact ingress/egress, direct-action) counting flows per interface.
 *
 * The hot path aggregates in the kernel: one hash-map update per packet, one ring-buffer
 * event per NEW flow (or per packet while the map is full), never one event per packet.
 * Programs always return TC_ACT_UNSPEC so the next filter on the hook (Cilium, Calico, the
 * bandwidth plugin, another tool's cls_bpf) still runs and decides.
 *
 * Compiled by bcc at agent start (agent/datapath/loader.py) with -D flags:
 *   PODFLOW_FLOW_MAP_SIZE, PODFLOW_RINGBUF_PAGES   map sizes (maps.h)
 *   PODFLOW_DROPS   include drop.h (skb:kfree_skb drop events, PF_EVENT_DROP)
 *   PODFLOW_DNS     include dns.h; it must define
 *                   static __always_inline void pf_dns_hook(struct __sk_buff *skb,
 *                       const struct pf_flow_key *key, __u32 l4_off);
 *                   called for every parsed TCP/UDP packet (it filters port 53 itself).
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>

#include "types.h"
#include "maps.h"
#include "parse.h"

#ifdef PODFLOW_DROPS
#include "drop.h"
#endif
#ifdef PODFLOW_DNS
#include "dns.h"
#endif

#define PF_TC_ACT_UNSPEC (-1)
#define PF_E2BIG  7  /* errno values returned by map updates */
#define PF_ENOMEM 12

static __always_inline void pf_emit_flow_event(__u8 kind, const struct pf_flow_key *key,
                                               __u32 pkt_len, __u64 now_ns, __u32 tcp_flags)
{
    struct pf_flow_event ev;
    __builtin_memset(&ev, 0, sizeof(ev));
    ev.hdr.kind = kind;
    __builtin_memcpy(&ev.key, key, sizeof(ev.key));
    ev.pkt_len = pkt_len;
    ev.ts_ns = now_ns;
    ev.tcp_flags = tcp_flags;
    if (events.ringbuf_output(&ev, sizeof(ev), BPF_RB_NO_WAKEUP) < 0)
        pf_count_error(kind == PF_EVENT_FLOW_NEW ? PF_ERR_RINGBUF_FULL_NEW
                                                 : PF_ERR_RINGBUF_FULL_MAP_FULL);
}

/* Add the packet to its flow entry, creating it when new. Two CPUs may race on one key:
 * counters use atomic adds, and a lost insert race falls back to updating the winner's
 * entry. */
static __always_inline void pf_account(const struct pf_flow_key *key, __u32 pkt_len,
                                       __u32 tcp_flags)
{
    __u64 now_ns = bpf_ktime_get_ns();
    struct pf_flow_value *val = flows.lookup((struct pf_flow_key *)key);

    if (!val) {
        struct pf_flow_value init = {};
        init.packets = 1;
        init.bytes = pkt_len;
        init.first_seen_ns = now_ns;
        init.last_seen_ns = now_ns;
        init.tcp_flags = tcp_flags;
        int rc = flows.insert((struct pf_flow_key *)key, &init);
        if (rc == 0) {
            pf_emit_flow_event(PF_EVENT_FLOW_NEW, key, pkt_len, now_ns, tcp_flags);
            return;
        }
        val = flows.lookup((struct pf_flow_key *)key); /* -EEXIST: another CPU won */
        if (!val) {
            if (rc == -PF_E2BIG || rc == -PF_ENOMEM) {
                pf_count_error(PF_ERR_MAP_FULL);
                pf_emit_flow_event(PF_EVENT_FLOW_MAP_FULL, key, pkt_len, now_ns, tcp_flags);
            } else {
                pf_count_error(PF_ERR_MAP_UPDATE);
            }
            return;
        }
    }
    __sync_fetch_and_add(&val->packets, 1);
    __sync_fetch_and_add(&val->bytes, pkt_len);
    val->last_seen_ns = now_ns;
    if (tcp_flags && (val->tcp_flags & tcp_flags) != (__u64)tcp_flags)
        __sync_fetch_and_or(&val->tcp_flags, (__u64)tcp_flags);
}

static __always_inline int pf_handle(struct __sk_buff *skb, __u8 direction)
{
    struct pf_flow_key key;
    struct pf_parsed parsed = {};

    __builtin_memset(&key, 0, sizeof(key));
    int rc = pf_parse(skb, &key, &parsed);
    if (rc == PF_PARSE_OTHER) {
        __u32 ifindex = skb->ifindex;
        __u64 zero = 0;
        __u64 *count = other_ethertype.lookup_or_try_init(&ifindex, &zero);
        if (count)
            *count += 1;
        pf_count_error(PF_ERR_OTHER_ETHERTYPE);
        return PF_TC_ACT_UNSPEC;
    }
    if (rc != PF_PARSE_FLOW)
        return PF_TC_ACT_UNSPEC;

    key.ifindex = skb->ifindex;
    key.direction = direction;
    pf_account(&key, skb->len, parsed.tcp_flags);
#ifdef PODFLOW_DNS
    if (parsed.l4_off && (key.proto == PF_IPPROTO_UDP || key.proto == PF_IPPROTO_TCP))
        pf_dns_hook(skb, &key, parsed.l4_off);
#endif
    return PF_TC_ACT_UNSPEC;
}

int podflow_ingress(struct __sk_buff *skb)
{
    return pf_handle(skb, PF_DIR_INGRESS);
}

int podflow_egress(struct __sk_buff *skb)
{
    return pf_handle(skb, PF_DIR_EGRESS);
}
