import datetime

from google.protobuf import field_mask_pb2 as _field_mask_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from podflow_api.v1 import flow_pb2 as _flow_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class LostStage(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LOST_STAGE_UNKNOWN: _ClassVar[LostStage]
    KERNEL_RING_BUFFER: _ClassVar[LostStage]
    KERNEL_FLOW_MAP: _ClassVar[LostStage]
    AGENT_QUEUE: _ClassVar[LostStage]
    CLIENT_QUEUE: _ClassVar[LostStage]
    EXPORTER_QUEUE: _ClassVar[LostStage]
    EXPORTER_WRITE: _ClassVar[LostStage]
    KERNEL_DROP_MAP: _ClassVar[LostStage]
    STORE_OVERWRITTEN: _ClassVar[LostStage]

class NodeState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    NODE_STATE_UNKNOWN: _ClassVar[NodeState]
    NODE_CONNECTED: _ClassVar[NodeState]
    NODE_UNAVAILABLE: _ClassVar[NodeState]
    NODE_RECONNECTING: _ClassVar[NodeState]
    NODE_GONE: _ClassVar[NodeState]
LOST_STAGE_UNKNOWN: LostStage
KERNEL_RING_BUFFER: LostStage
KERNEL_FLOW_MAP: LostStage
AGENT_QUEUE: LostStage
CLIENT_QUEUE: LostStage
EXPORTER_QUEUE: LostStage
EXPORTER_WRITE: LostStage
KERNEL_DROP_MAP: LostStage
STORE_OVERWRITTEN: LostStage
NODE_STATE_UNKNOWN: NodeState
NODE_CONNECTED: NodeState
NODE_UNAVAILABLE: NodeState
NODE_RECONNECTING: NodeState
NODE_GONE: NodeState

class FlowFilter(_message.Message):
    __slots__ = ("source_ip", "destination_ip", "source_pod", "destination_pod", "source_namespace", "destination_namespace", "source_label", "destination_label", "source_service", "destination_service", "source_workload", "destination_workload", "source_port", "destination_port", "protocol", "tcp_flags", "verdict", "traffic_direction", "observation_point", "interface", "node_name", "ip_version", "category", "drop_reason", "outcome", "dns_query", "service", "server_port", "policy_verdict", "policy")
    SOURCE_IP_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_IP_FIELD_NUMBER: _ClassVar[int]
    SOURCE_POD_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_POD_FIELD_NUMBER: _ClassVar[int]
    SOURCE_NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_LABEL_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_LABEL_FIELD_NUMBER: _ClassVar[int]
    SOURCE_SERVICE_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_SERVICE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_WORKLOAD_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_WORKLOAD_FIELD_NUMBER: _ClassVar[int]
    SOURCE_PORT_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_PORT_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    TCP_FLAGS_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    TRAFFIC_DIRECTION_FIELD_NUMBER: _ClassVar[int]
    OBSERVATION_POINT_FIELD_NUMBER: _ClassVar[int]
    INTERFACE_FIELD_NUMBER: _ClassVar[int]
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    IP_VERSION_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    DROP_REASON_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    DNS_QUERY_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    SERVER_PORT_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERDICT_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    source_ip: _containers.RepeatedScalarFieldContainer[str]
    destination_ip: _containers.RepeatedScalarFieldContainer[str]
    source_pod: _containers.RepeatedScalarFieldContainer[str]
    destination_pod: _containers.RepeatedScalarFieldContainer[str]
    source_namespace: _containers.RepeatedScalarFieldContainer[str]
    destination_namespace: _containers.RepeatedScalarFieldContainer[str]
    source_label: _containers.RepeatedScalarFieldContainer[str]
    destination_label: _containers.RepeatedScalarFieldContainer[str]
    source_service: _containers.RepeatedScalarFieldContainer[str]
    destination_service: _containers.RepeatedScalarFieldContainer[str]
    source_workload: _containers.RepeatedScalarFieldContainer[str]
    destination_workload: _containers.RepeatedScalarFieldContainer[str]
    source_port: _containers.RepeatedScalarFieldContainer[str]
    destination_port: _containers.RepeatedScalarFieldContainer[str]
    protocol: _containers.RepeatedScalarFieldContainer[str]
    tcp_flags: _containers.RepeatedScalarFieldContainer[str]
    verdict: _containers.RepeatedScalarFieldContainer[_flow_pb2.Verdict]
    traffic_direction: _containers.RepeatedScalarFieldContainer[_flow_pb2.TrafficDirection]
    observation_point: _containers.RepeatedScalarFieldContainer[_flow_pb2.ObservationPoint]
    interface: _containers.RepeatedScalarFieldContainer[str]
    node_name: _containers.RepeatedScalarFieldContainer[str]
    ip_version: _containers.RepeatedScalarFieldContainer[_flow_pb2.IPVersion]
    category: _containers.RepeatedScalarFieldContainer[_flow_pb2.FlowCategory]
    drop_reason: _containers.RepeatedScalarFieldContainer[str]
    outcome: _containers.RepeatedScalarFieldContainer[_flow_pb2.ConnectionOutcome]
    dns_query: _containers.RepeatedScalarFieldContainer[str]
    service: _containers.RepeatedScalarFieldContainer[str]
    server_port: _containers.RepeatedScalarFieldContainer[str]
    policy_verdict: _containers.RepeatedScalarFieldContainer[str]
    policy: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, source_ip: _Optional[_Iterable[str]] = ..., destination_ip: _Optional[_Iterable[str]] = ..., source_pod: _Optional[_Iterable[str]] = ..., destination_pod: _Optional[_Iterable[str]] = ..., source_namespace: _Optional[_Iterable[str]] = ..., destination_namespace: _Optional[_Iterable[str]] = ..., source_label: _Optional[_Iterable[str]] = ..., destination_label: _Optional[_Iterable[str]] = ..., source_service: _Optional[_Iterable[str]] = ..., destination_service: _Optional[_Iterable[str]] = ..., source_workload: _Optional[_Iterable[str]] = ..., destination_workload: _Optional[_Iterable[str]] = ..., source_port: _Optional[_Iterable[str]] = ..., destination_port: _Optional[_Iterable[str]] = ..., protocol: _Optional[_Iterable[str]] = ..., tcp_flags: _Optional[_Iterable[str]] = ..., verdict: _Optional[_Iterable[_Union[_flow_pb2.Verdict, str]]] = ..., traffic_direction: _Optional[_Iterable[_Union[_flow_pb2.TrafficDirection, str]]] = ..., observation_point: _Optional[_Iterable[_Union[_flow_pb2.ObservationPoint, str]]] = ..., interface: _Optional[_Iterable[str]] = ..., node_name: _Optional[_Iterable[str]] = ..., ip_version: _Optional[_Iterable[_Union[_flow_pb2.IPVersion, str]]] = ..., category: _Optional[_Iterable[_Union[_flow_pb2.FlowCategory, str]]] = ..., drop_reason: _Optional[_Iterable[str]] = ..., outcome: _Optional[_Iterable[_Union[_flow_pb2.ConnectionOutcome, str]]] = ..., dns_query: _Optional[_Iterable[str]] = ..., service: _Optional[_Iterable[str]] = ..., server_port: _Optional[_Iterable[str]] = ..., policy_verdict: _Optional[_Iterable[str]] = ..., policy: _Optional[_Iterable[str]] = ...) -> None: ...

