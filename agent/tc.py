"""Attach and detach podflow's TC programs (clsact qdisc + cls_bpf direct-action filters).

Rules users depend on, kept here in one place:
- an existing clsact qdisc is reused; we delete a clsact only when we created it and no
  other filter remains on it;
- our filters are recognisable: kind bpf, a fixed priority (FILTER_PRIO) and handle, and a
  name starting with "podflow" (the program name, also the TCA_BPF_NAME), so a new agent
  removes only podflow leftovers of a killed one and never another tool's filter;
- a filter that is not ours is never touched.

tcx links (kernel >= 6.6) would vanish with the process, but bcc 0.26 and pyroute2 cannot
create them; cls_bpf with recognisable names and leftover cleanup gives the same guarantee
for a restarted agent.

Uses pyroute2 only (no bcc): the caller passes program file descriptors.
"""

from __future__ import annotations

import errno
import logging
from dataclasses import dataclass

from pyroute2.netlink.exceptions import NetlinkError

from agent.errors import AttachError

log = logging.getLogger("podflow.tc")

NAME_PREFIX = "podflow"
# A fixed, unusual priority: lower than tc's default (49152) so we see packets before
# filters added without a priority, and unlikely to collide with another tool's choice.
FILTER_PRIO = 0x4F50
FILTER_HANDLE = 0x4F50
CLSACT_HANDLE = 0xFFFF0000
PARENT_INGRESS = 0xFFFFFFF2
PARENT_EGRESS = 0xFFFFFFF3
PARENTS = {"ingress": PARENT_INGRESS, "egress": PARENT_EGRESS}

# The link vanished under us (a pod was deleted): not an error worth reporting.
_GONE = {errno.ENODEV, errno.ENOENT, errno.EINVAL}


@dataclass
class Attachment:
    """What we did to one interface, so detach undoes exactly that."""

    ifindex: int
    ifname: str
    created_clsact: bool


@dataclass(frozen=True)
class FilterInfo:
    parent: int
    prio: int
    handle: int
    name: str


def _filter_name(msg) -> str:
    opts = msg.get_attr("TCA_OPTIONS")
    if opts is None:
        return ""
    return opts.get_attr("TCA_BPF_NAME") or ""


def list_filters(ipr, ifindex: int) -> list[FilterInfo]:
    """Every filter (ours or not) on the clsact ingress/egress hooks of one interface."""
    found = []
    for parent in PARENTS.values():
        try:
            msgs = ipr.get_filters(index=ifindex, parent=parent)
        except NetlinkError as exc:
            if exc.code in _GONE:
                continue
            raise
        for msg in msgs:
            if msg["handle"] == 0:  # the per-priority chain header, not a filter
                continue
            found.append(FilterInfo(parent=parent, prio=(msg["info"] >> 16) & 0xFFFF,
                                    handle=msg["handle"], name=_filter_name(msg)))
    return found


def is_ours(f: FilterInfo) -> bool:
    return f.name.startswith(NAME_PREFIX)


def has_clsact(ipr, ifindex: int) -> bool:
    return any(q.get_attr("TCA_KIND") == "clsact" for q in ipr.get_qdiscs(index=ifindex))


def remove_leftovers(ipr, ifindex: int) -> int:
    """Remove podflow filters a killed agent left on this interface; returns how many.
    Never touches another filter, and never the qdisc (we cannot know who created it)."""
    removed = 0
    for f in list_filters(ipr, ifindex):
        if is_ours(f):
            _del_filter(ipr, ifindex, f)
            removed += 1
    return removed


def attach(ipr, ifindex: int, ifname: str, progs: dict[str, tuple[int, str]]) -> Attachment:
    """Attach {"ingress": (fd, name), "egress": (fd, name)} to one interface."""
    try:
        remove_leftovers(ipr, ifindex)
        created = False
        if not has_clsact(ipr, ifindex):
            try:
                ipr.tc("add", "clsact", ifindex)
                created = True
            except NetlinkError as exc:
                if exc.code != errno.EEXIST:  # someone added it meanwhile: reuse it
                    raise
        attachment = Attachment(ifindex, ifname, created)
        try:
            for direction, (fd, name) in progs.items():
                ipr.tc("add-filter", "bpf", ifindex, FILTER_HANDLE, fd=fd, name=name,
                       parent=PARENTS[direction], prio=FILTER_PRIO, classid=1,
                       direct_action=True)
        except NetlinkError:
            detach(ipr, attachment)  # never leave half an attachment behind
            raise
        return attachment
    except NetlinkError as exc:
        raise AttachError(f"cannot attach to {ifname} (ifindex {ifindex}): "
                          f"{exc.args[1] if len(exc.args) > 1 else exc}") from exc


def detach(ipr, attachment: Attachment) -> None:
    """Remove our filters; remove the clsact only if we created it and it is now empty.
    An interface that disappeared meanwhile is fine (the kernel removed everything)."""
    try:
        remaining = 0
        for f in list_filters(ipr, attachment.ifindex):
            if is_ours(f):
                _del_filter(ipr, attachment.ifindex, f)
            else:
                remaining += 1
        if attachment.created_clsact and remaining == 0:
            ipr.tc("del", "clsact", attachment.ifindex)
    except NetlinkError as exc:
        if exc.code in _GONE:
            return
        raise AttachError(f"cannot detach from {attachment.ifname}: {exc}") from exc


def _del_filter(ipr, ifindex: int, f: FilterInfo) -> None:
    try:
        ipr.tc("del-filter", "bpf", ifindex, f.handle, parent=f.parent, prio=f.prio)
    except NetlinkError as exc:
        if exc.code not in _GONE:
            raise
