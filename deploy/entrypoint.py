#!/usr/bin/env python3
"""Container entrypoint of the podflow image: find kernel headers for bcc, check the kernel
filesystems the agent needs, then exec `podflow`.

bcc compiles the agent's eBPF programs at start and looks for headers at
/lib/modules/$(uname -r)/build (and .../source). In a pod, the node's /lib/modules is mounted
read-only at /host/lib/modules and the node's /usr/src at /usr/src (the same path, so the
absolute links distributions put in /lib/modules/<release>/build resolve unchanged), while the
container's own /lib/modules is a small writable emptyDir. This script picks headers, in order:

1. headers already where bcc looks (e.g. `docker run -v /lib/modules:/lib/modules:ro ...`);
2. the node's /lib/modules/<release>/build (+ source);
3. the node's /usr/src/linux-headers-<release> (+ the distribution's -common tree);
4. the kernel's own /sys/kernel/kheaders.tar.xz (CONFIG_IKHEADERS; bcc unpacks it itself);
5. fallback: the distribution's generic headers shipped in the image (/opt/podflow/headers),
   only when the kernel has BTF (/sys/kernel/btf/vmlinux). podflow's programs use only uapi
   structs (struct __sk_buff) from headers and read kernel-internal offsets from BTF, so
   headers of another kernel version are enough there;

and links the choice into the container's /lib/modules/<release>. When nothing fits it says
exactly what it looked for and how to fix it, and exits non-zero (3: no headers, 4: tracefs
not mounted, 5: no BTF, which the agent needs whatever the headers). It mounts nothing (the pod
has no CAP_SYS_ADMIN): tracefs must come from the node, and is only checked. bpffs is not
needed: the agent pins nothing, so the pod does not mount the node's /sys/fs/bpf.

Only standard library here: it runs before anything else, with the image's Python.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path

EXIT_NO_HEADERS = 3
EXIT_NO_MOUNTS = 4
EXIT_NO_BTF = 5
PROG = "podflow-entrypoint"

# Files whose presence makes a header tree usable by bcc: a configured build tree (generated
# autoconf.h) and the kernel's include tree (kconfig.h, which bcc includes first).
BUILD_MARKER = Path("include/generated/autoconf.h")
SOURCE_MARKER = Path("include/linux/kconfig.h")


@dataclass
class Layout:
    """Where things are inside the container. Defaults are the pod's (see the DaemonSet);
    every path can be moved with an environment variable, which the tests use to point them
    into a temporary directory."""

    # The container's /lib/modules: where bcc looks, writable (an emptyDir in the pod).
    modules_dir: Path
    # Node directories as mounted in the container, keyed by their path on the node. A link
    # on the node pointing into one of them is followed there; anything else is not visible.
    node_mounts: dict[str, Path]
    sys_dir: Path
    mountinfo: Path
    # Generic headers shipped in the image (deploy/Dockerfile).
    fallback_dir: Path

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "Layout":
        env = os.environ if env is None else env
        return cls(
            modules_dir=Path(env.get("PODFLOW_MODULES_DIR", "/lib/modules")),
            node_mounts={
                "/lib/modules": Path(env.get("PODFLOW_HOST_MODULES", "/host/lib/modules")),
                "/usr/src": Path(env.get("PODFLOW_HOST_USR_SRC", "/usr/src")),
            },
            sys_dir=Path(env.get("PODFLOW_SYS_DIR", "/sys")),
            mountinfo=Path(env.get("PODFLOW_MOUNTINFO", "/proc/self/mountinfo")),
            fallback_dir=Path(env.get("PODFLOW_FALLBACK_HEADERS", "/opt/podflow/headers")),
        )


@dataclass
class Headers:
    """The header trees chosen for bcc. `build` None means bcc finds them itself (kheaders)."""

    kind: str  # container | node-modules | node-usr-src | kheaders | fallback
    build: Path | None
    source: Path | None
    detail: str


class HeadersMissing(Exception):
    """No usable headers; the message lists what was looked at and how to fix it."""


def node_path(layout: Layout, path: str) -> Path | None:
    """The container path of a node path, through the mounts in `layout.node_mounts`."""
    for prefix in sorted(layout.node_mounts, key=len, reverse=True):
        if path == prefix or path.startswith(prefix.rstrip("/") + "/"):
            rest = path[len(prefix):].lstrip("/")
            return layout.node_mounts[prefix] / rest if rest else layout.node_mounts[prefix]
    return None


def resolve_node_link(layout: Layout, node: str, hops: int = 40) -> Path | None:
    """The container path of node path `node`, following links the way the node would: link
    targets (absolute or relative) are node paths, mapped through the node mounts. None when
    the chain leaves what is mounted or ends nowhere."""
    for _ in range(hops):
        path = node_path(layout, node)
        if path is None:
            return None
        if not path.is_symlink():
            return path if path.exists() else None
        target = os.readlink(path)
        node = os.path.normpath(target if os.path.isabs(target)
                                else os.path.join(os.path.dirname(node), target))
    return None


def usable(build: Path | None, source: Path | None) -> bool:
    """bcc can compile against this pair: a configured build tree and an include tree."""
    if build is None:
        return False
    tree = source if source is not None else build
    return (build / BUILD_MARKER).is_file() and (tree / SOURCE_MARKER).is_file()


def pick_source(build: Path, candidates: list[Path | None]) -> Path | None:
    """The include tree to pair with `build`: the build tree itself when it is complete,
    else the first candidate that has one (Debian/Ubuntu split headers: <release> + -common)."""
    if (build / SOURCE_MARKER).is_file():
        return None
    for cand in candidates:
        if cand is not None and (cand / SOURCE_MARKER).is_file():
            return cand
    return None


def common_sibling(build: Path) -> Path | None:
    """Debian's split layout: linux-headers-6.1.0-56-amd64 needs linux-headers-6.1.0-56-common."""
    name = build.name
    if "-" not in name:
        return None
    return build.parent / (name.rsplit("-", 1)[0] + "-common")


