"""A podflow flow record -> Hubble's flow.Flow, as Hubble's users and tools expect to read it.

The hubble CLI, Hubble Relay and Hubble UI know Cilium's vocabulary: security identities and
`k8s:`/`reserved:` labels, connection-relative traffic directions, trace observation points,
Cilium drop reasons, monitor event types. podflow knows the same facts in its own terms
(podflow.v1.Flow). This module is the one place that translates; it is plain Python, so every
field is tested without a kernel or a server (tests/observer/hubble/test_hubble_mapping.py).

How each Hubble field is filled (one podflow record -> one Hubble flow):

- time, node_name, IP, l4, interface: copied. uuid: a hash of the record, so a record
  mapped twice (two clients) has one uuid and `hubble observe --uuid` finds it again.
- verdict: FORWARDED / DROPPED. drop_reason_desc: the kernel's skb_drop_reason mapped to the
  nearest Cilium reason (KERNEL_DROP_REASONS); NETFILTER_DROP of pod traffic is
  POLICY_DENIED (that is how a NetworkPolicy drops with iptables/nftables CNIs), and so is
  any drop podflow's policy verdict calls enforced. The kernel's own name stays in
  extensions.drop_reason and the Summary.
- egress_allowed_by / ingress_allowed_by / egress_denied_by / ingress_denied_by: the
  NetworkPolicies of podflow's verdict (flow.policy, agent/policy), as Policy messages
  (`policy_fields`).
- is_reply: always set (see `is_reply`); traffic_direction: Hubble's meaning, the direction
  of the CONNECTION relative to the pod it was seen at: EGRESS = the pod opened it. podflow's
  FROM_POD/TO_POD is per packet, so a reply leaving a pod is INGRESS.
- source / destination: see `endpoint`; identities are described at `identity_of`.
- source_names / destination_names: the DNS names the pod looked the address up as.
- source_service / destination_service: the Service podflow resolved (the backend stays the
  endpoint): destination_service on requests, source_service on replies.
- event_type / Type / trace_observation_point: trace (4) with the observation point as its
  sub-type; drop (1) with the Cilium drop reason; DNS at the client's veth as L7 (129) with
  l7.dns, once per query and once per answer, as Cilium's DNS proxy reports them.
- Summary: Hubble's style ("TCP Flags: SYN, ACK") followed by what the record counts
  ("3 packets, 222 bytes") and podflow's judgement (outcome, the kernel's drop reason).
- extensions: a google.protobuf.Struct (packed in the Any) with everything podflow knows that
  Hubble has no field for: packets, bytes, first/last seen, outcome, observation point,
  podflow direction, category, Service, backend, conntrack translation, kernel drop reason.

These are the rules; mapper.py's HubbleMapper writes flows by them as wire bytes from cached
pieces (encode.py), and `mapper.to_hubble(record)` parses those bytes back into a message.

How counts read in Hubble terms: a Hubble flow here is one podflow record, i.e. one interval
(an active-timeout slice) of one flow at one observation point, not one packet; its packets
and bytes are in the Summary and in extensions.
"""

from __future__ import annotations

import hashlib

from agent.annotate.dns import RCODES
from podflow_api.v1 import flow_pb2 as pf
from podflow_hubble.flow import flow_pb2 as hb

EMITTER_NAME = "podflow"
DNS_OBSERVATION_SOURCE = "podflow"

# Cilium's monitor message types: what the hubble CLI's TYPE column and `--type` read.
EVENT_DROP = 1
EVENT_TRACE = 4
EVENT_L7 = 129

# Cilium's trace observation point codes, the sub-type of a trace event (`--type
# trace:to-endpoint` sends 0). TRACE_POINT_UNKNOWN has no Cilium name: the CLI prints "255".
TRACE_TO_ENDPOINT = 0
TRACE_TO_HOST = 2
TRACE_FROM_ENDPOINT = 5
TRACE_FROM_HOST = 7
TRACE_POINT_UNKNOWN = 255

# (podflow observation point, podflow direction) -> (Hubble observation point, trace code).
# A pod veth's host side is Cilium's endpoint (lxc) device; a CNI bridge is the pod network's
# gateway into the host, like cilium_host: a pod's packet there goes TO the host.
_TRACE_POINTS = {
    (pf.POD_VETH, pf.FROM_POD): (hb.FROM_ENDPOINT, TRACE_FROM_ENDPOINT),
    (pf.POD_VETH, pf.TO_POD): (hb.TO_ENDPOINT, TRACE_TO_ENDPOINT),
    (pf.BRIDGE, pf.FROM_POD): (hb.TO_HOST, TRACE_TO_HOST),
    (pf.BRIDGE, pf.TO_POD): (hb.FROM_HOST, TRACE_FROM_HOST),
}

