"""The agent's configuration in one typed place: a frozen dataclass section per stage, whose
fields carry the defaults, the help and the checks of the `podflow agent` flags.

    config = AgentConfig.from_args(namespace)
    config.agent  config.datapath  config.annotate  config.observer  config.store
    config.metadata  config.policy  config.flow_log  config.metrics

Why: a flag's default used to be written where the flag was added and again wherever a stage
read it (`getattr(args, "idle_timeout", 15.0)`, four times). Here each flag is declared once,
on the field it sets (`option(...)`): `add_arguments` builds the flags from the sections,
`AgentConfig.from_args` reads them back, and every section checks its values when it is built,
so a stage (or a test) holding a section holds valid values, and a bad value is reported with
the flag that sets it (ConfigError; `podflow agent` exits 2).

Flags shared with other commands are declared by the module that owns them and only placed
here: the rotation flags (agent.wire.jsonlines; also `observe --output-*`) and the filter flags
(agent.filters; also `observe --namespace ...`).

How a field becomes a flag, and the parsers and checks of flag values: agent/config/flags.py.
Stages import this package for their section; it reaches into a stage only inside a function,
for a word of that stage's vocabulary (metric label names, listen addresses, Flow field
paths), so the two never import each other in a circle.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass, field

from agent.config.flags import (Section, as_tuple, at_least, between, check_cidrs,
                                check_dns_capture_bytes, check_field_paths, check_host_port,
                                check_hubble_peers, check_interval, check_listen_address,
                                check_metric_labels, check_ringbuf_bytes, comma_list,
                                default_metadata_source, default_node_name, flow_filters_json,
                                host_port, metric_labels_help, option, overflow_help, parse_size,
                                positive, shared, text_or_empty)
from agent.errors import ConfigError
from agent.filters import engine as filters
from agent.filters.flags import add_filter_arguments, filters_from_args
from agent.wire.rotation import (FLOW_LOG_ROTATION, RotationConfig, add_rotation_arguments,
                                 rotation_from_args)


# ---------------------------------------------------------------------------------------
# The sections, in the order of the flags in `podflow agent --help`


@dataclass(frozen=True)
class AgentSection(Section):
    """The agent's own settings."""

    node_name: str = option(
        "--node-name", default_factory=default_node_name,
        help="name this agent reports for its node (default: $NODE_NAME or hostname)")
    log_level: str = option("--log-level", "info", choices=("debug", "info", "warning", "error"))
    log_netlink: bool = option(
        "--log-netlink", False, action="store_true",
        help="with --log-level debug, also log pyroute2's netlink messages (most of a debug "
             "log otherwise; off by default: pyroute2 logs warnings and errors only)")
    ready_file: str | None = option(
        "--ready-file", None, metavar="PATH",
        help="write a JSON object here once every stage runs (addresses, interfaces); used by "
             "the lab, the demo and the tests")


