"""The real image, run as the DaemonSet says: deploy/Dockerfile built with podman on a Debian
base made here (podman_helpers.py: no registry, its own store, the machine's workarounds),
then started with the rendered DaemonSet's securityContext, volumes, env and args translated
by podman_helpers.daemonset_run (which reads deploy/podflow.yaml), in a lab node's network
namespace standing for hostNetwork, with a kube-apiserver stand-in (tests/enrich/fakeapi.py over
HTTPS, a service-account token and CA as the kubelet mounts them) for `--metadata=kubernetes`.

From the node (outside the container, as an operator on the host would): real flows between
the lab's pods with Kubernetes names, the gRPC health the probes use (NOT_SERVING while bcc
compiles, SERVING once tracing), the metrics port, and `podflow status`; the container really
runs with only the DaemonSet's capabilities, no_new_privs and the chosen seccomp mode; the
image's generic kernel headers build the programs too. With one capability fewer the agent
stops saying which one is missing; under this runtime's own default seccomp profile it does
what that profile allows (podman on Debian 12: refuses bpf(), the reason the chart ships
Unconfined) and names seccomp when it refuses; under a profile that refuses only
perf_event_open() it traces flows without drop reasons, saying why.

As root this FAILS when podman cannot build (never skips). Figures (build time, image size,
layers, podman run to first flow) go to /var/cache/podflow-test/last-run.json and, with -s,
to the terminal."""

from __future__ import annotations

import json
import os
import re
import ssl
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from agent.lab import Lab
from tests.enrich.fakeapi import FakeAPIServer
from tests.in_netns import call_in_netns
from podman_helpers import (CACHE_DIR, TEST_PREFIX, TEST_REPO, Kubelet, PodmanRun, build_image,
                            cgroups_for_runc, daemonset_run, podman, release_image,
                            rendered_daemonset)

pytestmark = pytest.mark.root

LAB_ID = f"dc{os.getpid() % 10000}"
RUN_ID = f"{os.getpid()}-{uuid.uuid4().hex[:6]}"
PODFLOW = str(Path(sys.executable).parent / "podflow")
API_PORT = 6443
FIGURES: dict[str, float | int | str] = {}

# Capabilities as numbered in linux/capability.h, for reading /proc/PID/status.
CAP_BITS = {"NET_ADMIN": 12, "SYS_ADMIN": 21, "SYS_RESOURCE": 24, "PERFMON": 38, "BPF": 39}


# ----------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module", autouse=True)
def runc_cgroups():
    """The cgroup tree runc needs, mounted for this module only where it is missing (a chroot
    without it: podman_helpers.cgroups_for_runc)."""
    with cgroups_for_runc() as made:
        yield made


@pytest.fixture(scope="module")
def image():
    """The image, built once for the module; its tag is removed afterwards (the layers of a
    good build stay cached in the test store)."""
    tag = f"{TEST_REPO}:{RUN_ID}"
    built = None
    try:
        built = build_image(tag)
        FIGURES.update(build_s=round(built.build_s, 1), base_s=round(built.base_s, 1),
                       cached_steps=built.cached_steps, image_mb=round(built.size_bytes / 1e6),
                       layers=built.layers)
        yield built
    finally:
        release_image(built or tag, keep_as_cache=built is not None)
        if FIGURES:
            (CACHE_DIR / "last-run.json").write_text(json.dumps(FIGURES, indent=1) + "\n")
            print(f"\npodflow image figures: {json.dumps(FIGURES)}")


