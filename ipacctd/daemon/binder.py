"""Unit files bound to live cgroups: exact paths and globs, followed as cgroups come and go.

A file naming one exact ``ControlGroup=`` gives a unit of the file's name. A glob (e.g.
``/system.slice/docker-*.scope``) gives one unit per matching cgroup, named
``<file stem>@<cgroup name>.service``, or for a container's cgroup after the container
(``podman-web-5522d0d1ae87.service``, as the OCI hook names it: see
:mod:`ipacctd.containers`). When a matching cgroup appears it is bound; when it vanishes
its unit turns inactive (its counters stay readable until the retention time); when the
file goes or stops matching, the unit is detached. An exact path naming a systemd service
that is loaded but not running is bound at once, before its cgroup exists: systemd then
arms the service's first start (:mod:`ipacctd.manager.systemd`), and the unit is kept
across the service's stops and starts (systemd arms every one) until the file goes.

A cgroup is known by its id (inode), not its path: a cgroup removed and made again at
the same path (a service or container restart) is re-bound, its counters carried on,
however the events were coalesced. The same holds for units attached by hand
(``ipacctd attach``): their cgroups are watched, re-bound when made again, and their
exit is recorded when they vanish (so that they expire after the retention time).

Overlapping files — several files matching the same cgroup — merge like systemd's
drop-ins: their assignments apply in order, glob files first (by file name), then exact
files (by file name), so list assignments append and later files override scalars; the
unit takes the name the last file in that order gives it.

Watches: the directory above each pattern's first glob component (or above an exact
path), or, while that does not exist yet, its nearest existing ancestor, so a parent made
later is followed.
"""

from __future__ import annotations

import contextlib
import fnmatch
import glob
import logging
import os
import threading
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ipacctd import cgroup, containers
from ipacctd.containers import ContainerInfo
from ipacctd.errors import AlreadyExists, Corrupt, Error, InvalidInput, NotFound
from ipacctd.manager.engine import Manager
from ipacctd.manager.recovery import live_cgroup_id
from ipacctd.manager.unit import Unit
from ipacctd.policy.properties import Properties
from ipacctd.policy.unitfile import (
    UnitFile,
    is_glob,
    load_unit_dir,
    merge_order,
    merged_properties,
)

log = logging.getLogger("ipacctd.binder")

@dataclass(frozen=True)
class Binding:
    """One cgroup the unit files bind, and the unit name it gets.

    ``files``: every file matching the cgroup, in merge order (see the module doc); the
    last one names the unit and is recorded as its source.
    """

    name: str
    cgroup: str
    files: tuple[UnitFile, ...]
    container: ContainerInfo | None = None

    @property
    def file(self) -> UnitFile:
        return self.files[-1]

    def properties(self) -> Properties:
        """The merged policy: every file's assignments, in merge order."""
        return merged_properties(self.files)


def static_prefix(pattern: str) -> tuple[str, int]:
    """The longest glob-free leading path of a pattern and the depth left below it."""
    parts = [p for p in pattern.split("/") if p]
    fixed: list[str] = []
    for part in parts:
        if is_glob(part):
            break
        fixed.append(part)
    return "/" + "/".join(fixed), len(parts) - len(fixed)


