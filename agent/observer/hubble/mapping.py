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
  POLICY_DENIED (that is how a NetworkPolicy drops with iptables/nftables CNIs), and any
  drop podflow's policy verdict calls enforced is POLICY_DENIED, one it calls "allowed but
  dropped" is not. The kernel's own name stays in extensions.drop_reason and the Summary.
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

A server maps with one HubbleMapper: `response_bytes(record, FlowMask(request paths))` is a
serialized observer.GetFlowsResponse, written from cached parts (several times cheaper than
building the message through the protobuf API); `to_hubble` parses the same bytes back for
tests and callers that want a message.

How counts read in Hubble terms: a Hubble flow here is one podflow record, i.e. one interval
(an active-timeout slice) of one flow at one observation point, not one packet; its packets
and bytes are in the Summary and in extensions.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import struct
import uuid as uuid_lib
from dataclasses import dataclass

from google.protobuf import field_mask_pb2, struct_pb2

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

_ENUM_NAMES = {
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


def _ports(flow: pf.Flow) -> tuple[str | None, int, int]:
    kind = flow.l4.WhichOneof("protocol")
    if kind in ("tcp", "udp", "sctp"):
        l4 = getattr(flow.l4, kind)
        return kind, l4.source_port, l4.destination_port
    return kind, 0, 0


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
    kind, sport, dport = _ports(flow)
    src, dst = flow.ip.source, flow.ip.destination
    if flow.HasField("service") and kind is not None and sport:
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
        return flow.l4.icmpv4.type in _ICMPV4_ANSWERS
    if kind == "icmpv6":
        return flow.l4.icmpv6.type in _ICMPV6_ANSWERS
    if kind == "tcp" and flow.l4.tcp.flags.SYN and not flow.l4.tcp.flags.ACK:
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
    policy verdict settles whether a drop was a policy's: podflow calls it enforced, or
    "allowed but dropped" (something else did it)."""
    enforcement = flow.policy.enforcement
    if enforcement == pf.POLICY_ENFORCED:
        return hb.POLICY_DENIED
    name = flow.drop_reason
    if enforcement == pf.POLICY_DROPPED_OTHERWISE:
        return KERNEL_DROP_REASONS.get(name, hb.DROP_REASON_UNKNOWN)
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


def policy_fields(flow: pf.Flow) -> dict[str, bytes]:
    """The encoded *_allowed_by / *_denied_by fields of a record's policy verdict, by field
    name; {} without one."""
    out: dict[str, bytes] = {}
    if not flow.HasField("policy"):
        return out
    policy = flow.policy
    for verdict, side, name in _POLICY_FIELDS:
        direction = getattr(policy, side)
        if direction.verdict == verdict and direction.policies:
            tag = _field(name)
            out[name] = b"".join(_ld(tag, hubble_policy(ref).SerializeToString())
                                 for ref in direction.policies)
    return out


def _is_l7(flow: pf.Flow, reply: bool, direction: int) -> bool:
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


def _l4_summary(flow: pf.Flow) -> str:
    kind = flow.l4.WhichOneof("protocol")
    if kind == "tcp":
        flags = flow.l4.tcp.flags
        names = [n for n in _TCP_FLAG_ORDER if getattr(flags, n)]
        return "TCP Flags: " + ", ".join(names) if names else "TCP"
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


def _dns_summary(dns: pf.DNS) -> str:
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
    return _summary_from(_dns_summary(flow.dns) if l7 else _l4_summary(flow), flow)


def _summary_from(first: str, flow: pf.Flow) -> str:
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


def record_uuid(flow: pf.Flow) -> str:
    """A UUID (version 8: derived, not random) from the record's bytes: stable for one
    record, different for any two records that differ in anything."""
    digest = hashlib.blake2b(flow.SerializeToString(deterministic=True), digest_size=16)
    value = int.from_bytes(digest.digest(), "big")
    value &= ~(0xF << 76)
    value |= 0x8 << 76          # version 8
    value &= ~(0x3 << 62)
    value |= 0x2 << 62          # RFC 4122 variant
    return str(uuid_lib.UUID(int=value))


# ---------------------------------------------------------------------------------------
# Wire encoding
#
# A Hubble flow is written as protobuf bytes, field by field, from cached parts: building
# the message through the Python API costs ~70 us a flow, the bytes a fraction of that, and
# a GetFlows stream sends one message per flow. Fields may come in any order on the wire;
# parsing the bytes gives exactly the message the field tests check (`to_hubble`).


_SMALL_VARINTS = [bytes((n,)) if n < 0x80 else bytes((n & 0x7F | 0x80, n >> 7))
                  for n in range(1 << 14)]


def _varint(n: int) -> bytes:
    if n < 16384:
        return _SMALL_VARINTS[n]
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _tag(number: int, wire_type: int) -> bytes:
    return _varint(number << 3 | wire_type)


def _ld(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field (string, bytes, message)."""
    return tag + _varint(len(payload)) + payload


def _str(tag: bytes, text: str) -> bytes:
    return _ld(tag, text.encode()) if text else b""


def _uint(tag: bytes, value: int) -> bytes:
    return tag + _varint(value) if value else b""


def _field(name: str) -> bytes:
    """The tag of a length-delimited field of flow.Flow."""
    return _tag(hb.Flow.DESCRIPTOR.fields_by_name[name].number, 2)


def _vfield(name: str) -> bytes:
    """The tag of a varint field of flow.Flow."""
    return _tag(hb.Flow.DESCRIPTOR.fields_by_name[name].number, 0)


_T_TIME, _T_UUID, _T_EMITTER = _field("time"), _field("uuid"), _field("emitter")
_T_IP, _T_L4, _T_SOURCE, _T_DESTINATION = (_field("IP"), _field("l4"), _field("source"),
                                           _field("destination"))
_T_NODE, _T_SOURCE_NAMES, _T_DESTINATION_NAMES = (_field("node_name"), _field("source_names"),
                                                  _field("destination_names"))
_T_L7, _T_EVENT_TYPE, _T_SOURCE_SERVICE, _T_DESTINATION_SERVICE = (
    _field("l7"), _field("event_type"), _field("source_service"),
    _field("destination_service"))
_T_IS_REPLY, _T_INTERFACE, _T_SUMMARY, _T_EXTENSIONS = (
    _field("is_reply"), _field("interface"), _field("Summary"), _field("extensions"))
_T_VERDICT, _T_DROP_REASON, _T_TYPE, _T_REPLY = (_vfield("verdict"), _vfield("drop_reason"),
                                                 _vfield("Type"), _vfield("reply"))
_T_DIRECTION, _T_POINT, _T_DROP_REASON_DESC = (
    _vfield("traffic_direction"), _vfield("trace_observation_point"),
    _vfield("drop_reason_desc"))

_IS_REPLY = {True: _ld(_T_IS_REPLY, b"\x08\x01"), False: _ld(_T_IS_REPLY, b"")}
_REPLY = {True: _T_REPLY + b"\x01", False: b""}
_ANY_STRUCT_URL = _ld(b"\x0a", b"type.googleapis.com/google.protobuf.Struct")

# google.protobuf.Struct / Value encodings (Struct.fields = 1, a map of string -> Value;
# Value: number_value = 2 (double), string_value = 3, bool_value = 4, struct_value = 5).


def _sv_number(value: float) -> bytes:
    return b"\x11" + struct.pack("<d", value)


def _sv_string(text: str) -> bytes:
    return _ld(b"\x1a", text.encode())


def _sv_bool(value: bool) -> bytes:
    return b"\x20\x01" if value else b"\x20\x00"


def _sv_struct(payload: bytes) -> bytes:
    return _ld(b"\x2a", payload)


_ENTRY_KEYS: dict[str, bytes] = {}


def _entry(key: str, value: bytes) -> bytes:
    """One map entry of Struct.fields: key (1) and Value (2)."""
    encoded = _ENTRY_KEYS.get(key)
    if encoded is None:
        encoded = _ENTRY_KEYS.setdefault(key, _ld(b"\x0a", key.encode()))
    body = encoded + b"\x12" + _varint(len(value)) + value
    return b"\x0a" + _varint(len(body)) + body


@functools.lru_cache(maxsize=4096)
def _sub_struct(kind: str, raw: bytes) -> bytes:
    """The Struct entry for a Service, backend or translation (they repeat: cached by the
    podflow message's bytes)."""
    if kind == "service":
        svc = pf.Service.FromString(raw)
        fields = (("namespace", _sv_string(svc.namespace)), ("name", _sv_string(svc.name)),
                  ("type", _sv_string(svc.type)), ("ip", _sv_string(svc.ip)),
                  ("port", _sv_number(svc.port)), ("no_endpoints", _sv_bool(svc.no_endpoints)))
    elif kind == "backend":
        be = pf.Backend.FromString(raw)
        fields = (("ip", _sv_string(be.ip)), ("port", _sv_number(be.port)),
                  ("namespace", _sv_string(be.namespace)),
                  ("pod_name", _sv_string(be.pod_name)),
                  ("node_name", _sv_string(be.node_name)))
    else:
        tr = pf.Translation.FromString(raw)
        fields = (("original_ip", _sv_string(tr.original_ip)),
                  ("original_port", _sv_number(tr.original_port)),
                  ("translated_ip", _sv_string(tr.translated_ip)),
                  ("translated_port", _sv_number(tr.translated_port)))
    return _entry(kind, _sv_struct(b"".join(_entry(k, v) for k, v in fields)))


@functools.lru_cache(maxsize=1024)
def _enum_entry(key: str, value: int) -> bytes:
    return _entry(key, _sv_string(_ENUM_NAMES[key](value)))


@functools.lru_cache(maxsize=4096)
def _string_entry(key: str, value: str) -> bytes:
    return _entry(key, _sv_string(value))


_FLOW_END = {True: _entry("flow_end", _sv_bool(True)), False: _entry("flow_end", _sv_bool(False))}
_FRAGMENT = _entry("fragment", _sv_bool(True))


def rfc3339(ts) -> str:
    """A Timestamp as protobuf's JSON writes it (0, 3, 6 or 9 fraction digits, "Z"), without
    its per-call datetime work: the part up to the second is cached."""
    nanos = ts.nanos
    if nanos == 0:
        frac = ""
    elif nanos % 1_000_000 == 0:
        frac = f".{nanos // 1_000_000:03d}"
    elif nanos % 1000 == 0:
        frac = f".{nanos // 1000:06d}"
    else:
        frac = f".{nanos:09d}"
    return f"{_second(ts.seconds)}{frac}Z"


@functools.lru_cache(maxsize=4096)
def _second(seconds: int) -> str:
    return (datetime.datetime(1970, 1, 1) + datetime.timedelta(seconds=seconds)).isoformat()


def _dynamic_extensions(flow: pf.Flow) -> bytes:
    """The Struct entries that change from one interval of a flow to the next."""
    parts = [_entry("packets", _sv_number(flow.packets)),
             _entry("bytes", _sv_number(flow.bytes)), _FLOW_END[flow.flow_end]]
    if flow.HasField("first_seen"):
        parts.append(_entry("first_seen", _sv_string(rfc3339(flow.first_seen))))
    if flow.HasField("last_seen"):
        parts.append(_entry("last_seen", _sv_string(rfc3339(flow.last_seen))))
    if flow.outcome:
        parts.append(_enum_entry("outcome", flow.outcome))
    return b"".join(parts)


def _static_extensions(flow: pf.Flow) -> bytes:
    """The Struct entries that stay the same for every interval of a flow."""
    parts = []
    if flow.observation_point:
        parts.append(_enum_entry("observation_point", flow.observation_point))
    if flow.traffic_direction:
        parts.append(_enum_entry("direction", flow.traffic_direction))
    if flow.category:
        parts.append(_enum_entry("category", flow.category))
    if flow.verdict == pf.DROPPED:
        parts.append(_string_entry("drop_reason", flow.drop_reason))
        parts.append(_entry("drop_reason_code", _sv_number(flow.drop_reason_code)))
    if flow.ip.fragment:
        parts.append(_FRAGMENT)
    if flow.source.node_name:
        parts.append(_string_entry("source_node", flow.source.node_name))
    if flow.destination.node_name:
        parts.append(_string_entry("destination_node", flow.destination.node_name))
    for kind in ("service", "backend", "translation"):
        if flow.HasField(kind):
            parts.append(_sub_struct(kind, getattr(flow, kind).SerializeToString()))
    return b"".join(parts)


def _extensions_struct(flow: pf.Flow) -> bytes:
    """Everything podflow knows that Hubble has no field for, in podflow's own words, as a
    serialized google.protobuf.Struct."""
    return _dynamic_extensions(flow) + _static_extensions(flow)


def extensions(flow: pf.Flow) -> struct_pb2.Struct:
    """The extensions Struct as a message (what the flow's Any holds)."""
    return struct_pb2.Struct.FromString(_extensions_struct(flow))


def _l4_message(flow: pf.Flow) -> hb.Layer4 | None:
    kind = flow.l4.WhichOneof("protocol")
    if kind is None:
        return None
    out = hb.Layer4()
    if kind == "tcp":
        tcp = flow.l4.tcp
        out.TCP.source_port = tcp.source_port
        out.TCP.destination_port = tcp.destination_port
        if tcp.HasField("flags"):
            flags = out.TCP.flags
            flags.SetInParent()
            for name in _TCP_FLAG_ORDER:
                if getattr(tcp.flags, name):
                    setattr(flags, name, True)
    elif kind == "udp":
        out.UDP.source_port = flow.l4.udp.source_port
        out.UDP.destination_port = flow.l4.udp.destination_port
    elif kind == "sctp":
        out.SCTP.source_port = flow.l4.sctp.source_port
        out.SCTP.destination_port = flow.l4.sctp.destination_port
    elif kind == "icmpv4":
        out.ICMPv4.type = flow.l4.icmpv4.type
        out.ICMPv4.code = flow.l4.icmpv4.code
    elif kind == "icmpv6":
        out.ICMPv6.type = flow.l4.icmpv6.type
        out.ICMPv6.code = flow.l4.icmpv6.code
    return out


def _dns_message(dns: pf.DNS) -> hb.Layer7:
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


class _Bounded(dict):
    """A cache that forgets everything when it is full: the keys (endpoints, addresses)
    repeat heavily, so a full reset is rare and cheaper than LRU bookkeeping per hit."""

    def __init__(self, max_entries: int):
        super().__init__()
        self.max_entries = max_entries

    def put(self, key, value):
        if len(self) >= self.max_entries:
            self.clear()
        self[key] = value
        return value


class FlowMask:
    """A GetFlowsRequest field mask compiled for the encoder: which top-level fields of
    flow.Flow to send and, for message fields, which of their sub-fields. Paths naming
    fields podflow does not declare (the hubble CLI's default mask asks for "ethernet" and
    "ip_trace_id") are ignored: podflow would send nothing there anyway; they are listed
    in `ignored`."""

    def __init__(self, paths):
        fields = hb.Flow.DESCRIPTOR.fields_by_name
        self.top: dict[str, tuple[str, ...] | None] = {}
        self.ignored: list[str] = []
        for path in paths:
            head, _, rest = path.partition(".")
            if head not in fields:
                self.ignored.append(path)
                continue
            if not rest or fields[head].message_type is None:
                self.top[head] = None
            elif head not in self.top or self.top[head] is not None:
                self.top[head] = tuple(sorted({*(self.top.get(head) or ()), rest}))


def _masked(message_class, payload: bytes, subpaths: tuple[str, ...]) -> bytes:
    source = message_class.FromString(payload)
    out = message_class()
    mask = field_mask_pb2.FieldMask(paths=list(subpaths))
    mask.MergeMessage(source, out)
    return out.SerializeToString()


_STATIC_MESSAGES = ("interface", "source", "destination", "service", "backend", "translation",
                    "policy",
                    "dns")


@dataclass(frozen=True)
class _Static:
    parts: dict          # field name -> encoded field
    joined: bytes        # the parts, concatenated
    summary: str         # the Summary's first part ("TCP Flags: SYN")
    extensions: bytes    # the Struct entries that do not change between intervals


class HubbleMapper:
    """podflow records -> serialized Hubble flows (and GetFlowsResponses) for one agent.

    The fields that stay the same for every interval of a flow (addresses, endpoints,
    direction, event type, Service, most extensions) are encoded once and cached; time, uuid,
    counts, outcome and Summary are encoded per record. The caches are bounded and only ever
    hold complete values, so one mapper is shared by all the threads of a gRPC server."""

    def __init__(self, version: str = "", max_cached: int = 16384):
        self.version = version
        self._emitter = _ld(_T_EMITTER, _str(b"\x0a", EMITTER_NAME) + _str(b"\x12", version))
        self._endpoints = _Bounded(max_cached)
        self._blocks = _Bounded(max_cached)
        self._masked = _Bounded(max_cached)
        self._statics = _Bounded(max_cached)

    # -- parts ----------------------------------------------------------------------------

    def _endpoint(self, ep: pf.Endpoint, node_name: str) -> bytes:
        key = (ep.SerializeToString(), node_name)
        hit = self._endpoints.get(key)
        if hit is None:
            hit = self._endpoints.put(key, endpoint(ep, node_name).SerializeToString())
        return hit

    def _addresses(self, flow: pf.Flow) -> tuple[bytes, bytes | None, bytes | None]:
        """The IP, l4 and interface payloads (empty / None when the record has none),
        cached by what they are made of."""
        key = (flow.ip.SerializeToString(), flow.l4.SerializeToString(),
               flow.interface.SerializeToString() if flow.HasField("interface") else None)
        hit = self._blocks.get(key)
        if hit is None:
            ip = b""
            if flow.ip.source or flow.ip.destination:
                version = (hb.IPv6 if flow.ip.ip_version == pf.IPV6 else
                           hb.IPv4 if flow.ip.ip_version == pf.IPV4 else hb.IP_NOT_USED)
                ip = hb.IP(source=flow.ip.source, destination=flow.ip.destination,
                           ipVersion=version).SerializeToString()
            l4 = _l4_message(flow)
            iface = None
            if flow.HasField("interface"):
                iface = hb.NetworkInterface(index=flow.interface.index,
                                            name=flow.interface.name).SerializeToString()
            hit = self._blocks.put(key, (ip, None if l4 is None else l4.SerializeToString(),
                                         iface))
        return hit

    # -- the flow -------------------------------------------------------------------------

    def _static(self, flow: pf.Flow) -> _Static:
        """The fields that do not change from one interval of a flow to the next (all but
        time, uuid, counts and outcome), cached by what they are made of."""
        key = (flow.node_name, flow.verdict, flow.drop_reason, flow.drop_reason_code,
               flow.policy.enforcement,
               flow.observation_point, flow.traffic_direction, flow.category, flow.is_reply,
               flow.ip.SerializeToString(), flow.l4.SerializeToString(),
               *[getattr(flow, name).SerializeToString() if flow.HasField(name) else None
                 for name in _STATIC_MESSAGES])
        hit = self._statics.get(key)
        if hit is None:
            hit = self._statics.put(key, self._build_static(flow))
        return hit

    def _build_static(self, flow: pf.Flow) -> _Static:
        out: dict[str, bytes] = {"emitter": self._emitter}
        node_name = flow.node_name
        out["node_name"] = _str(_T_NODE, node_name)
        ip, l4, iface = self._addresses(flow)
        if ip:
            out["IP"] = _ld(_T_IP, ip)
        if l4 is not None:
            out["l4"] = _ld(_T_L4, l4)
        if iface is not None:
            out["interface"] = _ld(_T_INTERFACE, iface)
        out["source"] = _ld(_T_SOURCE, self._endpoint(flow.source, node_name))
        out["destination"] = _ld(_T_DESTINATION, self._endpoint(flow.destination, node_name))
        if flow.source.names:
            out["source_names"] = b"".join(_str(_T_SOURCE_NAMES, n) for n in flow.source.names)
        if flow.destination.names:
            out["destination_names"] = b"".join(_str(_T_DESTINATION_NAMES, n)
                                                for n in flow.destination.names)

        reply = is_reply(flow)
        out["is_reply"] = _IS_REPLY[reply]
        out["reply"] = _REPLY[reply]
        direction = traffic_direction(flow, reply)
        out["traffic_direction"] = _uint(_T_DIRECTION, direction)

        if flow.HasField("service") and flow.service.name:
            svc = _str(b"\x0a", flow.service.name) + _str(b"\x12", flow.service.namespace)
            if reply:
                out["source_service"] = _ld(_T_SOURCE_SERVICE, svc)
            else:
                out["destination_service"] = _ld(_T_DESTINATION_SERVICE, svc)

        l7 = False
        if flow.verdict == pf.DROPPED:
            reason = drop_reason(flow)
            out["verdict"] = _uint(_T_VERDICT, hb.DROPPED)
            out["drop_reason_desc"] = _uint(_T_DROP_REASON_DESC, reason)
            out["drop_reason"] = _uint(_T_DROP_REASON, reason)
            out["Type"] = _uint(_T_TYPE, hb.L3_L4)
            out["event_type"] = _ld(_T_EVENT_TYPE, b"\x08" + _varint(EVENT_DROP) +
                                    _uint(b"\x10", reason))
        else:
            out["verdict"] = _uint(_T_VERDICT, hb.FORWARDED if flow.verdict == pf.FORWARDED
                                   else hb.VERDICT_UNKNOWN)
            l7 = _is_l7(flow, reply, direction)
            if l7:
                out["l7"] = _ld(_T_L7, _dns_message(flow.dns).SerializeToString())
                out["Type"] = _uint(_T_TYPE, hb.L7)
                out["event_type"] = _ld(_T_EVENT_TYPE, b"\x08" + _varint(EVENT_L7))
            else:
                point, code = _TRACE_POINTS.get(
                    (flow.observation_point, flow.traffic_direction),
                    (hb.UNKNOWN_POINT, TRACE_POINT_UNKNOWN))
                out["trace_observation_point"] = _uint(_T_POINT, point)
                out["Type"] = _uint(_T_TYPE, hb.L3_L4)
                out["event_type"] = _ld(_T_EVENT_TYPE, b"\x08" + _varint(EVENT_TRACE) +
                                        _uint(b"\x10", code))
        out.update(policy_fields(flow))
        return _Static(parts=out, joined=b"".join(out.values()),
                       summary=_dns_summary(flow.dns) if l7 else _l4_summary(flow),
                       extensions=_static_extensions(flow))

    def parts(self, flow: pf.Flow) -> dict[str, bytes]:
        """The encoded top-level fields of the Hubble flow, by field name."""
        static = self._static(flow)
        out = dict(static.parts)
        out.update(self._dynamic(flow, static))
        return out

    def _dynamic(self, flow: pf.Flow, static: _Static) -> dict[str, bytes]:
        out = {}
        if flow.HasField("time"):
            out["time"] = _ld(_T_TIME, flow.time.SerializeToString())
        out["uuid"] = _str(_T_UUID, record_uuid(flow))
        out["Summary"] = _str(_T_SUMMARY, _summary_from(static.summary, flow))
        out["extensions"] = _ld(_T_EXTENSIONS, _ANY_STRUCT_URL + _ld(
            b"\x12", _dynamic_extensions(flow) + static.extensions))
        return out

    def flow_bytes(self, flow: pf.Flow, mask: FlowMask | None = None) -> bytes:
        """The serialized flow.Flow of a record, only the fields of `mask` when one is set."""
        static = self._static(flow)
        if mask is None:
            return static.joined + b"".join(self._dynamic(flow, static).values())
        parts = dict(static.parts)
        parts.update(self._dynamic(flow, static))
        chosen = []
        for name, subpaths in mask.top.items():
            part = parts.get(name)
            if not part:
                continue
            if subpaths is not None:
                part = self._mask_part(name, part, subpaths)
            chosen.append(part)
        return b"".join(chosen)

    def _mask_part(self, name: str, part: bytes, subpaths: tuple[str, ...]) -> bytes:
        key = (name, part, subpaths)
        hit = self._masked.get(key)
        if hit is None:
            message = hb.Flow.FromString(part)
            sub = getattr(message, name)
            payload = _masked(type(sub), sub.SerializeToString(), subpaths)
            hit = self._masked.put(key, _ld(_field(name), payload))
        return hit

    def response_bytes(self, flow: pf.Flow, mask: FlowMask | None = None) -> bytes:
        """A serialized observer.GetFlowsResponse carrying the record (flow, node_name and
        time, as Hubble's servers fill them), ready for a bytes-passing gRPC handler."""
        payload = _ld(_R_FLOW, self.flow_bytes(flow, mask)) + _str(_R_NODE, flow.node_name)
        if flow.HasField("time"):
            payload += _ld(_R_TIME, flow.time.SerializeToString())
        return payload

    def to_hubble(self, flow: pf.Flow) -> hb.Flow:
        return hb.Flow.FromString(self.flow_bytes(flow))


_R_FLOW = _tag(1, 2)
_R_NODE = _tag(1000, 2)
_R_TIME = _tag(1001, 2)


def to_hubble(flow: pf.Flow, version: str = "") -> hb.Flow:
    """One podflow record -> one Hubble flow message (see the module docstring for each
    field). `version`: the agent's version, reported as the flow's emitter. A server maps
    with one HubbleMapper (cached parts, bytes out) instead."""
    return HubbleMapper(version).to_hubble(flow)