@dataclass(frozen=True)
class DatapathSection(Section):
    """agent.datapath: which interfaces, how flows become records, kernel map sizes."""

    GROUP = "datapath (eBPF on pod veths and bridges)"

    include: tuple[str, ...] = option(
        "--interfaces", (), metavar="GLOBS", parse=comma_list,
        help="trace exactly the interfaces matching these comma-separated globs (e.g. "
             "'veth*,cni0'), instead of detecting pod veths and bridges")
    exclude: tuple[str, ...] = option(
        "--exclude-interfaces", (), metavar="GLOBS", parse=comma_list,
        help="never trace interfaces matching these comma-separated globs")
    active_timeout_s: float = option(
        "--active-timeout", 5.0, type=float, metavar="SECONDS", check=positive(" seconds"),
        help="report an active flow every SECONDS with what it did since its last record "
             "(default: {default})")
    idle_timeout_s: float = option(
        "--idle-timeout", 5.0, type=float, metavar="SECONDS", check=positive(" seconds"),
        help="end a flow after SECONDS without packets; its last record says flow_end "
             "(default: {default})")
    flow_map_size: int = option(
        "--flow-map-size", 65536, metavar="N", parse=parse_size, check=between(1, 1 << 24),
        help="flows each half of the kernel's flow map holds: the flows of one sweep "
             "interval; packets that find it full are counted as lost (default: {default})")
    max_flows: int = option(
        "--max-flows", 262144, metavar="N", parse=parse_size, check=between(1, 1 << 24),
        help="flows the agent follows at once between their records; beyond, the flows "
             "seen longest ago are ended early (default: {default})")
    new_flow_events: int = option(
        "--new-flow-events", 500, type=int, metavar="N", check=between(0, 1_000_000),
        help="new-flow events per second and CPU, each giving a flow's first record at once; "
             "beyond, new flows are reported by the next sweeps, and so without any event "
             "with 0 (default: {default})")
    ringbuf_bytes: int = option(
        "--ringbuf-size", 4 << 20, given="4M", metavar="BYTES", parse=parse_size,
        check=check_ringbuf_bytes,
        help="kernel ring buffer for new-flow, overflow, drop and DNS events; a power of two, "
             "at least one page (default: {default})")
    sweep_interval_s: float = option(
        "--sweep-interval", 1.0, type=float, metavar="SECONDS", check=positive(" seconds"),
        help="how often the flow map is read (default: {default})")
    attach_mode: str = option(
        "--attach-mode", "auto", choices=("tc", "tcx", "auto"),
        help="auto (default): tcx links when the kernel has them (>= 6.6; they vanish with the "
             "agent even after kill -9), else tc; tc: clsact + cls_bpf filters named "
             "podflow_* (visible with `tc filter show`); tcx: tcx links or fail")

    @property
    def poll_interval_s(self) -> float:
        """How often the reader polls the ring buffer: never slower than the sweep."""
        return min(0.1, self.sweep_interval_s)

    @property
    def busy_poll_interval_s(self) -> float:
        """How often while new flows keep coming (agent/datapath/reader.py BUSY_EVENTS): each
        poll's records are a batch through every stage, and a batch has a fixed cost."""
        return min(0.25, self.sweep_interval_s)


@dataclass(frozen=True)
class AnnotateSection(Section):
    """agent.annotate: connection outcomes, drops, DNS."""

    GROUP = "annotate (connection outcomes, DNS)"

    syn_timeout_s: float = option(
        "--syn-timeout", 3.0, type=float, metavar="SECONDS", check=positive(" seconds"),
        help="a TCP SYN (or a UDP request) without any reply for this long is UNANSWERED "
             "(NO_REPLY for UDP) (default: {default})")
    max_connections: int = option(
        "--max-connections", 65536, type=int, metavar="N", check=at_least(1),
        help="connections whose outcome is tracked at once; the oldest is forgotten first "
             "(default: {default})")
    drops: bool = option(
        "--drops", True, action=argparse.BooleanOptionalAction,
        help="report packets the kernel dropped, with its reason (skb:kfree_skb; default: on)")
    drop_cidrs: tuple[str, ...] = option(
        "--drop-cidr", (), given=[], action="append", metavar="CIDR", parse=as_tuple,
        check=check_cidrs,
        help="pod or Service range whose drops are reported even before a pod of it was seen "
             "(repeatable); drops on traced interfaces and of pods already seen are always "
             "reported")
    drop_map_size: int = option(
        "--drop-map-size", 16384, type=int, metavar="N", check=between(1, 1 << 22),
        help="(flow, reason) entries the kernel's drop map holds (default: {default})")
    dns: bool = option(
        "--dns", True, action=argparse.BooleanOptionalAction,
        help="decode DNS on port 53 (UDP and TCP) and name looked-up addresses (default: on)")
    dns_capture_bytes: int = option(
        "--dns-capture-bytes", 512, type=int, metavar="BYTES", check=check_dns_capture_bytes,
        help="DNS payload bytes captured per packet, a power of two (default: {default})")


_OBSERVER_GROUP = "Observer API (gRPC)"