# Cilium's reserved security identities and their labels.
IDENTITY_UNKNOWN = 0
IDENTITY_HOST = 1
IDENTITY_WORLD = 2
IDENTITY_REMOTE_NODE = 6
LABEL_HOST = "reserved:host"
LABEL_WORLD = "reserved:world"
LABEL_REMOTE_NODE = "reserved:remote-node"
NAMESPACE_LABEL = "io.kubernetes.pod.namespace"

# Identities podflow derives: [256, 2**24). Below 256 is Cilium's reserved range; from 2**24
# on, Cilium's node-local (CIDR) identities.
IDENTITY_FIRST = 256
IDENTITY_END = 1 << 24

# Labels that differ between replicas (or rollouts) of one workload: left out of the
# endpoint's labels, as Cilium leaves them out of identities, so all replicas share one
# identity and a rollout does not mint a new one.
PER_INSTANCE_LABELS = frozenset({
    "pod-template-hash", "pod-template-generation", "controller-revision-hash",
    "controller-uid", "statefulset.kubernetes.io/pod-name", "apps.kubernetes.io/pod-index",
    "batch.kubernetes.io/controller-uid", "batch.kubernetes.io/job-completion-index",
})

# The kernel's skb_drop_reason (as podflow names it, without SKB_DROP_REASON_) -> the nearest
# Cilium drop reason. Reasons without a near Cilium meaning map to DROP_REASON_UNKNOWN (the
# CLI's TYPE column then reads "Success", Cilium's name for code 0; the Summary names the
# kernel's reason).
KERNEL_DROP_REASONS: dict[str, int] = {
    # NETFILTER_DROP is decided per flow (policy_shaped); this is the pod-less case.
    "NETFILTER_DROP": hb.DROP_REASON_UNKNOWN,
    "IP_RPFILTER": hb.INVALID_SOURCE_IP,
    "IP_INVALID_SOURCE": hb.INVALID_SOURCE_IP,
    "IP_LOCAL_SOURCE": hb.INVALID_SOURCE_IP,
    "IP_INVALID_DEST": hb.UNKNOWN_L3_TARGET_ADDRESS,
    "IP_LOCALNET": hb.UNKNOWN_L3_TARGET_ADDRESS,
    "OTHERHOST": hb.UNKNOWN_L3_TARGET_ADDRESS,
    "IP_OUTNOROUTES": hb.FIB_LOOKUP_FAILED,
    "IP_INNOROUTES": hb.FIB_LOOKUP_FAILED,
    "NEIGH_FAILED": hb.FIB_LOOKUP_FAILED,
    "NEIGH_CREATEFAIL": hb.FIB_LOOKUP_FAILED,
    "NEIGH_QUEUEFULL": hb.FIB_LOOKUP_FAILED,
    "NEIGH_DEAD": hb.FIB_LOOKUP_FAILED,
    "PKT_TOO_SMALL": hb.INVALID_PACKET_DROPPED,
    "HDR_TRUNC": hb.INVALID_PACKET_DROPPED,
    "IP_INHDR": hb.INVALID_PACKET_DROPPED,
    "IP_CSUM": hb.INVALID_PACKET_DROPPED,
    "TCP_CSUM": hb.INVALID_PACKET_DROPPED,
    "UDP_CSUM": hb.INVALID_PACKET_DROPPED,
    "ICMP_CSUM": hb.INVALID_PACKET_DROPPED,
    "SKB_CSUM": hb.INVALID_PACKET_DROPPED,
    "INVALID_PROTO": hb.INVALID_PACKET_DROPPED,
    "IP_NOPROTO": hb.UNKNOWN_L4_PROTOCOL,
    "UNHANDLED_PROTO": hb.UNSUPPORTED_L3_PROTOCOL,
    "IPV6DISABLED": hb.UNSUPPORTED_L3_PROTOCOL,
    "IPV6_BAD_EXTHDR": hb.INVALID_IPV6_EXTENSION_HEADER,
    "FRAG_REASM_TIMEOUT": hb.FIRST_LOGICAL_DATAGRAM_FRAGMENT_NOT_FOUND,
    "FRAG_TOO_FAR": hb.FIRST_LOGICAL_DATAGRAM_FRAGMENT_NOT_FOUND,
    "DUP_FRAG": hb.FIRST_LOGICAL_DATAGRAM_FRAGMENT_NOT_FOUND,
    "NO_SOCKET": hb.SOCKET_LOOKUP_FAILED,
    "VXLAN_INVALID_HDR": hb.INVALID_VNI,
    "VXLAN_VNI_NOT_FOUND": hb.INVALID_VNI,
    "TUNNEL_TXINFO": hb.NO_TUNNEL_OR_ENCAPSULATION_ENDPOINT,
    # A queue or buffer was full: the packet exceeded what the node could take.
    "QDISC_DROP": hb.DROP_RATE_LIMITED,
    "CPU_BACKLOG": hb.DROP_RATE_LIMITED,
    "FULL_RING": hb.DROP_RATE_LIMITED,
    "SOCKET_RCVBUFF": hb.DROP_RATE_LIMITED,
    "SOCKET_BACKLOG": hb.DROP_RATE_LIMITED,
}

