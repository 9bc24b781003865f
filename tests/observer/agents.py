"""InProcessAgent: a node's Observer as a client sees it (agent.observer.server over
agent.flowstore, as the agent runs them), without eBPF. Shared by the Observer, Hubble and
client tests; a module of its own, not conftest, so tests import it by its package path."""

from __future__ import annotations

import grpc

from agent.config import ObserverSection, StoreSection
from agent.flowstore import FlowStore
from agent.observer.server import ObserverServer
from agent.stats import AgentStats
from podflow_api.v1 import observer_pb2_grpc
from tests.observer.observer_flows import make_flow


class InProcessAgent:
    """A node's Observer as a client sees it, without eBPF: flows are fed with `feed()`."""

    def __init__(self, node: str = "node-a", listen: str = "127.0.0.1:0", capacity: int = 4096,
                 client_queue_size: int = 1024, **observer):
        """`observer`: more ObserverSection fields (tls_cert, tls_key, tls_ca ...)."""
        self.stats = AgentStats(node_name=node, version="test")
        self.store = FlowStore(StoreSection(capacity=capacity,
                                            client_queue_size=client_queue_size), self.stats)
        self.server = ObserverServer(ObserverSection(listen=listen, **observer), self.store,
                                     self.stats)
        self.node = node

    def start(self) -> InProcessAgent:
        self.server.start()
        return self

    @property
    def address(self) -> str:
        addr = self.server.address
        return addr.replace("0.0.0.0", "127.0.0.1")

    def feed(self, n: int, **kw) -> list:
        flows = [make_flow(i, node=self.node, **kw) for i in range(n)]
        self.store.extend(flows)
        return flows

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(self.address)

    def stub(self, channel: grpc.Channel) -> observer_pb2_grpc.ObserverStub:
        return observer_pb2_grpc.ObserverStub(channel)

    def stop(self) -> None:
        self.server.stop(grace_s=0.2)
