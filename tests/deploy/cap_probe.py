"""Run by test_deploy_capabilities.py under a reduced capability set: does each bcc step the
agent's datapath takes work? Prints OK, or `FAIL <step>: <error>` and exits 1. Kept apart from
agent/datapath/loader.py on purpose: this shows what the kernel requires, not what the agent checks."""

import sys

from bcc import BPF  # the test's probe of kernel permissions, not part of the agent
from pyroute2 import IPRoute

SOURCE = r"""
BPF_HASH(flows, u32, u64, 1024);
BPF_RINGBUF_OUTPUT(events, 8);
int tc_probe(struct __sk_buff *skb) {
    u32 key = skb->ifindex; u64 one = 1;
    flows.update(&key, &one);
    events.ringbuf_output(&key, sizeof(key), 0);
    return -1;  /* TC_ACT_UNSPEC */
}
int drop_probe(void *ctx) { u32 key = 0; u64 two = 2; flows.update(&key, &two); return 0; }
"""


def main() -> int:
    step = "create maps and compile"
    try:
        bpf = BPF(text=SOURCE)
        step = "load a sched_cls program"
        fn = bpf.load_func("tc_probe", BPF.SCHED_CLS)
        step = "attach it with a clsact qdisc"
        with IPRoute() as ipr:
            index = ipr.link_lookup(ifname=sys.argv[1])[0]
            ipr.tc("add", "clsact", index)
            ipr.tc("add-filter", "bpf", index, ":1", fd=fn.fd, name=fn.name,
                   parent="ffff:fff2", classid=1, direct_action=True)
        step = "attach the skb:kfree_skb tracepoint"
        bpf.attach_tracepoint(tp="skb:kfree_skb", fn_name="drop_probe")
        step = "read the flow map in batches"
        list(bpf["flows"].items_lookup_batch())
        step = "poll the ring buffer"
        bpf["events"].open_ring_buffer(lambda _ctx, _data, _size: 0)
        bpf.ring_buffer_poll(10)
    except Exception as exc:  # any failure: report which step needed what we lack
        print(f"FAIL {step}: {exc!r}"[:400])
        return 1
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
