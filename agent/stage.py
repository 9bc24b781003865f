"""What `podflow agent` (agent/main.py) may ask of a stage that runs: the stage interface.

A stage is a part of the agent with a lifetime of its own (threads, sockets, kernel objects):
the datapath, the metadata source, the Observer server, the flow log, the metrics endpoint.
main.py builds every stage first (so a bad flag fails before anything is attached), starts
them in data-flow order, and stops them newest first. Three hooks are optional, and declared
here with defaults that do nothing, so main.py calls them on every stage instead of probing
which stage has them: `reopen()` on SIGHUP, `ready_info()` for `--ready-file`, and
`failure()`, asked about once a second while the agent runs, for a stage that can find out
after its start that the agent cannot go on (a permission still refused when a bounded wait
ends).

Steps of the per-batch pipeline that own nothing to start (the annotator, the flow store)
are not stages.
"""

from __future__ import annotations

import abc


class Stage(abc.ABC):
    """A running part of the agent. `start()` raises a PodflowError naming what failed (the
    agent then stops what already started and exits 2); `stop()` releases everything and may
    be called after a failed or partial start."""

    @abc.abstractmethod
    def start(self) -> None:
        """Acquire what the stage needs and start its threads; return once it runs."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Release everything (detach, flush, close); safe after a failed start."""

    def reopen(self) -> None:
        """SIGHUP: reopen files (e.g. after logrotate renamed them). Called in the signal
        handler: set a flag and let the stage's own thread do the work."""

    def failure(self) -> str | None:
        """Why the agent must stop now (it then exits 2 with this message), or None. Asked
        about once a second from the main thread; must return at once."""
        return None

    def ready_info(self) -> dict:
        """What this stage adds to the --ready-file JSON once it runs (e.g. {"listen":
        "unix:/run/x.sock"}), for the lab, the demo and the tests."""
        return {}
