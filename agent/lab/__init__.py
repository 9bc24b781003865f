"""A Kubernetes-shaped cluster built from network namespaces on one Linux machine, for the
tests, the benchmarks and the demo (never imported by an agent stage)."""

from agent.lab.cluster import (POD_TRAFFIC_SCRIPT, RUN_ROOT, AgentHandle, Lab, LabBusyError,
                               LabError, Node, OutsideHost, Pod, Service, missing_tools,
                               replicaset_name, spawn_agent)

__all__ = ["POD_TRAFFIC_SCRIPT", "RUN_ROOT", "AgentHandle", "Lab", "LabBusyError", "LabError",
           "Node", "OutsideHost", "Pod", "Service", "missing_tools", "replicaset_name",
           "spawn_agent"]
