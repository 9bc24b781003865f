"""Attach and detach podflow's TC programs (clsact qdisc + cls_bpf direct-action filters).

Rules users depend on, kept here in one place:
- an existing clsact qdisc is reused; we delete a clsact only when we created it and no
  other filter remains on it;
- our filters are recognisable: kind bpf, a fixed priority (FILTER_PRIO) and handle, and a
  name starting with "podflow" (the program name, also the TCA_BPF_NAME), so a new agent
  removes only podflow leftovers of a killed one and never another tool's filter;
- a filter that is not ours is never touched.

With tcx (`--attach-mode auto` on kernels >= 6.6, or `tcx`) the programs are attached as
tcx links instead (BPF_LINK_CREATE, a raw call in agent/datapath/bpfsys.py: neither bcc 0.26
nor pyroute2 creates them). A link lives as long as its file descriptor, so it vanishes with
the agent, even after kill -9, and no qdisc is touched. Our links go to the HEAD of each
chain (BPF_F_BEFORE without a relative program): Cilium (1.16+) attaches tcx programs that
end the chain (TCX_PASS or a redirect), and anything behind them sees nothing. Ours return
TCX_NEXT (the value of TC_ACT_UNSPEC), so every program after us, tcx or cls_bpf, still runs.
`keep_first` keeps that place: a program attached later at the head (BPF_F_BEFORE) is seen
by the hook's revision changing, and our link is detached and attached again at the head
(the packets of the microseconds between the two calls are not seen); a tool that keeps
taking the head is left there after MAX_MOVES moves in MOVE_WINDOW_S, and that is said.
`tc filter show` does not list tcx links (bpftool >= 7.3 `net show` does; tcx_programs()
here too).

On the legacy path (clsact + cls_bpf) a filter with a lower priority number runs first, and a
direct-action program that returns TC_ACT_OK, SHOT or REDIRECT ends the chain: the packets it
ends it for never reach our filter. tcx programs run before every clsact filter, too.
`chain_notes` says so per interface and hook (the loader puts it in the log and in
ServerStatus.interface_notes) instead of letting podflow report silence.

Uses pyroute2 and raw bpf(2) only (no bcc): the caller passes program file descriptors.
"""

from __future__ import annotations

import errno
import logging
import os
import time
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


# keep_first gives up the head of a chain to a tool that takes it this often.
MAX_MOVES = 3
MOVE_WINDOW_S = 60.0


@dataclass
class Attachment:
    """What we did to one interface, so detach undoes exactly that."""

    ifindex: int
    ifname: str
    created_clsact: bool
    links: dict[str, int] = field(default_factory=dict)  # tcx mode: hook -> link fd
    # tcx mode, per hook: the chain revision last checked, when we moved back to the head,
    # and what still runs before us (keep_first)
    revisions: dict[str, int] = field(default_factory=dict)
    moves: dict[str, list[float]] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)

    @property
    def mode(self) -> str:
        return "tcx" if self.links else "tc"

    @property
    def link_fds(self) -> list[int]:
        return list(self.links.values())


@dataclass(frozen=True)
class FilterInfo:
    parent: int
    prio: int
    handle: int
    name: str
    kind: str = ""
    direct_action: bool = False

    @property
    def hook(self) -> str:
        return "ingress" if self.parent == PARENT_INGRESS else "egress"


TCA_BPF_FLAG_ACT_DIRECT = 1


def _filter_name(msg) -> str:
    opts = msg.get_attr("TCA_OPTIONS")
    if opts is None or not hasattr(opts, "get_attr"):
        return ""
    return opts.get_attr("TCA_BPF_NAME") or ""


def _direct_action(msg) -> bool:
    opts = msg.get_attr("TCA_OPTIONS")
    if opts is None or not hasattr(opts, "get_attr"):
        return False
    return bool((opts.get_attr("TCA_BPF_FLAGS") or 0) & TCA_BPF_FLAG_ACT_DIRECT)


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
                                    handle=msg["handle"], name=_filter_name(msg),
                                    kind=msg.get_attr("TCA_KIND") or "",
                                    direct_action=_direct_action(msg)))
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
    for fd in attachment.links.values():
        os.close(fd)
    attachment.links = {}


def _del_filter(ipr, ifindex: int, f: FilterInfo) -> None:
    try:
        ipr.tc("del-filter", "bpf", ifindex, f.handle, parent=f.parent, prio=f.prio)
    except NetlinkError as exc:
        if exc.code not in _GONE:
            raise


# ---------------------------------------------------------------------------------------
# tcx links


def attach_tcx(ipr, ifindex: int, ifname: str, progs: dict[str, tuple[int, str]]) -> Attachment:
    """Attach {"ingress": (fd, name), "egress": (fd, name)} as tcx links at the head of each
    chain, before any tcx program already there. Removes cls_bpf leftovers of an older
    podflow first."""
    try:
        remove_leftovers(ipr, ifindex)
    except NetlinkError as exc:
        raise AttachError(f"cannot clean {ifname} (ifindex {ifindex}): {exc}") from exc
    links: dict[str, int] = {}
    for direction, (prog_fd, _name) in progs.items():
        try:
            links[direction] = bpfsys.link_create(prog_fd, ifindex, direction, first=True)
        except OSError as exc:
            for fd in links.values():
                os.close(fd)
            if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP, 524) and not links:  # 524: ENOTSUPP
                raise TcxUnsupported(f"tcx links are not available on this kernel "
                                     f"({exc.strerror})") from exc
            raise AttachError(f"cannot attach a tcx link to {ifname} (ifindex {ifindex}): "
                              f"{exc.strerror}") from exc
    # No revision known yet: the first keep_first looks at each chain once (a program put
    # at the head between our attach and that look is seen too).
    return Attachment(ifindex, ifname, created_clsact=False, links=links)


