"""The agent's typed configuration (agent/config) and how agent/main.py builds the stages from
it: every `podflow agent` flag is declared by one section field, its default is the field's,
a bad value is refused with the flag named, and each stage receives its own section."""

from __future__ import annotations

import argparse
import dataclasses
import logging

import pytest

from agent import config
from agent.config.flags import Option, SharedFlags
from agent.errors import ConfigError
from agent.stage import Stage
from agent.stats import AgentStats
from agent.wire.rotation import RotationConfig


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="podflow agent")
    config.add_arguments(parser)
    return parser


def _declared_flags() -> set[str]:
    """The flags the sections declare themselves (shared ones are their owners' business)."""
    return {f.metadata["flag"].flag
            for section in (f.default_factory for f in dataclasses.fields(config.AgentConfig))
            for f in dataclasses.fields(section) if isinstance(f.metadata.get("flag"), Option)}


def test_every_flag_comes_from_a_section_field():
    parser_flags = {s for a in _parser()._actions for s in a.option_strings
                    if s.startswith("--") and s != "--help"}
    declared = _declared_flags()
    assert declared <= parser_flags
    # The rest are the shared rotation and filter flags of the flow log, and --no-* forms.
    others = parser_flags - declared
    assert all(f.startswith("--flow-log-") or f.startswith("--no-") for f in others), others
    assert {"--flow-log-max-size-mb", "--flow-log-namespace", "--flow-log-not"} <= others


def test_the_flag_defaults_are_the_field_defaults(monkeypatch):
    """No flag repeats a default: parsing nothing gives the sections' own defaults."""
    monkeypatch.setenv("NODE_NAME", "node-z")
    assert config.AgentConfig.from_flags([]) == config.AgentConfig()
    assert config.AgentConfig().agent.node_name == "node-z"


def test_help_shows_each_default_where_it_says_so():
    text = "\n".join(a.help or "" for a in _parser()._actions)
    for needle in ("(default: 5)", "(default: 262144)", "(default: 65536)", "(default: 4M)",
                   "(default: 512)", "(default 65535)", "(default 8192)", "default 64",
                   "(default :4245,", "(default 2000)", "(default 600)",
                   "(default source_namespace,destination_namespace,service,verdict;"):
        assert needle in text, needle
    assert "{default}" not in text


GOOD = [
    # (flags, section, field, value)
    (["--interfaces", "veth*, cni0"], "datapath", "include", ("veth*", "cni0")),
    (["--ringbuf-size", "8M"], "datapath", "ringbuf_bytes", 8 << 20),
    (["--idle-timeout", "2"], "datapath", "idle_timeout_s", 2.0),
    (["--sweep-interval", "0.05"], "datapath", "poll_interval_s", 0.05),
    (["--drop-cidr", "10.0.0.0/8", "--drop-cidr", "fd00::/8"], "annotate", "drop_cidrs",
     ("10.0.0.0/8", "fd00::/8")),
    (["--no-dns"], "annotate", "dns", False),
    (["--listen", "none"], "observer", "enabled", False),
    (["--store-size", "10"], "store", "capacity", 10),
    (["--no-conntrack"], "metadata", "use_conntrack", False),
    (["--flow-log-fields", "source, l4"], "flow_log", "fields", ("source", "l4")),
    (["--flow-log-max-backups", "2"], "flow_log", "rotation",
     RotationConfig(max_bytes=100 << 20, max_backups=2, compress=True)),
    (["--no-flow-log-compress"], "flow_log", "rotation",
     RotationConfig(max_bytes=100 << 20, max_backups=30, compress=False)),
    (["--metrics", ":9965"], "metrics", "host_port", ("0.0.0.0", 9965)),
    (["--metrics-labels", ""], "metrics", "labels", ()),
]


@pytest.mark.parametrize("argv,section,field,value", GOOD,
                         ids=[" ".join(g[0]) or "none" for g in GOOD])
def test_flags_reach_their_section(argv, section, field, value):
    assert getattr(getattr(config.AgentConfig.from_flags(argv), section), field) == value


def test_flow_log_filters_join_json_and_flag_filters():
    flow_log = config.AgentConfig.from_flags([
        "--flow-log", "-", "--flow-log-allow", '{"source_namespace": ["a"]}',
        "--flow-log-namespace", "b", "--flow-log-not", "--flow-log-protocol", "udp"]).flow_log
    assert [list(f.source_namespace) for f in flow_log.allowlist][:1] == [["a"]]
    assert len(flow_log.allowlist) == 3  # the JSON filter, then --namespace b (either side)
    assert [list(f.protocol) for f in flow_log.denylist] == [["udp"]]


