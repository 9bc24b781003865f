"""`--metadata FILE`: cluster metadata from a file, for the lab, the demo and offline use.

The file holds what `kubectl get
pods,services,endpointslices,nodes,namespaces,networkpolicies -A -o json` prints (a List), or several such documents (JSON or YAML, `---` separated), or a JSON array of
objects. It is polled (mtime, inode, size) and reloaded when it changes; a file that cannot
be read keeps the last good state served and says what is wrong and where.
"""

from __future__ import annotations

import json
import logging
import os
import threading

import yaml

from agent.errors import MetadataError
from agent.enrich.k8s.objects import KINDS
from agent.enrich.k8s.state import ClusterState
from agent.stats import AgentStats

log = logging.getLogger("podflow.k8s.file")


def _expand(doc, path: str, where: str, out: dict[str, list[dict]]) -> None:
    if doc is None:
        return
    if isinstance(doc, list):
        for index, item in enumerate(doc):
            _expand(item, path, f"{where}[{index}]", out)
        return
    if not isinstance(doc, dict):
        raise MetadataError(f"--metadata {path}: {where} is a {type(doc).__name__}, "
                            "expected a Kubernetes object or List")
    if "items" in doc and (doc.get("kind", "List").endswith("List")):
        items = doc.get("items") or []
        if not isinstance(items, list):
            raise MetadataError(f"--metadata {path}: {where}.items is not a list")
        list_kind = doc.get("kind", "List")
        for index, item in enumerate(items):
            # A typed list (PodList) may omit each item's kind.
            if isinstance(item, dict) and "kind" not in item and list_kind.endswith("List") \
                    and list_kind != "List":
                item = dict(item, kind=list_kind[: -len("List")])
            _expand(item, path, f"{where}.items[{index}]", out)
        return
    kind = doc.get("kind")
    if not kind:
        raise MetadataError(f"--metadata {path}: {where} has no `kind`")
    if kind in out:
        name = (doc.get("metadata") or {}).get("name")
        if not name:
            raise MetadataError(f"--metadata {path}: {where} ({kind}) has no metadata.name")
        out[kind].append(doc)
    else:
        log.debug("%s: ignoring %s %s", path, kind, where)


def parse_file(path: str) -> dict[str, list[dict]]:
    """Every object in the file by kind; MetadataError names the file and the problem."""
    try:
        with open(path, "rb") as fh:
            text = fh.read().decode("utf-8")
    except OSError as exc:
        raise MetadataError(f"--metadata {path}: cannot read: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise MetadataError(f"--metadata {path}: not UTF-8 text: {exc}") from exc
    out: dict[str, list[dict]] = {kind: [] for kind in KINDS}
    stripped = text.lstrip()
    if not stripped:
        raise MetadataError(f"--metadata {path}: the file is empty")
    if stripped[0] in "[{":
        try:
            docs = [json.loads(text)]
        except json.JSONDecodeError as exc:
            # Several concatenated JSON documents (kubectl get -o json, twice) also count.
            docs = _json_stream(text, path, exc)
    else:
        try:
            docs = list(yaml.safe_load_all(text))
        except yaml.YAMLError as exc:
            raise MetadataError(f"--metadata {path}: not valid JSON or YAML: {exc}") from exc
    for index, doc in enumerate(docs):
        _expand(doc, path, f"document {index + 1}", out)
    return out


def _json_stream(text: str, path: str, first_error: json.JSONDecodeError) -> list:
    decoder = json.JSONDecoder()
    docs, pos = [], 0
    while pos < len(text):
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos >= len(text):
            break
        try:
            doc, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            err = exc if docs else first_error
            raise MetadataError(f"--metadata {path}: invalid JSON at line {err.lineno} "
                                f"column {err.colno}: {err.msg}") from exc
        docs.append(doc)
    return docs


class FileSource:
    """Loads the file into the state at start (errors are fatal then) and polls it."""

    def __init__(self, path: str, state: ClusterState, stats: AgentStats,
                 poll_interval_s: float = 0.5) -> None:
        self.path = path
        self._state = state
        self._stats = stats
        self._poll_interval_s = poll_interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._signature: tuple | None = None

    def _stat(self) -> tuple | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_ino, st.st_size)

    def load(self) -> None:
        signature = self._stat()
        by_kind = parse_file(self.path)
        for kind, raws in by_kind.items():
            self._state.replace(kind, raws)
        self._signature = signature
        counts = ", ".join(f"{len(v)} {k}" for k, v in by_kind.items() if v)
        log.info("metadata loaded from %s: %s", self.path, counts or "no objects")

    def start(self) -> None:
        self.load()
        self._stats.metadata_stale = False
        self._stats.metadata_error = ""
        self._thread = threading.Thread(target=self._poll, name="metadata-file", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)

    def _poll(self) -> None:
        while not self._stop.wait(self._poll_interval_s):
            signature = self._stat()
            if signature == self._signature:
                continue
            if signature is None:
                self._fail(MetadataError(f"--metadata {self.path}: the file is gone; "
                                         "serving the last state read"))
                self._signature = None
                continue
            try:
                self.load()
            except MetadataError as exc:
                self._signature = signature
                self._fail(exc)
                continue
            if self._stats.metadata_stale:
                log.info("metadata file %s is readable again", self.path)
            self._stats.metadata_stale = False
            self._stats.metadata_error = ""

    def _fail(self, exc: MetadataError) -> None:
        log.error("%s (keeping the last state read)", exc)
        self._stats.metadata_stale = True
        self._stats.metadata_error = str(exc)
