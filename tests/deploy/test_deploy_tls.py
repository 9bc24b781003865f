"""The documented way to make certificates without cert-manager (deploy/make-certs.sh, plain
openssl) gives files the chart's TLS settings and the real agent server accept: a client with
the CA, the client certificate and the shared server name gets through; one without a client
certificate is refused (tls.requireClientCert defaults to true)."""

from __future__ import annotations

import subprocess

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from deploy_helpers import REPO, VALUE_SETS, agent_container, one, render

SERVER_NAME = "podflow-agent.podflow.svc"


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    out = tmp_path_factory.mktemp("certs")
    subprocess.run(["bash", str(REPO / "deploy/make-certs.sh"), str(out)], check=True,
                   capture_output=True, timeout=60)
    return out


def tls_server(certs, values_name: str):
    """The agent's gRPC server stage, started with the DaemonSet's TLS args, the secret's
    files at their mount path replaced by `certs`."""
    import dataclasses

    from agent.cli import build_parser
    from agent.config import AgentConfig
    from agent.flowstore import FlowStore
    from agent.observer.server import ObserverServer
    from agent.stats import DATAPATH_TRACING, AgentStats

    container = agent_container(render(VALUE_SETS[values_name]))
    mount = next(m["mountPath"] for m in container["volumeMounts"] if m["name"] == "tls")
    args = [a.replace("$(NODE_NAME)", "node-a").replace(mount, str(certs))
            for a in container["args"] if not a.startswith("--health-listen")]
    config = AgentConfig.from_args(build_parser("agent").parse_args(args))
    observer = dataclasses.replace(config.observer, listen="127.0.0.1:0")
    stats = AgentStats(node_name="node-a", version="test")
    stats.set_datapath_state(DATAPATH_TRACING)  # health answers SERVING only then
    return ObserverServer(observer, FlowStore(config.store, stats), stats)


def check(address: str, **tls) -> int:
    from agent.client.channel import TLSOptions, open_channel

    with open_channel(address, TLSOptions(enabled=True, **tls)) as channel:
        return health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=5).status


def test_make_certs_output_fits_the_secret_the_chart_mounts(certs):
    objects = render(VALUE_SETS["tls-mtls-cert-manager"])
    cert = one(objects, "Certificate")["spec"]
    assert {p.name for p in certs.iterdir()} == {"ca.crt", "ca.key", "tls.crt", "tls.key",
                                                 "client.crt", "client.key"}
    san = subprocess.run(["openssl", "x509", "-in", str(certs / "tls.crt"), "-noout", "-ext",
                          "subjectAltName"], capture_output=True, text=True, check=True).stdout
    for name in cert["dnsNames"]:  # the same names cert-manager would put in
        assert f"DNS:{name}" in san


def test_mutual_tls_with_the_documented_certificates(certs):
    observer = tls_server(certs, "tls-mtls-cert-manager")
    observer.start()
    try:
        address = observer.address
        ok = check(address, ca_file=str(certs / "ca.crt"), cert_file=str(certs / "client.crt"),
                   key_file=str(certs / "client.key"), server_name=SERVER_NAME)
        assert ok == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError):
            check(address, ca_file=str(certs / "ca.crt"), server_name=SERVER_NAME)
    finally:
        observer.stop()


def test_server_only_tls_with_the_documented_certificates(certs):
    observer = tls_server(certs, "tls-server-only-own-secret")
    observer.start()
    try:
        ok = check(observer.address, ca_file=str(certs / "ca.crt"), server_name=SERVER_NAME)
        assert ok == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError):  # a name the certificate does not carry
            check(observer.address, ca_file=str(certs / "ca.crt"), server_name="evil.example")
    finally:
        observer.stop()
