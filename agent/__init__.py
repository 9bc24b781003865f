"""podflow: the node agent (`podflow agent`: its stages in agent/datapath, annotate, enrich,
flowstore, observer and export, wired by agent/main.py from the typed configuration in
agent/config) and the commands built on its API (agent/client: `podflow observe`, `status`;
agent/lab and agent/demo: `podflow demo`). Only agent.datapath.loader imports bcc."""

__version__ = "0.1.0"
