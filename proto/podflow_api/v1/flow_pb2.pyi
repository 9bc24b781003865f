import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TrafficDirection(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TRAFFIC_DIRECTION_UNKNOWN: _ClassVar[TrafficDirection]
    FROM_POD: _ClassVar[TrafficDirection]
    TO_POD: _ClassVar[TrafficDirection]

class ObservationPoint(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OBSERVATION_POINT_UNKNOWN: _ClassVar[ObservationPoint]
    POD_VETH: _ClassVar[ObservationPoint]
    BRIDGE: _ClassVar[ObservationPoint]
    HOST_STACK: _ClassVar[ObservationPoint]

class Verdict(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VERDICT_UNKNOWN: _ClassVar[Verdict]
    FORWARDED: _ClassVar[Verdict]
    DROPPED: _ClassVar[Verdict]

class IPVersion(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    IP_NOT_USED: _ClassVar[IPVersion]
    IPV4: _ClassVar[IPVersion]
    IPV6: _ClassVar[IPVersion]

class FlowCategory(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CATEGORY_UNKNOWN: _ClassVar[FlowCategory]
    POD_TO_POD_SAME_NODE: _ClassVar[FlowCategory]
    POD_TO_POD_CROSS_NODE: _ClassVar[FlowCategory]
    POD_TO_SERVICE: _ClassVar[FlowCategory]
    OUTSIDE_TO_SERVICE: _ClassVar[FlowCategory]
    POD_TO_WORLD: _ClassVar[FlowCategory]
    HOST_TO_POD: _ClassVar[FlowCategory]
    OTHER: _ClassVar[FlowCategory]

class PolicyVerdict(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    POLICY_VERDICT_UNKNOWN: _ClassVar[PolicyVerdict]
    POLICY_NOT_ISOLATED: _ClassVar[PolicyVerdict]
    POLICY_ALLOWED: _ClassVar[PolicyVerdict]
    POLICY_DENIED: _ClassVar[PolicyVerdict]
    POLICY_NOT_APPLICABLE: _ClassVar[PolicyVerdict]

class PolicyAllowReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    POLICY_ALLOW_REASON_UNKNOWN: _ClassVar[PolicyAllowReason]
    POLICY_ALLOW_RULE: _ClassVar[PolicyAllowReason]
    POLICY_ALLOW_OWN_NODE: _ClassVar[PolicyAllowReason]
    POLICY_ALLOW_SELF: _ClassVar[PolicyAllowReason]

class PolicyEnforcement(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    POLICY_ENFORCEMENT_UNDECIDED: _ClassVar[PolicyEnforcement]
    POLICY_ALLOWED_DELIVERED: _ClassVar[PolicyEnforcement]
    POLICY_ENFORCED: _ClassVar[PolicyEnforcement]
    POLICY_NOT_ENFORCED: _ClassVar[PolicyEnforcement]
    POLICY_DROPPED_OTHERWISE: _ClassVar[PolicyEnforcement]

class ConnectionOutcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OUTCOME_UNKNOWN: _ClassVar[ConnectionOutcome]
    ESTABLISHED: _ClassVar[ConnectionOutcome]
    REFUSED: _ClassVar[ConnectionOutcome]
    UNANSWERED: _ClassVar[ConnectionOutcome]
    RESET: _ClassVar[ConnectionOutcome]
    CLOSED: _ClassVar[ConnectionOutcome]
    NO_REPLY: _ClassVar[ConnectionOutcome]
    IN_PROGRESS: _ClassVar[ConnectionOutcome]

class EndpointKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ENDPOINT_UNKNOWN: _ClassVar[EndpointKind]
    POD: _ClassVar[EndpointKind]
    NODE: _ClassVar[EndpointKind]
    WORLD: _ClassVar[EndpointKind]
    SERVICE_IP: _ClassVar[EndpointKind]
TRAFFIC_DIRECTION_UNKNOWN: TrafficDirection
FROM_POD: TrafficDirection
TO_POD: TrafficDirection
OBSERVATION_POINT_UNKNOWN: ObservationPoint
POD_VETH: ObservationPoint
BRIDGE: ObservationPoint
HOST_STACK: ObservationPoint
VERDICT_UNKNOWN: Verdict
FORWARDED: Verdict
DROPPED: Verdict
IP_NOT_USED: IPVersion
IPV4: IPVersion
IPV6: IPVersion
CATEGORY_UNKNOWN: FlowCategory
POD_TO_POD_SAME_NODE: FlowCategory
POD_TO_POD_CROSS_NODE: FlowCategory
POD_TO_SERVICE: FlowCategory
OUTSIDE_TO_SERVICE: FlowCategory
POD_TO_WORLD: FlowCategory
HOST_TO_POD: FlowCategory
OTHER: FlowCategory
POLICY_VERDICT_UNKNOWN: PolicyVerdict
POLICY_NOT_ISOLATED: PolicyVerdict
POLICY_ALLOWED: PolicyVerdict
POLICY_DENIED: PolicyVerdict
POLICY_NOT_APPLICABLE: PolicyVerdict
POLICY_ALLOW_REASON_UNKNOWN: PolicyAllowReason
POLICY_ALLOW_RULE: PolicyAllowReason
POLICY_ALLOW_OWN_NODE: PolicyAllowReason
POLICY_ALLOW_SELF: PolicyAllowReason
POLICY_ENFORCEMENT_UNDECIDED: PolicyEnforcement
POLICY_ALLOWED_DELIVERED: PolicyEnforcement
POLICY_ENFORCED: PolicyEnforcement
POLICY_NOT_ENFORCED: PolicyEnforcement
POLICY_DROPPED_OTHERWISE: PolicyEnforcement
OUTCOME_UNKNOWN: ConnectionOutcome
ESTABLISHED: ConnectionOutcome
REFUSED: ConnectionOutcome
UNANSWERED: ConnectionOutcome
RESET: ConnectionOutcome
CLOSED: ConnectionOutcome
NO_REPLY: ConnectionOutcome
IN_PROGRESS: ConnectionOutcome
ENDPOINT_UNKNOWN: EndpointKind
POD: EndpointKind
NODE: EndpointKind
WORLD: EndpointKind
SERVICE_IP: EndpointKind

class Interface(_message.Message):
    __slots__ = ("index", "name")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    index: int
    name: str
    def __init__(self, index: _Optional[int] = ..., name: _Optional[str] = ...) -> None: ...

class IP(_message.Message):
    __slots__ = ("source", "destination", "ip_version", "fragment")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_FIELD_NUMBER: _ClassVar[int]
    IP_VERSION_FIELD_NUMBER: _ClassVar[int]
    FRAGMENT_FIELD_NUMBER: _ClassVar[int]
    source: str
    destination: str
    ip_version: IPVersion
    fragment: bool
    def __init__(self, source: _Optional[str] = ..., destination: _Optional[str] = ..., ip_version: _Optional[_Union[IPVersion, str]] = ..., fragment: _Optional[bool] = ...) -> None: ...

class TCPFlags(_message.Message):
    __slots__ = ("FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR")
    FIN_FIELD_NUMBER: _ClassVar[int]
    SYN_FIELD_NUMBER: _ClassVar[int]
    RST_FIELD_NUMBER: _ClassVar[int]
    PSH_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    URG_FIELD_NUMBER: _ClassVar[int]
    ECE_FIELD_NUMBER: _ClassVar[int]
    CWR_FIELD_NUMBER: _ClassVar[int]
    FIN: bool
    SYN: bool
    RST: bool
    PSH: bool
    ACK: bool
    URG: bool
    ECE: bool
    CWR: bool
    def __init__(self, FIN: _Optional[bool] = ..., SYN: _Optional[bool] = ..., RST: _Optional[bool] = ..., PSH: _Optional[bool] = ..., ACK: _Optional[bool] = ..., URG: _Optional[bool] = ..., ECE: _Optional[bool] = ..., CWR: _Optional[bool] = ...) -> None: ...

class TCP(_message.Message):
    __slots__ = ("source_port", "destination_port", "flags")
    SOURCE_PORT_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_PORT_FIELD_NUMBER: _ClassVar[int]
    FLAGS_FIELD_NUMBER: _ClassVar[int]
    source_port: int
    destination_port: int
    flags: TCPFlags
    def __init__(self, source_port: _Optional[int] = ..., destination_port: _Optional[int] = ..., flags: _Optional[_Union[TCPFlags, _Mapping]] = ...) -> None: ...

class UDP(_message.Message):
    __slots__ = ("source_port", "destination_port")
    SOURCE_PORT_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_PORT_FIELD_NUMBER: _ClassVar[int]
    source_port: int
    destination_port: int
    def __init__(self, source_port: _Optional[int] = ..., destination_port: _Optional[int] = ...) -> None: ...

class SCTP(_message.Message):
    __slots__ = ("source_port", "destination_port")
    SOURCE_PORT_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_PORT_FIELD_NUMBER: _ClassVar[int]
    source_port: int
    destination_port: int
    def __init__(self, source_port: _Optional[int] = ..., destination_port: _Optional[int] = ...) -> None: ...

class ICMPv4(_message.Message):
    __slots__ = ("type", "code")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    type: int
    code: int
    def __init__(self, type: _Optional[int] = ..., code: _Optional[int] = ...) -> None: ...

class ICMPv6(_message.Message):
    __slots__ = ("type", "code")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    type: int
    code: int
    def __init__(self, type: _Optional[int] = ..., code: _Optional[int] = ...) -> None: ...

class Layer4(_message.Message):
    __slots__ = ("tcp", "udp", "sctp", "icmpv4", "icmpv6")
    TCP_FIELD_NUMBER: _ClassVar[int]
    UDP_FIELD_NUMBER: _ClassVar[int]
    SCTP_FIELD_NUMBER: _ClassVar[int]
    ICMPV4_FIELD_NUMBER: _ClassVar[int]
    ICMPV6_FIELD_NUMBER: _ClassVar[int]
    tcp: TCP
    udp: UDP
    sctp: SCTP
    icmpv4: ICMPv4
    icmpv6: ICMPv6
    def __init__(self, tcp: _Optional[_Union[TCP, _Mapping]] = ..., udp: _Optional[_Union[UDP, _Mapping]] = ..., sctp: _Optional[_Union[SCTP, _Mapping]] = ..., icmpv4: _Optional[_Union[ICMPv4, _Mapping]] = ..., icmpv6: _Optional[_Union[ICMPv6, _Mapping]] = ...) -> None: ...

class Workload(_message.Message):
    __slots__ = ("kind", "name")
    KIND_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    kind: str
    name: str
    def __init__(self, kind: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class Endpoint(_message.Message):
    __slots__ = ("kind", "namespace", "pod_name", "labels", "workload", "node_name", "host_network", "names")
    KIND_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    POD_NAME_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    WORKLOAD_FIELD_NUMBER: _ClassVar[int]
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    HOST_NETWORK_FIELD_NUMBER: _ClassVar[int]
    NAMES_FIELD_NUMBER: _ClassVar[int]
    kind: EndpointKind
    namespace: str
    pod_name: str
    labels: _containers.RepeatedScalarFieldContainer[str]
    workload: Workload
    node_name: str
    host_network: bool
    names: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, kind: _Optional[_Union[EndpointKind, str]] = ..., namespace: _Optional[str] = ..., pod_name: _Optional[str] = ..., labels: _Optional[_Iterable[str]] = ..., workload: _Optional[_Union[Workload, _Mapping]] = ..., node_name: _Optional[str] = ..., host_network: _Optional[bool] = ..., names: _Optional[_Iterable[str]] = ...) -> None: ...

class Service(_message.Message):
    __slots__ = ("namespace", "name", "type", "ip", "port", "no_endpoints")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    IP_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    NO_ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    name: str
    type: str
    ip: str
    port: int
    no_endpoints: bool
    def __init__(self, namespace: _Optional[str] = ..., name: _Optional[str] = ..., type: _Optional[str] = ..., ip: _Optional[str] = ..., port: _Optional[int] = ..., no_endpoints: _Optional[bool] = ...) -> None: ...

class Backend(_message.Message):
    __slots__ = ("ip", "port", "namespace", "pod_name", "node_name")
    IP_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    POD_NAME_FIELD_NUMBER: _ClassVar[int]
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    ip: str
    port: int
    namespace: str
    pod_name: str
    node_name: str
    def __init__(self, ip: _Optional[str] = ..., port: _Optional[int] = ..., namespace: _Optional[str] = ..., pod_name: _Optional[str] = ..., node_name: _Optional[str] = ...) -> None: ...

class Translation(_message.Message):
    __slots__ = ("original_ip", "original_port", "translated_ip", "translated_port")
    ORIGINAL_IP_FIELD_NUMBER: _ClassVar[int]
    ORIGINAL_PORT_FIELD_NUMBER: _ClassVar[int]
    TRANSLATED_IP_FIELD_NUMBER: _ClassVar[int]
    TRANSLATED_PORT_FIELD_NUMBER: _ClassVar[int]
    original_ip: str
    original_port: int
    translated_ip: str
    translated_port: int
    def __init__(self, original_ip: _Optional[str] = ..., original_port: _Optional[int] = ..., translated_ip: _Optional[str] = ..., translated_port: _Optional[int] = ...) -> None: ...

class PolicyRule(_message.Message):
    __slots__ = ("policy", "index")
    POLICY_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    policy: str
    index: int
    def __init__(self, policy: _Optional[str] = ..., index: _Optional[int] = ...) -> None: ...

class DirectionPolicy(_message.Message):
    __slots__ = ("verdict", "policies", "rules", "reason", "unresolved_named_ports")
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    POLICIES_FIELD_NUMBER: _ClassVar[int]
    RULES_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    UNRESOLVED_NAMED_PORTS_FIELD_NUMBER: _ClassVar[int]
    verdict: PolicyVerdict
    policies: _containers.RepeatedScalarFieldContainer[str]
    rules: _containers.RepeatedCompositeFieldContainer[PolicyRule]
    reason: PolicyAllowReason
    unresolved_named_ports: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, verdict: _Optional[_Union[PolicyVerdict, str]] = ..., policies: _Optional[_Iterable[str]] = ..., rules: _Optional[_Iterable[_Union[PolicyRule, _Mapping]]] = ..., reason: _Optional[_Union[PolicyAllowReason, str]] = ..., unresolved_named_ports: _Optional[_Iterable[str]] = ...) -> None: ...

class Policy(_message.Message):
    __slots__ = ("egress", "ingress", "enforcement")
    EGRESS_FIELD_NUMBER: _ClassVar[int]
    INGRESS_FIELD_NUMBER: _ClassVar[int]
    ENFORCEMENT_FIELD_NUMBER: _ClassVar[int]
    egress: DirectionPolicy
    ingress: DirectionPolicy
    enforcement: PolicyEnforcement
    def __init__(self, egress: _Optional[_Union[DirectionPolicy, _Mapping]] = ..., ingress: _Optional[_Union[DirectionPolicy, _Mapping]] = ..., enforcement: _Optional[_Union[PolicyEnforcement, str]] = ...) -> None: ...

class DNS(_message.Message):
    __slots__ = ("query", "qtypes", "rcode", "ips", "ttl", "latency_ns", "response", "id")
    QUERY_FIELD_NUMBER: _ClassVar[int]
    QTYPES_FIELD_NUMBER: _ClassVar[int]
    RCODE_FIELD_NUMBER: _ClassVar[int]
    IPS_FIELD_NUMBER: _ClassVar[int]
    TTL_FIELD_NUMBER: _ClassVar[int]
    LATENCY_NS_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    query: str
    qtypes: _containers.RepeatedScalarFieldContainer[str]
    rcode: str
    ips: _containers.RepeatedScalarFieldContainer[str]
    ttl: int
    latency_ns: int
    response: bool
    id: int
    def __init__(self, query: _Optional[str] = ..., qtypes: _Optional[_Iterable[str]] = ..., rcode: _Optional[str] = ..., ips: _Optional[_Iterable[str]] = ..., ttl: _Optional[int] = ..., latency_ns: _Optional[int] = ..., response: _Optional[bool] = ..., id: _Optional[int] = ...) -> None: ...

class Flow(_message.Message):
    __slots__ = ("time", "node_name", "interface", "observation_point", "traffic_direction", "verdict", "drop_reason", "drop_reason_code", "ip", "l4", "packets", "bytes", "first_seen", "last_seen", "flow_end", "is_reply", "source", "destination", "category", "service", "backend", "translation", "dns", "outcome", "summary", "policy")
    TIME_FIELD_NUMBER: _ClassVar[int]
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    INTERFACE_FIELD_NUMBER: _ClassVar[int]
    OBSERVATION_POINT_FIELD_NUMBER: _ClassVar[int]
    TRAFFIC_DIRECTION_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    DROP_REASON_FIELD_NUMBER: _ClassVar[int]
    DROP_REASON_CODE_FIELD_NUMBER: _ClassVar[int]
    IP_FIELD_NUMBER: _ClassVar[int]
    L4_FIELD_NUMBER: _ClassVar[int]
    PACKETS_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    FIRST_SEEN_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_FIELD_NUMBER: _ClassVar[int]
    FLOW_END_FIELD_NUMBER: _ClassVar[int]
    IS_REPLY_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    TRANSLATION_FIELD_NUMBER: _ClassVar[int]
    DNS_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    time: _timestamp_pb2.Timestamp
    node_name: str
    interface: Interface
    observation_point: ObservationPoint
    traffic_direction: TrafficDirection
    verdict: Verdict
    drop_reason: str
    drop_reason_code: int
    ip: IP
    l4: Layer4
    packets: int
    bytes: int
    first_seen: _timestamp_pb2.Timestamp
    last_seen: _timestamp_pb2.Timestamp
    flow_end: bool
    is_reply: bool
    source: Endpoint
    destination: Endpoint
    category: FlowCategory
    service: Service
    backend: Backend
    translation: Translation
    dns: DNS
    outcome: ConnectionOutcome
    summary: str
    policy: Policy
    def __init__(self, time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., node_name: _Optional[str] = ..., interface: _Optional[_Union[Interface, _Mapping]] = ..., observation_point: _Optional[_Union[ObservationPoint, str]] = ..., traffic_direction: _Optional[_Union[TrafficDirection, str]] = ..., verdict: _Optional[_Union[Verdict, str]] = ..., drop_reason: _Optional[str] = ..., drop_reason_code: _Optional[int] = ..., ip: _Optional[_Union[IP, _Mapping]] = ..., l4: _Optional[_Union[Layer4, _Mapping]] = ..., packets: _Optional[int] = ..., bytes: _Optional[int] = ..., first_seen: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_seen: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., flow_end: _Optional[bool] = ..., is_reply: _Optional[bool] = ..., source: _Optional[_Union[Endpoint, _Mapping]] = ..., destination: _Optional[_Union[Endpoint, _Mapping]] = ..., category: _Optional[_Union[FlowCategory, str]] = ..., service: _Optional[_Union[Service, _Mapping]] = ..., backend: _Optional[_Union[Backend, _Mapping]] = ..., translation: _Optional[_Union[Translation, _Mapping]] = ..., dns: _Optional[_Union[DNS, _Mapping]] = ..., outcome: _Optional[_Union[ConnectionOutcome, str]] = ..., summary: _Optional[str] = ..., policy: _Optional[_Union[Policy, _Mapping]] = ...) -> None: ...
