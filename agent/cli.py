"""The `podflow` command: one entry point, one module per subcommand.

Each subcommand module exposes `add_arguments(parser)` and `run(args) -> int`, so each
command declares its own flags (`podflow agent`'s: the sections of agent/config) and this
file only dispatches.
"""

from __future__ import annotations

import argparse
import importlib
import os
import select
import signal
import sys

# subcommand -> (module, one-line help). Modules are imported lazily so `podflow observe`
# never pays for bcc and `podflow agent` never pays for Textual.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "agent": ("agent.main", "run the node agent (eBPF datapath, gRPC Observer, flow log)"),
    "observe": ("agent.client.observe", "print flows from one or more agents"),
    "status": ("agent.client.status", "print an agent's ServerStatus"),
    "policy": ("agent.client.policy", "NetworkPolicies advised from observed traffic (advise) "
                                      "and what a change would deny (what-if)"),
    "tui": ("tui.cli", "open the terminal UI over every agent"),
    "demo": ("agent.demo.command", "build a two-node cluster from namespaces and show it live"),
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="podflow",
        description="podflow: every flow on a Kubernetes pod network, traced with eBPF, named "
                    "with pods and Services, live in a terminal UI and in flow logs.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        if only is not None and name != only:
            sub.add_parser(name, help=help_text)
            continue
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    # A shell without job control starts background commands with SIGINT ignored, and
    # Python then keeps ignoring it: Ctrl-C (or a script's SIGINT) must always stop podflow.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    argv = sys.argv[1:] if argv is None else argv
    # Only import the module of the chosen subcommand.
    only = argv[0] if argv and argv[0] in SUBCOMMANDS else None
    parser = build_parser(only)
    args = parser.parse_args(argv)
    try:
        status = int(args._module.run(args) or 0)
        sys.stdout.flush()
    except BrokenPipeError:
        if not _stdout_reader_gone():
            raise  # a broken socket or pipe of the command's own: a real error
        # `podflow status | head`: the reader has all it wanted. Python's documented way out:
        # point stdout at /dev/null so the flush at exit cannot fail again and print a
        # traceback. Not an error of podflow's, so the status is 0.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    return status


def _stdout_reader_gone() -> bool:
    """Whether stdout is a pipe whose reading end was closed (poll says POLLERR)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _fd, events in poller.poll(0))
    except (OSError, ValueError):  # no stdout at all
        return True


if __name__ == "__main__":
    sys.exit(main())
