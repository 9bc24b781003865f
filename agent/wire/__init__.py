"""Formats on the wire and on disk, shared by the agent and every client: the JSON codec of
flow records, the flow-log format and its reader, the one loss-reporting JSON-lines sink,
field masks, time helpers, the words a flow is printed with and the count-each-packet-once
rule."""