def tcx_programs(ifindex: int, direction: str) -> list[str]:
    """Names of the programs attached with tcx to one hook of an interface (in the current
    network namespace), in run order: what `bpftool net show` lists on newer bpftools."""
    names = (bpfsys.prog_name(prog_id) for prog_id in bpfsys.prog_ids(ifindex, direction))
    return [name for name in names if name is not None]


def _names(prog_ids) -> list[str]:
    return [bpfsys.prog_name(i) or f"id {i}" for i in prog_ids]


def keep_first(attachment: Attachment, progs: dict[str, tuple[int, int]],
               now: float | None = None) -> dict[str, str]:
    """tcx: put our link back at the head of any chain where a program was attached before
    it since the last check (one BPF_PROG_QUERY per hook; nothing more while the revision is
    unchanged). `progs`: {hook: (prog fd, prog id)}. Returns {hook: note} for the hooks where
    something still runs before us (a tool that keeps taking the head; a failed move)."""
    now = time.monotonic() if now is None else now
    for direction, link_fd in list(attachment.links.items()):
        prog_fd, our_id = progs[direction]
        try:
            chain = bpfsys.query_tcx(attachment.ifindex, direction)
        except OSError as exc:
            if exc.errno not in _GONE:  # gone: the interface went away; reconcile releases it
                attachment.notes[direction] = f"cannot query the tcx chain: {exc.strerror}"
            continue
        if chain.revision == attachment.revisions.get(direction):
            continue
        attachment.revisions[direction] = chain.revision
        ahead = list(chain.prog_ids[:chain.prog_ids.index(our_id)]) \
            if our_id in chain.prog_ids else list(chain.prog_ids)
        if not ahead:
            attachment.notes.pop(direction, None)
            continue
        names = ", ".join(repr(n) for n in _names(ahead))
        moves = [t for t in attachment.moves.get(direction, []) if now - t < MOVE_WINDOW_S]
        attachment.moves[direction] = moves
        if len(moves) >= MAX_MOVES:
            attachment.notes[direction] = (
                f"tcx program {names} keeps taking the head of the chain ({len(moves)} moves "
                f"back in {MOVE_WINDOW_S:.0f} s): podflow stays behind it; packets it ends the "
                "chain for are not seen")
            continue
        try:
            bpfsys.link_detach(link_fd)
            os.close(link_fd)
            del attachment.links[direction]
            attachment.links[direction] = bpfsys.link_create(prog_fd, attachment.ifindex,
                                                             direction, first=True)
        except OSError as exc:
            attachment.notes[direction] = (
                f"a tcx program ({names}) was attached before podflow's and moving back to "
                f"the head failed ({exc.strerror}): packets it ends the chain for are not seen")
            continue
        moves.append(now)
        attachment.notes.pop(direction, None)
        attachment.revisions[direction] = -1  # look once more: confirms we are first
        log.info("%s %s: tcx program %s was attached before podflow's; moved podflow back to "
                 "the head of the chain (it passes every packet on)", attachment.ifname,
                 direction, names)
    return dict(attachment.notes)


def chain_notes(ipr, attachment: Attachment) -> dict[str, str]:
    """tc (clsact + cls_bpf) mode: {hook: note} for each hook where something runs before
    our filter and may end the chain: tcx programs (they all run before clsact), and other
    filters with a lower priority number (a direct-action cls_bpf program returning TC_ACT_OK,
    SHOT or REDIRECT ends it)."""
    notes: dict[str, list[str]] = {}
    for direction in PARENTS:
        try:
            ahead = _names(bpfsys.query_tcx(attachment.ifindex, direction).prog_ids)
        except OSError:
            ahead = []  # no tcx on this kernel, or the interface went away
        if ahead:
            notes.setdefault(direction, []).append(
                f"tcx program {', '.join(repr(n) for n in ahead)} runs before podflow's tc "
                "filter (tcx runs before clsact)")
    try:
        filters = list_filters(ipr, attachment.ifindex)
    except NetlinkError as exc:
        if exc.code in _GONE:
            return {}
        raise
    for f in sorted(filters, key=lambda f: (f.parent, f.prio)):
        if is_ours(f) or f.prio >= FILTER_PRIO:
            continue
        if f.kind == "bpf":
            what = (f"cls_bpf filter {f.name!r} (pref {f.prio}"
                    f"{', direct-action' if f.direct_action else ''})")
        else:
            what = f"{f.kind or 'a'} filter (pref {f.prio})"
        notes.setdefault(f.hook, []).append(f"foreign {what} runs before podflow's "
                                            f"(pref {FILTER_PRIO})")
    return {hook: "; ".join(parts) + ": packets it ends the chain for (TC_ACT_OK, SHOT, "
            "REDIRECT) are not seen by podflow; tcx (--attach-mode auto, kernel >= 6.6) "
            "runs first" for hook, parts in notes.items()}
