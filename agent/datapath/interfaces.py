"""Which interfaces of a node podflow traces, and when that set changes.

Detection (what a CNI leaves on a node):
- a pod veth is a veth whose peer lives in another network namespace (IFLA_LINK_NETNSID
  is set) and which does not carry the node's default route (that would be the uplink);
- a bridge (cni0, docker0, cbr0, weave ...) is traced when it has at least one veth port.
`--interfaces GLOBS` replaces detection with the links matching the globs (a bridge stays a
bridge, anything else is treated as a pod veth); `--exclude-interfaces GLOBS` always wins.

LinkWatcher wakes a callback on every netlink link event (pods coming and going), so the
datapath can re-read the links and attach/detach the difference.
"""

from __future__ import annotations

import fnmatch
import logging
import select
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pyroute2.netlink.exceptions import NetlinkError

from agent.datapath.decode import InterfaceInfo, InterfaceKind
from agent.errors import PodflowError

log = logging.getLogger("podflow.interfaces")

RTMGRP_LINK = 0x1
RTMGRP_IPV4_ROUTE = 0x40
RTMGRP_IPV6_ROUTE = 0x400


@dataclass(frozen=True)
class Link:
    """The parts of a netlink link message detection needs."""

    index: int
    name: str
    kind: str  # IFLA_INFO_KIND: veth, bridge, ... ("" for physical / loopback)
    master: int | None  # ifindex of the bridge it is a port of
    peer_netnsid: int | None  # set for a veth whose peer is in another namespace


def _matches(name: str, globs: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, g) for g in globs)


def list_links(ipr) -> list[Link]:
    links = []
    for msg in ipr.get_links():
        info = msg.get_attr("IFLA_LINKINFO")
        kind = (info.get_attr("IFLA_INFO_KIND") if info is not None else None) or ""
        links.append(Link(index=msg["index"], name=msg.get_attr("IFLA_IFNAME"), kind=kind,
                          master=msg.get_attr("IFLA_MASTER"),
                          peer_netnsid=msg.get_attr("IFLA_LINK_NETNSID")))
    return links


def default_route_ifindexes(ipr) -> set[int]:
    """Interfaces carrying a default route (IPv4 or IPv6, main table): the node's uplinks."""
    found: set[int] = set()
    for family in (socket.AF_INET, socket.AF_INET6):
        for route in ipr.get_routes(family=family, table=254):
            if route["dst_len"] != 0:
                continue
            oif = route.get_attr("RTA_OIF")
            if oif:
                found.add(oif)
            multipath = route.get_attr("RTA_MULTIPATH") or []
            for hop in multipath:
                if hop.get("oif"):
                    found.add(hop["oif"])
    return found


def select_interfaces(links: list[Link], uplinks: set[int], include: Sequence[str],
                      exclude: Sequence[str]) -> dict[int, InterfaceInfo]:
    """The interfaces to trace: {ifindex: InterfaceInfo}. Plain function, tested alone."""
    chosen: dict[int, InterfaceInfo] = {}
    if include:
        for link in links:
            if link.name == "lo" or not _matches(link.name, include):
                continue
            kind = InterfaceKind.BRIDGE if link.kind == "bridge" else InterfaceKind.POD_VETH
            chosen[link.index] = InterfaceInfo(link.index, link.name, kind)
    else:
        by_index = {link.index: link for link in links}
        for link in links:
            if link.kind == "veth" and link.peer_netnsid is not None \
                    and link.index not in uplinks:
                chosen[link.index] = InterfaceInfo(link.index, link.name,
                                                   InterfaceKind.POD_VETH)
        for link in links:
            if link.kind != "veth" or link.master is None:
                continue
            bridge = by_index.get(link.master)
            if bridge is not None and bridge.kind == "bridge":
                chosen[bridge.index] = InterfaceInfo(bridge.index, bridge.name,
                                                     InterfaceKind.BRIDGE)
    return {i: info for i, info in chosen.items() if not _matches(info.name, exclude)}


class LinkWatcher:
    """Calls `on_change()` (from its own thread) after netlink link or route events, and
    `on_tick()` about every `tick_s` (for what sends no netlink event: another tool's tcx
    link put before ours).

    It does not parse the messages: any change triggers a re-read of the links, which is
    cheap and can never miss a transition (a veth created in the node namespace, then its
    peer moved into the pod's namespace, then enslaved to a bridge). Bursts are coalesced:
    the callback runs once `settle_s` after the last event of a burst.
    """

    def __init__(self, on_change: Callable[[], None], settle_s: float = 0.05,
                 on_tick: Callable[[], None] | None = None, tick_s: float = 1.0):
        self._on_change = on_change
        self._on_tick = on_tick
        self._tick_s = tick_s
        self._settle_s = settle_s
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        self._sock.bind((0, RTMGRP_LINK | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE))
        self._sock.setblocking(False)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="podflow-links", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sock.close()

    def _drain(self) -> bool:
        got = False
        while True:
            try:
                self._sock.recv(65536)
                got = True
            except BlockingIOError:
                return got
            except OSError as exc:  # ENOBUFS: events were dropped; a re-read covers them
                log.debug("netlink socket: %s", exc)
                return True

    def _run(self) -> None:
        next_tick = time.monotonic() + self._tick_s
        while not self._stop.is_set():
            ready, _, _ = select.select([self._sock], [], [], 0.2)
            if self._on_tick is not None and time.monotonic() >= next_tick:
                next_tick = time.monotonic() + self._tick_s
                self._call(self._on_tick)
            if not ready or not self._drain():
                continue
            # coalesce a burst
            while select.select([self._sock], [], [], self._settle_s)[0]:
                self._drain()
            if self._stop.is_set():
                return
            self._call(self._on_change)

    @staticmethod
    def _call(callback: Callable[[], None]) -> None:
        try:
            callback()
        except (PodflowError, NetlinkError, OSError) as exc:
            log.error("watching links and hooks: %s", exc)
