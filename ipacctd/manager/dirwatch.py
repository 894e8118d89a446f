"""Which names of one directory changed since the last look: inotify(7), read when asked.

The engine keeps what it parsed of the units' metadata files (each unit's cgroup) between
batches of attaches, and before each batch must know that nothing it kept is stale. A
listing with a stat per file answers that in time linear in the units (tens of
milliseconds at ten thousand, once per slice of a glob's binding); the kernel's queue of
the directory's events answers it in time linear in the changes. Every way a file's
content changes in the state directory is a creation or a rename into place (writers
build a temporary file and rename it), so the names created, moved or removed are the
names whose content may differ. When the queue overflowed, or the directory itself was
removed or moved, nothing is known: the caller lists everything again.
"""

from __future__ import annotations

import ctypes
import os

from ipacctd.libc import last_error, libc
from ipacctd.uapi import InotifyEvent

IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
MASK = (
    IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR
)
_LOST = IN_Q_OVERFLOW | IN_IGNORED | IN_DELETE_SELF | IN_MOVE_SELF
_EVENT_SIZE = ctypes.sizeof(InotifyEvent)


class DirChanges:
    """The names created, removed or renamed in ``path`` since the last :meth:`take`."""

    def __init__(self, path: str) -> None:
        fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            raise last_error(f"inotify_init1 for {path}")
        if libc.inotify_add_watch(fd, os.fsencode(path), MASK) < 0:
            err = last_error(f"inotify_add_watch {path}")
            os.close(fd)
            raise err
        self.fd = fd
        self.path = path

    def take(self) -> set[str] | None:
        """Names changed since the watch was made or last taken from; None when that is not
        known (events were lost, the directory was replaced): then the watch is closed, and
        the caller lists the directory and makes a new one."""
        names: set[str] = set()
        while True:
            try:
                data = os.read(self.fd, 256 * 1024)
            except BlockingIOError:
                return names
            offset = 0
            while offset + _EVENT_SIZE <= len(data):
                event = InotifyEvent.from_buffer_copy(data, offset)
                raw = data[offset + _EVENT_SIZE : offset + _EVENT_SIZE + event.len]
                offset += _EVENT_SIZE + event.len
                if event.mask & _LOST:
                    self.close()
                    return None
                names.add(os.fsdecode(raw.split(b"\0", 1)[0]))

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __del__(self) -> None:
        self.close()