class GetFlowsRequest(_message.Message):
    __slots__ = ("number", "first", "follow", "since", "until", "allowlist", "denylist", "field_mask")
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    FIRST_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    UNTIL_FIELD_NUMBER: _ClassVar[int]
    ALLOWLIST_FIELD_NUMBER: _ClassVar[int]
    DENYLIST_FIELD_NUMBER: _ClassVar[int]
    FIELD_MASK_FIELD_NUMBER: _ClassVar[int]
    number: int
    first: bool
    follow: bool
    since: _timestamp_pb2.Timestamp
    until: _timestamp_pb2.Timestamp
    allowlist: _containers.RepeatedCompositeFieldContainer[FlowFilter]
    denylist: _containers.RepeatedCompositeFieldContainer[FlowFilter]
    field_mask: _field_mask_pb2.FieldMask
    def __init__(self, number: _Optional[int] = ..., first: _Optional[bool] = ..., follow: _Optional[bool] = ..., since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., until: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., allowlist: _Optional[_Iterable[_Union[FlowFilter, _Mapping]]] = ..., denylist: _Optional[_Iterable[_Union[FlowFilter, _Mapping]]] = ..., field_mask: _Optional[_Union[_field_mask_pb2.FieldMask, _Mapping]] = ...) -> None: ...

