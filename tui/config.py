"""The TUI's configuration in one typed place: built by tui.cli from flags, by tests
directly, and handed whole to the engine (it crosses into the engine's process, so it is
plain picklable data)."""

from __future__ import annotations

from dataclasses import dataclass, field

from agent.client.stream import BACKOFF_MAX_S


@dataclass
class KubernetesOptions:
    context: str | None = None
    namespace: str = "podflow"
    selector: str = "app.kubernetes.io/name=podflow,app.kubernetes.io/component=agent"
    port_name: str = "grpc"
    port: int = 4245
    poll_s: float = 5.0
    kubeconfig: str | None = None  # None: $KUBECONFIG or ~/.kube/config


@dataclass
class AppConfig:
    servers: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    kubernetes: KubernetesOptions | None = None
    history: int = 1000          # flows asked from each agent's history on connect
    max_flows: int = 10_000      # flow records kept (Flows view, export)
    export_dir: str = "."
    refresh_s: float = 0.25      # how often views are rebuilt while flows arrive
    initial_filter: str = ""
    backoff_max_s: float = BACKOFF_MAX_S  # an agent away is retried at least this often
    status_poll_s: float = 3.0
    tls: object = None           # agent.client.channel.TLSOptions for agents, or None
    engine: str = "thread"       # "process": streams and aggregation in a child process
    ctrl_c_quits: bool = False   # Ctrl-C quits too (Textual's default only hints at ctrl+q)
    # The cluster's NetworkPolicies for the Policies view (unused rules, untouched policies):
    # "kubernetes", a metadata FILE, or None; read again every policy_refresh_s.
    metadata: str | None = None
    policy_refresh_s: float = 30.0