@dataclass(frozen=True)
class ObserverSection(Section):
    """agent.observer: where and how the gRPC API is served."""

    GROUP = _OBSERVER_GROUP

    listen: str = option(
        "--listen", ":4245", metavar="HOST:PORT|unix:PATH", check=check_listen_address,
        help="where to serve the Observer API (default {default}, all interfaces; port 0 "
             "picks a free port; 'none' disables the server)")
    tls_cert: str | None = option("--tls-cert", None, metavar="PATH",
                                  help="server certificate (PEM); enables TLS")
    tls_key: str | None = option("--tls-key", None, metavar="PATH",
                                 help="private key of --tls-cert (PEM)")
    tls_ca: str | None = option(
        "--tls-ca", None, metavar="PATH",
        help="CA bundle (PEM): clients must present a certificate signed by it")
    health_listen: str | None = option(
        "--health-listen", None, metavar="HOST:PORT", check=check_listen_address,
        help="also serve gRPC health checking (and nothing else) in plaintext here, for "
             "kubelet gRPC probes, which cannot speak TLS (default: off)")
    max_streams: int = option(
        "--grpc-max-streams", 64, type=int, metavar="N", check=at_least(1),
        help="concurrent RPCs served (each GetFlows stream holds one; default {default})")

    @property
    def enabled(self) -> bool:
        return self.listen not in ("", "none")

    def check(self) -> None:
        if not self.tls_cert and not self.tls_key:
            if self.tls_ca:
                raise ConfigError("--tls-ca needs --tls-cert and --tls-key (client "
                                  "certificates are only checked over TLS)")
        elif not self.tls_cert or not self.tls_key:
            raise ConfigError("--tls-cert and --tls-key must be given together")


@dataclass(frozen=True)
class HubbleSection(Section):
    """agent.observer.hubble: Hubble's API (hubble CLI, Hubble Relay, Hubble UI) on a port of
    its own, beside podflow's; TLS comes from the Observer's --tls-* flags."""

    GROUP = "Hubble API (hubble CLI, Hubble Relay, Hubble UI)"

    listen: str | None = option(
        "--hubble-listen", None, metavar="HOST:PORT|unix:PATH", check=check_listen_address,
        help="where to serve Hubble's API; '' or 'none' turns it off (default: beside "
             "--listen: a unix socket X.hubble.sock beside X.sock, else port 4247 on "
             "--listen's host; 4247, not Hubble's 4244, so it runs beside Cilium's Hubble on "
             "the same node)")
    tls_server_name: str | None = option(
        "--hubble-tls-server-name", None, metavar="NAME",
        help="with --tls-cert: the name Hubble Relay verifies every agent's certificate "
             "against, sent in Peer/Notify (default: each agent's node name)")
    peers: tuple[str, ...] = option(
        "--hubble-peer", (), given=[], action="append", metavar="NAME=ADDRESS", parse=as_tuple,
        check=check_hubble_peers,
        help="another agent Hubble Relay should dial (Peer/Notify), e.g. node-b=10.0.0.12:4247 "
             "or node-b=unix:/run/b.hubble.sock; repeatable. For agents outside Kubernetes; "
             "in a cluster the agent pods are found by themselves")


@dataclass(frozen=True)
class StoreSection(Section):
    """agent.flowstore: the bounded ring every consumer reads (flags under the Observer's)."""

    GROUP = _OBSERVER_GROUP

    capacity: int = option("--store-size", 65535, type=int, metavar="N", check=at_least(1),
                           help="flows kept for history (default {default})")
    client_queue_size: int = option(
        "--client-queue-size", 8192, type=int, metavar="N", check=at_least(1),
        help="flows a following client may lag behind before its oldest are dropped and it "
             "is told how many (default {default})")


