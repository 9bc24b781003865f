/* podflow: the maps every program of the datapath shares (the two halves of the flow map,
 * events, errors, other_ethertype, the new-flow event budget). A feature header declares
 * the maps only it uses next to its code (drop.h: `drops`) and shares `events` and `errors`
 * from here. Sizes come from -D cflags set by agent/datapath/loader.py (--flow-map-size,
 * --ringbuf-size, --new-flow-events). */
#ifndef PODFLOW_MAPS_H
#define PODFLOW_MAPS_H

#include "types.h"

#ifndef PODFLOW_FLOW_MAP_SIZE
#define PODFLOW_FLOW_MAP_SIZE 65536
#endif
#ifndef PODFLOW_RINGBUF_PAGES
#define PODFLOW_RINGBUF_PAGES 1024 /* 4 MiB */
#endif
#ifndef PODFLOW_IFACE_MAP_SIZE
#define PODFLOW_IFACE_MAP_SIZE 4096
#endif

#ifndef PODFLOW_NEW_EVENTS_PER_WINDOW
#define PODFLOW_NEW_EVENTS_PER_WINDOW 50 /* new-flow events per CPU per window; 0: none */
#endif
#ifndef PODFLOW_NEW_EVENT_WINDOW_NS
#define PODFLOW_NEW_EVENT_WINDOW_NS 100000000ULL /* 100 ms */
#endif

/* The flow map in two halves, struct pf_flow_key -> struct pf_flow_value each: the programs
 * count into the ACTIVE half (flow_sel[0] indexes flow_maps) while the agent reads and
 * deletes the other one with batch syscalls, then flips flow_sel. No program writes the
 * half being drained, so a drain is exact: no packet is counted twice or lost between a
 * read and a delete. Each half holds one sweep interval's flows, not an idle timeout's.
 * The agent waits for programs still running on the old half after each flip (updating
 * flow_maps makes the kernel wait for every program in flight: synchronize_rcu). */
BPF_HASH(flows_a, struct pf_flow_key, struct pf_flow_value, PODFLOW_FLOW_MAP_SIZE);
BPF_HASH(flows_b, struct pf_flow_key, struct pf_flow_value, PODFLOW_FLOW_MAP_SIZE);
/* flow_maps: 0 -> flows_a, 1 -> flows_b (set by the agent before anything is attached). */
BPF_ARRAY_OF_MAPS(flow_maps, "flows_a", 2);
/* flow_sel: [0] = the index of the active half in flow_maps (0 or 1), set by the agent. */
BPF_ARRAY(flow_sel, __u32, 1);

/* The new-flow event budget of one CPU: at most PODFLOW_NEW_EVENTS_PER_WINDOW events per
 * window of PODFLOW_NEW_EVENT_WINDOW_NS; beyond it the agent's sweep announces new flows
 * (PF_ERR_NEW_COALESCED counts them). */
struct pf_event_budget {
    __u64 window_start_ns;
    __u64 used;
};
BPF_PERCPU_ARRAY(new_event_budget, struct pf_event_budget, 1);

/* map_full_bytes: [0] = bytes of the packets PF_ERR_MAP_FULL counts, per CPU. */
BPF_PERCPU_ARRAY(map_full_bytes, __u64, 1);

/* events: ring buffer of pf_event_hdr-prefixed records (kinds in types.h). */
BPF_RINGBUF_OUTPUT(events, PODFLOW_RINGBUF_PAGES);

/* errors: enum pf_error -> count, per CPU (summed by the agent). */
BPF_PERCPU_ARRAY(errors, __u64, PF_ERR_MAX);

/* other_ethertype: ifindex -> packets that were not IPv4/IPv6 (ARP, LLDP ...), per CPU. */
BPF_PERCPU_HASH(other_ethertype, __u32, __u64, PODFLOW_IFACE_MAP_SIZE);

static __always_inline void pf_count_error(__u32 reason)
{
    __u64 *count = errors.lookup(&reason);
    if (count)
        *count += 1;
}

#endif /* PODFLOW_MAPS_H */
