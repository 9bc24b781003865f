"""podflow's node agent: eBPF datapath, decoding, Kubernetes enrichment, flow store, gRPC
Observer, flow log exporter and metrics. Only agent.datapath.loader imports bcc."""

__version__ = "0.1.0"