def find_headers(layout: Layout, release: str) -> Headers:
    """Choose header trees for kernel `release`, in the order of the module docstring."""
    looked: list[str] = []

    # 1. Already where bcc looks.
    here = layout.modules_dir / release
    build = here / "build"
    if build.exists():
        source = pick_source(build, [here / "source"])
        if usable(build, source):
            return Headers("container", None, None, f"{build} (already in place)")
        looked.append(f"{build}: present but incomplete (no {BUILD_MARKER} or {SOURCE_MARKER})")

    # 2. The node's /lib/modules/<release>/build.
    node_build_path = f"/lib/modules/{release}/build"
    mounted = node_path(layout, node_build_path)
    if mounted is not None:
        build = resolve_node_link(layout, node_build_path)
        if build is not None:
            source = pick_source(build, [
                resolve_node_link(layout, f"/lib/modules/{release}/source"),
                common_sibling(build)])
            if usable(build, source):
                return Headers("node-modules", build, source, f"node {node_build_path} -> {build}")
            looked.append(f"node {node_build_path} -> {build}: incomplete "
                          f"(needs {BUILD_MARKER} and {SOURCE_MARKER})")
        elif mounted.is_symlink():
            looked.append(f"node {node_build_path}: a link to {os.readlink(mounted)}, which is "
                          "not mounted in the container or does not exist")
        else:
            looked.append(f"node {node_build_path}: missing")

    # 3. The node's /usr/src/linux-headers-<release>.
    usr_src = f"/usr/src/linux-headers-{release}"
    if node_path(layout, usr_src) is not None:
        build = resolve_node_link(layout, usr_src)
        if build is not None:
            source = pick_source(build, [common_sibling(build)])
            if usable(build, source):
                return Headers("node-usr-src", build, source, f"node {usr_src}")
            looked.append(f"node {usr_src}: incomplete")
        else:
            looked.append(f"node {usr_src}: missing")

    # 4. The kernel's own headers archive.
    kheaders = layout.sys_dir / "kernel" / "kheaders.tar.xz"
    if kheaders.exists():
        return Headers("kheaders", None, None, f"{kheaders} (bcc unpacks it into /tmp)")
    looked.append(f"{kheaders}: missing (kernel built without CONFIG_IKHEADERS, or the kheaders "
                  "module is not loaded)")

    # 5. Generic headers from the image, only with BTF.
    btf = layout.sys_dir / "kernel" / "btf" / "vmlinux"
    fallback = find_fallback(layout.fallback_dir)
    if not btf.exists():
        looked.append(f"{btf}: missing (kernel built without CONFIG_DEBUG_INFO_BTF), so the "
                      "image's generic headers cannot stand in for the node's")
    elif fallback is None:
        looked.append(f"{layout.fallback_dir}: no generic headers in this image")
    else:
        build, source = fallback
        return Headers("fallback", build, source,
                       f"generic headers {build.name} from the image (kernel has BTF; podflow "
                       "reads kernel-internal offsets from BTF and needs only uapi headers)")

    raise HeadersMissing(missing_message(release, looked))


