"""What maps, programs and links share: an owned fd, pinning in bpffs, info by fd, ids."""

from __future__ import annotations

import contextlib
import ctypes
import os
import struct
from typing import Self

from ipacctd.bpf.syscall import Attr, addr, bpf, close
from ipacctd.bpf.types import Cmd


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
    bpf(Cmd.OBJ_PIN, Attr(struct.pack("=QII", addr(p), fd, 0)), f"{kind} at {path}")


def obj_get(path: str, kind: str = "object") -> int:
    """BPF_OBJ_GET: open the object pinned at ``path``; returns a new fd."""
    p = ctypes.create_string_buffer(os.fsencode(path))
    return bpf(Cmd.OBJ_GET, Attr(struct.pack("=QII", addr(p), 0, 0)), f"{kind} pinned at {path}")


def info_by_fd(fd: int, size: int, what: str = "") -> bytes:
    """BPF_OBJ_GET_INFO_BY_FD into a zeroed struct of ``size`` bytes; returns its bytes."""
    info = ctypes.create_string_buffer(size)
    return info_by_fd_into(fd, info, what)


def info_by_fd_into(fd: int, info: ctypes.Array, what: str = "") -> bytes:
    """Like :func:`info_by_fd`, with a caller-prepared struct (pointers to arrays set)."""
    bpf(Cmd.OBJ_GET_INFO_BY_FD, Attr(struct.pack("=IIQ", fd, len(info), addr(info))), what)
    return info.raw


def next_id(cmd: Cmd, start: int) -> int | None:
    """The next object id after ``start`` (PROG/MAP/LINK_GET_NEXT_ID), or None at the end."""
    from ipacctd.bpf.errors import BPFNotFound

    attr = Attr(struct.pack("=III", start, 0, 0))
    try:
        bpf(cmd, attr)
    except BPFNotFound:
        return None
    return struct.unpack_from("=I", attr.raw(), 4)[0]


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
    return bpf(cmd, Attr(struct.pack("=III", obj_id, 0, 0)), f"{kind} id {obj_id}")


def c_str(raw: bytes) -> str:
    """Decode a NUL-padded fixed-size name field."""
    return raw.split(b"\0", 1)[0].decode(errors="replace")
