"""A Kubernetes-shaped cluster built from network namespaces on one Linux machine, for the
tests, the benchmarks and the demo (never imported by an agent stage).

`Lab` (agent/lab/cluster.py) is the entry point; the names below are what tests, benchmarks
and the demo use. The programs that run inside pods are plain files in agent/lab/programs/.
"""

from agent.errors import LabBusyError, LabError
from agent.lab.agents import AgentHandle, spawn_agent
from agent.lab.cluster import Lab
from agent.lab.dns import DnsServer
from agent.lab.metadata import replicaset_name
from agent.lab.netns import missing_tools
from agent.lab.nodes import Node
from agent.lab.pods import Pod
from agent.lab.services import Service, ServicePort
from agent.lab.state import RUN_ROOT
from agent.lab.underlay import OutsideHost
from agent.lab.workloads import POD_TRAFFIC_SCRIPT, Reply, pod_program

__all__ = ["POD_TRAFFIC_SCRIPT", "RUN_ROOT", "AgentHandle", "DnsServer", "Lab", "LabBusyError",
           "LabError", "Node", "OutsideHost", "Pod", "Reply", "Service", "ServicePort",
           "missing_tools", "pod_program", "replicaset_name", "spawn_agent"]
