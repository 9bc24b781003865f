"""TLS and mutual TLS between agent and clients, with certificates generated here."""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os

import grpc
import pytest
from tests.observer.agents import InProcessAgent
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agent.client import channel as client
from agent.client.stream import get_flows
from agent import config
from agent.errors import ConfigError
from agent.observer import server
from podflow_api.v1 import observer_pb2


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write(path: str, data: bytes) -> str:
    with open(path, "wb") as fh:
        fh.write(data)
    return path


def _issue(ca_key, ca_cert, cn: str, usage, sans=()):
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(_name(cn))
               .issuer_name(ca_cert.subject if ca_cert else _name(cn))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5))
               .not_valid_after(now + dt.timedelta(hours=1)))
    if ca_cert is None:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        cert = builder.sign(key, hashes.SHA256())
    else:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), False)
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), False)
        cert = builder.sign(ca_key, hashes.SHA256())
    return key, cert


def _pem(key, cert, d: str, stem: str) -> tuple[str, str]:
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return (_write(os.path.join(d, f"{stem}.crt"), cert.public_bytes(serialization.Encoding.PEM)),
            _write(os.path.join(d, f"{stem}.key"), key_pem))


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("pki"))
    ca_key, ca_cert = _issue(None, None, "podflow test CA", None)
    ca_path, _ = _pem(ca_key, ca_cert, d, "ca")
    s_key, s_cert = _issue(ca_key, ca_cert, "agent", ExtendedKeyUsageOID.SERVER_AUTH,
                           [x509.DNSName("agent.podflow.test"),
                            x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    c_key, c_cert = _issue(ca_key, ca_cert, "observer", ExtendedKeyUsageOID.CLIENT_AUTH)
    other_ca_key, other_ca_cert = _issue(None, None, "another CA", None)
    o_key, o_cert = _issue(other_ca_key, other_ca_cert, "intruder",
                           ExtendedKeyUsageOID.CLIENT_AUTH)
    srv_crt, srv_key = _pem(s_key, s_cert, d, "server")
    cli_crt, cli_key = _pem(c_key, c_cert, d, "client")
    bad_crt, bad_key = _pem(o_key, o_cert, d, "intruder")
    return {"ca": ca_path, "server": (srv_crt, srv_key), "client": (cli_crt, cli_key),
            "intruder": (bad_crt, bad_key), "dir": d}


def _agent(pki, mtls: bool) -> InProcessAgent:
    crt, key = pki["server"]
    a = InProcessAgent(tls_cert=crt, tls_key=key, tls_ca=pki["ca"] if mtls else None).start()
    a.feed(3)
    return a


def _status(address, tls):
    return client.server_status(address, tls, timeout_s=5)


TLS_CASES = [
    # (id, server requires client certs, client options, expected to work)
    ("tls-ok", False, dict(ca="ca"), True),
    ("tls-server-name", False, dict(ca="ca", server_name="agent.podflow.test"), True),
    ("tls-plaintext-client-refused", False, None, False),
    ("tls-wrong-name", False, dict(ca="ca", server_name="other.test"), False),
    ("mtls-ok", True, dict(ca="ca", cert="client"), True),
    ("mtls-no-client-cert-refused", True, dict(ca="ca"), False),
    ("mtls-foreign-client-cert-refused", True, dict(ca="ca", cert="intruder"), False),
]


@pytest.mark.parametrize("mtls,opts,works", [c[1:] for c in TLS_CASES],
                         ids=[c[0] for c in TLS_CASES])
def test_tls(pki, mtls, opts, works):
    a = _agent(pki, mtls)
    try:
        tls = None
        if opts is not None:
            cert, key = pki[opts["cert"]] if "cert" in opts else (None, None)
            tls = client.TLSOptions(enabled=True, ca_file=pki["ca"], cert_file=cert,
                                    key_file=key, server_name=opts.get("server_name"))
        if works:
            st = _status(a.address, tls)
            assert st.num_flows == 3
            with client.open_channel(a.address, tls) as ch:
                got = list(get_flows(ch, observer_pb2.GetFlowsRequest(), ))
            assert len(got) == 3
        else:
            with pytest.raises(grpc.RpcError) as err:
                _status(a.address, tls)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        a.stop()


SERVER_FLAG_ERRORS = [
    ("cert-without-key", dict(cert="server.crt"), "--tls-cert and --tls-key"),
    ("ca-without-cert", dict(ca="ca.crt"), "--tls-ca"),
    ("missing-cert-file", dict(cert="nope.crt", key="server.key"), "--tls-cert"),
    ("key-not-pem", dict(cert="server.crt", key="garbage"), "--tls-key"),
]


@pytest.mark.parametrize("kw,flag", [c[1:] for c in SERVER_FLAG_ERRORS],
                         ids=[c[0] for c in SERVER_FLAG_ERRORS])
def test_server_tls_flag_errors(pki, kw, flag):
    d = pki["dir"]
    _write(os.path.join(d, "garbage"), b"not a key")
    paths = {f"tls_{k}": os.path.join(d, v) for k, v in kw.items()}
    with pytest.raises(ConfigError, match=flag):
        server.server_credentials(config.ObserverSection(**paths))


def _observer_section(*argv: str) -> config.ObserverSection:
    p = argparse.ArgumentParser()
    config.add_arguments(p)
    return config.AgentConfig.from_args(p.parse_args(list(argv))).observer


def test_server_from_flags(pki):
    crt, key = pki["server"]
    section = _observer_section("--listen", "127.0.0.1:0", "--tls-cert", crt, "--tls-key", key,
                                "--tls-ca", pki["ca"])
    srv = server.ObserverServer(section, InProcessAgent().store, InProcessAgent().stats)
    assert srv.credentials is not None
    assert not _observer_section("--listen", "none").enabled


@pytest.mark.parametrize("argv,flag", [(["--tls-cert", "/nonexistent.crt", "--tls-key", "/k"],
                                        "--tls-cert"),
                                       (["--tls-cert", "/x"], "--tls-cert and --tls-key"),
                                       (["--tls-ca", "/nonexistent-ca"], "--tls-ca")])
def test_client_tls_flag_errors(argv, flag):
    p = argparse.ArgumentParser()
    client.add_tls_arguments(p)
    with pytest.raises(ConfigError, match=flag):
        client.TLSOptions.from_args(p.parse_args(argv))


def test_plaintext_health_port_serves_only_health(pki):
    """Kubelet gRPC probes cannot speak TLS: --health-listen serves health in plaintext,
    and the Observer stays behind TLS (the plaintext port does not answer it)."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from agent.stats import DATAPATH_TRACING

    crt, key = pki["server"]
    a = InProcessAgent(tls_cert=crt, tls_key=key, health_listen="127.0.0.1:0").start()
    a.stats.set_datapath_state(DATAPATH_TRACING)  # what the probes wait for
    try:
        health_addr = a.server.ready_info()["health_listen"].replace("0.0.0.0", "127.0.0.1")
        with grpc.insecure_channel(health_addr) as ch:
            reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(),
                                                         timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            with pytest.raises(grpc.RpcError) as err:
                client.server_status(health_addr, None, timeout_s=5)
            assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        a.stop()


def test_health_listen_flag_errors():
    with pytest.raises(ConfigError, match="--health-listen"):
        config.ObserverSection(listen="127.0.0.1:0", health_listen="no-port")
