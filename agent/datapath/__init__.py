"""The datapath stage: eBPF programs on pod veths and bridges, and the kernel counters read
back as interval records. `loader` is the only module in podflow that imports bcc; the rest
is plain Python: raw bpf(2) calls (`bpfsys`), node checks (`environment`), TC/tcx attachment
(`tc`), interface selection (`interfaces`), struct mirrors of bpf/types.h (`abi`), the flow
tracker (`tracker`), the decoder (`decode`), kernel features of later stages (`extension`)
and the kernel's BTF (`btf`)."""
