"""How a configuration field becomes a `podflow agent` flag, and the parsers and checks of
flag values that the sections in agent/config/__init__.py use.

A section field declares its flag with `option(...)` (or `shared(...)` for flags another
module declares, such as the rotation and filter flags): `Section.add_arguments` adds the
flags, `Section.from_args` reads them back, and a section checks its fields when it is built,
so an error always names the flag that sets the bad value.

A check that needs a word of a stage's vocabulary (metric label names, listen addresses,
Flow field paths) imports that stage inside the function, never at the top: stages import
agent.config for their section, so a top-level import here would be a circle.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import os
import re
import socket
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

from agent.errors import ConfigError

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
_NO_DEFAULT = object()


@dataclass(frozen=True)
class Option:
    """One flag setting one section field.

    The Namespace holds what argparse made of the text (`type`); `parse` turns that into the
    field's value ("4M" -> 4194304), `check` rejects a wrong value. Both name the flag in
    their ConfigError. `given` is the flag's default as typed on a command line when it reads
    better than the field's value; help may say `{default}` for it."""

    flag: str
    help: str | Callable[[], str] | None = None
    metavar: str | None = None
    type: Callable[[str], Any] | None = None
    choices: tuple | None = None
    action: Any = None
    dest: str | None = None
    given: Any = _NO_DEFAULT
    parse: Callable[[Any, str], Any] | None = None
    check: Callable[[Any, str], None] | None = None

    @property
    def attr(self) -> str:
        return self.dest or self.flag.lstrip("-").replace("-", "_")

    def add(self, group, default: Any) -> None:
        given = default if self.given is _NO_DEFAULT else self.given
        kwargs: dict[str, Any] = {"default": given, "dest": self.attr}
        text = self.help() if callable(self.help) else self.help
        if text is not None:
            shown = f"{given:g}" if isinstance(given, float) else str(given)
            kwargs["help"] = text.replace("{default}", shown)
        for name in ("metavar", "type", "choices", "action"):
            if getattr(self, name) is not None:
                kwargs[name] = getattr(self, name)
        group.add_argument(self.flag, **kwargs)

    def read(self, namespace: argparse.Namespace) -> Any:
        value = vars(namespace)[self.attr]
        return self.parse(value, self.flag) if self.parse is not None else value


@dataclass(frozen=True)
class SharedFlags:
    """Several flags that another module declares and reads (it serves other commands too)."""

    add: Callable[[Any], None]
    read: Callable[[argparse.Namespace], Any]


def option(flag: str, default: Any = None, *, default_factory: Callable[[], Any] | None = None,
           **spec: Any) -> Any:
    """A section field set by `flag` (see Option for the rest)."""
    metadata = {"flag": Option(flag, **spec)}
    if default_factory is not None:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def shared(default: Any, add: Callable[[Any], None],
           read: Callable[[argparse.Namespace], Any]) -> Any:
    """A section field set by flags another module owns."""
    return field(default=default, metadata={"flag": SharedFlags(add, read)})


class Section:
    """Base of every section: checks each field with its flag's `check`, then `check()` for
    rules that involve several fields. Sections are frozen: what a stage receives stays."""

    GROUP: ClassVar[str | None] = None  # the --help heading; None: the command's own options

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            spec = f.metadata.get("flag")
            if isinstance(spec, Option) and spec.check is not None:
                spec.check(getattr(self, f.name), spec.flag)
        self.check()

    def check(self) -> None:
        """Rules across fields; raise ConfigError naming the flags."""

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser, groups: dict) -> None:
        if cls.GROUP is None:
            group = parser
        else:
            group = groups.get(cls.GROUP) or groups.setdefault(
                cls.GROUP, parser.add_argument_group(cls.GROUP))
        for f in dataclasses.fields(cls):
            spec = f.metadata.get("flag")
            if isinstance(spec, SharedFlags):
                spec.add(group)
            elif spec is not None:
                default = f.default if f.default_factory is dataclasses.MISSING \
                    else f.default_factory()
                spec.add(group, default)

    @classmethod
    def from_args(cls, namespace: argparse.Namespace):
        values = {f.name: f.metadata["flag"].read(namespace)
                  for f in dataclasses.fields(cls) if "flag" in f.metadata}
        return cls(**values)


# ---------------------------------------------------------------------------------------
# Parsers and checks of flag values (each error names the flag)