def _api_certificate(directory: Path, ip: str) -> Path:
    """A self-signed certificate for `ip`: the API server's, and the CA in the token mount."""
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-days", "2", "-subj",
                    "/CN=kube-apiserver", "-addext", f"subjectAltName=IP:{ip}",
                    "-keyout", str(directory / "apiserver.key"),
                    "-out", str(directory / "apiserver.crt")],
                   check=True, capture_output=True, timeout=60)
    return directory / "apiserver.crt"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """One lab node with two pods and a Service, and an HTTPS API server in the node's
    network namespace serving the lab's objects. Yields (lab, node, client pod, cart pod,
    kubelet(name) -> the Kubelet stand-in for one container, with its own emptyDirs)."""
    work = tmp_path_factory.mktemp("cluster")
    with Lab(LAB_ID) as lab:
        node = lab.add_node("node-a", kind="bridge", pod_cidr="10.244.7.0/24")
        client = node.add_pod("shop", "client-1", labels={"app": "client"})
        cart = node.add_pod("shop", "cart-1", labels={"app": "cart"})
        cart.serve(8080)
        lab.add_service("shop", "cart", cluster_ip="10.96.7.12", port=80, backends=[(cart, 8080)])

        cert = _api_certificate(work, node.ip)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, work / "apiserver.key")
        api = FakeAPIServer(bookmark_interval_s=1.0, host=node.ip, ssl_context=context)
        api.port = API_PORT
        call_in_netns(node.netns, api.start)
        try:
            for obj in lab.metadata()["items"]:
                api.create(obj)
            listed = {o["metadata"]["name"] for o in lab.metadata()["items"]
                      if o["kind"] == "Namespace"}   # the lab lists its pods' namespaces
            for ns in sorted({"shop", "podflow"} - listed):
                api.create({"kind": "Namespace", "metadata": {"name": ns}})
            account = work / "serviceaccount"
            account.mkdir()
            (account / "token").write_text("podflow-agent-token")
            (account / "ca.crt").write_bytes(cert.read_bytes())
            (account / "namespace").write_text("podflow")
            yield lab, node, client, cart, lambda name: Kubelet(
                node_name=node.name, netns=node.netns, work_dir=work / name,
                api_host=node.ip, api_port=API_PORT, service_account_dir=account)
        finally:
            api.stop()


class Container:
    """A container started from a PodmanRun; removed on exit whatever happened."""

    def __init__(self, run: PodmanRun, name: str):
        self.run, self.name = run, name
        self.started_at = 0.0

    def __enter__(self) -> "Container":
        self.started_at = time.monotonic()
        podman(*self.run.argv)
        return self

    def __exit__(self, *exc_info) -> None:
        podman("rm", "-f", "-t", "0", self.name, check=False)

    def state(self) -> dict:
        out = podman("inspect", "--format", "{{json .State}}", self.name).stdout
        return json.loads(out)

    def logs(self) -> str:
        done = podman("logs", self.name, check=False)
        return done.stdout + done.stderr

    def wait_exit(self, timeout_s: float) -> int:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            state = self.state()
            if not state["Running"]:
                return int(state["ExitCode"])
            time.sleep(0.3)
        raise AssertionError(f"{self.name} still running after {timeout_s}s:\n{self.logs()[-3000:]}")

    def stop(self) -> int:
        podman("stop", "-t", str(self.run.grace_s), self.name, timeout_s=self.run.grace_s + 30)
        return int(self.state()["ExitCode"])


def _names(what: str) -> str:
    return f"{TEST_PREFIX}{RUN_ID}-{what}"


def _on_node(node, *cmd: str, timeout_s: float = 30) -> subprocess.CompletedProcess:
    return node.run(list(cmd), check=False, capture_output=True, text=True, timeout=timeout_s)


_HEALTH = ("import grpc, sys\n"
           "from grpc_health.v1 import health_pb2, health_pb2_grpc\n"
           "with grpc.insecure_channel(sys.argv[1]) as ch:\n"
           "    r = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=3)\n"
           "print(health_pb2.HealthCheckResponse.ServingStatus.Name(r.status))\n")
_METRICS = ("import sys, urllib.request\n"
            "print(urllib.request.urlopen(sys.argv[1], timeout=3).read().decode())\n")


def _health(node, port: int) -> str:
    done = _on_node(node, sys.executable, "-c", _HEALTH, f"127.0.0.1:{port}")
    return done.stdout.strip() if done.returncode == 0 else f"error: {done.stderr[-300:]}"


def _flows(node, port: int, *filters: str) -> list[dict]:
    done = _on_node(node, PODFLOW, "observe", "--server", f"127.0.0.1:{port}", "--all",
                    "-o", "jsonl", *filters)
    return [json.loads(line)["flow"] for line in done.stdout.splitlines()
            if line.strip() and "flow" in json.loads(line)]


def _proc_status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        return dict(line.rstrip("\n").split(":\t", 1) for line in fh if ":\t" in line)


# ----------------------------------------------------------------------------- tests

