"""`--metadata kubernetes`: list-then-watch of the API server with the official client.

One reflector thread per resource, the way client-go's informers work:
- list (paged) at a consistent version, replace the cached set, then watch from that
  version with bookmarks, resuming from the last version seen after every watch timeout or
  disconnect;
- 410 Gone (history compacted) -> relist;
- API server away -> keep serving the last state, report it stale (AgentStats, logs) and
  retry with capped exponential backoff; fresh again once every resource lists or watches;
- 403 -> "missing RBAC permission: list pods (at cluster scope)"; a warning for the optional
  resources; for the ones enrichment cannot do without, retried with backoff for a bounded
  time at start (`--rbac-wait`: an API server that is still starting answers 403 until it has
  loaded its RBAC), reported as "waiting for RBAC" meanwhile (log, ServerStatus
  .metadata_error), and fatal (`failure()`: the agent exits 2) only if it persists.

Every pod in the cluster is watched, not only this node's: flows cross nodes and the
remote end must be named too (about 2 KiB of cache per pod; see bench/enrich.py).
"""

from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
from dataclasses import dataclass

import urllib3
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from agent.errors import ConfigError, MetadataError
from agent.enrich.k8s.state import ClusterState
from agent.stats import AgentStats

log = logging.getLogger("podflow.k8s.api")


@dataclass(frozen=True)
class Resource:
    kind: str
    resource: str      # as RBAC names it: "pods", "endpointslices.discovery.k8s.io"
    api: str           # the kubernetes.client API class
    list_method: str
    required: bool     # enrichment cannot work without it


RESOURCES = (
    Resource("Pod", "pods", "CoreV1Api", "list_pod_for_all_namespaces", True),
    Resource("Service", "services", "CoreV1Api", "list_service_for_all_namespaces", True),
    Resource("EndpointSlice", "endpointslices.discovery.k8s.io", "DiscoveryV1Api",
             "list_endpoint_slice_for_all_namespaces", True),
    Resource("Node", "nodes", "CoreV1Api", "list_node", True),
    Resource("Namespace", "namespaces", "CoreV1Api", "list_namespace", False),
    Resource("ReplicaSet", "replicasets.apps", "AppsV1Api", "list_replica_set_for_all_namespaces", False),
    Resource("Job", "jobs.batch", "BatchV1Api", "list_job_for_all_namespaces", False),
    Resource("NetworkPolicy", "networkpolicies.networking.k8s.io", "NetworkingV1Api",
             "list_network_policy_for_all_namespaces", False),
)


def load_api_client(kubeconfig: str | None, context: str | None) -> client.ApiClient:
    """In-cluster config inside a pod (unless a kubeconfig or context is given), else the
    kubeconfig ($KUBECONFIG, ~/.kube/config)."""
    configuration = client.Configuration()
    try:
        if kubeconfig is None and context is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config(client_configuration=configuration)
        else:
            config.load_kube_config(config_file=kubeconfig, context=context,
                                    client_configuration=configuration)
    except (ConfigException, OSError) as exc:
        flag = "--kubeconfig" if kubeconfig else "--context" if context else "--metadata kubernetes"
        raise ConfigError(f"{flag}: cannot load the Kubernetes configuration: {exc}") from exc
    # Fail over to our own backoff quickly instead of urllib3's silent retries.
    configuration.retries = 0
    return client.ApiClient(configuration)


class _RawWatch(watch.Watch):
    """The client's Watch without model deserialization: the cache parses the raw JSON
    itself (faster, and the same parser as the file source)."""

    def get_return_type(self, func):
        return None


class _Unreachable(Exception):
    """The API server could not be reached (wraps urllib3's errors)."""


def rbac_message(verb: str, resource: str) -> str:
    return f"missing RBAC permission: {verb} {resource} (at cluster scope)"


