"""Which units' cgroups changed since the last look, from inotify instead of a read per unit.

A unit's active state follows its cgroup: whether it exists and whether it is populated.
Reading every unit's ``cgroup.events`` on each state poll cost ~30 µs a unit (0.3 s at
10,000 units, bench/daemon.py); the kernel says the same with events:

* ``cgroup.events`` gets ``IN_MODIFY`` when ``populated`` (or ``frozen``) changes;
* a cgroup made or removed shows as ``IN_CREATE``/``IN_DELETE`` (with its name) on its
  parent directory. The removed cgroup's own files send nothing (kernfs removes them
  without fsnotify: measured on this kernel, no event on ``cgroup.events`` nor
  ``IN_DELETE_SELF`` on the directory), so the parent is watched too.

A unit is skipped while its watches are in place and no event named it. Everything else
(no parent to watch yet, the watch limit reached, an event queue overflow) falls back to
reading ``cgroup.events`` as before: a missing watch costs time, never a state change.
"""

from __future__ import annotations

import contextlib
import logging
import os

from ipacctd.daemon.inotify import (
    IN_CREATE,
    IN_DELETE,
    IN_MODIFY,
    IN_MOVED_FROM,
    IN_MOVED_TO,
    IN_ONLYDIR,
    IN_Q_OVERFLOW,
    Inotify,
)
from ipacctd.libc import libc

log = logging.getLogger("ipacctd.daemon")

EVENTS = "cgroup.events"
PARENT_MASK = IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO | IN_ONLYDIR


class CgroupWatch:
    """inotify watches on units' cgroups; :meth:`changed` drains the events."""

    def __init__(self) -> None:
        self.ino = Inotify()
        self._names: dict[str, tuple[str, ...]] = {}  # cgroup fs path → units there
        self._dirty: set[str] = set()  # fs paths with an event not yet taken
        self._warned = False

    def _watch(self, path: str, mask: int) -> bool:
        try:
            return self.ino.watch(path, mask)
        except OSError as exc:  # ENOSPC: fs.inotify.max_user_watches reached
            if not self._warned:
                log.warning(
                    "cannot watch %s (%s): such units' cgroups are read on every "
                    "state poll instead",
                    path,
                    exc,
                )
                self._warned = True
            return False

    def add(self, name: str, fs: str) -> None:
        """Watch the cgroup of unit ``name`` at ``fs``. Call before reading its state: an
        event after the watch is in place is never lost."""
        names = self._names.get(fs, ())
        if name not in names:
            self._names[fs] = (*names, name)
        if self._watch(os.path.dirname(fs), PARENT_MASK):
            self._watch(f"{fs}/{EVENTS}", IN_MODIFY)  # False while the cgroup is absent

    def discard(self, name: str, fs: str) -> None:
        names = tuple(n for n in self._names.get(fs, ()) if n != name)
        if names:
            self._names[fs] = names
        elif self._names.pop(fs, None) is not None:
            self._unwatch(f"{fs}/{EVENTS}")

    def _unwatch(self, path: str) -> None:
        wd = self.ino.wds.pop(path, None)
        if wd is not None:
            self.ino.paths.pop(wd, None)
            with contextlib.suppress(Exception):
                libc.inotify_rm_watch(self.ino.fd, wd)

    def watched(self, fs: str, exists: bool) -> bool:
        """Whether an event would show a change of the cgroup at ``fs``, which existed
        (``exists``) when its state was read: its parent is watched (creation, removal)
        and, if it exists, its ``cgroup.events`` (populated)."""
        wds = self.ino.wds
        if fs[: fs.rfind("/")] not in wds:  # os.path.dirname: 6 µs, a third of the loop
            return False
        return not exists or f"{fs}/{EVENTS}" in wds

    def changed(self) -> set[str] | None:
        """The cgroups (fs paths) with an event since the last call; None after the event
        queue overflowed (anything may have changed)."""
        overflow = False
        while True:
            events = list(self.ino.read())
            if not events:
                break
            for path, mask, child in events:
                if mask & IN_Q_OVERFLOW:
                    overflow = True
                elif path.endswith("/" + EVENTS):
                    self._dirty.add(path[: -len(EVENTS) - 1])
                elif child:
                    fs = f"{path}/{child}"
                    self._dirty.add(fs)
                    if mask & (IN_DELETE | IN_MOVED_FROM):
                        # kernfs never says IN_IGNORED for the removed cgroup's files: drop
                        # the dead watch, so that a cgroup made again there gets a new one.
                        self._unwatch(f"{fs}/{EVENTS}")
        dirty, self._dirty = self._dirty, set()
        return None if overflow else dirty

    def close(self) -> None:
        self.ino.close()