def _timestamp(text: str) -> float:
    """Seconds since the epoch of a protobuf JSON Timestamp (RFC 3339, Z, up to ns)."""
    from google.protobuf.timestamp_pb2 import Timestamp

    stamp = Timestamp()
    stamp.FromJsonString(text)
    return stamp.seconds + stamp.nanos / 1e9


def test_the_image_runs_as_the_daemonset_says_and_sees_the_lab(image, cluster):
    lab, node, client, cart, kubelet = cluster
    run = daemonset_run(image.tag, kubelet("full"), _names("full"))
    assert run.env["NODE_NAME"] == "node-a"  # downward API
    port = run.probe_port
    # Traffic from before `podman run` on: the first record tells when the agent first saw it.
    stop_traffic = threading.Event()

    def traffic():
        while not stop_traffic.is_set():
            client.request(cart.ip, 8080, timeout_s=1.0)
            stop_traffic.wait(0.2)

    sender = threading.Thread(target=traffic, daemon=True)
    sender.start()
    started_wall = time.time()
    try:
        with Container(run, _names("full")) as agent:
            serving_at, flows, health_seen = None, [], []
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline and not flows:
                state = agent.state()
                assert state["Running"], f"agent exited {state['ExitCode']}:\n{agent.logs()[-4000:]}"
                if serving_at is None:
                    health = _health(node, port)
                    if not health.startswith("error") and health not in health_seen[-1:]:
                        health_seen.append(health)
                    if health == "SERVING":
                        serving_at = time.monotonic()
                        assert "datapath tracing" in agent.logs()  # readiness means tracing
                if serving_at is not None:
                    flows = _flows(node, port, "--from-pod", "shop/client-1",
                                   "--to-pod", "shop/cart-1")
                time.sleep(0.3)
            assert flows, f"no flow from client-1 to cart-1:\n{agent.logs()[-4000:]}"
            # the probes' answer while bcc compiled, then once the programs were attached
            assert health_seen == ["NOT_SERVING", "SERVING"], health_seen
            first_record = min(_timestamp(f["time"]) for f in flows)
            FIGURES.update(run_to_serving_s=round(serving_at - agent.started_at, 1),
                           run_to_first_flow_s=round(first_record - started_wall, 1))
            _check_the_running_agent(agent, node, client, port)
    finally:
        stop_traffic.set()
        sender.join()


def _check_the_running_agent(agent: "Container", node, client, port: int) -> None:
    """What the container runs with, and what the node sees of it."""
    # Only the DaemonSet's capabilities (as far as this machine's own bounding set holds
    # them: CAP_SYS_RESOURCE is not in it here, and unused on kernels >= 5.11), no_new_privs,
    # and the seccomp mode the chart chose (Seccomp: 0 none, 2 a filter).
    status = _proc_status(int(agent.state()["Pid"]))
    added = rendered_daemonset()["spec"]["template"]["spec"]["containers"][0][
        "securityContext"]["capabilities"]["add"]
    bounding = int(_proc_status(os.getpid())["CapBnd"], 16)
    assert int(status["CapEff"], 16) == sum(1 << CAP_BITS[c] for c in added) & bounding
    assert status["NoNewPrivs"] == "1"
    assert status["Seccomp"] == "0"  # Unconfined, the chart's documented choice

    # Flows carry the names the API server gave (--metadata=kubernetes over HTTPS).
    flow = _flows(node, port, "--from-pod", "shop/client-1", "--to-pod", "shop/cart-1")[0]
    assert flow["source"]["pod_name"] == "client-1"
    assert flow["destination"]["pod_name"] == "cart-1"
    assert flow["node_name"] == "node-a"

    # `podflow status` from the node, outside the container.
    done = _on_node(node, PODFLOW, "status", "--server", f"127.0.0.1:{port}", "-o", "json")
    assert done.returncode == 0, done.stderr
    server = json.loads(done.stdout)
    text = json.dumps(server)
    assert "node-a" in text and client.host_ifname in text and "cni0" in text
    assert '"kubernetes"' in text
    assert server["status"]["datapath_state"] == "tracing"
    assert "interface_notes" not in server["status"]  # nothing runs before podflow here

    # The metrics port the ServiceMonitor scrapes.
    ports = {p["name"]: p["containerPort"] for p in rendered_daemonset()["spec"]["template"][
        "spec"]["containers"][0]["ports"]}
    metrics = _on_node(node, sys.executable, "-c", _METRICS,
                       f"http://127.0.0.1:{ports['metrics']}/metrics")
    assert metrics.returncode == 0, metrics.stderr
    assert "podflow_flows_total{" in metrics.stdout
    assert 'source_namespace="shop"' in metrics.stdout

    logs = agent.logs()
    assert "headers: node-modules" in logs  # the node's headers through the two mounts
    # SIGTERM within terminationGracePeriodSeconds: detach and exit cleanly.
    assert agent.stop() == 0, agent.logs()[-3000:]


