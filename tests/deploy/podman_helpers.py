"""podflow's image built and run with this machine's podman, for the tests that keep the
container real (test_deploy_container.py): a Debian base made with debootstrap (no registry is
reachable), `podman build` of deploy/Dockerfile, and `podman run` of the result with exactly
what the rendered DaemonSet (deploy/podflow.yaml) asks the kubelet for (daemonset_run).

Everything lives in a podman store of its own, never the host's (`podman images` on this
machine shows none of it):

    /var/cache/podflow-test/          CACHE_DIR, kept between runs (`rm -rf` it to start cold)
      containers.conf storage.conf    the configuration below, used only through
                                      CONTAINERS_CONF / CONTAINERS_STORAGE_CONF in podman_env()
      storage/                        images: the base, tagged as the Dockerfile's FROM
                                      (docker.io/library/debian:bookworm-slim), and the last
                                      good build (CACHE_TAG, CACHE_TAG-stageN for each build
                                      stage) so its layers stay cached; every other tag and
                                      every container a test makes is removed
      lock                            flock held while the base is made and while building
    /run/podflow-test/                podman's run state for that store (tmpfs)

What this machine needs, each kept here and nowhere else:
- runtime = "runc": the runtime scripts/setup-host.sh installs (Debian's podman would take
  crun first when both are there); default_ulimits nofile/nproc: without them runc fails to
  start any container ("error setting rlimit type 7: operation not permitted": podman's
  default nofile exceeds this machine's hard limit, 20000); cgroup_manager = "cgroupfs" and
  events_logger = "file": no systemd here (PID 1 is not systemd; cgroup v1), and the systemd
  cgroup manager refuses to run;
- this machine's own capability bounding set lacks CAP_SYS_RESOURCE, so no container gets it
  (the test compares the agent's capabilities with the DaemonSet's within that set);
- `podman build --network=host`: no CNI plugins or netavark are installed, so RUN steps use
  the host's network (apt from deb.debian.org, pip from PyPI);
- the base gets the host's CA certificates (/usr/local/share/ca-certificates/*.crt and the
  bundle): TLS to PyPI goes through a proxy whose CA only the host trusts. They stay in the
  base image (and so in the build stages) and nowhere in the repository.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "deploy" / "Dockerfile"
MANIFEST = REPO / "deploy" / "podflow.yaml"

CACHE_DIR = Path(os.environ.get("PODFLOW_TEST_CACHE", "/var/cache/podflow-test"))
RUN_DIR = Path("/run/podflow-test")
# The Dockerfile's FROM (ARG DEBIAN_IMAGE=debian:bookworm-slim), fully qualified as podman
# resolves the short name (shortnames.conf: debian -> docker.io/library/debian).
BASE_TAG = "docker.io/library/debian:bookworm-slim"
# The newest build that passed, kept so the next session's build reuses its layers.
CACHE_TAG = "localhost/podflow-test-cache:latest"
DEBIAN_MIRROR = "http://deb.debian.org/debian"

CONTAINERS_CONF = """\
# Written by tests/deploy/podman_helpers.py for podflow's container tests only.
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "{run}/events.log"
tmp_dir = "{run}/libpod"
"""

STORAGE_CONF = """\
# Written by tests/deploy/podman_helpers.py for podflow's container tests only.
[storage]
driver = "overlay"
graphroot = "{cache}/storage"
runroot = "{run}/storage"
"""

# debian:bookworm-slim leaves these out of every package it installs; the base does the same
# so the image measured here is the image users build.
SLIM_DPKG_EXCLUDES = """\
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
"""

# And apt keeps no package cache and no downloaded packages in a layer.
SLIM_APT_CONF = """\
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
Acquire::Languages "none";
Acquire::GzipIndexes "true";
Apt::AutoRemove::SuggestsImportant "false";
"""

# A label on the base naming its recipe: a base made by an older recipe is made again.
BASE_RECIPE = hashlib.sha256((SLIM_DPKG_EXCLUDES + SLIM_APT_CONF + "3").encode()).hexdigest()[:12]
BASE_LABEL = "org.podflow.test-base-recipe"


CGROUP_ROOT = "/sys/fs/cgroup"


def _cgroup_mounts(mountinfo: str) -> list[tuple[str, str, str, str]]:
    """(mount point, fs type, source, super options) of the cgroup tree in a mountinfo text:
    the tmpfs holding a v1 hierarchy, each cgroup/cgroup2 hierarchy."""
    out = []
    for line in mountinfo.splitlines():
        fields = line.split()
        sep = fields.index("-")
        point, fstype, source, opts = fields[4], fields[sep + 1], fields[sep + 2], fields[sep + 3]
        if point == CGROUP_ROOT or point.startswith(CGROUP_ROOT + "/"):
            if fstype in ("tmpfs", "cgroup", "cgroup2"):
                out.append((point, fstype, source, opts))
    return out


@contextlib.contextmanager
def cgroups_for_runc():
    """runc needs the cgroup tree mounted. A machine booted normally has it (systemd or the
    init mounts it); a chroot made of non-recursive bind mounts (../shared/tools'
    fresh-machine check) does not, and runc then fails with "no cgroup mount found in
    mountinfo". Only then: mount the same hierarchies init has (a cgroup v1 hierarchy mounted
    twice with the same options is the same hierarchy; cgroup2 as Debian 12 boots when init
    has none), and unmount them afterwards. Refused where the mount would propagate back to
    the host (a shared /sys)."""
    with open("/proc/self/mountinfo", encoding="utf-8") as fh:
        own = fh.read()
    if any(fstype in ("cgroup", "cgroup2") for _, fstype, _, _ in _cgroup_mounts(own)):
        yield []
        return
    sys_line = next((line for line in own.splitlines() if line.split()[4] == "/sys"), "")
    if "shared:" in sys_line:
        raise PodmanError("no cgroup tree is mounted here and /sys is a shared mount: mounting "
                          "one would propagate to the host; mount it before the tests")
    try:
        with open("/proc/1/mountinfo", encoding="utf-8") as fh:
            wanted = _cgroup_mounts(fh.read())
    except OSError:
        wanted = []
    if not any(fstype in ("cgroup", "cgroup2") for _, fstype, _, _ in wanted):
        wanted = [(CGROUP_ROOT, "cgroup2", "cgroup2", "rw")]
    made: list[str] = []
    try:
        for point, fstype, source, opts in wanted:
            os.makedirs(point, exist_ok=True)
            options = ",".join(o for o in opts.split(",") if o not in ("rw", "ro"))
            subprocess.run(["mount", "-t", fstype, *(["-o", options] if options else []),
                            source, point], check=True, capture_output=True, timeout=30)
            made.append(point)
        yield made
    finally:
        for point in reversed(made):
            subprocess.run(["umount", point], check=False, capture_output=True, timeout=30)


class PodmanError(AssertionError):
    """A podman step failed; the message has the command and its output. An AssertionError
    so that, as root, a machine that cannot build fails the test instead of skipping it."""


def podman_env() -> dict[str, str]:
    """The environment every podman call here runs with: this module's store and config."""
    return {**os.environ,
            "CONTAINERS_CONF": str(CACHE_DIR / "containers.conf"),
            "CONTAINERS_STORAGE_CONF": str(CACHE_DIR / "storage.conf")}