class Reflector:
    """Keeps one resource's cache in sync: list, then watch from the version listed."""

    def __init__(self, spec: Resource, api_client: client.ApiClient, state: ClusterState,
                 health: "_Health", stop: threading.Event, watch_timeout_s: int,
                 page_size: int = 500) -> None:
        self.spec = spec
        self._list_fn = getattr(getattr(client, spec.api)(api_client), spec.list_method)
        self._state = state
        self._health = health
        self._stop = stop
        self._watch_timeout_s = watch_timeout_s
        self._page_size = page_size
        self.resource_version: str | None = None
        self.synced = threading.Event()
        self.forbidden = ""
        self._watch: _RawWatch | None = None
        self.relists = 0

    def run(self) -> None:
        backoff_s = 0.0
        while not self._stop.is_set():
            try:
                if self.resource_version is None:
                    self._list()
                    self._health.ok(self)
                    backoff_s = 0.0
                if self._watch_once():
                    backoff_s = 0.0
                continue
            except ApiException as exc:
                if exc.status == 410:
                    log.info("%s: watch history expired (410 Gone); relisting", self.spec.resource)
                    self.resource_version = None
                    self.relists += 1
                    continue
                if exc.status == 403:
                    verb = "watch" if self.resource_version is not None else "list"
                    message = rbac_message(verb, self.spec.resource)
                    self.forbidden = message
                else:
                    message = f"API server answered {exc.status} {exc.reason}"
            except _Unreachable as exc:
                message = f"API server unreachable: {exc}"
            if self._stop.is_set():
                return
            if self.forbidden and not self.spec.required:
                self._health.warn(self, message)
            else:
                self._health.failed(self, message)
            self.synced.set()  # the start() wait is over: this resource has an answer
            backoff_s = min(30.0, max(0.25, backoff_s * 2))
            self._stop.wait(backoff_s * random.uniform(0.8, 1.2))

    def _list(self) -> None:
        items: list[dict] = []
        token: str | None = None
        while True:
            kwargs = {"limit": self._page_size, "_preload_content": False,
                      "_request_timeout": (5, 60)}
            if token:
                kwargs["_continue"] = token
            try:
                resp = self._list_fn(**kwargs)
                body = _json(resp)
            except urllib3.exceptions.HTTPError as exc:
                raise _Unreachable(_short(exc)) from exc
            items.extend(body.get("items") or [])
            meta = body.get("metadata") or {}
            token = meta.get("continue")
            if not token:
                break
        self._state.replace(self.spec.kind, items)
        self.resource_version = meta.get("resourceVersion")
        log.debug("%s: listed %d at version %s", self.spec.resource, len(items), self.resource_version)

    def _watch_once(self) -> bool:
        """One watch request, until the server ends it (timeout) or it breaks; the version
        to resume from is kept across calls. True when the server accepted the watch."""
        established = False

        def call(**kwargs):
            nonlocal established
            resp = self._list_fn(**kwargs)
            if 200 <= resp.status < 300:
                established = True
                self.forbidden = ""
                self._health.ok(self)
                self.synced.set()  # listed and watching: start() may go on
            return resp

        # Spread the watches' renewals over time, as client-go's reflectors do.
        timeout_s = max(1, int(self._watch_timeout_s * random.uniform(1.0, 1.5)))
        w = _RawWatch()
        self._watch = w
        try:
            for event in w.stream(call, resource_version=self.resource_version,
                                  allow_watch_bookmarks=True, timeout_seconds=timeout_s,
                                  _request_timeout=(5, timeout_s + 30)):
                obj = event.get("raw_object") or event.get("object") or {}
                rv = (obj.get("metadata") or {}).get("resourceVersion")
                if event["type"] in ("ADDED", "MODIFIED", "DELETED"):
                    self._state.apply(self.spec.kind, event["type"], obj)
                if rv:
                    self.resource_version = rv
                if self._stop.is_set():
                    break
        except urllib3.exceptions.ProtocolError as exc:
            if self._stop.is_set():
                return established
            if not established:
                raise _Unreachable(_short(exc)) from exc
            # The stream broke after it was established: reconnect from the last version
            # right away; only a failed reconnect counts as the API server being away.
            log.info("%s: watch disconnected (%s); resuming from version %s",
                     self.spec.resource, _short(exc), self.resource_version)
        except urllib3.exceptions.HTTPError as exc:
            raise _Unreachable(_short(exc)) from exc
        finally:
            self._watch = None
        return established

    def abort(self) -> None:
        w = self._watch
        if w is not None:
            w.stop()


def _json(resp) -> dict:
    try:
        return json.loads(resp.data)
    finally:
        resp.release_conn()


def _short(exc: Exception) -> str:
    reason = getattr(exc, "reason", None)
    return str(reason or exc)


# What an optional resource that cannot be read costs (the warning says it).
_WITHOUT = {
    "Namespace": "namespaceSelectors of NetworkPolicies see only kubernetes.io/metadata.name",
    "ReplicaSet": "workloads are named without ReplicaSet (Deployments by pod-template-hash)",
    "Job": "workloads are named without Job (a CronJob's pods name their Job)",
    "NetworkPolicy": "NetworkPolicy verdicts are not evaluated (flows carry none)",
}