@pytest.mark.parametrize("missing", ["BPF", "PERFMON"])
def test_one_capability_fewer_stops_the_agent_naming_it(image, cluster, missing):
    """The DaemonSet less one capability: the agent exits saying exactly which one is
    missing (and what it is for), nothing else."""
    _lab, _node, _client, _cart, kubelet = cluster

    def drop(container):
        container["securityContext"]["capabilities"]["add"].remove(missing)

    name = _names(f"no-{missing.lower()}")
    run = daemonset_run(image.tag, kubelet(name), name, edit_container=drop)
    with Container(run, name) as agent:
        code = agent.wait_exit(120)
        logs = agent.logs()
    assert code == 2, logs[-3000:]
    assert f"podflow agent: missing CAP_{missing}: the datapath needs root, or CAP_BPF + " \
           "CAP_NET_ADMIN + CAP_PERFMON" in logs, logs[-3000:]
    assert "Traceback" not in logs, logs[-3000:]


def _runtime_default_allows(syscall: str, capability: str) -> bool:
    """Whether this machine's podman default seccomp profile (containers-common's
    seccomp.json) lets `syscall` through for a container holding `capability` and not
    CAP_SYS_ADMIN: an ALLOW rule naming it whose `includes.caps` (if any) is that cap."""
    profile = json.loads(Path("/usr/share/containers/seccomp.json").read_text())
    caps = {capability}
    allowed = False
    for rule in profile["syscalls"]:
        if syscall not in rule.get("names", []):
            continue
        needs = set(rule.get("includes", {}).get("caps", []))
        skipped_by = set(rule.get("excludes", {}).get("caps", []))
        applies = needs <= caps and not (skipped_by & caps)
        if applies and rule["action"] == "SCMP_ACT_ERRNO":
            return False
        if applies and rule["action"] == "SCMP_ACT_ALLOW":
            allowed = True
    return allowed


def test_under_this_runtimes_default_profile_the_agent_does_what_it_allows(image, cluster):
    """The reason the chart ships Unconfined, checked against the runtime here: with
    seccompProfile RuntimeDefault, a profile that keeps bpf() for CAP_SYS_ADMIN (Debian 12's
    podman) stops the agent at start, naming seccomp and its mode (not kernel headers); one
    that keeps only perf_event_open() leaves it tracing without drops."""
    _lab, node, _client, _cart, kubelet = cluster

    def runtime_default(container):
        container["securityContext"]["seccompProfile"] = {"type": "RuntimeDefault"}

    name = _names("runtime-default")
    run = daemonset_run(image.tag, kubelet(name), name, edit_container=runtime_default)
    refuses_bpf = not _runtime_default_allows("bpf", "CAP_BPF")
    with Container(run, name) as agent:
        if refuses_bpf:
            code = agent.wait_exit(120)
            logs = agent.logs()
            assert code == 2, logs[-3000:]
            assert re.search(r"podflow agent: bpf\(\) was refused \((EPERM|ENOSYS)\) although "
                             r"the agent holds CAP_BPF: a seccomp filter is in force "
                             r"\(/proc/self/status Seccomp: 2, filter mode", logs), logs[-3000:]
            assert "headers" not in logs.split("podflow agent: ", 1)[1], logs[-3000:]
            assert "Traceback" not in logs, logs[-3000:]
            # RuntimeDefault meant the runtime's own filter: podman got no seccomp option.
            assert not any(a.startswith("--security-opt=seccomp") for a in run.argv)
        else:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and _health(node, run.probe_port) != "SERVING":
                assert agent.state()["Running"], agent.logs()[-3000:]
                time.sleep(0.5)
            assert agent.stop() == 0, agent.logs()[-3000:]


