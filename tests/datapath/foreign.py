"""Another tool's eBPF program on a pod veth, as Cilium's would be: a tiny TC program that ends
the chain (returns TCX_PASS / TC_ACT_OK, 0: the packet goes on, later programs never run),
loaded with bcc by a helper process inside the node's network namespace and attached as

- "tcx-last":  a tcx link appended to the chain (how podflow used to attach);
- "tcx-first": a tcx link at the head of the chain (BPF_F_BEFORE, how Cilium attaches);
- "tcx-fight": "tcx-first", then put back at the head every 0.2 s whenever something was
               attached before it (a tool that insists on running first);
- "tc":        a direct-action cls_bpf filter with priority 1 on the clsact hook (the legacy
               path; a lower number than podflow's 20304 runs first).

A tcx link lives as long as the helper holds it; the cls_bpf filter stays until removed (the
lab deletes the veth with the node). The program is named `foreign_ok`, so status notes and
chain listings name it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
NAME = "foreign_ok"

_HELPER = r"""
import socket, sys, time
sys.path.insert(0, sys.argv[5])
from bcc import BPF
from agent.datapath import bpfsys

ifname, hook, mode, verdict = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
bpf = BPF(text=("int foreign_ok(struct __sk_buff *skb) { return %d; }" % verdict).encode())
fn = bpf.load_func(b"foreign_ok", BPF.SCHED_CLS)
index = socket.if_nametoindex(ifname)
if mode == "tc":
    from pyroute2 import IPRoute
    with IPRoute() as ipr:
        if not any(q.get_attr("TCA_KIND") == "clsact" for q in ipr.get_qdiscs(index=index)):
            ipr.tc("add", "clsact", index)
        ipr.tc("add-filter", "bpf", index, 1, fd=fn.fd, name="foreign_ok",
               parent=0xFFFFFFF2 if hook == "ingress" else 0xFFFFFFF3, prio=1, classid=1,
               direct_action=True)
else:
    link = bpfsys.link_create(fn.fd, index, hook, first=mode != "tcx-last")
print("attached", flush=True)
if mode == "tcx-fight":
    own = bpfsys.prog_id(fn.fd)
    import select
    while not select.select([sys.stdin], [], [], 0.2)[0]:
        if bpfsys.query_tcx(index, hook).prog_ids[:1] != (own,):
            bpfsys.link_detach(link)
            link = bpfsys.link_create(fn.fd, index, hook, first=True)
            print("took the head", flush=True)
sys.stdin.read()  # hold the link until the test closes stdin
"""


class ForeignProgram:
    """The helper process: attached when the constructor returns, detached (tcx) by close()."""

    def __init__(self, node, ifname: str, hook: str, mode: str, verdict: int = 0):
        self.proc = node.popen([sys.executable, "-c", _HELPER, ifname, hook, mode, str(verdict),
                                str(REPO)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline().strip()
        if line != "attached":
            self.proc.kill()
            raise AssertionError(f"the foreign program did not attach: {line!r} "
                                 f"{self.proc.stderr.read()[-2000:]}")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> "ForeignProgram":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
