"""Cgroup attachment: bpf_link create/update/pin/detach (ipacctd's own programs), PROG_ATTACH
and PROG_DETACH with BPF_F_ALLOW_MULTI (the attachment systemd makes, for programs it arms and
for ``IP*FilterPath=``), and PROG_QUERY."""

from __future__ import annotations

import ctypes
import os

from ipacctd.bpf.objects import Object, fd_by_id, info_by_fd, obj_get
from ipacctd.bpf.programs import Program, program_stats_by_id
from ipacctd.bpf.syscall import addr, bpf, close
from ipacctd.bpf.types import F_ALLOW_MULTI, F_QUERY_EFFECTIVE, F_REPLACE, AttachType, Cmd
from ipacctd.uapi import BpfAttr, BpfLinkInfo

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing
if TYPE_CHECKING:
    from typing import Self

    from ipacctd.bpf.info import Attached, LinkInfo, ProgramStats


class CgroupLink(Object):
    """A bpf_link holding a program on a cgroup hook.

    While the link (its fd or its pin) exists the program stays attached; :meth:`update`
    swaps the program atomically, so no packet sees the hook empty.
    """

    kind = "link"

    @classmethod
    def create(cls, cgroup_fd: int, prog: Program, attach_type: AttachType,
               name: str = "") -> Self:
        """BPF_LINK_CREATE: attach ``prog`` to the cgroup behind ``cgroup_fd``."""
        attr = BpfAttr()
        attr.link_create.prog_fd = prog.fd
        attr.link_create.target_fd = cgroup_fd
        attr.link_create.attach_type = attach_type
        what = f"{attach_type.name.lower()} link for program {prog.name!r}"
        return cls(bpf(Cmd.LINK_CREATE, attr, what), name or prog.name)

    @classmethod
    def open_pinned(cls, path: str) -> Self:
        """Open the link pinned at ``path``."""
        return cls(obj_get(path, "link"), path)

    @classmethod
    def from_id(cls, link_id: int) -> Self:
        """Open a link by its kernel id."""
        return cls(fd_by_id(Cmd.LINK_GET_FD_BY_ID, link_id, "link"))

    def update(self, new_prog: Program, old_prog: Program | None = None) -> None:
        """BPF_LINK_UPDATE: replace the program in one step.

        With ``old_prog`` the swap only happens if the link still holds that program
        (compare-and-swap), so two writers cannot silently overwrite each other.
        """
        attr = BpfAttr()
        attr.link_update.link_fd = self.fd
        attr.link_update.new_prog_fd = new_prog.fd
        if old_prog is not None:
            attr.link_update.flags = F_REPLACE
            attr.link_update.old_prog_fd = old_prog.fd
        bpf(Cmd.LINK_UPDATE, attr, f"link {self.name!r}")

    def detach(self) -> None:
        """BPF_LINK_DETACH: take the program off the cgroup even if pins remain."""
        attr = BpfAttr()
        attr.link_detach.link_fd = self.fd
        bpf(Cmd.LINK_DETACH, attr, f"link {self.name!r}")

    def info(self) -> LinkInfo:
        """The kernel's info on this link."""
        from ipacctd.bpf.info import LinkInfo

        i = info_by_fd(self.fd, BpfLinkInfo(), f"link {self.name!r}")
        return LinkInfo(i.id, i.type, i.prog_id, i.cgroup.cgroup_id, i.cgroup.attach_type)

    def program(self) -> Program:
        """Open the program this link currently holds."""
        return Program.from_id(self.info().prog_id)


# struct bpf_link_info up to its per-type union: type, id, prog_id.
_LINK_HEAD = BpfLinkInfo._u.offset


def link_program_id(fd: int) -> int:
    """prog_id of struct bpf_link_info (only the fields before the per-type union are read)."""
    return info_by_fd(fd, BpfLinkInfo(), "link", _LINK_HEAD).prog_id


def linked_program_stats(link_pin: str) -> ProgramStats:
    """The run statistics of the program the link pinned at ``link_pin`` holds now.

    Only the fields needed are asked of the kernel (no Program or CgroupLink objects, no
    map ids): a scrape with BPF stats on reads this for every unit and direction, and the
    full ``Program.from_id(...).info()`` path costs ~5x as much.
    """
    fd = obj_get(link_pin, "link")
    try:
        prog_id = link_program_id(fd)
    finally:
        close(fd)
    return program_stats_by_id(prog_id)


def prog_attach(cgroup_fd: int, prog: Program, attach_type: AttachType,
                replace: Program | None = None) -> None:
    """BPF_PROG_ATTACH with ``BPF_F_ALLOW_MULTI`` (the attachment systemd makes for
    ``IPIngressFilterPath=``; it lives on without any fd or pin, until detached or until the
    cgroup goes).

    With ``replace`` (``BPF_F_REPLACE``), ``prog`` takes the place of ``replace`` in the
    cgroup's program list in one step, whoever attached it; ENOENT when ``replace`` is not
    attached there. The kernel refuses (EINVAL) to attach a program that is attached to the
    hook by PROG_ATTACH already: one program runs at most once per hook that way.
    """
    attr = _attach_attr(cgroup_fd, prog, attach_type)
    attr.attach_flags = F_ALLOW_MULTI
    if replace is not None:
        attr.attach_flags |= F_REPLACE
        attr.replace_bpf_fd = replace.fd
    bpf(Cmd.PROG_ATTACH, attr, f"attach program {prog.name!r}")


def prog_detach(cgroup_fd: int, prog: Program, attach_type: AttachType) -> None:
    """BPF_PROG_DETACH of one program attached with ``BPF_F_ALLOW_MULTI`` (by whoever)."""
    bpf(Cmd.PROG_DETACH, _attach_attr(cgroup_fd, prog, attach_type),
        f"detach program {prog.name!r}")


def _attach_attr(cgroup_fd: int, prog: Program, attach_type: AttachType) -> BpfAttr:
    attr = BpfAttr()
    attr.target_fd = cgroup_fd
    attr.attach_bpf_fd = prog.fd
    attr.attach_type = attach_type
    return attr


def prog_query(cgroup_fd: int, attach_type: AttachType, effective: bool = False,
               slots: int = 64) -> Attached:
    """BPF_PROG_QUERY: which programs run on ``attach_type`` of this cgroup.

    ``effective`` includes programs inherited from ancestor cgroups.
    """
    from ipacctd.bpf.info import Attached

    progs = (ctypes.c_uint32 * slots)()
    links = (ctypes.c_uint32 * slots)()
    attr = BpfAttr()
    query = attr.query
    query.target_fd = cgroup_fd
    query.attach_type = attach_type
    query.prog_ids = addr(progs)
    query.prog_cnt = slots
    if effective:
        query.query_flags = F_QUERY_EFFECTIVE
    else:  # link ids only for the programs attached here, not inherited ones
        query.link_ids = addr(links)
    bpf(Cmd.PROG_QUERY, attr, f"query {attach_type.name.lower()}")
    count = min(query.prog_cnt, slots)
    return Attached(query.attach_flags, tuple(progs[:count]), tuple(links[:count]))


def open_cgroup(path: str) -> int:
    """Open a cgroup directory for attaching/querying; the caller closes the fd."""
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