class _Health:
    """Folds the reflectors' states into AgentStats.metadata_stale / metadata_error."""

    def __init__(self, stats: AgentStats) -> None:
        self._stats = stats
        self._lock = threading.Lock()
        self._errors: dict[str, str] = {}
        self._warnings: dict[str, str] = {}
        self._stale = False
        self.waiting_for_rbac = False

    def ok(self, reflector: Reflector) -> None:
        name = reflector.spec.resource
        if name not in self._errors and name not in self._warnings:
            return
        with self._lock:
            was_rbac = self._errors.pop(name, "").startswith("missing RBAC")
            self._warnings.pop(name, None)
            if was_rbac and self.waiting_for_rbac and not any(
                    m.startswith("missing RBAC") for m in self._errors.values()):
                self.waiting_for_rbac = False
                log.info("RBAC granted: listing and watching every resource the names need")
            self._publish()

    def warn(self, reflector: Reflector, message: str) -> None:
        """A problem that leaves the metadata usable (an optional resource is forbidden)."""
        with self._lock:
            if self._warnings.get(reflector.spec.resource) != message:
                log.warning("%s; %s", message, _WITHOUT.get(reflector.spec.kind,
                                                            f"going on without {reflector.spec.kind}"))
            self._warnings[reflector.spec.resource] = message
            self._publish()

    def failed(self, reflector: Reflector, message: str) -> None:
        with self._lock:
            if self._errors.get(reflector.spec.resource) != message:
                if message.startswith("missing RBAC"):  # names the resource already
                    if not self.waiting_for_rbac:
                        log.warning("%s; serving the last known state", message)
                else:
                    log.warning("%s (%s); serving the last known state", message,
                                reflector.spec.resource)
            self._errors[reflector.spec.resource] = message
            self._publish()

    def wait_for_rbac(self, waiting: bool) -> None:
        """While waiting, RBAC errors read "waiting for RBAC: ..." (the start-up bound)."""
        with self._lock:
            self.waiting_for_rbac = waiting
            self._publish()

    def _publish(self) -> None:
        stale = bool(self._errors)
        if self._stale and not stale:
            log.info("Kubernetes metadata is fresh again")
        self._stale = stale
        self._stats.metadata_stale = stale
        # One line per distinct problem, naming the resources it hit.
        by_message: dict[str, list[str]] = {}
        for resource, message in sorted({**self._warnings, **self._errors}.items()):
            if message.startswith("missing RBAC"):
                if self.waiting_for_rbac and resource in self._errors:
                    message = f"waiting for RBAC: {message}"
                by_message[message] = []  # already names the resource
            else:
                by_message.setdefault(message, []).append(resource)
        self._stats.metadata_error = "; ".join(
            f"{m} ({', '.join(r)})" if r else m for m, r in by_message.items())


class KubeSource:
    """Starts a reflector per resource and waits (bounded) for the first lists."""

    def __init__(self, state: ClusterState, stats: AgentStats, kubeconfig: str | None = None,
                 context: str | None = None, sync_timeout_s: float = 10.0,
                 watch_timeout_s: int = 300, rbac_wait_s: float = 0.0) -> None:
        self._state = state
        self._rbac_wait_s = rbac_wait_s
        self._rbac_deadline: float | None = None  # set while waiting for RBAC at start
        self._stats = stats
        self._kubeconfig = kubeconfig
        self._context = context
        self._sync_timeout_s = sync_timeout_s
        self._watch_timeout_s = watch_timeout_s
        self._stop = threading.Event()
        self._health = _Health(stats)
        self.reflectors: list[Reflector] = []
        self._threads: list[threading.Thread] = []
        self._api_client: client.ApiClient | None = None

    def start(self) -> None:
        started = time.monotonic()
        self._api_client = load_api_client(self._kubeconfig, self._context)
        self._health.wait_for_rbac(self._rbac_wait_s > 0)  # 403s at start are said once, below
        for spec in RESOURCES:
            reflector = Reflector(spec, self._api_client, self._state, self._health, self._stop,
                                  self._watch_timeout_s)
            thread = threading.Thread(target=reflector.run, name=f"watch-{spec.kind}", daemon=True)
            self.reflectors.append(reflector)
            self._threads.append(thread)
            thread.start()
        deadline = time.monotonic() + self._sync_timeout_s
        for reflector in self.reflectors:
            reflector.synced.wait(max(0.0, deadline - time.monotonic()))
        forbidden = self._forbidden()
        if forbidden and self._rbac_wait_s <= 0:
            self.stop()
            raise MetadataError("; ".join(forbidden) + " (grant it in the agent's ClusterRole)")
        if not forbidden:
            self._health.wait_for_rbac(False)
        else:
            self._rbac_deadline = started + self._rbac_wait_s
            self._health.wait_for_rbac(True)
            log.warning("waiting for RBAC: %s; an API server that is still starting refuses "
                        "until it has loaded its RBAC: retrying with backoff for up to %.0f s "
                        "(--rbac-wait), then exiting unless it is granted (the agent's "
                        "ClusterRole)", "; ".join(forbidden), self._rbac_wait_s)
        for reflector in self.reflectors:
            if not reflector.synced.is_set():
                self._health.failed(reflector, f"no answer from the API server for "
                                               f"{reflector.spec.resource} yet")

    def _forbidden(self) -> list[str]:
        return [r.forbidden for r in self.reflectors if r.forbidden and r.spec.required]

    def failure(self) -> str | None:
        """While waiting for RBAC at start: None until the wait is over; then, if a resource
        the names need is still forbidden, why the agent must stop."""
        if self._rbac_deadline is None or not self._health.waiting_for_rbac:
            return None  # not waiting, or granted meanwhile (_Health.ok)
        forbidden = self._forbidden()
        if not forbidden or time.monotonic() < self._rbac_deadline:
            return None
        return (f"{'; '.join(forbidden)}, still after waiting {self._rbac_wait_s:.0f} s "
                "(--rbac-wait) for the API server's RBAC: grant it in the agent's ClusterRole")

    def stop(self) -> None:
        self._stop.set()
        for reflector in self.reflectors:
            reflector.abort()
        for thread in self._threads:
            thread.join(timeout=2.0)
        if self._api_client is not None:
            self._api_client.close()
            self._api_client = None