_RCODE_NUMBERS = {name: code for code, name in RCODES.items()}

_ICMPV4_TYPES = {0: "EchoReply", 3: "DestinationUnreachable", 4: "SourceQuench",
                 5: "Redirect", 8: "EchoRequest", 11: "TimeExceeded", 12: "ParameterProblem",
                 13: "TimestampRequest", 14: "TimestampReply"}
_ICMPV6_TYPES = {1: "DestinationUnreachable", 2: "PacketTooBig", 3: "TimeExceeded",
                 4: "ParameterProblem", 128: "EchoRequest", 129: "EchoReply",
                 133: "RouterSolicitation", 134: "RouterAdvertisement",
                 135: "NeighborSolicitation", 136: "NeighborAdvertisement", 137: "Redirect"}
# ICMP messages that answer something: replies and errors about a packet the other side sent.
_ICMPV4_ANSWERS = frozenset({0, 3, 4, 5, 11, 12, 14})
_ICMPV6_ANSWERS = frozenset({1, 2, 3, 4, 129, 134, 136})

# Hubble's order of TCP flags in a Summary.
_TCP_FLAG_ORDER = ("SYN", "ACK", "RST", "FIN", "PSH", "URG", "ECE", "CWR")

# A port at or above this is in Linux's default ephemeral range (net.ipv4.ip_local_port_range
# 32768-60999): the client's side of a connection.
EPHEMERAL_PORT_FIRST = 32768

_L4_NAMES = {"tcp": "TCP", "udp": "UDP", "sctp": "SCTP", "icmpv4": "ICMPv4", "icmpv6": "ICMPv6"}

ENUM_NAMES = {
    "observation_point": pf.ObservationPoint.Name,
    "direction": pf.TrafficDirection.Name,
    "category": pf.FlowCategory.Name,
    "outcome": pf.ConnectionOutcome.Name,
}


# ---------------------------------------------------------------------------------------
# Identities and endpoints


def identity_of(labels) -> int:
    """A stable, non-zero security identity for a label set: the same labels give the same
    number on every agent and across restarts, so Hubble UI groups replicas and `hubble
    observe --identity` works cluster-wide without an identity allocator.

    Scheme: BLAKE2b (8 bytes) of the sorted labels joined by newlines, reduced into
    [256, 2**24) (past Cilium's reserved identities, before its node-local ones). Two label
    sets share a number by chance with probability ~1/16.7M per pair."""
    digest = hashlib.blake2b("\n".join(sorted(labels)).encode(), digest_size=8).digest()
    return IDENTITY_FIRST + int.from_bytes(digest, "big") % (IDENTITY_END - IDENTITY_FIRST)


def endpoint_id_of(namespace: str, pod_name: str) -> int:
    """Cilium numbers the endpoints of its own node (16 bits); podflow has no such numbers,
    so a pod on the agent's node gets a stable one from its namespace/name (1..65535)."""
    digest = hashlib.blake2b(f"{namespace}/{pod_name}".encode(), digest_size=4).digest()
    return 1 + int.from_bytes(digest, "big") % 65535


