"""Attach and detach podflow's TC programs (clsact qdisc + cls_bpf direct-action filters).

Rules users depend on, kept here in one place:
- an existing clsact qdisc is reused; we delete a clsact only when we created it and no
  other filter remains on it;
- our filters are recognisable: kind bpf, a fixed priority (FILTER_PRIO) and handle, and a
  name starting with "podflow" (the program name, also the TCA_BPF_NAME), so a new agent
  removes only podflow leftovers of a killed one and never another tool's filter;
- a filter that is not ours is never touched.

With `--attach-mode tcx` (kernel >= 6.6) the programs are attached as tcx links instead
(BPF_LINK_CREATE, a raw call in agent/datapath/bpfsys.py: neither bcc 0.26 nor pyroute2
creates them). A link lives as long as its file descriptor, so it vanishes with the agent,
even after kill -9, and no qdisc is touched. tcx programs run before the clsact filters;
ours return TCX_NEXT (the value of TC_ACT_UNSPEC), so every cls_bpf filter still runs after
us. `tc filter show` does not list tcx links (bpftool >= 7.3 `net show` does;
tcx_programs() here too).

Uses pyroute2 and raw bpf(2) only (no bcc): the caller passes program file descriptors.
"""

from __future__ import annotations

import errno
import logging
import os
from dataclasses import dataclass, field

from pyroute2.netlink.exceptions import NetlinkError

from agent.datapath import bpfsys
from agent.errors import AttachError, TcxUnsupported

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
    link_fds: list[int] = field(default_factory=list)  # tcx mode: one link per direction

    @property
    def mode(self) -> str:
        return "tcx" if self.link_fds else "tc"


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
    if attachment.link_fds:
        release(attachment)
        return
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


def release(attachment: Attachment) -> None:
    """Forget an interface that was deleted: the kernel removed its filters and links; what
    is left to do is closing our tcx link descriptors (the last reference)."""
    for fd in attachment.link_fds:
        os.close(fd)
    attachment.link_fds = []


def _del_filter(ipr, ifindex: int, f: FilterInfo) -> None:
    try:
        ipr.tc("del-filter", "bpf", ifindex, f.handle, parent=f.parent, prio=f.prio)
    except NetlinkError as exc:
        if exc.code not in _GONE:
            raise


# ---------------------------------------------------------------------------------------
# tcx links


def attach_tcx(ipr, ifindex: int, ifname: str, progs: dict[str, tuple[int, str]]) -> Attachment:
    """Attach {"ingress": (fd, name), "egress": (fd, name)} as tcx links (appended after
    any tcx program already there). Removes cls_bpf leftovers of an older podflow first."""
    try:
        remove_leftovers(ipr, ifindex)
    except NetlinkError as exc:
        raise AttachError(f"cannot clean {ifname} (ifindex {ifindex}): {exc}") from exc
    fds: list[int] = []
    for direction, (prog_fd, _name) in progs.items():
        try:
            fds.append(bpfsys.link_create(prog_fd, ifindex, direction))
        except OSError as exc:
            for fd in fds:
                os.close(fd)
            if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP, 524) and not fds:  # 524: ENOTSUPP
                raise TcxUnsupported(f"tcx links are not available on this kernel "
                                     f"({exc.strerror})") from exc
            raise AttachError(f"cannot attach a tcx link to {ifname} (ifindex {ifindex}): "
                              f"{exc.strerror}") from exc
    return Attachment(ifindex, ifname, created_clsact=False, link_fds=fds)


def tcx_programs(ifindex: int, direction: str) -> list[str]:
    """Names of the programs attached with tcx to one hook of an interface (in the current
    network namespace), in run order: what `bpftool net show` lists on newer bpftools."""
    names = (bpfsys.prog_name(prog_id) for prog_id in bpfsys.prog_ids(ifindex, direction))
    return [name for name in names if name is not None]
