/* podflow: the maps every program of the datapath shares (flows, events, errors,
 * other_ethertype). A feature header declares the maps only it uses next to its code
 * (drop.h: `drops`) and shares `events` and `errors` from here. Sizes come from -D cflags set
 * by agent/datapath/loader.py (--flow-map-size, --ringbuf-size). */
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

/* flows: struct pf_flow_key -> struct pf_flow_value. Read in batches by the agent's sweep,
 * which deletes only idle entries. */
BPF_HASH(flows, struct pf_flow_key, struct pf_flow_value, PODFLOW_FLOW_MAP_SIZE);

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
