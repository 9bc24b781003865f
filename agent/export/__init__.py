"""The export stage: consumers of the flow store that write outside the agent: the flow log
(JSON lines, rotation, aggregated windows) and Prometheus metrics."""