@dataclass(frozen=True)
class MetadataSection(Section):
    """agent.enrich: where names come from, and whether conntrack is read."""

    GROUP = "metadata (Kubernetes names for flows)"

    source: str = option(
        "--metadata", default_factory=default_metadata_source, metavar="kubernetes|none|FILE",
        help="where pod, Service and node names come from: the Kubernetes API (list+watch), "
             "`none`, or a FILE with the JSON/YAML printed by `kubectl get "
             "pods,services,endpointslices,nodes,namespaces,networkpolicies -A -o json`, "
             "reloaded when it changes "
             "(default: kubernetes inside a cluster, else none)")
    kubeconfig: str | None = option(
        "--kubeconfig", None, metavar="PATH",
        help="kubeconfig for --metadata kubernetes outside a cluster (default: in-cluster "
             "config, else $KUBECONFIG or ~/.kube/config)")
    context: str | None = option(
        "--context", None, help="kubeconfig context to use (default: the current context)")
    use_conntrack: bool = option(
        "--no-conntrack", True, dest="conntrack", action="store_false",
        help="do not read Service address translations from the kernel's connection tracking")
    rbac_wait_s: float = option(
        "--rbac-wait", 120.0, type=float, metavar="SECONDS", check=at_least(0),
        help="with --metadata kubernetes, when the API server refuses (403) a resource the "
             "names need at start, as it does while it is starting and has not loaded its "
             "RBAC yet: keep retrying with backoff this long, reporting 'waiting for RBAC', "
             "before exiting 2 (0: exit at once; default: {default})")

    def check(self) -> None:
        if self.source in ("none", "kubernetes"):
            return
        if self.kubeconfig or self.context:
            raise ConfigError(f"--kubeconfig/--context need --metadata kubernetes, "
                              f"not {self.source!r}")
        if not os.path.isfile(self.source):
            raise ConfigError(f"--metadata {self.source}: not `kubernetes`, `none` or an "
                              "existing file")


@dataclass(frozen=True)
class PolicySection(Section):
    """agent.policy: a NetworkPolicy verdict on every record (needs metadata)."""

    GROUP = "NetworkPolicy (which policy allowed or denied each connection)"

    enabled: bool = option(
        "--policy", True, action=argparse.BooleanOptionalAction,
        help="judge every connection by the cluster's NetworkPolicies (networking.k8s.io/v1) "
             "and say whether the CNI enforced the verdict; needs --metadata kubernetes or a "
             "FILE (default: on)")
    max_cached: int = option(
        "--policy-cache-size", 65536, type=int, metavar="N", check=at_least(1024),
        help="verdicts, identities and addresses each cache holds before it starts over "
             "(default: {default})")


_FLOW_LOG = "flow-log-"


@dataclass(frozen=True)
class FlowLogSection(Section):
    """agent.export.flowlog: the JSON-lines flow log (off without a path)."""

    GROUP = "flow log"

    path: str | None = option("--flow-log", None, metavar="PATH",
                              help="write every flow as a JSON line to PATH ('-' for stdout)")
    rotation: RotationConfig = shared(
        FLOW_LOG_ROTATION,
        add=lambda group: add_rotation_arguments(group, _FLOW_LOG, FLOW_LOG_ROTATION),
        read=lambda namespace: rotation_from_args(namespace, _FLOW_LOG))
    allow: tuple = option(
        "--flow-log-allow", (), given=[], action="append", metavar="JSON",
        parse=flow_filters_json,
        help='write only flows matching this FlowFilter, as JSON, e.g. '
             '\'{"source_namespace":["shop"]}\' (repeatable: any may match)')
    deny: tuple = option(
        "--flow-log-deny", (), given=[], action="append", metavar="JSON",
        parse=flow_filters_json,
        help="never write flows matching this FlowFilter (JSON, repeatable)")
    # --flow-log-namespace shop, --flow-log-not ...: (allowlist, denylist)
    flag_filters: tuple = shared(
        ((), ()), add=lambda group: add_filter_arguments(group, _FLOW_LOG),
        read=lambda namespace: tuple(map(tuple, filters_from_args(namespace,
                                                                           _FLOW_LOG))))
    fields: tuple[str, ...] = option(
        "--flow-log-fields", (), metavar="PATHS", parse=comma_list, check=check_field_paths,
        help="keep only these Flow fields, e.g. source,destination,l4,packets,bytes,"
             "source.pod_name (default: all)")
    aggregate: str = option(
        "--flow-log-aggregate", "", metavar="INTERVAL", parse=text_or_empty,
        check=check_interval,
        help="write one record per flow key per INTERVAL (30s, 1m, 1h) with summed packets "
             "and bytes instead of every record")
    every_point: bool = option(
        "--flow-log-every-point", False, action="store_true",
        help="write a record for every observation point; by default a pod-to-pod flow on "
             "this node, whose packets both veths report with the same counts, is written "
             "once, as the sending pod's record (the one aggregates count)")
    queue_size: int = option(
        "--flow-log-queue-size", 65535, type=int, metavar="N", check=at_least(1),
        help="flows the flow log may lag behind before the oldest are skipped and reported "
             "as lost (default {default})")

    @property
    def allowlist(self) -> list:
        """--flow-log-allow filters, then those of the filter flags."""
        return [*self.allow, *self.flag_filters[0]]

    @property
    def denylist(self) -> list:
        return [*self.deny, *self.flag_filters[1]]

    def check(self) -> None:
        try:
            filters.compile_filters(self.allowlist, self.denylist)
        except filters.FilterError as exc:
            raise ConfigError(f"--flow-log-allow/--flow-log-deny: {exc}") from exc


