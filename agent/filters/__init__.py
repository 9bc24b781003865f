"""Flow filters, one vocabulary for every path that selects flows:

- vocabulary.py: the words (pod, port, verdict ...), how their values are written and what
  they mean; the TUI's `/` line (tui.filterexpr) reads its terms through it too;
- engine.py: allow/deny lists of podflow.v1.FlowFilter compiled into one fast predicate
  (GetFlows, the flow log);
- flags.py: the `podflow observe` / `--flow-log-*` flags that build those lists.
"""
