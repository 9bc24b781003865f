"""Hubble's API over podflow's flows: the record mapping (mapping.py) and Hubble's
FlowFilter semantics over mapped flows (filters.py), so the unmodified hubble CLI, Hubble
Relay and Hubble UI can read a podflow agent."""
