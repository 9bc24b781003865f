"""Flow filters: one engine that compiles allow/deny lists of podflow.v1.FlowFilter into a
predicate, and the value vocabulary (globs, prefixes, port ranges, protocol names) that the
command-line flags and the TUI's `/` line share."""
