"""The filter flags of `podflow observe` and of the agent's flow log (`--flow-log-` prefix):
`--pod`, `--from-pod`, `--to-pod`, ... and `--not`, turned into FlowFilter allow/deny lists.

The words, their FlowFilter fields and how their values are read come from
agent.filters.vocabulary (the TUI's `/` line uses the same words); this module only adds the
command-line grammar, which follows Hubble's CLI:

- every flag is repeatable, and the values of one flag are alternatives (`--outcome
  refused,unanswered` too, except a label selector's or TCP flag list's own commas);
- `--from-WORD`/`--to-WORD` name a side; a plain WORD that has two sides (`--pod`) means
  either side, by splitting the list into a source-side and a destination-side filter, into
  which flags naming no side are copied (so `--pod a --namespace b` is "one side is pod a of
  namespace b");
- `--not` turns the NEXT filter flag into a deny filter.

API for the stages that take filter flags:
    add_filter_arguments(group, prefix="")   # --{prefix}WORD for every word, and --{prefix}not
    filters_from_args(args, prefix="")       # -> (allowlist, denylist) of FlowFilter
"""

from __future__ import annotations

import argparse

from agent.errors import ConfigError
from agent.filters.vocabulary import SPELLINGS, FilterError, split_values
from podflow_api.v1 import observer_pb2

__all__ = ["add_filter_arguments", "filters_from_args", "FLAGS"]


# flag -> (word, field, other-side field or None), in the vocabulary's order
FLAGS = SPELLINGS


def _help(flag: str) -> str:
    word, _field, _other = FLAGS[flag]
    if flag == word.name:
        return word.help
    side = "source" if flag.startswith("from-") else "destination"
    return f"the {side} end only; values as --{word.name}"


def _ops_dest(prefix: str) -> str:
    return f"{prefix.replace('-', '_')}filter_ops"


def _pending_dest(prefix: str) -> str:
    return f"_{prefix.replace('-', '_')}filter_not_pending"


class _FilterAction(argparse.Action):
    """Records (flag, value, negated) in command-line order so --not applies to the NEXT
    filter flag, and checks the value at once so an error names the flag."""

    def __init__(self, option_strings, dest, flag: str, prefix: str, **kw):
        super().__init__(option_strings, dest, **kw)
        self.flag = flag
        self.prefix = prefix

    def __call__(self, parser, namespace, value, option_string=None):
        word = FLAGS[self.flag][0]
        try:
            parsed_values = [word.parse(one, self.flag) for one in split_values(word, value)]
        except FilterError as exc:
            msg = str(exc)
            if msg.startswith(f"{self.flag}: "):
                msg = msg[len(self.flag) + 2:]
            raise argparse.ArgumentError(self, msg) from exc
        pending = _pending_dest(self.prefix)
        negate = getattr(namespace, pending, False)
        setattr(namespace, pending, False)
        ops = list(getattr(namespace, _ops_dest(self.prefix), None) or [])
        ops.extend((self.flag, parsed, negate) for parsed in parsed_values)
        setattr(namespace, _ops_dest(self.prefix), ops)


class _NotAction(argparse.Action):
    def __init__(self, option_strings, dest, prefix: str, **kw):
        super().__init__(option_strings, dest, nargs=0, **kw)
        self.prefix = prefix

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, _pending_dest(self.prefix), True)


def add_filter_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup,
                         prefix: str = "") -> None:
    """Add the filter flags (`--namespace`, `--pod` ... and `--not`), each named
    `--{prefix}{flag}`. Every flag is repeatable; values of one flag are alternatives."""
    parser.set_defaults(**{_ops_dest(prefix): []})
    parser.add_argument(f"--{prefix}not", action=_NotAction, prefix=prefix,
                        dest=f"_{prefix.replace('-', '_')}not_flag", default=False,
                        help="turn the NEXT filter flag into a deny filter")
    for flag in FLAGS:
        parser.add_argument(f"--{prefix}{flag}", action=_FilterAction, flag=flag, prefix=prefix,
                            dest=f"_{prefix.replace('-', '_')}flag_{flag.replace('-', '_')}",
                            default=None, metavar="VALUE", help=_help(flag))


class _SideTracker:
    """Builds one filter list the way Hubble's CLI does: flags that name a side go into every
    filter; a symmetric flag (--pod X) splits the list into a source-side filter and a
    destination-side filter, so the flow matches when either side has X."""

    def __init__(self):
        self.left = observer_pb2.FlowFilter()
        self.right: observer_pb2.FlowFilter | None = None
        self.used = False

    def add(self, field: str, other: str | None, value) -> None:
        self.used = True
        if other is None:
            getattr(self.left, field).append(value)
            if self.right is not None:
                getattr(self.right, field).append(value)
            return
        if self.right is None:
            self.right = observer_pb2.FlowFilter()
            self.right.CopyFrom(self.left)
        getattr(self.left, field).append(value)
        getattr(self.right, other).append(value)

    def filters(self) -> list[observer_pb2.FlowFilter]:
        if not self.used:
            return []
        return [self.left] if self.right is None else [self.left, self.right]


def filters_from_args(args: argparse.Namespace, prefix: str = "",
                      ) -> tuple[list[observer_pb2.FlowFilter], list[observer_pb2.FlowFilter]]:
    """(allowlist, denylist) from the flags added by add_filter_arguments. A --not that no
    filter flag follows is a ConfigError (it would silently deny nothing)."""
    if getattr(args, _pending_dest(prefix), False):
        raise ConfigError(f"--{prefix}not must be followed by a filter flag, e.g. "
                          f"--{prefix}not --{prefix}namespace kube-system")
    allow, deny = _SideTracker(), _SideTracker()
    for flag, value, negate in getattr(args, _ops_dest(prefix), None) or []:
        _word, field, other = FLAGS[flag]
        (deny if negate else allow).add(field, other, value)
    return allow.filters(), deny.filters()