def find_fallback(directory: Path) -> tuple[Path, Path | None] | None:
    """The newest usable (build, source) pair under the image's generic headers directory."""
    if not directory.is_dir():
        return None
    for build in sorted((p for p in directory.iterdir() if p.is_dir()), key=lambda p: p.name,
                        reverse=True):
        if build.name.endswith("-common"):
            continue
        source = pick_source(build, [common_sibling(build)])
        if usable(build, source):
            return build, source
    return None


def missing_message(release: str, looked: list[str]) -> str:
    lines = [f"no kernel headers for the running kernel {release}, and no usable fallback.",
             "Looked at:"]
    lines += [f"  - {item}" for item in looked]
    lines += [
        "Fix one of these on the node (then delete the pod so it restarts):",
        f"  - install the kernel headers for {release}: Debian/Ubuntu "
        f"`apt-get install linux-headers-{release}`, Fedora/RHEL/Amazon Linux "
        f"`dnf install kernel-devel-{release}`;",
        "  - or load the kernel's own headers: `modprobe kheaders` (CONFIG_IKHEADERS=m);",
        "  - or run a kernel with BTF (CONFIG_DEBUG_INFO_BTF=y, the default of current "
        "distributions): the image's generic headers are then used.",
        "If the headers are installed, check the DaemonSet mounts the node's /lib/modules at "
        "/host/lib/modules and /usr/src at /usr/src (Helm values hostPaths.libModules and "
        "hostPaths.usrSrc).",
    ]
    return "\n".join(lines)


def link_headers(layout: Layout, release: str, headers: Headers) -> None:
    """Make bcc's default lookup (/lib/modules/<release>/{build,source}) find `headers`."""
    if headers.build is None:
        return
    here = layout.modules_dir / release
    here.mkdir(parents=True, exist_ok=True)
    for name, target in (("build", headers.build), ("source", headers.source)):
        link = here / name
        if link.is_symlink() or link.exists():
            link.unlink()
        if target is not None:
            link.symlink_to(target)


def read_mounts(mountinfo: Path) -> dict[str, str]:
    """Mount point -> filesystem type, from /proc/self/mountinfo (last mount wins)."""
    mounts: dict[str, str] = {}
    for line in mountinfo.read_text(encoding="utf-8").splitlines():
        left, sep, right = line.partition(" - ")
        fields = left.split()
        if not sep or len(fields) < 5 or not right:
            continue
        point = fields[4].replace("\\040", " ").replace("\\011", "\t").replace("\\134", "\\")
        mounts[point] = right.split()[0]
    return mounts


def check_mounts(layout: Layout) -> list[str]:
    """Problems with the kernel filesystems the agent uses; empty when all is well."""
    try:
        mounts = read_mounts(layout.mountinfo)
    except OSError as exc:
        return [f"cannot read {layout.mountinfo}: {exc}"]
    problems = []
    if "tracefs" not in (mounts.get("/sys/kernel/tracing"), mounts.get("/sys/kernel/debug/tracing")):
        problems.append(
            "no tracefs at /sys/kernel/tracing (needed to attach the skb:kfree_skb tracepoint "
            "for drop reasons). On the node: `mount -t tracefs nodev /sys/kernel/tracing`; in "
            "the pod: a read-only hostPath volume of it (Helm value hostPaths.tracefs).")
    return problems