def test_the_images_generic_headers_compile_the_agent(image, cluster):
    """A node without headers (the entrypoint finds none of its mounts' trees): the image's
    generic headers, trimmed to this architecture, still build and load the programs."""
    _lab, node, _client, _cart, kubelet = cluster

    def no_node_headers(container):
        container["env"] += [{"name": "PODFLOW_HOST_MODULES", "value": "/nonexistent"},
                             {"name": "PODFLOW_HOST_USR_SRC", "value": "/nonexistent"}]

    name = _names("fallback")
    run = daemonset_run(image.tag, kubelet(name), name, edit_container=no_node_headers)
    with Container(run, name) as agent:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert agent.state()["Running"], agent.logs()[-4000:]
            done = _on_node(node, PODFLOW, "status", "--server", f"127.0.0.1:{run.probe_port}",
                            "-o", "json")
            if done.returncode == 0 and "cni0" in done.stdout:
                break
            time.sleep(0.5)
        else:
            raise AssertionError(f"agent not tracing:\n{agent.logs()[-4000:]}")
        logs = agent.logs()
        assert "headers: fallback" in logs
        assert ("warning: using generic headers, not the node's: the node's /lib/modules is "
                "not mounted in the pod") in logs
        assert agent.stop() == 0, agent.logs()[-3000:]


def _profile_like_containers_common_0_60(directory: Path) -> str:
    """This runtime's default profile changed as containers/common 0.60 (2024) changed its
    own: bpf() allowed with CAP_BPF, perf_event_open() still only with CAP_SYS_ADMIN (what
    podman 5 and CRI-O ran until container-libs#424, October 2025). Written as a Localhost
    profile under `directory`; returns its path relative to it."""
    profile = json.loads(Path("/usr/share/containers/seccomp.json").read_text())
    for rule in profile["syscalls"]:
        if "bpf" in rule["names"] and rule["action"] == "SCMP_ACT_ERRNO":
            rule.setdefault("excludes", {})["caps"] = ["CAP_SYS_ADMIN", "CAP_BPF"]
    profile["syscalls"].append({"names": ["bpf"], "action": "SCMP_ACT_ALLOW",
                                "includes": {"caps": ["CAP_BPF"]}, "excludes": {}})
    (directory / "profiles").mkdir(parents=True, exist_ok=True)
    (directory / "profiles/bpf-not-perf.json").write_text(json.dumps(profile))
    return "profiles/bpf-not-perf.json"


def test_a_profile_that_refuses_only_perf_event_open(image, cluster, tmp_path):
    """A Localhost profile (through the same translation) shaped like containers/common
    0.60's default: the agent traces flows without drop reasons, saying what was refused and
    why (seccomp), counts `drops_disabled`, is ready, and stops cleanly; never a traceback."""
    _lab, node, _client, _cart, kubelet = cluster
    relative = _profile_like_containers_common_0_60(tmp_path)

    def localhost(container):
        container["securityContext"]["seccompProfile"] = {"type": "Localhost",
                                                          "localhostProfile": relative}

    name = _names("bpf-not-perf")
    stand_in = kubelet(name)
    stand_in.seccomp_root = tmp_path
    run = daemonset_run(image.tag, stand_in, name, edit_container=localhost)
    assert f"--security-opt=seccomp={tmp_path / relative}" in run.argv
    with Container(run, name) as agent:
        deadline = time.monotonic() + 120
        while _health(node, run.probe_port) != "SERVING":
            assert agent.state()["Running"], agent.logs()[-3000:]
            assert time.monotonic() < deadline, agent.logs()[-3000:]
            time.sleep(0.5)
        done = _on_node(node, PODFLOW, "status", "--server", f"127.0.0.1:{run.probe_port}",
                        "-o", "json")
        status = json.loads(done.stdout)["status"]
        assert status["datapath_state"] == "tracing"
        assert status["datapath_errors"]["drops_disabled"] == "1"
        logs = agent.logs()
        assert "drops are off, flows are traced without them:" in logs, logs[-3000:]
        # this runtime's profiles answer ENOSYS (their default errno), others EPERM
        assert re.search(r"perf_event_open\(\) was refused \((EPERM|ENOSYS)\) although the "
                         r"agent holds CAP_PERFMON: a seccomp filter is in force", logs), \
            logs[-3000:]
        assert agent.stop() == 0, agent.logs()[-3000:]
        assert "Traceback" not in agent.logs(), agent.logs()[-3000:]
