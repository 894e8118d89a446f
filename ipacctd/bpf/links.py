"""Cgroup attachment: bpf_link create/update/pin/detach, legacy attach, and PROG_QUERY."""

from __future__ import annotations

import ctypes
import os
import struct
from typing import TYPE_CHECKING, Self

from ipacctd.bpf.objects import Object, fd_by_id, info_by_fd, obj_get
from ipacctd.bpf.programs import AttachType, Program, program_stats_by_id
from ipacctd.bpf.syscall import Attr, Cmd, addr, bpf, close

if TYPE_CHECKING:
    from ipacctd.bpf.info import Attached, LinkInfo, ProgramStats

F_ALLOW_MULTI = 1 << 1
F_REPLACE = 1 << 2
F_QUERY_EFFECTIVE = 1 << 0

LINK_TYPE_CGROUP = 3


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
        attr = Attr(struct.pack("=IIII", prog.fd, cgroup_fd, attach_type, 0))
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
        flags = F_REPLACE if old_prog is not None else 0
        old_fd = old_prog.fd if old_prog is not None else 0
        bpf(Cmd.LINK_UPDATE, Attr(struct.pack("=IIII", self.fd, new_prog.fd, flags, old_fd)),
            f"link {self.name!r}")

    def detach(self) -> None:
        """BPF_LINK_DETACH: take the program off the cgroup even if pins remain."""
        bpf(Cmd.LINK_DETACH, Attr(struct.pack("=I", self.fd)), f"link {self.name!r}")

    def info(self) -> LinkInfo:
        """The kernel's info on this link."""
        from ipacctd.bpf.info import LinkInfo

        raw = info_by_fd(self.fd, 64, f"link {self.name!r}")
        ltype, lid, prog_id = struct.unpack_from("=III", raw, 0)
        cgroup_id, attach_type = struct.unpack_from("=QI", raw, 16)
        return LinkInfo(lid, ltype, prog_id, cgroup_id, attach_type)

    def program(self) -> Program:
        """Open the program this link currently holds."""
        return Program.from_id(self.info().prog_id)


def link_program_id(fd: int) -> int:
    """prog_id of struct bpf_link_info (u32 at 8; only the 16 bytes up to it are read)."""
    return struct.unpack_from("=I", info_by_fd(fd, 16, "link"), 8)[0]


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
    flags = F_ALLOW_MULTI | (F_REPLACE if replace is not None else 0)
    attr = Attr(struct.pack("=IIIII", cgroup_fd, prog.fd, attach_type, flags,
                            replace.fd if replace is not None else 0))
    bpf(Cmd.PROG_ATTACH, attr, f"attach program {prog.name!r}")


def prog_detach(cgroup_fd: int, prog: Program, attach_type: AttachType) -> None:
    """BPF_PROG_DETACH of one program attached with ``BPF_F_ALLOW_MULTI`` (by whoever)."""
    bpf(Cmd.PROG_DETACH, Attr(struct.pack("=IIIII", cgroup_fd, prog.fd, attach_type, 0, 0)),
        f"detach program {prog.name!r}")


def prog_query(cgroup_fd: int, attach_type: AttachType, effective: bool = False,
               slots: int = 64) -> Attached:
    """BPF_PROG_QUERY: which programs run on ``attach_type`` of this cgroup.

    ``effective`` includes programs inherited from ancestor cgroups.
    """
    from ipacctd.bpf.info import Attached

    progs = (ctypes.c_uint32 * slots)()
    links = (ctypes.c_uint32 * slots)()
    attr = Attr(struct.pack("=IIIIQIIQQQQ", cgroup_fd, attach_type,
                            F_QUERY_EFFECTIVE if effective else 0, 0, addr(progs), slots, 0,
                            0, 0 if effective else addr(links), 0, 0))
    bpf(Cmd.PROG_QUERY, attr, f"query {attach_type.name.lower()}")
    raw = attr.raw()
    flags = struct.unpack_from("=I", raw, 12)[0]
    count = min(struct.unpack_from("=I", raw, 24)[0], slots)
    return Attached(flags, tuple(progs[:count]), tuple(links[:count]))


def open_cgroup(path: str) -> int:
    """Open a cgroup directory for attaching/querying; the caller closes the fd."""
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def __getattr__(name: str) -> object:
    # LinkInfo, Attached moved to ipacctd.bpf.info (imported on first use); still exported here.
    if name in ("LinkInfo", "Attached"):
        from ipacctd.bpf import info

        return getattr(info, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
