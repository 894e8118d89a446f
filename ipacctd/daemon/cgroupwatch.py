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
import threading

from ipacctd.daemon.inotify import (
    IN_CREATE,
    IN_DELETE,
    IN_IGNORED,
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


#: Who takes the events: the state poll and the enforcement check, each at its own pace.
CONSUMERS = ("state", "enforcement")


class CgroupWatch:
    """inotify watches on units' cgroups and pin directories; :meth:`changed` drains the
    events."""

    def __init__(self) -> None:
        self.ino = Inotify()
        self._names: dict[str, tuple[str, ...]] = {}  # cgroup fs path → units there
        # Per consumer: paths with an event not yet taken; None after a queue overflow.
        self._dirty: dict[str, set[str] | None] = {c: set() for c in CONSUMERS}
        self._dirs: dict[str, int] = {}  # watched parent directory → its inode
        self._warned = False
        # The queue is drained by the loop's polls and by a binding in a D-Bus Reload's
        # worker thread (read_from_here): one at a time, so that no event lands in a set a
        # consumer has already taken (and is iterating).
        self._lock = threading.Lock()

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

    def _watch_dir(self, path: str) -> bool:
        """Watch a parent directory, remembering which one (see :meth:`_check_dirs`)."""
        if path in self._dirs and path in self.ino.wds:
            return True
        try:
            before = os.stat(path).st_ino
        except OSError:
            return False
        if not self._watch(path, PARENT_MASK):
            return False
        try:
            same = os.stat(path).st_ino == before
        except OSError:
            same = False
        if not same:  # replaced meanwhile: which one is watched is unknown
            self._unwatch(path)
            return False
        self._dirs[path] = before
        return True

    def _check_dirs(self) -> None:
        """Drop the watch of a parent directory that was removed (and maybe made again):
        kernfs says nothing to a watch on a removed cgroup, so its inode is compared (one
        stat per parent directory, not per unit). Its units are then read again, and
        watched anew."""
        for path, ino in list(self._dirs.items()):
            try:
                same = os.stat(path).st_ino == ino
            except OSError:
                same = False
            if not same:
                del self._dirs[path]
                self._unwatch(path)
                # Its units' watches are gone without an event naming them: the next look
                # of each consumer goes through every unit (as after an overflow).
                for consumer in self._dirty:
                    self._dirty[consumer] = None

    def add(self, name: str, fs: str, pin_dir: str) -> None:
        """Watch the cgroup of unit ``name`` at ``fs`` and its pin directory. Call before
        reading its state or identity: an event after the watch is in place is never lost.
        """
        names = self._names.get(fs, ())
        if name not in names:
            self._names[fs] = (*names, name)
        if self._watch_dir(os.path.dirname(fs)):
            self._watch(f"{fs}/{EVENTS}", IN_MODIFY)  # False while the cgroup is absent
        # Pins made, removed or renamed in the directory (what changes its mtime), and the
        # directory itself made or replaced (its parent). bpffs is no kernfs: a removed pin
        # directory says so (and its parent names it), no inode to compare per unit.
        if self._watch_dir(os.path.dirname(pin_dir)):
            self._watch(pin_dir, PARENT_MASK)

    def units_at(self, fs: str) -> tuple[str, ...]:
        """The units added with their cgroup at ``fs``."""
        return self._names.get(fs, ())

    def discard(self, name: str, fs: str, pin_dir: str) -> None:
        self._unwatch(pin_dir)
        names = tuple(n for n in self._names.get(fs, ()) if n != name)
        if names:
            self._names[fs] = names
        elif self._names.pop(fs, None) is not None:
            self._unwatch(f"{fs}/{EVENTS}")

    def _unwatch(self, path: str) -> None:
        self._dirs.pop(path, None)
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

    def identity_watched(self, fs: str, pin_dir: str) -> bool:
        """Whether an event would show a change of what :meth:`Registry.identity` reads:
        the cgroup at ``fs`` made or removed (its parent), the pin directory or a pin in it
        made, removed or renamed."""
        wds = self.ino.wds
        return (
            fs[: fs.rfind("/")] in wds and pin_dir in wds and pin_dir[: pin_dir.rfind("/")] in wds
        )

    def _drain(self) -> None:
        while True:
            events = list(self.ino.read())
            if not events:
                return
            paths: set[str] = set()
            overflow = False
            for path, mask, child in events:
                if mask & IN_Q_OVERFLOW:
                    overflow = True
                elif mask & IN_IGNORED:  # a watch ended (its path removed): look at it
                    paths.add(path[: -len(EVENTS) - 1] if path.endswith("/" + EVENTS) else path)
                elif path.endswith("/" + EVENTS):
                    paths.add(path[: -len(EVENTS) - 1])
                elif child:
                    fs = f"{path}/{child}"
                    paths.update((fs, path))  # a cgroup or pin directory, or a pin in one
                    if mask & (IN_DELETE | IN_MOVED_FROM):
                        # kernfs never says IN_IGNORED for the removed cgroup's files: drop
                        # the dead watches, so that a cgroup or pin directory made again
                        # there gets new ones.
                        self._unwatch(f"{fs}/{EVENTS}")
                        self._unwatch(fs)
            for consumer, dirty in self._dirty.items():
                if overflow or dirty is None:
                    self._dirty[consumer] = None
                else:
                    dirty |= paths

    def read_from_here(self, paths: tuple[str, ...]) -> None:
        """Take the events so far on these paths (a unit's cgroup and pin directory, whose
        watches are in place) as seen by every consumer: what they show is read next, and
        that read sees what the events said. A glob's burst binds thousands of units, each
        named by the events of its own making (its pin directory renamed into place, its
        cgroup made): every poll after a wave read the identity and state of each of them
        again (1,000-6,000 units, 20-80 ms of the loop a poll at 10,000 cgroups)."""
        with self._lock:
            self._drain()
            for dirty in self._dirty.values():
                if dirty is not None:
                    dirty.difference_update(paths)

    def changed(self, consumer: str = "state") -> set[str] | None:
        """The cgroups and pin directories (paths) with an event since ``consumer`` last
        asked; None after the event queue overflowed (anything may have changed)."""
        with self._lock:
            self._drain()
            self._check_dirs()
            dirty = self._dirty[consumer]
            self._dirty[consumer] = set()
        return dirty

    def close(self) -> None:
        self.ino.close()