BAD = [
    # (flags, what the message must name)
    (["--syn-timeout", "0"], "--syn-timeout must be > 0 seconds"),
    (["--max-connections", "0"], "--max-connections"),
    (["--drop-cidr", "10.0.0.0/33"], "--drop-cidr: '10.0.0.0/33' is not a CIDR"),
    (["--drop-map-size", "0"], "--drop-map-size"),
    (["--dns-capture-bytes", "100"], "--dns-capture-bytes must be a power of two"),
    (["--listen", "nowhere"], "--listen: expected HOST:PORT"),
    (["--health-listen", "no-port"], "--health-listen"),
    (["--grpc-max-streams", "0"], "--grpc-max-streams must be at least 1"),
    (["--tls-cert", "/a.crt"], "--tls-cert and --tls-key must be given together"),
    (["--tls-ca", "/ca.crt"], "--tls-ca needs --tls-cert and --tls-key"),
    (["--store-size", "0"], "--store-size must be at least 1"),
    (["--client-queue-size", "0"], "--client-queue-size"),
    (["--metadata", "/nonexistent.json"], "--metadata /nonexistent.json: not `kubernetes`"),
    (["--metadata", "/nonexistent.json", "--context", "c"], "--kubeconfig/--context need"),
    (["--flow-log-allow", "{nope"], "--flow-log-allow: not a FlowFilter"),
    (["--flow-log-fields", "source,colour"], "--flow-log-fields: 'colour' is not a field path of Flow"),
    (["--flow-log-aggregate", "soon"], "--flow-log-aggregate: expected an interval"),
    (["--flow-log-queue-size", "0"], "--flow-log-queue-size"),
    (["--flow-log-not"], "--flow-log-not must be followed by a filter flag"),
    (["--metrics", "9965"], "--metrics must be HOST:PORT"),
    (["--metrics-labels", "colour"], "--metrics-labels: unknown label 'colour'"),
    (["--metrics-labels", "verdict,verdict"], "--metrics-labels: a label is listed twice"),
    (["--metrics-series-ttl", "0"], "--metrics-series-ttl must be > 0"),
]


@pytest.mark.parametrize("argv,message", BAD, ids=[" ".join(b[0]) for b in BAD])
def test_a_bad_value_is_refused_naming_its_flag(argv, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("*", r"\*")):
        config.AgentConfig.from_flags(argv)


def test_sections_built_in_code_are_checked_and_frozen():
    with pytest.raises(ConfigError, match="--metrics-labels"):
        config.MetricsSection(labels=("colour",))
    section = config.StoreSection(capacity=5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        section.capacity = 6  # type: ignore[misc]


def test_shared_flags_are_declared_by_their_owner():
    """The rotation and filter flags are the wire and filters modules' (observe has them
    too); the flow log section only places them."""
    shared = [f.name for f in dataclasses.fields(config.FlowLogSection)
              if isinstance(f.metadata.get("flag"), SharedFlags)]
    assert shared == ["rotation", "flag_filters"]


# ---------------------------------------------------------------------------------------
# agent/main.py: the stages the configuration turns on, each with its section


def _stages(*argv: str):
    from agent.main import build_stages

    cfg = config.AgentConfig.from_flags(["--metadata", "none", "--no-drops", *argv])
    return cfg, build_stages(cfg, AgentStats("node-a", "test"))


def test_default_stages_in_start_order():
    cfg, stages = _stages()
    assert [type(s).__name__ for s in stages] == ["Enricher", "ObserverServer", "HubbleServer",
                                                  "Datapath"]
    assert all(isinstance(s, Stage) for s in stages)
    datapath = stages[-1]
    assert datapath.config is cfg.datapath and stages[1].config is cfg.observer
    assert [type(e).__name__ for e in datapath.extensions] == ["DnsExtension"]


def test_flags_turn_stages_on_and_off(tmp_path):
    _cfg, stages = _stages("--listen", "none", "--hubble-listen", "", "--flow-log",
                           str(tmp_path / "f.jsonl"), "--metrics", "127.0.0.1:0", "--no-dns")
    assert [type(s).__name__ for s in stages] == ["Enricher", "FlowLogExporter",
                                                  "MetricsServer", "Datapath"]
    assert stages[-1].extensions == []


def test_optional_hooks_have_defaults_that_do_nothing():
    class Minimal(Stage):
        def start(self) -> None:
            pass

        def stop(self) -> None:
            pass

    stage = Minimal()
    stage.reopen()
    assert stage.ready_info() == {}
    assert stage.failure() is None
    with pytest.raises(TypeError):
        Stage()  # type: ignore[abstract]


@pytest.mark.parametrize("logger,level,shown", [
    ("pyroute2.netlink.nlsocket", logging.DEBUG, False),
    ("pyroute2.iproute.linux", logging.INFO, False),
    ("asyncio", logging.DEBUG, False),
    ("pyroute2.netlink.nlsocket", logging.WARNING, True),
    ("podflow.datapath", logging.DEBUG, True),
])
def test_netlink_chatter_is_kept_out_of_a_debug_log(logger, level, shown):
    """Without --log-netlink the handler drops pyroute2's (and its asyncio loops') records
    below WARNING: they were ~95% of a debug log (460 of 469 lines for a pod or two)."""
    from agent.main import _quiet_netlink

    record = logging.LogRecord(logger, level, __file__, 1, "msg", None, None)
    assert _quiet_netlink(record) is shown


def test_metadata_wait_for_rbac_flag():
    assert config.AgentConfig.from_flags([]).metadata.rbac_wait_s == 120.0
    assert config.AgentConfig.from_flags(["--rbac-wait", "0"]).metadata.rbac_wait_s == 0.0
    with pytest.raises(ConfigError, match="--rbac-wait must be at least 0"):
        config.AgentConfig.from_flags(["--rbac-wait", "-1"])