def pod_labels(namespace: str, labels) -> list[str]:
    """podflow's "key=value" pod labels as Cilium shows them: "k8s:key=value", plus the
    namespace label, without per-instance labels (PER_INSTANCE_LABELS), sorted."""
    out = [f"k8s:{NAMESPACE_LABEL}={namespace}"]
    for label in labels:
        key = label.partition("=")[0]
        if key not in PER_INSTANCE_LABELS:
            out.append(f"k8s:{label}")
    out.sort()
    return out


def endpoint(ep: pf.Endpoint, node_name: str) -> hb.Endpoint:
    """One side of a flow as Hubble describes it. `node_name` is the agent's node: a node
    address is the host when it is this node, a remote node otherwise.

    - a pod: namespace, pod_name, workloads, k8s labels, identity_of(labels); an ID when the
      pod runs on this node;
    - a host-network pod: its namespace, name and workload, with the host (or remote-node)
      identity, since its address is the node's;
    - a node address: reserved:host (identity 1) / reserved:remote-node (6);
    - an address outside the cluster: reserved:world (2);
    - an untranslated Service address or an unknown address (no metadata): identity 0,
      Cilium's "unknown", without labels (a Service address keeps its namespace)."""
    out = hb.Endpoint()
    kind = ep.kind
    if kind == pf.POD:
        out.namespace = ep.namespace
        out.pod_name = ep.pod_name
        if ep.workload.name:
            out.workloads.add(name=ep.workload.name, kind=ep.workload.kind)
        if ep.host_network:
            _reserved_node(out, ep.node_name, node_name)
        else:
            labels = pod_labels(ep.namespace, ep.labels)
            out.labels.extend(labels)
            out.identity = identity_of(labels)
            if ep.node_name and ep.node_name == node_name:
                out.ID = endpoint_id_of(ep.namespace, ep.pod_name)
    elif kind == pf.NODE:
        _reserved_node(out, ep.node_name, node_name)
    elif kind == pf.WORLD:
        out.labels.append(LABEL_WORLD)
        out.identity = IDENTITY_WORLD
    elif kind == pf.SERVICE_IP:
        out.namespace = ep.namespace
    return out


def _reserved_node(out: hb.Endpoint, endpoint_node: str, node_name: str) -> None:
    if not endpoint_node or endpoint_node == node_name:
        out.labels.append(LABEL_HOST)
        out.identity = IDENTITY_HOST
    else:
        out.labels.append(LABEL_REMOTE_NODE)
        out.identity = IDENTITY_REMOTE_NODE


# ---------------------------------------------------------------------------------------
# Facts derived from the record


_PORTED = frozenset({"tcp", "udp", "sctp"})


def is_reply(flow: pf.Flow) -> bool:
    """Do this record's packets answer a connection the other side opened?

    podflow records carry `is_reply` only when a stage set it; otherwise it is derived here,
    from the most to the least certain fact:
    1. a DNS record: a response is a reply;
    2. a Service connection: packets from the Service address, the backend or the conntrack
       translation's addresses are replies, packets to them are not;
    3. ICMP: echo/timestamp replies and errors (unreachable, time exceeded, ...) are replies;
    4. TCP: a record whose flags include SYN but not ACK is the opener's first packets;
    5. ports: the lower port is the server's (clients use the ephemeral range), so a
       record from the lower port is a reply; equal ports or no ports: not a reply."""
    if flow.is_reply:
        return True
    if flow.HasField("dns"):
        return flow.dns.response
    l4 = flow.l4
    kind = l4.WhichOneof("protocol")
    sport = dport = 0
    if kind in _PORTED:
        ported = getattr(l4, kind)
        sport, dport = ported.source_port, ported.destination_port
    if sport and flow.HasField("service"):
        src, dst = flow.ip.source, flow.ip.destination
        servers = {(flow.service.ip, flow.service.port)}
        if flow.HasField("backend"):
            servers.add((flow.backend.ip, flow.backend.port))
        if flow.HasField("translation"):
            tr = flow.translation
            servers.add((tr.original_ip, tr.original_port))
            servers.add((tr.translated_ip, tr.translated_port))
        if (src, sport) in servers:
            return True
        if (dst, dport) in servers:
            return False
    if kind == "icmpv4":
        return l4.icmpv4.type in _ICMPV4_ANSWERS
    if kind == "icmpv6":
        return l4.icmpv6.type in _ICMPV6_ANSWERS
    if kind == "tcp" and l4.tcp.flags.SYN and not l4.tcp.flags.ACK:
        return False
    if sport and dport and sport != dport:
        return sport < dport
    return False