class LostEvents(_message.Message):
    __slots__ = ("stage", "num_events_lost", "first", "last", "num_packets_lost")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    NUM_EVENTS_LOST_FIELD_NUMBER: _ClassVar[int]
    FIRST_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    NUM_PACKETS_LOST_FIELD_NUMBER: _ClassVar[int]
    stage: LostStage
    num_events_lost: int
    first: _timestamp_pb2.Timestamp
    last: _timestamp_pb2.Timestamp
    num_packets_lost: int
    def __init__(self, stage: _Optional[_Union[LostStage, str]] = ..., num_events_lost: _Optional[int] = ..., first: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., num_packets_lost: _Optional[int] = ...) -> None: ...

class NodeStatusEvent(_message.Message):
    __slots__ = ("state", "node_names", "message")
    STATE_FIELD_NUMBER: _ClassVar[int]
    NODE_NAMES_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    state: NodeState
    node_names: _containers.RepeatedScalarFieldContainer[str]
    message: str
    def __init__(self, state: _Optional[_Union[NodeState, str]] = ..., node_names: _Optional[_Iterable[str]] = ..., message: _Optional[str] = ...) -> None: ...

class GetFlowsResponse(_message.Message):
    __slots__ = ("node_name", "time", "flow", "lost_events", "node_status", "flow_update")
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    FLOW_FIELD_NUMBER: _ClassVar[int]
    LOST_EVENTS_FIELD_NUMBER: _ClassVar[int]
    NODE_STATUS_FIELD_NUMBER: _ClassVar[int]
    FLOW_UPDATE_FIELD_NUMBER: _ClassVar[int]
    node_name: str
    time: _timestamp_pb2.Timestamp
    flow: _flow_pb2.Flow
    lost_events: LostEvents
    node_status: NodeStatusEvent
    flow_update: _flow_pb2.Flow
    def __init__(self, node_name: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., flow: _Optional[_Union[_flow_pb2.Flow, _Mapping]] = ..., lost_events: _Optional[_Union[LostEvents, _Mapping]] = ..., node_status: _Optional[_Union[NodeStatusEvent, _Mapping]] = ..., flow_update: _Optional[_Union[_flow_pb2.Flow, _Mapping]] = ...) -> None: ...

class GetFlowsBatch(_message.Message):
    __slots__ = ("responses",)
    RESPONSES_FIELD_NUMBER: _ClassVar[int]
    responses: _containers.RepeatedCompositeFieldContainer[GetFlowsResponse]
    def __init__(self, responses: _Optional[_Iterable[_Union[GetFlowsResponse, _Mapping]]] = ...) -> None: ...

class ServerStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class LostCount(_message.Message):
    __slots__ = ("stage", "count", "packets")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    PACKETS_FIELD_NUMBER: _ClassVar[int]
    stage: LostStage
    count: int
    packets: int
    def __init__(self, stage: _Optional[_Union[LostStage, str]] = ..., count: _Optional[int] = ..., packets: _Optional[int] = ...) -> None: ...