def write_config() -> None:
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    for name, text in (("containers.conf", CONTAINERS_CONF), ("storage.conf", STORAGE_CONF)):
        path = CACHE_DIR / name
        content = text.format(cache=CACHE_DIR, run=RUN_DIR)
        if not path.exists() or path.read_text() != content:
            path.write_text(content)


def podman(*args: str, check: bool = True, timeout_s: float = 600,
           merge_output: bool = False) -> subprocess.CompletedProcess:
    """`podman ARGS` on the test store; PodmanError with its output when it fails.
    `merge_output`: stderr into stdout, in order (a build reports its steps on both)."""
    if shutil.which("podman") is None:
        raise PodmanError("podman is not installed (Debian packages podman buildah runc "
                          "debootstrap; scripts/setup-host.sh installs them)")
    done = subprocess.run(["podman", *args], env=podman_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT if merge_output else subprocess.PIPE,
                          text=True, timeout=timeout_s)
    done.stderr = done.stderr or ""
    if check and done.returncode != 0:
        raise PodmanError(f"`podman {' '.join(args)}` exited {done.returncode}:\n"
                          f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done


@contextlib.contextmanager
def store_lock():
    """Serialises base creation, builds and pruning between test sessions (other sessions on
    this machine use the same store)."""
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with open(CACHE_DIR / "lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def image_exists(ref: str) -> bool:
    return podman("image", "exists", ref, check=False).returncode == 0


def ensure_base() -> float:
    """The Dockerfile's FROM image in the test store, made once with debootstrap (bookworm,
    minbase, slimmed like debian:bookworm-slim) and kept. Returns the seconds it took (0 when
    cached)."""
    write_config()
    podman("version")  # a podman that cannot run fails here, before a debootstrap
    with store_lock():
        if image_exists(BASE_TAG):
            label = podman("image", "inspect", "--format",
                           "{{index .Labels \"" + BASE_LABEL + "\"}}", BASE_TAG).stdout.strip()
            if label == BASE_RECIPE:
                return 0.0
            podman("rmi", BASE_TAG, check=False)  # an older recipe: make it again
        if shutil.which("debootstrap") is None:
            raise PodmanError("debootstrap is not installed (scripts/setup-host.sh)")
        started = time.monotonic()
        work = Path(tempfile.mkdtemp(prefix="base-", dir=CACHE_DIR))
        try:
            rootfs = work / "rootfs"
            done = subprocess.run(["debootstrap", "--variant=minbase", "bookworm", str(rootfs),
                                   DEBIAN_MIRROR], capture_output=True, text=True, timeout=1800)
            if done.returncode != 0:
                raise PodmanError(f"debootstrap failed ({done.returncode}):\n{done.stdout[-3000:]}"
                                  f"\n{done.stderr[-3000:]}")
            _slim_and_trust(rootfs)
            tar = subprocess.Popen(["tar", "-C", str(rootfs), "--numeric-owner", "-c", "."],
                                   stdout=subprocess.PIPE)
            imported = subprocess.run(["podman", "import", "--change", 'CMD ["bash"]',
                                       "--change", f"LABEL {BASE_LABEL}={BASE_RECIPE}", "-",
                                       BASE_TAG], stdin=tar.stdout, env=podman_env(),
                                      capture_output=True, text=True, timeout=600)
            tar.stdout.close()
            tar.wait()
            if imported.returncode != 0 or tar.returncode != 0:
                raise PodmanError(f"podman import of the base failed:\n{imported.stderr[-3000:]}")
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return time.monotonic() - started


def _slim_and_trust(rootfs: Path) -> None:
    """What debian:bookworm-slim has that debootstrap does not: the updates and security
    suites, no documentation, no package cache; plus this host's CA certificates."""
    (rootfs / "etc/apt/sources.list").write_text(
        f"deb {DEBIAN_MIRROR} bookworm main\n"
        f"deb {DEBIAN_MIRROR} bookworm-updates main\n"
        "deb http://deb.debian.org/debian-security bookworm-security main\n")
    (rootfs / "etc/dpkg/dpkg.cfg.d/slim").write_text(SLIM_DPKG_EXCLUDES)
    (rootfs / "etc/apt/apt.conf.d/slim").write_text(SLIM_APT_CONF)
    for sub in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for path in (rootfs / sub).glob("*"):
            if path.is_file():
                path.unlink()
    for doc in (rootfs / "usr/share/doc").glob("*/*"):
        if doc.name != "copyright":
            shutil.rmtree(doc) if doc.is_dir() and not doc.is_symlink() else doc.unlink()
    for sub in ("usr/share/man", "usr/share/info", "usr/share/locale"):
        shutil.rmtree(rootfs / sub, ignore_errors=True)
        (rootfs / sub).mkdir()
    local = rootfs / "usr/local/share/ca-certificates"
    local.mkdir(parents=True, exist_ok=True)
    for cert in Path("/usr/local/share/ca-certificates").glob("*.crt"):
        shutil.copy2(cert, local / cert.name)
    # The host's whole bundle too, as a local certificate: a build stage that installs
    # ca-certificates rebuilds the bundle from Mozilla's set plus these files, and a host
    # whose proxy CA is only in its bundle (a fresh root with the bundle copied in) would
    # otherwise lose it there. update-ca-certificates appends a local file whole.
    shutil.copy2("/etc/ssl/certs/ca-certificates.crt", local / "podflow-test-host-bundle.crt")
    (rootfs / "etc/ssl/certs").mkdir(parents=True, exist_ok=True)
    shutil.copy2("/etc/ssl/certs/ca-certificates.crt", rootfs / "etc/ssl/certs/ca-certificates.crt")


# Containers and tags the tests make are named TEST_PREFIX<pid>-...: what a killed session
# left is recognised by its dead pid and removed by the next one.
TEST_PREFIX = "podflow-test-"
TEST_REPO = "localhost/podflow-test"


def remove_leftovers() -> list[str]:
    """Remove containers and image tags of test sessions whose process is gone."""
    def dead(name: str) -> bool:
        pid = name.split("-", 1)[0]
        return pid.isdigit() and not Path(f"/proc/{pid}").exists()

    removed = []
    names = podman("ps", "-a", "--format", "{{.Names}}", check=False).stdout.split()
    for name in names:
        if name.startswith(TEST_PREFIX) and dead(name[len(TEST_PREFIX):]):
            podman("rm", "-f", "-t", "0", name, check=False)
            removed.append(name)
    tags = podman("images", "--format", "{{.Repository}}:{{.Tag}}", "--filter",
                  f"reference={TEST_REPO}", check=False).stdout.split()
    for tag in tags:
        if tag.startswith(f"{TEST_REPO}:") and dead(tag.split(":", 1)[1]):
            podman("rmi", tag, check=False)
            removed.append(tag)
    return removed


# ----------------------------------------------------------------------------- build

@dataclass
class BuiltImage:
    tag: str
    build_s: float
    base_s: float          # making the base (0 when cached)
    cached_steps: int      # steps podman took from its layer cache
    size_bytes: int
    layers: int
    stage_images: dict[int, str]  # build stage number -> the image its last step made


def _stage_images(build_output: str) -> dict[int, str]:
    """The image each stage of a build ended with, from `podman build`'s own report: the
    first "--> ID" after a stage's last step ("[2/5] STEP 6/6: ..."). Stages built on demand
    interleave their reports, but a step's result follows the step."""
    stages: dict[int, str] = {}
    waiting_for = None
    for line in build_output.splitlines():
        match = re.match(r"\[(\d+)/\d+\] STEP (\d+)/(\d+):", line)
        if match:
            stage, step, steps = (int(g) for g in match.groups())
            waiting_for = stage if step == steps else None
        elif line.startswith("--> ") and waiting_for is not None:
            image = line.split()[-1]
            if re.fullmatch(r"[0-9a-f]{11,64}", image):
                stages[waiting_for] = image
                waiting_for = None
    return stages


def build_image(tag: str) -> BuiltImage:
    """`podman build` of deploy/Dockerfile from the repository root, as a user would (the
    Dockerfile's own .dockerignore, docker format so SHELL is kept), tagged `tag`. Reuses the
    layers of the last good build (CACHE_TAG)."""
    base_s = ensure_base()
    with store_lock():
        remove_leftovers()
        started = time.monotonic()
        done = podman("build", "--pull=never", "--network=host", "--format=docker", "--layers",
                      "--ignorefile", str(DOCKERFILE.parent / "Dockerfile.dockerignore"),
                      "-f", str(DOCKERFILE), "-t", tag, str(REPO), timeout_s=3600,
                      merge_output=True)
        build_s = time.monotonic() - started
    inspect = podman("image", "inspect", "--format", "{{.Size}} {{len .RootFS.Layers}}", tag)
    size, layers = (int(x) for x in inspect.stdout.split())
    return BuiltImage(tag, build_s, base_s, done.stdout.count("Using cache"), size, layers,
                      _stage_images(done.stdout))


def release_image(built: BuiltImage | str, keep_as_cache: bool) -> None:
    """Remove the test's tag. When the build was good, CACHE_TAG (and CACHE_TAG-stageN for
    each build stage, whose layers are no ancestors of the final image) move to it first so
    its layers stay cached; then images no tag leads to any more (older builds) are pruned."""
    tag = built if isinstance(built, str) else built.tag
    with store_lock():
        if keep_as_cache and image_exists(tag) and not isinstance(built, str):
            listed = podman("images", "--format", "{{.Repository}}:{{.Tag}}", "--filter",
                            f"reference={CACHE_TAG.split(':')[0]}", check=False).stdout.split()
            for old in listed:  # the previous build's stage tags (`untag` keeps children)
                if old.startswith(f"{CACHE_TAG}-stage"):
                    podman("untag", old, old, check=False)
            podman("tag", tag, CACHE_TAG, check=False)
            for stage, image in built.stage_images.items():
                podman("tag", image, f"{CACHE_TAG}-stage{stage}", check=False)
        # `podman rmi NAME` of an image with other names removes only that name (`podman
        # untag IMAGE` without names would remove CACHE_TAG too).
        podman("rmi", tag, check=False)
        podman("image", "prune", "-f", check=False)


# ----------------------------------------------------------------------------- run

class TranslationError(AssertionError):
    """The DaemonSet asks for something this translation does not know: extend it rather
    than let a setting pass silently."""


def rendered_daemonset(manifest: Path = MANIFEST) -> dict:
    docs = [d for d in yaml.safe_load_all(manifest.read_text(encoding="utf-8")) if d]
    daemonsets = [d for d in docs if d["kind"] == "DaemonSet"]
    if len(daemonsets) != 1:
        raise TranslationError(f"{manifest}: expected one DaemonSet, found {len(daemonsets)}")
    return daemonsets[0]


@dataclass
class Kubelet:
    """What the kubelet of the node the pod lands on provides besides the pod spec."""

    node_name: str
    netns: str                      # the node's network namespace (hostNetwork)
    work_dir: Path                  # emptyDir volumes are created here
    api_host: str = ""              # KUBERNETES_SERVICE_HOST/PORT; empty: not set
    api_port: int = 0
    service_account_dir: Path | None = None   # token, ca.crt, namespace
    seccomp_root: Path = Path("/var/lib/kubelet/seccomp")
    pod_name: str = "podflow-agent-test"
    namespace: str = "podflow"


@dataclass
class PodmanRun:
    argv: list[str]                 # `podman run ...` arguments, image and args included
    grace_s: int                    # terminationGracePeriodSeconds, for `podman stop -t`
    probe_port: int                 # the gRPC probes' port
    env: dict[str, str] = field(default_factory=dict)


_SECURITY_CONTEXT_KEYS = {"privileged", "allowPrivilegeEscalation", "readOnlyRootFilesystem",
                          "runAsUser", "runAsGroup", "runAsNonRoot", "capabilities",
                          "seccompProfile"}
# Pod and container fields that change nothing for a container on one node here.
_POD_IGNORED = {"serviceAccountName", "dnsPolicy", "terminationGracePeriodSeconds",
                "nodeSelector", "tolerations", "affinity", "priorityClassName",
                "imagePullSecrets", "containers", "volumes", "hostNetwork"}
_CONTAINER_IGNORED = {"name", "image", "imagePullPolicy", "ports", "startupProbe",
                      "livenessProbe", "readinessProbe", "args", "env", "resources",
                      "securityContext", "volumeMounts"}


def daemonset_run(image: str, kubelet: Kubelet, name: str, daemonset: dict | None = None,
                  edit_container=None) -> PodmanRun:
    """The `podman run` that does what the kubelet and a CRI runtime would do with the
    DaemonSet's pod on `kubelet`'s node: its securityContext, volumes and mounts, env (the
    downward API and the service account included), args with $(VAR) expansion, resource
    limits, in the node's network namespace. `image` replaces the manifest's image (built
    here, never pulled). `edit_container(container)` may change a copy of the container
    first (a test removing one capability). Anything unknown raises TranslationError."""
    ds = daemonset or rendered_daemonset()
    pod = ds["spec"]["template"]["spec"]
    unknown = set(pod) - _POD_IGNORED - {"hostPID", "hostIPC"}
    if unknown:
        raise TranslationError(f"pod spec fields not translated: {sorted(unknown)}")
    if len(pod["containers"]) != 1 or pod.get("initContainers"):
        raise TranslationError("expected exactly one container and no init containers")
    container = yaml.safe_load(yaml.safe_dump(pod["containers"][0]))  # a copy to edit
    if edit_container is not None:
        edit_container(container)
    unknown = set(container) - _CONTAINER_IGNORED
    if unknown:
        raise TranslationError(f"container fields not translated: {sorted(unknown)}")

    argv = ["run", "--detach", f"--name={name}", "--pull=never",
            f"--hostname={kubelet.node_name}"]
    if not pod.get("hostNetwork"):
        raise TranslationError("only hostNetwork pods are translated (the agent's kind)")
    argv.append(f"--network=ns:/run/netns/{kubelet.netns}")
    if pod.get("hostPID"):
        argv.append("--pid=host")
    if pod.get("hostIPC"):
        argv.append("--ipc=host")

    argv += _security_context(container.get("securityContext", {}), kubelet)
    argv += _resources(container.get("resources", {}))

    env = _env(container.get("env", []), kubelet)
    if kubelet.api_host:
        env.update({"KUBERNETES_SERVICE_HOST": kubelet.api_host,
                    "KUBERNETES_SERVICE_PORT": str(kubelet.api_port),
                    "KUBERNETES_SERVICE_PORT_HTTPS": str(kubelet.api_port),
                    "KUBERNETES_PORT": f"tcp://{kubelet.api_host}:{kubelet.api_port}"})
    for key, value in env.items():
        argv.append(f"--env={key}={value}")

    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        argv += _mount(mount, volumes[mount["name"]], kubelet)
    if kubelet.service_account_dir is not None:
        argv.append(f"--volume={kubelet.service_account_dir}:"
                    "/var/run/secrets/kubernetes.io/serviceaccount:ro")

    argv.append(image)
    argv += [_expand(arg, env) for arg in container.get("args", [])]
    probe = container.get("readinessProbe", {}).get("grpc", {}).get("port", 0)
    return PodmanRun(argv, int(pod.get("terminationGracePeriodSeconds", 30)), int(probe), env)


def _security_context(sc: dict, kubelet: Kubelet) -> list[str]:
    unknown = set(sc) - _SECURITY_CONTEXT_KEYS
    if unknown:
        raise TranslationError(f"securityContext fields not translated: {sorted(unknown)}")
    argv = []
    if sc.get("privileged"):
        argv.append("--privileged")
    caps = sc.get("capabilities", {})
    if set(caps) - {"add", "drop"}:
        raise TranslationError(f"capabilities fields not translated: {sorted(caps)}")
    for cap in caps.get("drop", []):
        argv.append("--cap-drop=all" if cap == "ALL" else f"--cap-drop=CAP_{cap}")
    for cap in caps.get("add", []):
        argv.append(f"--cap-add=CAP_{cap}")
    # Kubernetes sets no_new_privs unless allowPrivilegeEscalation is true (or privileged).
    if sc.get("allowPrivilegeEscalation") is False:
        argv.append("--security-opt=no-new-privileges")
    if sc.get("readOnlyRootFilesystem"):
        # podman would add its own tmpfs on /tmp, /run, /var/tmp: a pod has none.
        argv += ["--read-only", "--read-only-tmpfs=false"]
    if "runAsUser" in sc or "runAsGroup" in sc:
        argv.append(f"--user={sc.get('runAsUser', 0)}:{sc.get('runAsGroup', sc.get('runAsUser', 0))}")
    if sc.get("runAsNonRoot") and sc.get("runAsUser", 0) == 0:
        raise TranslationError("runAsNonRoot with uid 0: the kubelet would refuse to start it")
    profile = sc.get("seccompProfile", {}).get("type", "RuntimeDefault")
    if profile == "Unconfined":
        argv.append("--security-opt=seccomp=unconfined")
    elif profile == "Localhost":
        path = kubelet.seccomp_root / sc["seccompProfile"]["localhostProfile"]
        argv.append(f"--security-opt=seccomp={path}")
    elif profile != "RuntimeDefault":  # RuntimeDefault: the runtime's own profile, podman's
        raise TranslationError(f"seccompProfile type {profile!r}")
    return argv


def _resources(resources: dict) -> list[str]:
    """Limits become the container's cgroup limits, as the kubelet sets them."""
    limits = resources.get("limits", {})
    argv = []
    if "memory" in limits:
        argv.append(f"--memory={_bytes(limits['memory'])}")
    if "cpu" in limits:
        cpu = str(limits["cpu"])
        argv.append(f"--cpus={int(cpu[:-1]) / 1000 if cpu.endswith('m') else float(cpu)}")
    return argv


def _bytes(quantity: str) -> int:
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "K": 10**3, "M": 10**6, "G": 10**9}
    for suffix, factor in units.items():
        if str(quantity).endswith(suffix):
            return int(float(str(quantity)[:-len(suffix)]) * factor)
    return int(quantity)


def _env(items: list[dict], kubelet: Kubelet) -> dict[str, str]:
    fields = {"spec.nodeName": kubelet.node_name, "metadata.name": kubelet.pod_name,
              "metadata.namespace": kubelet.namespace}
    env = {}
    for item in items:
        if "value" in item:
            env[item["name"]] = _expand(str(item["value"]), env)
        elif "fieldRef" in item.get("valueFrom", {}):
            path = item["valueFrom"]["fieldRef"]["fieldPath"]
            if path not in fields:
                raise TranslationError(f"downward API field {path!r} not translated")
            env[item["name"]] = fields[path]
        else:
            raise TranslationError(f"env {item['name']}: {sorted(item)} not translated")
    return env


def _expand(text: str, env: dict[str, str]) -> str:
    """The kubelet's $(VAR) expansion of args and env values ($$ is a literal $)."""
    out, i = [], 0
    while i < len(text):
        if text.startswith("$$", i):
            out.append("$")
            i += 2
        elif text.startswith("$(", i) and ")" in text[i:]:
            end = text.index(")", i)
            name = text[i + 2:end]
            out.append(env.get(name, text[i:end + 1]))
            i = end + 1
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def _mount(mount: dict, volume: dict, kubelet: Kubelet) -> list[str]:
    if set(mount) - {"name", "mountPath", "readOnly"}:
        raise TranslationError(f"volumeMount fields not translated: {sorted(mount)}")
    options = "ro" if mount.get("readOnly") else "rw"
    if "hostPath" in volume:
        host = Path(volume["hostPath"]["path"])
        kind = volume["hostPath"].get("type", "")
        if kind == "DirectoryOrCreate":
            host.mkdir(parents=True, exist_ok=True)
        elif kind == "Directory" and not host.is_dir():
            raise TranslationError(f"hostPath {host} (type Directory) does not exist on this node")
        elif kind not in ("", "Directory"):
            raise TranslationError(f"hostPath type {kind!r} not translated")
        return [f"--volume={host}:{mount['mountPath']}:{options}"]
    if "emptyDir" in volume:
        if volume["emptyDir"].get("medium") == "Memory":
            return [f"--mount=type=tmpfs,destination={mount['mountPath']}"]
        directory = kubelet.work_dir / "emptydir" / volume["name"]
        directory.mkdir(parents=True, exist_ok=True)
        return [f"--volume={directory}:{mount['mountPath']}:{options}"]
    raise TranslationError(f"volume {volume['name']}: {sorted(volume)} not translated")