def parse_size(text: Any, flag: str) -> int:
    """"4M" / "65536" / "512K" -> bytes or count."""
    m = re.fullmatch(r"\s*(\d+)\s*([kKmMgG]?)(i?[bB]?)\s*", str(text))
    if not m:
        raise ConfigError(f"{flag}: {text!r} is not a size (e.g. 65536, 512K, 4M)")
    return int(m.group(1)) * {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[m.group(2).lower()]


def comma_list(text: str | None, _flag: str = "") -> tuple[str, ...]:
    """"veth*, cni0,," -> ("veth*", "cni0"); empty parts are ignored."""
    if not text:
        return ()
    return tuple(part.strip() for part in text.split(",") if part.strip())


def as_tuple(values, _flag: str) -> tuple:
    """A repeated flag's list, frozen like the section that holds it."""
    return tuple(values or ())


def positive(unit: str = "") -> Callable[[Any, str], None]:
    def check(value, flag: str) -> None:
        if not value > 0:
            raise ConfigError(f"{flag} must be > 0{unit}, got {value}")
    return check


def at_least(low: int) -> Callable[[Any, str], None]:
    def check(value, flag: str) -> None:
        if value < low:
            raise ConfigError(f"{flag} must be at least {low}, got {value}")
    return check


def between(low: int, high: int) -> Callable[[Any, str], None]:
    def check(value, flag: str) -> None:
        if not low <= value <= high:
            raise ConfigError(f"{flag} must be between {low} and {high}, got {value}")
    return check


def _power_of_two(value: int) -> bool:
    return value > 0 and not value & (value - 1)


def check_ringbuf_bytes(value: int, flag: str) -> None:
    if value < PAGE_SIZE or not _power_of_two(value) or value > (1 << 30):
        raise ConfigError(f"{flag} must be a power of two between {PAGE_SIZE} and 1G bytes, "
                          f"got {value}")


def check_dns_capture_bytes(value: int, flag: str) -> None:
    if value < 16 or value > 4096 or not _power_of_two(value):
        raise ConfigError(f"{flag} must be a power of two from 16 to 4096, got {value}")


def check_cidrs(values: tuple[str, ...], flag: str) -> None:
    for cidr in values:
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError as exc:
            raise ConfigError(f"{flag}: {cidr!r} is not a CIDR") from exc


def check_listen_address(value: str | None, flag: str) -> None:
    if value and value != "none":
        from agent.observer.server import ListenAddress  # noqa: PLC0415 (why: module docstring)

        ListenAddress.parse(value, flag)


def check_hubble_peers(values: tuple[str, ...], flag: str) -> None:
    from agent.observer.hubble.peer import parse_static_peer  # noqa: PLC0415 (as above)

    for value in values:
        parse_static_peer(value)


def host_port(text: str, flag: str) -> tuple[str, int]:
    """"HOST:PORT" / ":PORT" / "[v6]:PORT" -> (host, port); no host is every address."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"{flag} must be HOST:PORT, got {text!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def check_host_port(value: str | None, flag: str) -> None:
    if value:
        host_port(value, flag)


def check_metric_labels(names: tuple[str, ...], flag: str) -> None:
    from agent.export.metrics import LABELS  # noqa: PLC0415 (why: module docstring)

    for name in names:
        if name not in LABELS:
            raise ConfigError(f"{flag}: unknown label {name!r}; choose from {', '.join(LABELS)}")
    if len(set(names)) != len(names):
        raise ConfigError(f"{flag}: a label is listed twice in {','.join(names)!r}")


def metric_labels_help() -> str:
    from agent.export.metrics import LABELS  # noqa: PLC0415 (why: module docstring)

    return (f"labels of the flow metrics, from: {', '.join(LABELS)} "
            "(default {default}; empty for none)")


def overflow_help() -> str:
    from agent.export.metrics import OVERFLOW  # noqa: PLC0415 (why: module docstring)

    return (f"series per flow metric; the rest is summed under label value {OVERFLOW} "
            "(default {default})")


def flow_filters_json(texts, flag: str) -> tuple:
    from agent.export.flowlog import parse_filter_json  # noqa: PLC0415 (why: module docstring)

    return tuple(parse_filter_json(text, flag) for text in texts or ())


def check_field_paths(paths: tuple[str, ...], flag: str) -> None:
    from agent.wire.fieldmask import check_paths  # noqa: PLC0415 (why: module docstring)

    check_paths(paths, flag)


def check_interval(text: str, flag: str) -> None:
    if text:
        from agent.export.windows import parse_interval  # noqa: PLC0415 (why: module docstring)

        parse_interval(text, flag)


def text_or_empty(value: str | None, _flag: str) -> str:
    return value or ""


def default_node_name() -> str:
    return os.environ.get("NODE_NAME") or socket.gethostname()


def default_metadata_source() -> str:
    """In a pod (the API server's env vars are set) read Kubernetes, else nothing."""
    return "kubernetes" if os.environ.get("KUBERNETES_SERVICE_HOST") else "none"