class ServerStatusResponse(_message.Message):
    __slots__ = ("num_flows", "max_flows", "seen_flows", "lost", "uptime_ns", "node_name", "version", "interfaces", "flows_per_second", "datapath_errors", "metadata_source", "metadata_stale", "metadata_error", "exporter_error", "datapath_state", "datapath_error", "interface_notes")
    class DatapathErrorsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    NUM_FLOWS_FIELD_NUMBER: _ClassVar[int]
    MAX_FLOWS_FIELD_NUMBER: _ClassVar[int]
    SEEN_FLOWS_FIELD_NUMBER: _ClassVar[int]
    LOST_FIELD_NUMBER: _ClassVar[int]
    UPTIME_NS_FIELD_NUMBER: _ClassVar[int]
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    INTERFACES_FIELD_NUMBER: _ClassVar[int]
    FLOWS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    DATAPATH_ERRORS_FIELD_NUMBER: _ClassVar[int]
    METADATA_SOURCE_FIELD_NUMBER: _ClassVar[int]
    METADATA_STALE_FIELD_NUMBER: _ClassVar[int]
    METADATA_ERROR_FIELD_NUMBER: _ClassVar[int]
    EXPORTER_ERROR_FIELD_NUMBER: _ClassVar[int]
    DATAPATH_STATE_FIELD_NUMBER: _ClassVar[int]
    DATAPATH_ERROR_FIELD_NUMBER: _ClassVar[int]
    INTERFACE_NOTES_FIELD_NUMBER: _ClassVar[int]
    num_flows: int
    max_flows: int
    seen_flows: int
    lost: _containers.RepeatedCompositeFieldContainer[LostCount]
    uptime_ns: int
    node_name: str
    version: str
    interfaces: _containers.RepeatedCompositeFieldContainer[_flow_pb2.Interface]
    flows_per_second: float
    datapath_errors: _containers.ScalarMap[str, int]
    metadata_source: str
    metadata_stale: bool
    metadata_error: str
    exporter_error: str
    datapath_state: str
    datapath_error: str
    interface_notes: _containers.RepeatedCompositeFieldContainer[InterfaceNote]
    def __init__(self, num_flows: _Optional[int] = ..., max_flows: _Optional[int] = ..., seen_flows: _Optional[int] = ..., lost: _Optional[_Iterable[_Union[LostCount, _Mapping]]] = ..., uptime_ns: _Optional[int] = ..., node_name: _Optional[str] = ..., version: _Optional[str] = ..., interfaces: _Optional[_Iterable[_Union[_flow_pb2.Interface, _Mapping]]] = ..., flows_per_second: _Optional[float] = ..., datapath_errors: _Optional[_Mapping[str, int]] = ..., metadata_source: _Optional[str] = ..., metadata_stale: _Optional[bool] = ..., metadata_error: _Optional[str] = ..., exporter_error: _Optional[str] = ..., datapath_state: _Optional[str] = ..., datapath_error: _Optional[str] = ..., interface_notes: _Optional[_Iterable[_Union[InterfaceNote, _Mapping]]] = ...) -> None: ...

class InterfaceNote(_message.Message):
    __slots__ = ("interface", "hook", "note")
    INTERFACE_FIELD_NUMBER: _ClassVar[int]
    HOOK_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    interface: str
    hook: str
    note: str
    def __init__(self, interface: _Optional[str] = ..., hook: _Optional[str] = ..., note: _Optional[str] = ...) -> None: ...

class GetNodesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Node(_message.Message):
    __slots__ = ("name", "version", "address", "state", "uptime_ns", "num_flows", "max_flows", "seen_flows")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    UPTIME_NS_FIELD_NUMBER: _ClassVar[int]
    NUM_FLOWS_FIELD_NUMBER: _ClassVar[int]
    MAX_FLOWS_FIELD_NUMBER: _ClassVar[int]
    SEEN_FLOWS_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    address: str
    state: NodeState
    uptime_ns: int
    num_flows: int
    max_flows: int
    seen_flows: int
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., address: _Optional[str] = ..., state: _Optional[_Union[NodeState, str]] = ..., uptime_ns: _Optional[int] = ..., num_flows: _Optional[int] = ..., max_flows: _Optional[int] = ..., seen_flows: _Optional[int] = ...) -> None: ...

class GetNodesResponse(_message.Message):
    __slots__ = ("nodes",)
    NODES_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedCompositeFieldContainer[Node]
    def __init__(self, nodes: _Optional[_Iterable[_Union[Node, _Mapping]]] = ...) -> None: ...
