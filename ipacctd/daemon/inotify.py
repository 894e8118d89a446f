"""inotify(7) through ctypes, for asyncio: directory creations and removals in cgroupfs
and changes in the state and unit directories."""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from collections.abc import Iterator

from ipacctd.libc import last_error, libc

IN_MODIFY = 0x00000002
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_ONLYDIR = 0x01000000
IN_IGNORED = 0x00008000
IN_ISDIR = 0x40000000
IN_Q_OVERFLOW = 0x00004000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

CHANGES = IN_CREATE | IN_DELETE | IN_MOVED_TO | IN_MOVED_FROM | IN_CLOSE_WRITE | IN_DELETE_SELF

_EVENT = struct.Struct("=iIII")


class Inotify:
    """One inotify instance; ``fd`` is non-blocking for ``loop.add_reader``."""

    def __init__(self) -> None:
        fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            raise last_error()
        self.fd = fd
        self.paths: dict[int, str] = {}
        self.wds: dict[str, int] = {}

    def watch(self, path: str, mask: int = CHANGES) -> bool:
        """Watch ``path``; False when it does not exist (nothing to watch yet)."""
        if path in self.wds:
            return True
        wd = libc.inotify_add_watch(self.fd, os.fsencode(path), mask)
        if wd < 0:
            err = ctypes.get_errno()
            if err in (errno.ENOENT, errno.ENOTDIR):
                return False
            raise OSError(err, f"inotify_add_watch {path}: {os.strerror(err)}")
        self.paths[wd] = path
        self.wds[path] = wd
        return True

    def read(self) -> Iterator[tuple[str, int, str]]:
        """Pending events as (watched dir, mask, name); empty when none are queued."""
        try:
            data = os.read(self.fd, 64 * 1024)
        except BlockingIOError:
            return
        offset = 0
        while offset + _EVENT.size <= len(data):
            wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
            raw = data[offset + _EVENT.size: offset + _EVENT.size + length]
            offset += _EVENT.size + length
            path = self.paths.get(wd, "")
            if mask & IN_IGNORED:
                self.wds.pop(path, None)
                self.paths.pop(wd, None)
            yield path, mask, raw.split(b"\0", 1)[0].decode(errors="replace")

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
