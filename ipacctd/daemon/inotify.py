"""inotify(7) through ctypes, for asyncio: directory creations and removals in cgroupfs
and changes in the state and unit directories."""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Iterator

from ipacctd.libc import last_error, libc
from ipacctd.uapi import InotifyEvent

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

_EVENT_SIZE = ctypes.sizeof(InotifyEvent)


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
        while offset + _EVENT_SIZE <= len(data):
            event = InotifyEvent.from_buffer_copy(data, offset)
            raw = data[offset + _EVENT_SIZE: offset + _EVENT_SIZE + event.len]
            offset += _EVENT_SIZE + event.len
            path = self.paths.get(event.wd, "")
            if event.mask & IN_IGNORED:
                self.wds.pop(path, None)
                self.paths.pop(event.wd, None)
            yield path, event.mask, raw.split(b"\0", 1)[0].decode(errors="replace")

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
