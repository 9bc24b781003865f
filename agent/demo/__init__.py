"""`podflow demo`: the lab cluster with podflow on it, traffic, and the TUI or a summary."""
