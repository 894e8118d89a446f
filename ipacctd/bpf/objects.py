"""What maps, programs and links share: an owned fd, pinning in bpffs, info by fd, ids."""

from __future__ import annotations

import contextlib
import ctypes
import os

from ipacctd.bpf.syscall import addr, bpf, close
from ipacctd.bpf.types import Cmd
from ipacctd.uapi import BpfAttr

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing
if TYPE_CHECKING:
    from typing import Self, TypeVar

    Info = TypeVar("Info", bound=ctypes.Structure)


class Object:
    """A BPF object (map, program or link) held through a file descriptor.

    The fd is closed by :meth:`close`, by leaving a ``with`` block, or when the object is
    garbage collected. Objects pinned in bpffs or attached through a pinned link live on
    in the kernel after the fd is closed.
    """

    kind = "object"

    def __init__(self, fd: int, name: str = "") -> None:
        self._fd = fd
        self.name = name

    @property
    def fd(self) -> int:
        """The open file descriptor; raises ValueError once closed."""
        if self._fd < 0:
            raise ValueError(f"{self.kind} {self.name!r} is closed")
        return self._fd

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def close(self) -> None:
        """Close the fd (idempotent)."""
        if self._fd >= 0:
            close(self._fd)
            self._fd = -1

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    def pin(self, path: str) -> None:
        """Pin the object at ``path`` in bpffs (the directory must exist)."""
        obj_pin(self.fd, path, self.kind)


def obj_pin(fd: int, path: str, kind: str = "object") -> None:
    """BPF_OBJ_PIN: make ``fd``'s object reachable at ``path``."""
    p = ctypes.create_string_buffer(os.fsencode(path))
    attr = BpfAttr()
    attr.pathname = addr(p)
    attr.bpf_fd = fd
    bpf(Cmd.OBJ_PIN, attr, f"{kind} at {path}")


def obj_get(path: str, kind: str = "object") -> int:
    """BPF_OBJ_GET: open the object pinned at ``path``; returns a new fd."""
    p = ctypes.create_string_buffer(os.fsencode(path))
    attr = BpfAttr()
    attr.pathname = addr(p)
    return bpf(Cmd.OBJ_GET, attr, f"{kind} pinned at {path}")



def info_by_fd(fd: int, info: Info, what: str = "", size: int | None = None) -> Info:
    """BPF_OBJ_GET_INFO_BY_FD into ``info`` (a zeroed struct, or one whose array pointers and
    counts the caller set); returns it. ``size``: ask for the first ``size`` bytes only."""
    attr = BpfAttr()
    attr.info.bpf_fd = fd
    attr.info.info_len = ctypes.sizeof(info) if size is None else size
    attr.info.info = addr(info)
    bpf(Cmd.OBJ_GET_INFO_BY_FD, attr, what)
    return info


def next_id(cmd: Cmd, start: int) -> int | None:
    """The next object id after ``start`` (PROG/MAP/LINK_GET_NEXT_ID), or None at the end."""
    from ipacctd.bpf.errors import BPFNotFound

    attr = BpfAttr()
    attr.start_id = start
    try:
        bpf(cmd, attr)
    except BPFNotFound:
        return None
    return attr.next_id


def all_ids(cmd: Cmd, limit: int = 1 << 20) -> list[int]:
    """Every id of one object kind currently in the kernel (bounded by ``limit``)."""
    ids: list[int] = []
    cur = 0
    while len(ids) < limit:
        nxt = next_id(cmd, cur)
        if nxt is None:
            break
        ids.append(nxt)
        cur = nxt
    return ids


def fd_by_id(cmd: Cmd, obj_id: int, kind: str) -> int:
    """Open an object by its kernel id; returns a new fd."""
    attr = BpfAttr()
    attr.start_id = obj_id
    return bpf(cmd, attr, f"{kind} id {obj_id}")


def c_str(raw: bytes) -> str:
    """Decode a NUL-padded fixed-size name field."""
    return raw.split(b"\0", 1)[0].decode(errors="replace")
