"""How a feature adds kernel code to the datapath: a DatapathExtension.

The datapath compiles one program (bpf/podflow.c); a feature (bpf/drop.h: drops at
skb:kfree_skb; bpf/dns.h: DNS payload capture) is compiled in with a -D flag and speaks to
user space through the shared ring buffer and maps of its own. Its Python half is a
DatapathExtension, built by the stage that consumes what the feature reports (the annotate
stage: agent/annotate/drops.py DropExtension, agent/annotate/dnstrack.py DnsExtension) and
handed to the Datapath explicitly by agent/main.py:

    Datapath(config.datapath, stats, pipeline, extensions=annotator.datapath_extensions(...))

An extension contributes (every method has a default that contributes nothing):
  - cflags():         e.g. ["-DPODFLOW_DROPS"]: podflow.c includes drop.h under that flag;
  - error_names():    {reason: name} for its enum pf_error values (16..31, bpf/types.h);
  - event_handlers(): {kind: handler}; handler(datapath, raw: bytes) -> list[Flow] | None,
                      called on the reader thread for each ring-buffer event of that kind
                      (struct pf_event_hdr first, see bpf/types.h); returned flows join the
                      next pipeline batch. `datapath.interface(ifindex)`, `datapath.clock`,
                      `datapath.node_name` and `datapath.stats` help decoding;
  - attach(bpf) / detach(bpf): after load / before unload, with the bcc BPF object (e.g.
                      bpf.attach_tracepoint(...)); the only place an extension sees bcc.
                      detach() only follows an attach() that returned; an `optional`
                      extension whose attach() raises is switched off (see the class);
  - sweep(datapath, now_ns, final) -> list[Flow]: with every flow-map sweep (final: the
                      last one, at stop), for extensions with maps of their own (drop.h).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from agent.datapath.loader import Datapath

EventHandler = Callable[["Datapath", bytes], "list | None"]


class DatapathExtension:
    """Base of the Python half of a datapath feature; see the module docstring."""

    # What the feature is called in the log and in its `<name>_disabled` counter.
    name = "extension"
    # True: a feature the agent can run without. When attach() fails (the drop tracer's
    # perf_event_open() refused by a seccomp profile), the datapath logs why, counts
    # `<name>_disabled` in ServerStatus.datapath_errors and goes on tracing flows; detach()
    # is then never called. False: the failure stops the agent.
    optional = False

    def cflags(self) -> list[str]:
        return []

    def error_names(self) -> dict[int, str]:
        return {}

    def event_handlers(self) -> dict[int, EventHandler]:
        return {}

    def attach(self, bpf) -> None:
        """After the program is loaded (bcc BPF object)."""

    def detach(self, bpf) -> None:
        """Before the program is unloaded."""

    def sweep(self, datapath: Datapath, now_ns: int, final: bool) -> list:
        """Records from the extension's own maps, read with each flow-map sweep."""
        return []
