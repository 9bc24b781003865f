"""The datapath stage: eBPF programs on pod veths and bridges, and the kernel counters read
back as interval records. `loader` is the only module in podflow that imports bcc; the rest
(raw bpf(2) calls, TC/tcx attachment, interface selection, struct mirrors, the flow tracker,
the decoder, BTF) is plain Python."""
