"""The observer stage: podflow's gRPC Observer and (hubble/) the Hubble-compatible API."""
