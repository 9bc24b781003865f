"""Names the in-cluster deployment and its clients must agree on.

The Helm chart (deploy/helm/podflow) creates agents with these labels and ports, and
`podflow tui --kubernetes` finds them with the same values. Keeping them in one plain module
(no imports) lets the chart's tests check the rendered manifests against what the TUI looks
for, so a rename on one side fails a test instead of silently finding no agents.
"""

from __future__ import annotations

# Namespace the plain manifest (deploy/podflow.yaml) and the documented Helm install use.
NAMESPACE = "podflow"

# Labels every agent pod carries; the TUI lists pods with this selector.
AGENT_LABELS: dict[str, str] = {
    "app.kubernetes.io/name": "podflow",
    "app.kubernetes.io/component": "agent",
}
AGENT_LABEL_SELECTOR = ",".join(f"{k}={v}" for k, v in AGENT_LABELS.items())

# Container ports (the agent's gRPC Observer and Prometheus endpoint) and their names.
GRPC_PORT = 4245
GRPC_PORT_NAME = "grpc"
METRICS_PORT = 9965
METRICS_PORT_NAME = "metrics"

# Plaintext port serving only grpc.health.v1 when the Observer port uses TLS: the kubelet's
# native gRPC probe cannot speak TLS (see deploy/helm/podflow/README.md).
HEALTH_PORT = 4246
HEALTH_PORT_NAME = "health"

# The headless Service that gives every agent a DNS record.
HEADLESS_SERVICE = "podflow-agent"

# Hubble's API on every agent (`--hubble-listen`), the Service Hubble Relay reads the agent
# list from (peer.Peer/Notify), and Relay's own Service (what `hubble observe -P` finds).
HUBBLE_PORT = 4247
HUBBLE_PORT_NAME = "hubble"
HUBBLE_PEER_SERVICE = "hubble-peer"
HUBBLE_RELAY_SERVICE = "hubble-relay"