def check_btf(layout: Layout) -> str | None:
    """The agent reads kernel-internal struct offsets (sk_buff, drop reasons) from BTF and
    refuses to start without it; say so before anything else, with the fix."""
    btf = layout.sys_dir / "kernel" / "btf" / "vmlinux"
    if btf.is_file():
        return None
    return (f"no kernel BTF at {btf}: podflow reads kernel structure layouts from BTF, so "
            "this node needs a kernel built with CONFIG_DEBUG_INFO_BTF=y (the default of "
            "current major distributions). Kernel headers alone are not enough.")


def prepare(layout: Layout, release: str) -> Headers:
    """Check mounts and BTF, choose and link headers; raises SystemExit with a message on
    failure."""
    problems = check_mounts(layout)
    if problems:
        raise SystemExit(_fail(EXIT_NO_MOUNTS, "kernel filesystems missing:\n  - "
                               + "\n  - ".join(problems)))
    problem = check_btf(layout)
    if problem:
        raise SystemExit(_fail(EXIT_NO_BTF, problem))
    try:
        headers = find_headers(layout, release)
    except HeadersMissing as exc:
        raise SystemExit(_fail(EXIT_NO_HEADERS, str(exc))) from exc
    try:
        link_headers(layout, release, headers)
    except OSError as exc:
        raise SystemExit(_fail(EXIT_NO_HEADERS, f"cannot link headers into {layout.modules_dir}"
                               f" ({exc}); mount a writable emptyDir there")) from exc
    return headers


def fallback_reason(layout: Layout, release: str) -> str:
    """Why the node's own headers were not used, with the fix that applies: installing them
    is the wrong advice when they are installed and only a mount is missing."""
    try:
        mounted = set(read_mounts(layout.mountinfo))
    except OSError:
        mounted = None  # unknown: do not claim a mount is missing

    def missing_mount(node_dir: str) -> bool:
        return mounted is not None and str(layout.node_mounts[node_dir]) not in mounted

    install = (f"install linux-headers-{release} (Debian/Ubuntu) or kernel-devel-{release} "
               "(Fedora/RHEL/Amazon Linux) on the node")
    if missing_mount("/lib/modules"):
        return (f"the node's /lib/modules is not mounted in the pod (at "
                f"{layout.node_mounts['/lib/modules']}; Helm value hostPaths.libModules)")
    link = f"/lib/modules/{release}/build"
    here = node_path(layout, link)
    if here is None or not here.is_symlink():
        if here is not None and here.exists():
            return f"the node's {link} is incomplete (no {BUILD_MARKER}): {install}"
        return f"the node has no {link}: {install}"
    target = os.readlink(here)
    target = os.path.normpath(target if os.path.isabs(target)
                              else os.path.join(os.path.dirname(link), target))
    for node_dir in layout.node_mounts:
        if node_dir != "/lib/modules" and (target + "/").startswith(node_dir.rstrip("/") + "/") \
                and missing_mount(node_dir):
            return (f"the node has headers at {target} ({link} links there), but the node's "
                    f"{node_dir} is not mounted in the pod: set Helm value hostPaths.usrSrc "
                    f"to {node_dir}")
    if node_path(layout, target) is None:
        return (f"the node's {link} links to {target}, outside what the pod mounts "
                "(/lib/modules and /usr/src): mount that directory too, or " + install)
    return f"the node's {link} links to {target}, which the node does not have: {install}"


def _fail(code: int, message: str) -> int:
    print(f"{PROG}: {message}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Prepare kernel headers and checks, then exec `podflow ARGS`.")
    parser.add_argument("--check", action="store_true",
                        help="only report what would be used (exit status as for a start)")
    parser.add_argument("podflow_args", nargs=argparse.REMAINDER,
                        help="arguments for `podflow` (e.g. agent --listen=:4245)")
    args = parser.parse_args(argv)
    podflow_args = args.podflow_args
    needs_kernel = args.check or (podflow_args[:1] == ["agent"])
    if needs_kernel:
        release = os.uname().release
        headers = prepare(Layout.from_env(), release)
        print(f"{PROG}: kernel {release}; headers: {headers.kind}: {headers.detail}",
              file=sys.stderr)
        if headers.kind == "fallback":
            print(f"{PROG}: warning: using generic headers, not the node's: "
                  f"{fallback_reason(Layout.from_env(), release)}", file=sys.stderr)
    if args.check:
        return 0
    sys.stderr.flush()
    os.execvp("podflow", ["podflow", *podflow_args])
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