class Binder:
    """Keeps units bound to the cgroups their files name."""

    def __init__(self, manager: Manager, units: Callable[[], Iterable[Unit]] | None = None,
                 on_bound: Callable[[str], object] | None = None) -> None:
        """``units``: every unit as recorded now (default: read all metadata files; the
        daemon passes its registry's view, kept current by inotify, which is cheaper).
        ``on_bound``: called with each unit's name as it is bound (the daemon's registry
        shows it at once, while the rest of a large binding is still pending)."""
        self.manager = manager
        self._units = units
        self._on_bound = on_bound
        self.files: list[UnitFile] = []
        self.errors: list[InvalidInput] = []
        self._known: dict[str, str] | None = None  # container id → unit, per bindings()
        self._found: dict[str, ContainerInfo] = {}  # cgroup → container, per bindings()
        # Matches not bound yet, oldest first: :meth:`reconcile` with a time budget leaves
        # the rest here for :meth:`bind_pending` (the daemon's loop serves between).
        self.pending: deque[Binding] = deque()
        # The daemon binds on its loop and reloads in a worker thread (a D-Bus Reload):
        # one at a time.
        self._lock = threading.RLock()
        self._merged: dict[tuple[str, ...], Properties] = {}  # files' paths → merged policy

    def load(self) -> list[InvalidInput]:
        """(Re)read the unit directory; bad files are reported and skipped."""
        with self._lock:
            return self._load()

    def _load(self) -> list[InvalidInput]:
        files, errors = load_unit_dir(self.manager.config.unit_dir)
        self.files = [f for f in files if f.cgroups]
        self.errors = errors
        self.pending.clear()  # made from the files before: the next reconcile lists anew
        self._merged.clear()
        for err in errors:
            log.error("skipping unit file: %s", err)
        return errors

    def bindings(self) -> dict[str, Binding]:
        """Every (unit name → cgroup) the files ask for, among cgroups that exist now."""
        mount = cgroup.mount_point()
        self._known, self._found = None, {}
        # cgroup → [(file, the pattern of it that matches)]
        matches: dict[str, list[tuple[UnitFile, str]]] = {}
        for f in self.files:
            for pattern in f.cgroups:
                if not is_glob(pattern):
                    if cgroup.exists(cgroup.fs_path(pattern, mount)) or \
                            self._stopped_service(pattern):
                        rel = cgroup.validate_path(pattern)
                        matches.setdefault(rel, []).append((f, pattern))
                    continue
                for fs in sorted(glob.glob(os.path.join(mount, pattern.lstrip("/")))):
                    if not cgroup.exists(fs):
                        continue
                    rel = cgroup.relative(fs, mount)
                    if not fnmatch.fnmatchcase(rel, pattern):
                        continue
                    matches.setdefault(rel, []).append((f, pattern))
        out: dict[str, Binding] = {}
        for rel in sorted(matches):
            files, (last, pattern) = merge_order(matches[rel])  # the OCI hook's order too
            name = self._name(last, pattern, rel)
            if len(files) > 1:
                log.debug("cgroup %s: merging %s", rel, ", ".join(f.path for f in files))
            out.setdefault(name, Binding(name, rel, files, self._found.get(rel)))
        return out

    def _stopped_service(self, pattern: str) -> bool:
        """An exact path naming a systemd service that is loaded but not running: bound at
        once, before its cgroup exists, so that systemd arms its first start (see
        :mod:`ipacctd.manager.systemd`). A unit armed for it already needs no systemctl."""
        try:
            rel = cgroup.validate_path(pattern)
        except InvalidInput:
            return False
        for unit in self._attached_units():
            if unit.cgroup == rel and unit.systemd_service is not None:
                return True
        return self.manager.stopped_systemd_service(rel)

    def _name(self, f: UnitFile, pattern: str, rel: str) -> str:
        """The unit name ``f``'s ``pattern`` gives ``rel`` (:meth:`UnitFile.unit_name_for`);
        a container's cgroup keeps the unit the OCI hook (or an earlier binding) made for
        the container."""
        info = containers.from_cgroup(rel) if is_glob(pattern) or len(f.cgroups) > 1 \
            else None
        if info is None:
            return f.unit_name_for(pattern, rel)
        if self._known is None:
            self._known = {}
            for unit in self._attached_units():
                if unit.container is not None:
                    self._known[unit.container.id] = unit.name
        if info.id in self._known:
            return self._known[info.id]
        info = containers.identify(rel) or info  # with the container's name
        self._found[rel] = info
        return f.unit_name_for(pattern, rel, info)

    def watch_dirs(self) -> list[str]:
        """Filesystem directories whose subdirectory changes may change the bindings: for
        each pattern the directory above its first glob (and the levels below it that a
        glob spans) or above its exact path, and the directory above the cgroup of every
        unit attached by hand. A directory that does not exist yet is stood in for by its
        nearest existing ancestor, so that its creation is seen."""
        mount = cgroup.mount_point()
        dirs: set[str] = set()
        for f in self.files:
            for pattern in f.cgroups:
                if is_glob(pattern):
                    prefix, depth = static_prefix(pattern)
                    top = cgroup.fs_path(prefix, mount)
                    dirs.add(_existing(top, mount))
                    if depth > 1 and os.path.isdir(top):  # /*/docker-*.scope: levels below
                        for dirpath, _, _ in _walk(top, depth - 1):
                            dirs.add(dirpath)
                else:
                    dirs.add(_existing(os.path.dirname(cgroup.fs_path(pattern, mount)), mount))
        for unit in self._attached_units():
            dirs.add(_existing(os.path.dirname(cgroup.fs_path(unit.cgroup, mount)), mount))
        return sorted(dirs)

    def _attached_units(self) -> list[Unit]:
        """Units bound to cgroups ipacctd did not create (by unit files or by hand)."""
        if self._units is not None:
            return [u for u in self._units() if not u.transient]
        out = []
        for name in self.manager.names():
            try:
                unit = self.manager.unit(name)
            except (NotFound, InvalidInput, Corrupt) as exc:  # a broken unit: status reports it
                log.debug("unit %s: %s", name, exc)
                continue
            if not unit.transient:
                out.append(unit)
        return out

    def _properties(self, b: Binding) -> Properties:
        """``b.properties()``, merged once per set of files (thousands of cgroups matching
        one glob share it)."""
        key = tuple(f.path for f in b.files)
        props = self._merged.get(key)
        if props is None:
            props = self._merged[key] = b.properties()
        return props

    def reconcile(self, budget: float | None = None) -> list[str]:
        """Bind new matches, let go of vanished ones, follow edited files, re-bind cgroups
        made again at the same path (by id, not by path); returns log lines.

        ``budget`` (seconds): bind new matches for about that long, leaving the rest in
        :attr:`pending` for :meth:`bind_pending`; None binds them all."""
        with self._lock:
            return self._reconcile(budget)

    def _reconcile(self, budget: float | None) -> list[str]:
        want = self.bindings()
        sources = {f.path for f in self.files}
        done: list[str] = []
        bound = {u.name: u for u in self._attached_units()}
        for name, unit in bound.items():
            b = want.get(name) if unit.source is not None else None
            try:
                line = self._follow(unit, b, sources)
                if line:
                    done.append(line)
            except Error as exc:
                log.error("unit %s: %s", name, exc)
        self.pending = deque(b for name, b in want.items() if name not in bound)
        for line in done:
            log.info("%s", line)
        return done + self.bind_pending(budget)

    def bind_pending(self, budget: float | None = None) -> list[str]:
        """Bind pending matches, under one hold of the engine's lock, for about ``budget``
        seconds (at least one; None: all); returns log lines. A cgroup gone meanwhile is
        logged and dropped: the next reconcile sees what exists then."""
        with self._lock:
            return self._bind_pending(budget)

    def _bind_pending(self, budget: float | None) -> list[str]:
        batch = list(self.pending)
        try:
            results = self.manager.attach_many(  # requests made as taken: a slice's worth
                (dict(cgroup_path=b.cgroup, name=b.name, base=self._properties(b),
                      source=b.file.path, container=b.container) for b in batch),
                budget=budget)
        except BaseException:
            # Not an attach refused (those are results) but the engine failing: drop the
            # list, so that the next reconcile lists anew rather than waiting on this one.
            self.pending.clear()
            raise
        done: list[str] = []
        for b, result in zip(batch, results, strict=False):
            self.pending.popleft()
            try:
                done.append(self._bound(b, result))
            except Error as exc:
                log.error("cannot bind %s to %s: %s", b.name, b.cgroup, exc)
                continue
            if self._on_bound is not None:
                self._on_bound(b.name)
        for line in done:
            log.info("%s", line)
        return done

    def _follow(self, unit: Unit, b: Binding | None, sources: set[str]) -> str | None:
        """Bring one bound unit in line with its cgroup and its files."""
        name = unit.name
        if unit.source is not None and b is None:
            if unit.source not in sources:  # the file is gone: let go now
                self.manager.detach(name)
                return f"detached {name} (unit file removed)"
            if cgroup.exists(self.manager.cgroup_fs(unit)):  # no file matches it any more
                self.manager.detach(name)
                return f"detached {name} (no unit file matches {unit.cgroup} any more)"
        live = live_cgroup_id(self.manager, unit)
        if live is None:
            if unit.cgroup_id is None and unit.systemd_service is not None:
                return None  # armed before its service's first start: nothing vanished
            if unit.exited_at is None:  # the cgroup vanished: inactive, kept until expiry
                self.manager.record_exit(name, 0)
                return f"{name}: cgroup {unit.cgroup} vanished"
            return None
        lines = []
        if unit.exited_at is not None or unit.cgroup_id != live:
            self.manager.rebind(name)
            lines.append(f"re-bound {name} to the cgroup now at {unit.cgroup} (id {live})")
        if b is not None and unit.properties != self._properties(b):
            self.manager.replace_properties(name, self._properties(b))
            lines.append(f"updated {name} from {', '.join(f.path for f in b.files)}")
        return "; ".join(lines) or None

    def _bound(self, b: Binding, result: Unit | Error) -> str:
        """The log line of one attach's ``result`` (its error raised)."""
        if isinstance(result, AlreadyExists):
            # The OCI hook bound this container a moment ago (our view of the units is
            # older): the same unit on the same cgroup is done, not a conflict.
            with contextlib.suppress(NotFound):
                if self.manager.unit(b.name).cgroup == b.cgroup:
                    return f"{b.name}: bound to {b.cgroup} already (by the OCI hook)"
        if isinstance(result, Error):
            raise result
        merged = f" (merged: {', '.join(f.path for f in b.files)})" if len(b.files) > 1 else ""
        return f"bound {b.name} to {b.cgroup}{merged}"


def _existing(path: str, mount: str) -> str:
    """``path`` or, while it does not exist, its nearest existing ancestor (at most the
    cgroup2 mount)."""
    while not os.path.isdir(path) and path.rstrip("/") != mount.rstrip("/"):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def _walk(top: str, depth: int):
    base = top.rstrip("/").count("/")
    for dirpath, dirnames, filenames in os.walk(top):
        if dirpath.count("/") - base >= depth:
            dirnames[:] = []
        yield dirpath, dirnames, filenames
