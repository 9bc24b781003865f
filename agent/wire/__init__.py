"""Formats on the wire and on disk, shared by the agent and every client: the JSON codec of
flow records, the flow-log format, field masks and time helpers."""
