"""deploy/entrypoint.py finds kernel headers the way a node lays them out (Debian's split
build/common trees, Fedora's single tree, links into /usr/src, kheaders, BTF + the image's
generic headers), links them where bcc looks, checks tracefs, and when nothing fits says
what it looked at and how to fix it. Node layouts are fake directory trees here; one root test
proves that bcc really compiles against what the entrypoint linked."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from deploy_helpers import REPO, load_script

entrypoint = load_script("podflow_entrypoint", REPO / "deploy" / "entrypoint.py")

RELEASE = "6.1.0-56-amd64"
GOOD_MOUNTINFO = (
    "24 1 0:22 / /sys rw,nosuid - sysfs sysfs rw\n"
    "31 24 0:12 / /sys/kernel/tracing ro,nosuid - tracefs tracefs rw\n"
)


@dataclass
class FakeNode:
    """A temporary tree standing for the container's view: the node's /lib/modules and
    /usr/src mounts, the container's own /lib/modules, /sys, mountinfo, the image's headers."""

    root: Path
    btf: bool = True
    layout: object = field(init=False)

    def __post_init__(self):
        for d in ("container/lib/modules", "node/lib/modules", "node/usr/src", "sys/kernel/btf",
                  "image/headers"):
            (self.root / d).mkdir(parents=True)
        if self.btf:
            (self.root / "sys/kernel/btf/vmlinux").write_bytes(b"\x9f\xeb")
        (self.root / "mountinfo").write_text(GOOD_MOUNTINFO)
        self.layout = entrypoint.Layout.from_env(self.env())

    def env(self) -> dict[str, str]:
        return {
            "PODFLOW_MODULES_DIR": str(self.root / "container/lib/modules"),
            "PODFLOW_HOST_MODULES": str(self.root / "node/lib/modules"),
            "PODFLOW_HOST_USR_SRC": str(self.root / "node/usr/src"),
            "PODFLOW_SYS_DIR": str(self.root / "sys"),
            "PODFLOW_MOUNTINFO": str(self.root / "mountinfo"),
            "PODFLOW_FALLBACK_HEADERS": str(self.root / "image/headers"),
        }

    def node(self, node_path: str) -> Path:
        """Container path of a node path (/lib/modules/... or /usr/src/...)."""
        return self.root / "node" / node_path.lstrip("/")

    def tree(self, path: Path, build: bool = True, include: bool = True) -> Path:
        """A header tree: `build` = configured (generated autoconf.h), `include` = kernel
        include files (linux/kconfig.h)."""
        path.mkdir(parents=True, exist_ok=True)
        if build:
            (path / "include/generated").mkdir(parents=True, exist_ok=True)
            (path / "include/generated/autoconf.h").write_text("#define CONFIG_BPF 1\n")
        if include:
            (path / "include/linux").mkdir(parents=True, exist_ok=True)
            (path / "include/linux/kconfig.h").write_text("/* kconfig */\n")
        return path

    def mounted(self, *node_dirs: str) -> None:
        """mountinfo with the node directories the pod mounts ("/lib/modules", "/usr/src")."""
        lines = [f"50 24 8:1 {d} {self.node(d)} ro - ext4 /dev/vda ro\n" for d in node_dirs]
        (self.root / "mountinfo").write_text(GOOD_MOUNTINFO + "".join(lines))

    def link(self, node_link: str, target: str) -> None:
        """A symlink on the node, with its target as the node sees it."""
        path = self.node(node_link)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.symlink_to(target)


# --- node layouts: (id, builder, expected kind, expected build, expected source) -----------

def debian_split(n: FakeNode):
    n.tree(n.node(f"/usr/src/linux-headers-{RELEASE}"), include=False)
    n.tree(n.node("/usr/src/linux-headers-6.1.0-56-common"), build=False)
    n.link(f"/lib/modules/{RELEASE}/build", f"/usr/src/linux-headers-{RELEASE}")
    n.link(f"/lib/modules/{RELEASE}/source", "/usr/src/linux-headers-6.1.0-56-common")


def debian_split_without_source_link(n: FakeNode):
    n.tree(n.node(f"/usr/src/linux-headers-{RELEASE}"), include=False)
    n.tree(n.node("/usr/src/linux-headers-6.1.0-56-common"), build=False)
    n.link(f"/lib/modules/{RELEASE}/build", f"/usr/src/linux-headers-{RELEASE}")


def fedora_single_tree(n: FakeNode):
    n.tree(n.node(f"/usr/src/kernels/{RELEASE}"))
    n.link(f"/lib/modules/{RELEASE}/build", f"/usr/src/kernels/{RELEASE}")


def relative_link(n: FakeNode):
    n.tree(n.node(f"/usr/src/linux-headers-{RELEASE}"))
    n.link(f"/lib/modules/{RELEASE}/build", f"../../../usr/src/linux-headers-{RELEASE}")


def build_dir_inside_modules(n: FakeNode):
    n.tree(n.node(f"/lib/modules/{RELEASE}/build"))


def only_usr_src(n: FakeNode):
    n.tree(n.node(f"/usr/src/linux-headers-{RELEASE}"))


def kheaders(n: FakeNode):
    (n.root / "sys/kernel/kheaders.tar.xz").write_bytes(b"\xfd7zXZ")


def btf_and_image_headers(n: FakeNode):
    n.tree(n.root / "image/headers/linux-headers-6.1.0-50-amd64", include=False)
    n.tree(n.root / "image/headers/linux-headers-6.1.0-50-common", build=False)


def dangling_build_link_then_btf(n: FakeNode):
    n.link(f"/lib/modules/{RELEASE}/build", f"/usr/src/linux-headers-{RELEASE}")
    btf_and_image_headers(n)


def incomplete_node_tree_then_kheaders(n: FakeNode):
    n.tree(n.node(f"/usr/src/linux-headers-{RELEASE}"), build=False)  # not configured
    n.link(f"/lib/modules/{RELEASE}/build", f"/usr/src/linux-headers-{RELEASE}")
    kheaders(n)


def already_in_container(n: FakeNode):
    n.tree(n.root / f"container/lib/modules/{RELEASE}/build")


FOUND = [
    ("debian-split", debian_split, "node-modules",
     f"node/usr/src/linux-headers-{RELEASE}", "node/usr/src/linux-headers-6.1.0-56-common"),
    ("debian-split-no-source-link", debian_split_without_source_link, "node-modules",
     f"node/usr/src/linux-headers-{RELEASE}", "node/usr/src/linux-headers-6.1.0-56-common"),
    ("fedora-single-tree", fedora_single_tree, "node-modules",
     f"node/usr/src/kernels/{RELEASE}", None),
    ("relative-build-link", relative_link, "node-modules",
     f"node/usr/src/linux-headers-{RELEASE}", None),
    ("build-dir-not-a-link", build_dir_inside_modules, "node-modules",
     f"node/lib/modules/{RELEASE}/build", None),
    ("usr-src-without-modules-link", only_usr_src, "node-usr-src",
     f"node/usr/src/linux-headers-{RELEASE}", None),
    ("kheaders", kheaders, "kheaders", None, None),
    ("btf-image-fallback", btf_and_image_headers, "fallback",
     "image/headers/linux-headers-6.1.0-50-amd64", "image/headers/linux-headers-6.1.0-50-common"),
    ("dangling-link-then-fallback", dangling_build_link_then_btf, "fallback",
     "image/headers/linux-headers-6.1.0-50-amd64", "image/headers/linux-headers-6.1.0-50-common"),
    ("unconfigured-tree-then-kheaders", incomplete_node_tree_then_kheaders, "kheaders", None, None),
    ("already-in-container", already_in_container, "container", None, None),
]


@pytest.mark.parametrize("builder,kind,build,source", [f[1:] for f in FOUND],
                         ids=[f[0] for f in FOUND])
def test_finds_headers(tmp_path, builder, kind, build, source):
    node = FakeNode(tmp_path)
    builder(node)
    headers = entrypoint.find_headers(node.layout, RELEASE)
    assert headers.kind == kind
    assert headers.build == (tmp_path / build if build else None)
    assert headers.source == (tmp_path / source if source else None)


@pytest.mark.parametrize("builder", [f[1] for f in FOUND if f[3]], ids=[f[0] for f in FOUND if f[3]])
def test_links_headers_where_bcc_looks(tmp_path, builder):
    node = FakeNode(tmp_path)
    builder(node)
    headers = entrypoint.prepare(node.layout, RELEASE)
    here = tmp_path / "container/lib/modules" / RELEASE
    # What bcc does: configured tree in build/, include tree in source/ if present else build/.
    assert (here / "build/include/generated/autoconf.h").is_file()
    tree = here / "source" if (here / "source").exists() else here / "build"
    assert (tree / "include/linux/kconfig.h").is_file()
    assert os.readlink(here / "build") == str(headers.build)
    # A restart (same emptyDir) relinks instead of failing on the existing links.
    entrypoint.prepare(node.layout, RELEASE)


def no_headers_no_btf(n: FakeNode):
    (n.root / "sys/kernel/btf/vmlinux").unlink()


def btf_but_image_without_headers(n: FakeNode):
    pass


def build_link_outside_mounts(n: FakeNode):
    n.link(f"/lib/modules/{RELEASE}/build", f"/opt/kernels/{RELEASE}")


MISSING = [
    ("no-headers-no-btf", no_headers_no_btf,
     [f"node /lib/modules/{RELEASE}/build: missing", f"node /usr/src/linux-headers-{RELEASE}: missing",
      "CONFIG_IKHEADERS", "CONFIG_DEBUG_INFO_BTF", f"apt-get install linux-headers-{RELEASE}",
      f"dnf install kernel-devel-{RELEASE}", "modprobe kheaders", "hostPaths.libModules"]),
    ("btf-but-no-generic-headers", btf_but_image_without_headers,
     ["no generic headers in this image"]),
    ("link-to-unmounted-dir", build_link_outside_mounts,
     [f"a link to /opt/kernels/{RELEASE}, which is not mounted in the container"]),
]


@pytest.mark.parametrize("builder,phrases", [m[1:] for m in MISSING], ids=[m[0] for m in MISSING])
def test_says_what_is_missing_and_how_to_fix_it(tmp_path, builder, phrases):
    node = FakeNode(tmp_path)
    builder(node)
    with pytest.raises(entrypoint.HeadersMissing) as err:
        entrypoint.find_headers(node.layout, RELEASE)
    message = str(err.value)
    assert f"running kernel {RELEASE}" in message
    for phrase in phrases:
        assert phrase in message


MOUNTS = [
    ("tracefs", GOOD_MOUNTINFO, []),
    ("tracefs-under-debugfs",
     "40 24 0:7 / /sys/kernel/debug rw - debugfs debugfs rw\n"
     "41 40 0:12 / /sys/kernel/debug/tracing rw - tracefs tracefs rw\n", []),
    # The pod no longer mounts the node's bpffs (the agent pins nothing): not a problem.
    ("no-bpffs", "31 24 0:12 / /sys/kernel/tracing ro - tracefs tracefs rw\n", []),
    ("no-tracefs", "30 24 0:28 / /sys/fs/bpf rw - bpf bpf rw\n", ["tracefs"]),
    # hostPath of a node directory where tracefs is not mounted: just sysfs underneath.
    ("tracefs-dir-without-tracefs",
     "24 1 0:22 / /sys rw - sysfs sysfs rw\n"
     "31 24 0:22 /kernel/tracing /sys/kernel/tracing ro - sysfs sysfs rw\n", ["tracefs"]),
    ("nothing", "24 1 0:22 / /sys rw - sysfs sysfs rw\n", ["tracefs"]),
    ("escaped-mount-points",
     "50 1 0:50 / /mnt/with\\040space rw - tmpfs tmpfs rw\n" + GOOD_MOUNTINFO, []),
]


@pytest.mark.parametrize("mountinfo,problem_words", [m[1:] for m in MOUNTS], ids=[m[0] for m in MOUNTS])
def test_checks_kernel_filesystems(tmp_path, mountinfo, problem_words):
    node = FakeNode(tmp_path)
    (tmp_path / "mountinfo").write_text(mountinfo)
    problems = entrypoint.check_mounts(node.layout)
    assert len(problems) == len(problem_words)
    for problem, word in zip(problems, problem_words):
        assert word in problem and "On the node:" in problem


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "deploy/entrypoint.py"), *args],
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=60)


def test_no_btf_stops_before_headers(tmp_path):
    node = FakeNode(tmp_path, btf=False)
    only_usr_src(node)  # headers alone are not enough
    with pytest.raises(SystemExit) as stop:
        entrypoint.prepare(node.layout, RELEASE)
    assert stop.value.code == entrypoint.EXIT_NO_BTF
    done = _run(["--check"], node.env())
    assert done.returncode == entrypoint.EXIT_NO_BTF
    assert "CONFIG_DEBUG_INFO_BTF=y" in done.stderr


def test_cli_exit_status_and_message_without_headers(tmp_path):
    node = FakeNode(tmp_path)
    done = _run(["agent", "--listen=:4245"], node.env())
    assert done.returncode == entrypoint.EXIT_NO_HEADERS
    assert done.stderr.startswith("podflow-entrypoint: no kernel headers for the running kernel")
    assert "Fix one of these on the node" in done.stderr


def test_cli_exit_status_without_tracefs(tmp_path):
    node = FakeNode(tmp_path)
    only_usr_src(node)
    (tmp_path / "mountinfo").write_text("")
    done = _run(["--check"], node.env())
    assert done.returncode == entrypoint.EXIT_NO_MOUNTS
    assert "no tracefs at /sys/kernel/tracing" in done.stderr
    assert "/sys/fs/bpf" not in done.stderr


def test_cli_check_reports_the_choice(tmp_path):
    node = FakeNode(tmp_path)
    btf_and_image_headers(node)
    done = _run(["--check"], node.env())
    assert done.returncode == 0, done.stderr
    assert "headers: fallback: generic headers linux-headers-6.1.0-50-amd64" in done.stderr
    assert "warning: using generic headers, not the node's" in done.stderr


def test_other_subcommands_skip_the_kernel_checks(tmp_path):
    """`podflow observe`/`tui` from the same image need no headers: straight to exec."""
    node = FakeNode(tmp_path)  # no headers, no mounts: an agent start would fail
    (tmp_path / "mountinfo").write_text("")
    env = {**node.env(), "PATH": f"{REPO / '.venv/bin'}:{os.environ['PATH']}"}
    done = _run(["tui", "--help"], env)
    assert done.returncode == 0, done.stderr
    assert "usage: podflow tui" in done.stdout


@pytest.mark.root
def test_bcc_compiles_against_the_linked_headers(tmp_path, ebpf_ready):
    """On this machine: hide the host's /lib/modules (a private mount namespace, as in a pod),
    let the entrypoint link the node's headers (or the generic fallback) into an empty dir
    mounted there, and compile a TC program with bcc."""
    release = os.uname().release
    container_modules = tmp_path / "modules"
    container_modules.mkdir()
    env = {"PODFLOW_MODULES_DIR": str(container_modules), "PODFLOW_HOST_MODULES": "/lib/modules",
           "PODFLOW_HOST_USR_SRC": "/usr/src", "PODFLOW_FALLBACK_HEADERS": "/usr/src"}
    done = _run(["--check"], env)
    assert done.returncode == 0, done.stderr
    assert (container_modules / release / "build").is_symlink()
    probe = ("from bcc import BPF\n"
             "b = BPF(text='int p(struct __sk_buff *skb) { return skb->len ? -1 : -1; }')\n"
             "b.load_func('p', BPF.SCHED_CLS)\nprint('compiled')\n")
    script = (f"mount --make-rprivate / && mount --bind {container_modules} /lib/modules && "
              f"exec {sys.executable} -c \"$PROBE\"")
    ran = subprocess.run(["unshare", "--mount", "sh", "-c", script], env={**os.environ, "PROBE": probe},
                         capture_output=True, text=True, timeout=120)
    assert ran.stdout.strip() == "compiled", ran.stderr[-2000:]


# --- the fallback warning says why the node's headers were not used -------------------------

def _installed_but_usr_src_not_mounted(n: FakeNode):
    n.link(f"/lib/modules/{RELEASE}/build", f"/usr/src/linux-headers-{RELEASE}")
    n.mounted("/lib/modules")


def _not_installed(n: FakeNode):
    n.mounted("/lib/modules", "/usr/src")


def _link_to_removed_headers(n: FakeNode):
    n.link(f"/lib/modules/{RELEASE}/build", f"/usr/src/linux-headers-{RELEASE}")
    n.mounted("/lib/modules", "/usr/src")


def _modules_not_mounted(n: FakeNode):
    debian_split(n)
    n.mounted("/usr/src")


def _link_outside_the_mounts(n: FakeNode):
    n.link(f"/lib/modules/{RELEASE}/build", f"/opt/kernel/{RELEASE}")
    n.mounted("/lib/modules", "/usr/src")


FALLBACK_REASONS = [
    ("installed-but-usr-src-not-mounted", _installed_but_usr_src_not_mounted,
     [f"the node has headers at /usr/src/linux-headers-{RELEASE}",
      "/usr/src is not mounted in the pod", "hostPaths.usrSrc"], "install"),
    ("not-installed", _not_installed,
     [f"the node has no /lib/modules/{RELEASE}/build", f"install linux-headers-{RELEASE}"],
     "not mounted"),
    ("link-to-removed-headers", _link_to_removed_headers,
     [f"links to /usr/src/linux-headers-{RELEASE}, which the node does not have",
      f"install linux-headers-{RELEASE}"], "not mounted"),
    ("modules-not-mounted", _modules_not_mounted,
     ["/lib/modules is not mounted in the pod", "hostPaths.libModules"], "install"),
    ("link-outside-the-mounts", _link_outside_the_mounts,
     [f"/opt/kernel/{RELEASE}, outside what the pod mounts"], "hostPaths.usrSrc"),
]


@pytest.mark.parametrize("builder,phrases,not_said", [f[1:] for f in FALLBACK_REASONS],
                         ids=[f[0] for f in FALLBACK_REASONS])
def test_fallback_reason_names_the_fix_that_applies(tmp_path, builder, phrases, not_said):
    node = FakeNode(tmp_path)
    builder(node)
    reason = entrypoint.fallback_reason(node.layout, RELEASE)
    for phrase in phrases:
        assert phrase in reason
    assert not_said not in reason


def test_cli_fallback_warning_carries_the_reason(tmp_path):
    node = FakeNode(tmp_path)
    btf_and_image_headers(node)
    node.mounted("/lib/modules")  # /usr/src not mounted: the node's tree is not visible
    release = os.uname().release
    node.link(f"/lib/modules/{release}/build", f"/usr/src/linux-headers-{release}")
    done = _run(["--check"], node.env())
    assert done.returncode == 0, done.stderr
    assert ("warning: using generic headers, not the node's: the node has headers at "
            f"/usr/src/linux-headers-{release}") in done.stderr
    assert "hostPaths.usrSrc" in done.stderr
