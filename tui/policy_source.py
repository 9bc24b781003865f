"""The cluster's NetworkPolicies for the Policies view, read in the background.

Records say which policies allowed or denied each connection; only the policies themselves
say which rules nothing used and which policies no traffic touched. This reads them
(agent.client.policy.load_catalog: one list of networkpolicies, or the metadata file) when
the TUI starts and every `refresh_s`, in its own thread (an API server that is slow to answer
never holds the views up), and hands them to the aggregator. A failure is shown in the view's
header, never fatal.
"""

from __future__ import annotations

import threading

from agent.client.policy import load_catalog


class PolicyCatalogSource:
    """A source of the engine like the flow sources: start() and stop()."""

    def __init__(self, aggregator, source: str, kubeconfig: str | None = None,
                 context: str | None = None, refresh_s: float = 30.0):
        self._agg = aggregator
        self._source = source
        self._kubeconfig = kubeconfig
        self._context = context
        self._refresh_s = refresh_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="policy-catalog", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._agg.set_policy_catalog(load_catalog(self._source, self._kubeconfig,
                                                      self._context))
            self._stop.wait(self._refresh_s)