def traffic_direction(flow: pf.Flow, reply: bool) -> int:
    """Hubble's direction: of the connection, relative to the pod the record was seen at.
    A packet leaving the pod (FROM_POD) is EGRESS when the pod opened the connection and
    INGRESS when it answers one; TO_POD the other way round."""
    direction = flow.traffic_direction
    if direction == pf.FROM_POD:
        return hb.INGRESS if reply else hb.EGRESS
    if direction == pf.TO_POD:
        return hb.EGRESS if reply else hb.INGRESS
    return hb.TRAFFIC_DIRECTION_UNKNOWN


def trace_point(flow: pf.Flow) -> tuple[int, int]:
    """(Hubble observation point, Cilium trace code) of a forwarded record."""
    return _TRACE_POINTS.get((flow.observation_point, flow.traffic_direction),
                             (hb.UNKNOWN_POINT, TRACE_POINT_UNKNOWN))


def _plain_pod(ep: pf.Endpoint) -> bool:
    return ep.kind == pf.POD and not ep.host_network


def policy_shaped(flow: pf.Flow) -> bool:
    """Is this netfilter drop what a NetworkPolicy looks like? CNIs that enforce policies
    with iptables/nftables (Calico, kube-router, Antrea's iptables mode, the lab) drop pod
    traffic in netfilter. podflow reports only pod traffic's drops (agent/drops.py
    DropScope), so a drop is policy-shaped unless the metadata says that neither side is a
    pod (two node or world addresses: a host firewall)."""
    src, dst = flow.source, flow.destination
    if src.kind == pf.ENDPOINT_UNKNOWN or dst.kind == pf.ENDPOINT_UNKNOWN:
        return True
    return _plain_pod(src) or _plain_pod(dst)


def drop_reason(flow: pf.Flow) -> int:
    """The Cilium drop reason nearest to the record's kernel reason (DropReason value). A
    drop podflow's verdict calls enforced is a policy's whatever the kernel's reason; one of
    traffic no NetworkPolicy denies keeps the guess below: a netfilter drop of pod traffic may
    still be a policy podflow does not read (Calico's or Cilium's own kinds)."""
    if flow.policy.enforcement == pf.POLICY_ENFORCED:
        return hb.POLICY_DENIED
    name = flow.drop_reason
    if name == "NETFILTER_DROP":
        return hb.POLICY_DENIED if policy_shaped(flow) else hb.DROP_REASON_UNKNOWN
    return KERNEL_DROP_REASONS.get(name, hb.DROP_REASON_UNKNOWN)


_POLICY_FIELDS = ((pf.POLICY_ALLOWED, "egress", "egress_allowed_by"),
                  (pf.POLICY_ALLOWED, "ingress", "ingress_allowed_by"),
                  (pf.POLICY_DENIED, "egress", "egress_denied_by"),
                  (pf.POLICY_DENIED, "ingress", "ingress_denied_by"))


def hubble_policy(ref: str) -> hb.Policy:
    """A NetworkPolicy ("namespace/name") as Hubble's Policy message, labelled the way Cilium
    labels the rules it derives from a NetworkPolicy."""
    namespace, _, name = ref.partition("/")
    return hb.Policy(name=name, namespace=namespace, kind="NetworkPolicy", labels=[
        "k8s:io.cilium.k8s.policy.derived-from=NetworkPolicy",
        f"k8s:io.cilium.k8s.policy.name={name}",
        f"k8s:io.cilium.k8s.policy.namespace={namespace}"])


def policy_fields(flow: pf.Flow) -> list[tuple[str, list[hb.Policy]]]:
    """(Hubble field, its Policy messages) for each *_allowed_by / *_denied_by field a
    record's policy verdict fills; [] without a verdict."""
    if not flow.HasField("policy"):
        return []
    out = []
    for verdict, side, name in _POLICY_FIELDS:
        direction = getattr(flow.policy, side)
        if direction.verdict == verdict and direction.policies:
            out.append((name, [hubble_policy(ref) for ref in direction.policies]))
    return out


