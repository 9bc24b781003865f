"""Interface selection, datapath flag validation (DatapathSection), source assembly and the
environment checks: plain functions, no root."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from agent import config
from agent.datapath import environment, interfaces
from agent.datapath import loader as datapath
from agent.datapath.decode import InterfaceKind
from agent.datapath.interfaces import Link
from agent.errors import ConfigError, DatapathError

LINKS = [
    Link(1, "lo", "", None, None),
    Link(2, "eth0", "veth", None, 0),           # uplink: a veth too, but carries the default route
    Link(3, "cni0", "bridge", None, None),
    Link(4, "veth1a2b3c4d", "veth", 3, 1),      # pod veth on cni0
    Link(5, "cali0123456789", "veth", None, 2),  # routed pod veth
    Link(6, "docker0", "bridge", None, None),   # bridge without veth ports
    Link(7, "vethlocal", "veth", None, None),   # peer in this namespace: not a pod
    Link(8, "br-ext", "bridge", None, None),
    Link(9, "eth1", "", 8, None),               # physical port on br-ext
]


@pytest.mark.parametrize("include,exclude,want", [
    ([], [], {3: "bridge", 4: "pod_veth", 5: "pod_veth"}),
    ([], ["cali*"], {3: "bridge", 4: "pod_veth"}),
    ([], ["cni0"], {4: "pod_veth", 5: "pod_veth"}),
    (["veth*"], [], {4: "pod_veth", 7: "pod_veth"}),
    (["docker0", "eth1"], [], {6: "bridge", 9: "pod_veth"}),
    (["*"], ["eth*", "veth*"], {3: "bridge", 5: "pod_veth", 6: "bridge", 8: "bridge"}),
    (["nothing*"], [], {}),
], ids=["detect", "exclude-routed", "exclude-bridge", "include-glob", "include-names",
        "include-all-but", "include-nothing"])
def test_select_interfaces(include, exclude, want):
    chosen = interfaces.select_interfaces(LINKS, uplinks={2}, include=include, exclude=exclude)
    assert {i: info.kind.value for i, info in chosen.items()} == want
    assert all(isinstance(info.kind, InterfaceKind) for info in chosen.values())


@pytest.mark.parametrize("text,want", [
    ("", ()), (None, ()), ("veth*", ("veth*",)), (" veth*, cni0 ,,", ("veth*", "cni0")),
])
def test_interface_globs(text, want):
    argv = ["--interfaces", text, "--exclude-interfaces", text] if text is not None else []
    section = _datapath(*argv)
    assert section.include == section.exclude == want


def _datapath(*argv: str) -> config.DatapathSection:
    parser = argparse.ArgumentParser()
    config.add_arguments(parser)
    return config.DatapathSection.from_args(parser.parse_args(list(argv)))


def test_defaults():
    cfg = _datapath()
    assert cfg == config.DatapathSection()
    assert (cfg.active_timeout_s, cfg.idle_timeout_s) == (5.0, 5.0)
    assert (cfg.flow_map_size, cfg.ringbuf_bytes) == (65536, 4 << 20)
    assert (cfg.include, cfg.exclude) == ((), ())
    assert (cfg.sweep_interval_s, cfg.poll_interval_s, cfg.attach_mode) == (1.0, 0.1, "auto")


def test_sizes_with_suffixes():
    cfg = _datapath("--flow-map-size", "128K", "--ringbuf-size", "256KiB")
    assert (cfg.flow_map_size, cfg.ringbuf_bytes) == (128 * 1024, 256 * 1024)


@pytest.mark.parametrize("argv,flag", [
    (["--flow-map-size", "lots"], "--flow-map-size"),
    (["--flow-map-size", "0"], "--flow-map-size"),
    (["--flow-map-size", "64M"], "--flow-map-size"),
    (["--ringbuf-size", "3M"], "--ringbuf-size"),
    (["--ringbuf-size", "1K"], "--ringbuf-size"),
    (["--ringbuf-size=-4M"], "--ringbuf-size"),
    (["--active-timeout", "0"], "--active-timeout"),
    (["--idle-timeout", "-1"], "--idle-timeout"),
    (["--sweep-interval", "0"], "--sweep-interval"),
], ids=lambda v: v if isinstance(v, str) else " ".join(v))
def test_bad_values_name_the_flag(argv, flag):
    with pytest.raises(ConfigError, match=flag):
        _datapath(*argv)


@pytest.mark.parametrize("field,value,flag", [
    ("flow_map_size", 0, "--flow-map-size"),
    ("ringbuf_bytes", 3 << 20, "--ringbuf-size"),
    ("active_timeout_s", 0.0, "--active-timeout"),
    ("sweep_interval_s", -1.0, "--sweep-interval"),
])
def test_a_section_built_directly_is_checked_too(field, value, flag):
    with pytest.raises(ConfigError, match=flag):
        config.DatapathSection(**{field: value})


def test_expand_includes_inlines_headers_and_keeps_missing_optional(tmp_path):
    (tmp_path / "a.h").write_text('#include "b.h"\nint a;\n')
    (tmp_path / "b.h").write_text("int b;\n")
    (tmp_path / "main.c").write_text('#include "a.h"\n#ifdef X\n#include "absent.h"\n#endif\n'
                                     "int main_;\n")
    src = datapath.expand_includes(tmp_path / "main.c")
    assert "int a;" in src and "int b;" in src and "int main_;" in src
    assert '#include "absent.h"' in src
    assert f'#line 2 "{tmp_path / "main.c"}"' in src


def test_real_source_expands_every_header():
    src = datapath.expand_includes(datapath.BPF_DIR / "podflow.c")
    for header in ("types.h", "maps.h", "parse.h"):
        assert f'{datapath.BPF_DIR / header}"' in src


@pytest.mark.parametrize("argv,message", [
    (["--flow-map-size", "lots"], "--flow-map-size"),
    (["--ringbuf-size", "3M"], "--ringbuf-size"),
    (["--idle-timeout", "0"], "--idle-timeout"),
], ids=["map-size", "ringbuf-size", "idle-timeout"])
def test_bad_flags_exit_2_with_a_message_naming_the_flag(tmp_path, argv, message):
    res = subprocess.run([sys.executable, "-m", "agent.cli", "agent", "--node-name", "n1",
                          "--listen", f"unix:{tmp_path}/a.sock", *argv],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2, res.stderr
    assert message in res.stderr


ALL_CAPS = (1 << 12) | (1 << 38) | (1 << 39)  # NET_ADMIN, PERFMON, BPF


NET_ADMIN, SYS_ADMIN, PERFMON, BPF = 1 << 12, 1 << 21, 1 << 38, 1 << 39


@pytest.mark.parametrize("caps,missing", [
    (0, ["CAP_BPF", "CAP_NET_ADMIN", "CAP_PERFMON"]),
    (NET_ADMIN | PERFMON, ["CAP_BPF"]),
    (NET_ADMIN | BPF, ["CAP_PERFMON"]),
    (BPF | PERFMON, ["CAP_NET_ADMIN"]),
    (ALL_CAPS, []),
    (NET_ADMIN | SYS_ADMIN, []),          # kernels before 5.8: CAP_SYS_ADMIN grants bpf and perf
    (SYS_ADMIN, ["CAP_NET_ADMIN"]),       # ... but never CAP_NET_ADMIN's part
], ids=["none", "no-bpf", "no-perfmon", "no-net-admin", "all", "sys-admin", "sys-admin-only"])
def test_missing_capabilities_are_named_exactly(caps, missing):
    assert environment.missing_capabilities(caps) == missing


def test_a_bpf_refusal_names_seccomp_and_its_mode(tmp_path):
    status = tmp_path / "status"
    status.write_text("Name:\tpodflow\nSeccomp:\t2\nSeccomp_filters:\t1\n")
    text = environment.explain_refusal("bpf", "CAP_BPF", 1, status_path=str(status))
    assert text.startswith("bpf() was refused (EPERM) although the agent holds CAP_BPF: a "
                           "seccomp filter is in force (/proc/self/status Seccomp: 2, filter "
                           "mode, 1 filter)")
    status.write_text("Seccomp:\t0\n")
    text = environment.explain_refusal("perf_event_open", "CAP_PERFMON", 1,
                                       status_path=str(status))
    assert "no seccomp filter is in force (/proc/self/status Seccomp: 0): a Linux security " \
           "module" in text


def test_a_refused_bpf_stops_the_checks_with_the_explanation(tmp_path):
    btf_path = tmp_path / "vmlinux"
    btf_path.write_bytes(b"")
    (tmp_path / "modules" / environment.platform.release() / "build" / "include").mkdir(
        parents=True)
    with pytest.raises(DatapathError, match=r"bpf\(\) was refused \(EPERM\)"):
        environment.check_environment(caps=ALL_CAPS, btf_path=str(btf_path),
                                      modules_dir=str(tmp_path / "modules"),
                                      bpf_probe=lambda: 1)


@pytest.mark.parametrize("caps,btf,headers,message", [
    (0, True, True, r"missing CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON: the datapath needs root, "
                    r"or CAP_BPF \+ CAP_NET_ADMIN \+ CAP_PERFMON"),
    (1 << 12, True, True, "missing CAP_BPF, CAP_PERFMON: the datapath needs root, or CAP_BPF"),
    (ALL_CAPS, False, True, "no kernel BTF at"),
    (ALL_CAPS, True, False, "bcc needs kernel headers at"),
], ids=["no-caps", "net-admin-only", "no-btf", "no-headers"])
def test_environment_errors_say_what_is_missing(tmp_path, caps, btf, headers, message):
    btf_path = tmp_path / "vmlinux"
    if btf:
        btf_path.write_bytes(b"")
    modules = tmp_path / "modules"
    if headers:
        (modules / environment.platform.release() / "build" / "include").mkdir(parents=True)
    with pytest.raises(DatapathError, match=message) as err:
        environment.check_environment(caps=caps, btf_path=str(btf_path),
                                      modules_dir=str(modules),
                                      kheaders_path=str(tmp_path / "no-kheaders"))
    if not headers:
        assert f"linux-headers-{environment.platform.release()}" in str(err.value)
        assert "setup-host.sh" in str(err.value)



def _reader(*argv: str):
    from agent.datapath.reader import FlowReader
    from agent.stats import AgentStats
    return FlowReader(_datapath(*argv), AgentStats("n", "t"), lambda batch: None, None, {},
                      None, consume_ring=lambda: None, sweep_extensions=lambda *a: [],
                      kernel_errors=lambda: [], map_full_bytes=lambda: 0, error_names={})


def test_the_reader_polls_less_often_while_new_flows_keep_coming():
    """Each poll's records are a batch through every stage: a quiet node polls every 0.1 s
    (first records at once), a node with new flows in every poll every 0.25 s."""
    from agent.datapath.reader import BUSY_EVENTS

    reader = _reader()
    assert reader._next_wait_s() == 0.1
    reader._last_events = BUSY_EVENTS  # what _announce leaves after a busy poll
    assert reader._next_wait_s() == 0.25
    assert reader._next_wait_s() == 0.1  # a quiet poll since
    slow = _reader("--sweep-interval", "0.2")
    slow._last_events = BUSY_EVENTS
    assert slow._next_wait_s() == 0.2  # never slower than the sweep
