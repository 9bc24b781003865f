"""The Observer stage: the gRPC APIs over the flow store (podflow's own Observer, health,
reflection; the Hubble-compatible API in `hubble/`)."""