def is_l7(flow: pf.Flow, reply: bool, direction: int) -> bool:
    """Report a DNS record as Hubble's L7 DNS flow only where Cilium's DNS proxy would: once
    per query and once per answer, at the client's side. So: a pod veth record whose
    connection the pod opened (EGRESS), or any pod veth record when the client is not a plain
    pod (a host-network pod or a node asking a pod's DNS server is traced only there)."""
    if not flow.HasField("dns") or flow.observation_point != pf.POD_VETH:
        return False
    if direction == hb.EGRESS:
        return True
    client = flow.destination if reply else flow.source
    return not _plain_pod(client)


# ---------------------------------------------------------------------------------------
# Summary and extensions


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _qtypes(dns: pf.DNS) -> str:
    return ",".join(dns.qtypes)


def fqdn(name: str) -> str:
    """A DNS name as Hubble writes it: fully qualified, with its trailing dot."""
    if not name or name.endswith("."):
        return name
    return name + "."


_TCP_SUMMARIES: dict[bytes, str] = {}  # TCPFlags bytes -> "TCP Flags: SYN, ACK" (256 at most)


def l4_summary(flow: pf.Flow) -> str:
    kind = flow.l4.WhichOneof("protocol")
    if kind == "tcp":
        flags = flow.l4.tcp.flags
        raw = flags.SerializeToString()
        text = _TCP_SUMMARIES.get(raw)
        if text is None:
            names = [n for n in _TCP_FLAG_ORDER if getattr(flags, n)]
            text = _TCP_SUMMARIES[raw] = ("TCP Flags: " + ", ".join(names) if names
                                          else "TCP")
        return text
    if kind == "icmpv4":
        icmp = flow.l4.icmpv4
        name = _ICMPV4_TYPES.get(icmp.type, f"Type{icmp.type}")
        return f"ICMPv4 {name}" + (f"(code {icmp.code})" if icmp.code else "")
    if kind == "icmpv6":
        icmp = flow.l4.icmpv6
        name = _ICMPV6_TYPES.get(icmp.type, f"Type{icmp.type}")
        return f"ICMPv6 {name}" + (f"(code {icmp.code})" if icmp.code else "")
    if kind is not None:
        return _L4_NAMES[kind]
    ip = "IPv6" if flow.ip.ip_version == pf.IPV6 else "IPv4"
    return f"{ip} fragment" if flow.ip.fragment else ip


def dns_summary(dns: pf.DNS) -> str:
    asked = f"{fqdn(dns.query)} {_qtypes(dns)}".rstrip()
    if not dns.response:
        return f"DNS Query {asked}"
    if dns.rcode and dns.rcode != "NOERROR":
        return f"DNS Answer RCode: {dns.rcode} ({asked})"
    answer = ",".join(dns.ips)
    return f'DNS Answer "{answer}" TTL: {dns.ttl} ({asked})'


def summary(flow: pf.Flow, l7: bool) -> str:
    """Hubble's one-line Summary, then what the record counts and what podflow judged:
    "TCP Flags: SYN; 1 packet, 74 bytes; UNANSWERED"."""
    return summary_from(dns_summary(flow.dns) if l7 else l4_summary(flow), flow)


def summary_from(first: str, flow: pf.Flow) -> str:
    parts = [first, f"{_plural(flow.packets, 'packet')}, {_plural(flow.bytes, 'byte')}"]
    if flow.outcome:
        parts.append(pf.ConnectionOutcome.Name(flow.outcome))
    if flow.verdict == pf.DROPPED:
        parts.append(f"kernel drop reason {flow.drop_reason or 'unknown'}")
    return "; ".join(parts)


def rcode_number(name: str) -> int:
    """podflow's rcode name ("NXDOMAIN", or "RCODE<n>" for unnamed codes) -> its number."""
    if name in _RCODE_NUMBERS:
        return _RCODE_NUMBERS[name]
    if name.startswith("RCODE") and name[5:].isdigit():
        return int(name[5:])
    return 0


def dns_message(dns: pf.DNS) -> hb.Layer7:
    """A DNS record as Hubble's l7.dns (query or answer, as Cilium's DNS proxy reports)."""
    l7 = hb.Layer7(type=hb.RESPONSE if dns.response else hb.REQUEST)
    if dns.response:
        l7.latency_ns = dns.latency_ns
    record = l7.dns
    record.SetInParent()
    record.query = fqdn(dns.query)
    record.qtypes.extend(dns.qtypes)
    record.observation_source = DNS_OBSERVATION_SOURCE
    if dns.response:
        record.ips.extend(dns.ips)
        record.ttl = dns.ttl
        record.rcode = rcode_number(dns.rcode)
    return l7