_DEFAULT_METRIC_LABELS = ("source_namespace", "destination_namespace", "service", "verdict")


@dataclass(frozen=True)
class MetricsSection(Section):
    """agent.export.metrics: the Prometheus endpoint (off without an address)."""

    GROUP = "Prometheus metrics"

    address: str | None = option(
        "--metrics", None, metavar="HOST:PORT", check=check_host_port,
        help="serve Prometheus metrics on http://HOST:PORT/metrics (port 0 picks one)")
    labels: tuple[str, ...] = option(
        "--metrics-labels", _DEFAULT_METRIC_LABELS, given=",".join(_DEFAULT_METRIC_LABELS),
        metavar="L1,L2", parse=comma_list, check=check_metric_labels, help=metric_labels_help)
    max_series: int = option("--metrics-max-series", 2000, type=int, metavar="N",
                             check=at_least(1), help=overflow_help)
    series_ttl_s: float = option(
        "--metrics-series-ttl", 600.0, type=float, metavar="SECONDS", check=positive(),
        help="drop series not updated for this long, e.g. of deleted pods (default {default})")

    @property
    def host_port(self) -> tuple[str, int]:
        return host_port(self.address or "", "--metrics")


# ---------------------------------------------------------------------------------------
# The whole


@dataclass(frozen=True)
class AgentConfig:
    """Every section of `podflow agent`; main.py hands each stage its own."""

    agent: AgentSection = field(default_factory=AgentSection)
    datapath: DatapathSection = field(default_factory=DatapathSection)
    annotate: AnnotateSection = field(default_factory=AnnotateSection)
    observer: ObserverSection = field(default_factory=ObserverSection)
    hubble: HubbleSection = field(default_factory=HubbleSection)
    store: StoreSection = field(default_factory=StoreSection)
    metadata: MetadataSection = field(default_factory=MetadataSection)
    policy: PolicySection = field(default_factory=PolicySection)
    flow_log: FlowLogSection = field(default_factory=FlowLogSection)
    metrics: MetricsSection = field(default_factory=MetricsSection)

    @classmethod
    def from_args(cls, namespace: argparse.Namespace) -> AgentConfig:
        """Every section from the flags add_arguments() declared; ConfigError names a bad one."""
        return cls(**{name: section.from_args(namespace) for name, section in _SECTIONS.items()})

    @classmethod
    def from_flags(cls, argv: list[str]) -> AgentConfig:
        """The configuration `podflow agent ARGV...` runs with (for tests and tools)."""
        parser = argparse.ArgumentParser(prog="podflow agent")
        add_arguments(parser)
        return cls.from_args(parser.parse_args(argv))


# attribute of AgentConfig -> its section class, in the order of the flags
_SECTIONS: dict[str, type[Section]] = {f.name: f.default_factory
                                       for f in dataclasses.fields(AgentConfig)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `podflow agent` flags, section by section."""
    groups: dict = {}
    for section in _SECTIONS.values():
        section.add_arguments(parser, groups)
