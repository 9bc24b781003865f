/* podflow: TC programs (clsact ingress/egress, direct-action) counting flows per interface.
 *
 * The hot path aggregates in the kernel: one hash-map update per packet into the active half
 * of the flow map (maps.h), at most one ring-buffer event per NEW flow (within a per-CPU
 * budget), never one event per packet; a packet that finds the map full is counted as lost.
 * Programs always return TC_ACT_UNSPEC so the next filter on the hook (Cilium, Calico, the
 * bandwidth plugin, another tool's cls_bpf) still runs and decides.
 *
 * Compiled by bcc at agent start (agent/datapath/loader.py) with -D flags:
 *   PODFLOW_FLOW_MAP_SIZE, PODFLOW_RINGBUF_PAGES   map sizes (maps.h)
 *   PODFLOW_NEW_EVENTS_PER_WINDOW, PODFLOW_NEW_EVENT_WINDOW_NS   new-flow event budget
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

/* Whether this CPU may still send a new-flow event in the current window. Per CPU, so
 * no other CPU races on it, and TC programs are not preempted. */
static __always_inline int pf_take_event_budget(__u64 now_ns)
{
#if PODFLOW_NEW_EVENTS_PER_WINDOW > 0
    __u32 zero = 0;
    struct pf_event_budget *budget = new_event_budget.lookup(&zero);
    if (!budget)
        return 0;
    if (now_ns - budget->window_start_ns >= PODFLOW_NEW_EVENT_WINDOW_NS) {
        budget->window_start_ns = now_ns;
        budget->used = 0;
    }
    if (budget->used >= PODFLOW_NEW_EVENTS_PER_WINDOW)
        return 0;
    budget->used += 1;
    return 1;
#else
    return 0;
#endif
}

/* A flow entry was just created in the active half: announce it, unless the other half
 * holds the key (the flow went on from the previous interval), or the budget is spent
 * (then the sweep announces it: counted as coalesced). */
static __always_inline void pf_announce(void *other_map, const struct pf_flow_key *key,
                                        __u32 pkt_len, __u64 now_ns, __u32 tcp_flags)
{
    if (other_map && bpf_map_lookup_elem(other_map, (void *)key))
        return;
    if (!pf_take_event_budget(now_ns)) {
        pf_count_error(PF_ERR_NEW_COALESCED);
        return;
    }
    struct pf_flow_event ev;
    __builtin_memset(&ev, 0, sizeof(ev));
    ev.hdr.kind = PF_EVENT_FLOW_NEW;
    __builtin_memcpy(&ev.key, key, sizeof(ev.key));
    ev.pkt_len = pkt_len;
    ev.ts_ns = now_ns;
    ev.tcp_flags = tcp_flags;
    if (events.ringbuf_output(&ev, sizeof(ev), BPF_RB_NO_WAKEUP) < 0)
        pf_count_error(PF_ERR_RINGBUF_FULL_NEW);
}

/* Add the packet to its flow entry in the active half of the flow map, creating it when new.
 * Two CPUs may race on one key: counters use atomic adds, and a lost insert race falls back
 * to updating the winner's entry. The half is chosen before the clock is read: a packet
 * timed before a flip is in the half the agent drains after it (agent/datapath/loader.py). */
static __always_inline void pf_account(const struct pf_flow_key *key, __u32 pkt_len,
                                       __u32 tcp_flags)
{
    __u32 zero = 0;
    __u32 *sel = flow_sel.lookup(&zero);
    if (!sel)
        return;
    __u32 active = *sel & 1, other = active ^ 1;
    void *map = flow_maps.lookup(&active);
    __u64 now_ns = bpf_ktime_get_ns();
    if (!map) {
        pf_count_error(PF_ERR_MAP_UPDATE);
        return;
    }
    struct pf_flow_value *val = bpf_map_lookup_elem(map, (void *)key);

    if (!val) {
        struct pf_flow_value init = {};
        init.packets = 1;
        init.bytes = pkt_len;
        init.first_seen_ns = now_ns;
        init.last_seen_ns = now_ns;
        init.tcp_flags = tcp_flags;
        int rc = bpf_map_update_elem(map, (void *)key, &init, BPF_NOEXIST);
        if (rc == 0) {
            pf_announce(flow_maps.lookup(&other), key, pkt_len, now_ns, tcp_flags);
            return;
        }
        val = bpf_map_lookup_elem(map, (void *)key); /* -EEXIST: another CPU won */
        if (!val) {
            if (rc == -PF_E2BIG || rc == -PF_ENOMEM) {
                pf_count_error(PF_ERR_MAP_FULL);
                __u64 *lost_bytes = map_full_bytes.lookup(&zero);
                if (lost_bytes)
                    *lost_bytes += pkt_len;
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
