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
later is followed. A full pass (:meth:`Binder.reconcile`) lists every match; between
full passes the daemon hands over the cgroups its watches saw made
(:meth:`Binder.reconcile_made`), and a full pass follows anything else.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ipacctd import cgroup, containers
from ipacctd.containers import ContainerInfo
from ipacctd.errors import AlreadyExists, Corrupt, Error, InvalidInput, NotFound
from ipacctd.manager import kits
from ipacctd.manager.engine import Manager
from ipacctd.manager.recovery import live_cgroup_id
from ipacctd.manager.unit import Unit, spec_for
from ipacctd.policy.properties import Properties
from ipacctd.policy.unitfile import (
    UnitFile,
    cgroup_leads_to,
    cgroup_matches,
    component_matcher,
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


@dataclass(frozen=True)
class _Follow:
    """A bound unit to bring in line with its cgroup and its files (:meth:`Binder._follow`):
    ``binding`` is what the files ask for it now (None: nothing or not from a file)."""

    unit: Unit
    binding: Binding | None


#: Matches pending (of the first one's policy) from which a helper process makes their maps
#: and programs while the engine binds (:mod:`ipacctd.manager.kits`): starting it costs
#: ~50 ms of the other CPU, and the first kit comes ~0.1 s later.
KITS_FROM = 64
#: Cgroups made (:meth:`Binder.reconcile_made`) looked at ahead of their binding: enough
#: for a slice's attaches and for the kit helper to start (KITS_FROM).
EXAMINE_AHEAD = 256
#: Seconds without pending matches after which the kit helper stops (cgroups of a burst
#: come in waves: a container runtime makes them as fast as it starts containers).
KITS_IDLE = 5.0


def _average(old: float, new: float) -> float:
    """A moving average of a cost per unit (the last few slices weigh most)."""
    return 0.7 * old + 0.3 * new


class Binder:
    """Keeps units bound to the cgroups their files name."""

    def __init__(self, manager: Manager, units: Callable[[], Iterable[Unit]] | None = None,
                 on_bound: Callable[[Unit], object] | None = None) -> None:
        """``units``: every unit as recorded now (default: read all metadata files; the
        daemon passes its registry's view, kept current by inotify, which is cheaper).
        ``on_bound``: called with each unit as :meth:`Manager.attach_many` made it, once its
        record is durable (the daemon's registry shows it at once, while the rest of a
        large binding is still pending)."""
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
        # Bound units a pass left to follow (before the pending matches are bound), and the
        # unit files' paths as that pass saw them.
        self._follows: deque[_Follow] = deque()
        self._sources: set[str] = set()
        # Cgroups made, as reconcile_made took them, not looked at yet (the mount's path
        # then), and the unit names those looked at gave.
        self._made: deque[str] = deque()
        self._mount = ""
        self._made_names: set[str] = set()
        # Whether something reconcile_made found is for a full pass (reconcile) to judge.
        self.full_due = False
        # The daemon binds on its loop and reloads in a worker thread (a D-Bus Reload):
        # one at a time.
        self._lock = threading.RLock()
        self._merged: dict[tuple[str, ...], Properties] = {}  # files' paths → merged policy
        # (cgroup, (file, pattern) of every match) → its Binding, from the last pass
        self._bindings: dict[tuple, Binding] = {}
        self._ids: dict[str, int] = {}  # cgroup → its id, as the last pass's listing saw it
        self._now: list[Unit] | None = None  # the units, during one pass (_pass_units)
        # unit → (its policy, its files' policy) found equal by the last pass
        self._same: dict[str, tuple[Properties, Properties]] = {}
        # Parents of the cgroups of units no file binds (attached by hand, or their file
        # gone), as the last pass saw them: watch_dirs watches them (None: no pass yet).
        self._parents: set[str] | None = None
        # Moving averages of what one attach and one ``on_bound`` cost (seconds): a slice's
        # budget is shared between them (see _bind_pending).
        self._attach_cost = 0.002
        self._bound_cost = 0.001
        # The kit helper of the policy being bound, while many matches are pending (one
        # that stopped stays, so that it is not started again for the same policy).
        self._kits: kits.KitMaker | None = None
        self._kits_idle = 0.0  # when the pending matches ran out last (monotonic)
        self._stopping: list[kits.KitMaker] = []  # helpers told to stop, not yet exited

    def load(self) -> list[InvalidInput]:
        """(Re)read the unit directory; bad files are reported and skipped."""
        with self._lock:
            return self._load()

    def _load(self) -> list[InvalidInput]:
        files, errors = load_unit_dir(self.manager.config.unit_dir)
        self.files = [f for f in files if f.cgroups]
        self.errors = errors
        self.pending.clear()  # made from the files before: the next reconcile lists anew
        self._follows.clear()
        self._made.clear()
        self._merged.clear()
        self._bindings.clear()
        for err in errors:
            log.error("skipping unit file: %s", err)
        return errors

    def bindings(self) -> dict[str, Binding]:
        """Every (unit name → cgroup) the files ask for, among cgroups that exist now."""
        mount = cgroup.mount_point()
        self._known, self._found, self._ids = None, {}, {}
        self._now = None  # the units as this pass sees them: read once, when first needed
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
                for rel in glob_cgroups(mount, pattern, self._ids):
                    matches.setdefault(rel, []).append((f, pattern))
        out: dict[str, Binding] = {}
        cache: dict[tuple, Binding] = {}
        for rel in sorted(matches):
            # A cgroup that is no container's, matched by the same files as in the last
            # pass, binds as it did then (thousands of a glob's matches are named once).
            pairs = matches[rel]
            if len(pairs) == 1:
                key: tuple = (rel, id(pairs[0][0]), pairs[0][1])
            else:
                key = (rel, *((id(f), pattern) for f, pattern in pairs))
            b = self._bindings.get(key)
            if b is None:
                b, info = self._binding(rel, pairs)
                if b.container is None and info is None:
                    cache[key] = b
            else:
                cache[key] = b
            out.setdefault(b.name, b)
        self._bindings = cache  # the matches of this pass only: bounded by them
        return out

    def _binding(self, rel: str, pairs: list[tuple[UnitFile, str]],
                 ) -> tuple[Binding, ContainerInfo | None]:
        """The binding of cgroup ``rel``, which the ``(file, pattern)`` pairs match, and the
        container :func:`containers.from_cgroup` found there (None: not a container's, or
        not one a container may name)."""
        if len(pairs) == 1:  # one file's pattern: a glob's thousands of new matches
            files, (last, pattern) = (pairs[0][0],), pairs[0]
        else:
            files, (last, pattern) = merge_order(pairs)  # the OCI hook's order too
            if len(files) > 1:
                log.debug("cgroup %s: merging %s", rel, ", ".join(f.path for f in files))
        # Asked once a cgroup (naming thousands of new matches in one pass held the loop
        # 0.3 s at 7,000: ~45 µs each, half of it asked twice or sorted alone).
        info = containers.from_cgroup(rel) if _nameable(last, pattern) else None
        name = self._name(last, pattern, rel, info)
        return Binding(name, rel, files, self._found.get(rel)), info


    def _stopped_service(self, pattern: str) -> bool:
        """An exact path naming a systemd service that is loaded but not running: bound at
        once, before its cgroup exists, so that systemd arms its first start (see
        :mod:`ipacctd.manager.systemd`). A unit armed for it already needs no systemctl."""
        try:
            rel = cgroup.validate_path(pattern)
        except InvalidInput:
            return False
        for unit in self._pass_units():
            if unit.cgroup == rel and unit.systemd_service is not None:
                return True
        return self.manager.stopped_systemd_service(rel)

    def _name(self, f: UnitFile, pattern: str, rel: str,
              info: containers.ContainerInfo | None) -> str:
        """The unit name ``f``'s ``pattern`` gives ``rel`` (:meth:`UnitFile.unit_name_for`);
        a container's cgroup (``info``: :func:`containers.from_cgroup` of it, where
        :func:`_nameable` says a container may name it; else None) keeps the unit the OCI
        hook (or an earlier binding) made for the container — so its name depends on the
        units bound now, and its binding is not kept between passes."""
        if info is None:
            return f.unit_name_for(pattern, rel)
        if self._known is None:
            self._known = {}
            for unit in self._pass_units():
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
        parents = self._parents
        if parents is None:  # before the first pass
            parents = _parents(self._attached_units(), {f.path for f in self.files})
        for rel in parents:
            dirs.add(_existing(cgroup.fs_path(rel, mount), mount))
        return sorted(dirs)

    def _pass_units(self) -> list[Unit]:
        """:meth:`_attached_units`, read once per pass (the daemon's view brings itself up
        to date with a stat per unit)."""
        if self._now is None:
            self._now = self._attached_units()
        return self._now

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
        start = time.monotonic()
        self._made.clear()  # this pass sees them all
        self.full_due = False
        want = self.bindings()
        self._sources = {f.path for f in self.files}
        units = self._pass_units()
        self._now = None
        self._parents = _parents(units, self._sources)
        bound = {u.name: u for u in units}
        # The units bound already are followed first, then the new matches bound: both in
        # slices (each unit's follow reads its cgroup anew when its turn comes). A unit in
        # line is left out: bound (not exited) to the cgroup id the listing just saw at its
        # path, which its files still match with the policy it has.
        self._follows = deque()
        same: dict[str, tuple[Properties, Properties]] = {}
        for name, unit in bound.items():
            b = want.get(name) if unit.source is not None else None
            if b is not None and unit.exited_at is None and unit.cgroup == b.cgroup \
                    and unit.cgroup_id is not None and unit.cgroup_id == self._ids.get(b.cgroup):
                props = self._properties(b)
                # Compared once per pair of objects (a unit's policy is a new object when
                # its record changes; the pair is held, so neither id is reused meanwhile).
                seen = self._same.get(name)
                if (seen is not None and seen[0] is unit.properties and seen[1] is props) \
                        or unit.properties == props:
                    same[name] = (unit.properties, props)
                    continue
            self._follows.append(_Follow(unit, b))
        self._same = same
        self.pending = deque(b for name, b in want.items() if name not in bound)
        # The listing counts against the slice (one follow or bind is done all the same).
        return self._bind_pending(None if budget is None else
                                  max(budget - (time.monotonic() - start), 0.0))

    def reconcile_made(self, made: Iterable[str], budget: float | None = None,
                       ) -> list[str] | None:
        """The pass for cgroups made since the last one, all named by the watches' events
        (``made``: their filesystem paths): bind those the files match and no unit holds
        yet, follow the units bound to them already (a cgroup made again) — what
        :meth:`reconcile` does for them, without listing and comparing every match. A
        glob's burst of ten thousand cgroups comes in waves, and each wave's full pass held
        the daemon's loop 30-170 ms towards the end (bench/results-globbind.txt). Nothing
        else can have changed since the last pass: the files change only by :meth:`load`,
        which a full pass follows, and the unit of a cgroup removed is the daemon's
        enforcement check's (it records the exit, as a follow does).

        The cgroups are looked at in the slices of :meth:`bind_pending`, a little ahead of
        their binding (a wave of thousands is ~20 µs each). One that only a full pass can
        judge sets :attr:`full_due`, and the others go on: a cgroup made above the
        matches (its level is to be watched and listed), a unit name another cgroup's unit
        (or a transient one, or an unreadable record) holds. Returns log lines, as
        :meth:`reconcile`; None, doing nothing, while a pass is under way or before the
        first."""
        with self._lock:
            if self.busy or self._parents is None:
                return None
            self._mount = cgroup.mount_point().rstrip("/")
            self._made = deque(sorted(made))  # as bindings(): the first in order names
            self._made_names = set()
            self._known, self._found, self._now = None, {}, None
            return self._bind_pending(budget)

    def _examine(self, fs: str) -> None:
        """One cgroup of :meth:`reconcile_made`'s: a match to bind, a unit to follow, or
        nothing (no file matches it, or it is gone); where only a full pass can tell,
        :attr:`full_due` says so."""
        rel = fs[len(self._mount):]
        if not fs.startswith(self._mount + "/") or self._leads_to_match(rel):
            self.full_due = True
            return
        pairs = [(f, pattern) for f in self.files for pattern in f.cgroups
                 if cgroup_matches(pattern, rel)]
        if not pairs or not cgroup.exists(fs):
            return
        b = self._binding(rel, pairs)[0]
        if b.name in self._made_names:  # two cgroups made give one name
            self.full_due = True
            return
        self._made_names.add(b.name)
        if not self.manager.store.exists(b.name):
            self.pending.append(b)
            return
        try:
            unit = self.manager.unit(b.name)
        except NotFound:
            self.pending.append(b)  # removed meanwhile
            return
        except (InvalidInput, Corrupt):
            self.full_due = True
            return
        if unit.cgroup != b.cgroup or unit.transient:
            self.full_due = True
            return
        self._follows.append(_Follow(unit, b))

    def _leads_to_match(self, rel: str) -> bool:
        """Whether cgroup ``rel`` lies above what the files or the units bound by hand may
        name: below it cgroups may match (or be made again) that no watch follows yet."""
        if any(cgroup_leads_to(pattern, rel) for f in self.files for pattern in f.cgroups):
            return True
        return any(p == rel or p.startswith(rel + "/") for p in self._parents or ())

    @property
    def busy(self) -> bool:
        """Whether a pass is under way: cgroups made to look at, units to follow or matches
        to bind are left for :meth:`bind_pending`."""
        return bool(self._made or self._follows or self.pending)

    def bind_pending(self, budget: float | None = None) -> list[str]:
        """Follow the bound units the last pass left, then bind pending matches (under one
        hold of the engine's lock), for about ``budget`` seconds: at least one follow, or
        when none is left at least one bind (None: all); returns log lines. A cgroup gone
        meanwhile is logged and dropped: the next reconcile sees what exists then."""
        with self._lock:
            return self._bind_pending(budget)

    def _bind_pending(self, budget: float | None) -> list[str]:
        start = time.monotonic()
        until = None if budget is None else start + budget
        done: list[str] = []
        # The cgroups made that reconcile_made left: looked at a little ahead of their
        # binding (at least until one is to bind or follow, while any are left).
        while self._made and (len(self.pending) < EXAMINE_AHEAD or until is None) and (
                until is None or time.monotonic() < until
                or not (self._follows or self.pending)):
            self._examine(self._made.popleft())
        self._now = None  # the units as one pass saw them: read again by the next
        first = True
        while self._follows and (first or until is None or time.monotonic() < until):
            first = False
            f = self._follows.popleft()
            try:
                line = self._follow(f.unit, f.binding, self._sources)
                if line:
                    done.append(line)
            except Error as exc:
                log.error("unit %s: %s", f.unit.name, exc)
        if self._follows or not self.pending:
            for line in done:
                log.info("%s", line)
            return done
        left = None if until is None else max(until - time.monotonic(), 0.0)
        if left is not None:
            # ``on_bound`` runs after the attaches, in the same slice: share the time by
            # what each has cost so far, so that the slice as a whole keeps to its budget.
            left *= self._attach_cost / (self._attach_cost + self._bound_cost)
        batch = list(self.pending)
        t = time.monotonic()
        try:
            results = self.manager.attach_many(  # requests made as taken: a slice's worth
                (dict(cgroup_path=b.cgroup, name=b.name, base=self._properties(b),
                      source=b.file.path, container=b.container) for b in batch),
                budget=left, kits=self._kits_for(batch))
        except BaseException:
            # Not an attach refused (those are results) but the engine failing: drop the
            # list, so that the next reconcile lists anew rather than waiting on this one.
            self.pending.clear()
            self._made.clear()
            self.full_due = True
            self._stop_kits()
            raise
        if results:
            self._attach_cost = _average(self._attach_cost,
                                         (time.monotonic() - t) / len(results))
        t = time.monotonic()
        told = 0
        for b, result in zip(batch, results, strict=False):
            self.pending.popleft()
            try:
                line, unit = self._bound(b, result)
            except Error as exc:
                log.error("cannot bind %s to %s: %s", b.name, b.cgroup, exc)
                continue
            done.append(line)
            if self._on_bound is not None:
                self._on_bound(unit)
                told += 1
        if told:
            self._bound_cost = _average(self._bound_cost, (time.monotonic() - t) / told)
        if not self.pending:
            self._kits_idle = time.monotonic()
        for line in done:
            log.info("%s", line)
        return done

    def _kits_for(self, batch: list[Binding]) -> kits.KitMaker | None:
        """The kit helper for the policy of the first of ``batch`` (the pending matches),
        started when at least KITS_FROM are pending and its kits can cross processes."""
        if len(batch) < KITS_FROM:
            return self._kits  # one started for this burst serves it to the end
        spec = spec_for(self._properties(batch[0]))
        if self._kits is not None and self._kits.spec == spec:
            return self._kits
        self._stop_kits()
        if kits.crosses(spec):
            try:
                self._kits = kits.KitMaker(spec)
                log.info("started a kit helper for %d pending matches", len(batch))
            except OSError as exc:
                log.warning("cannot start the kit helper: %s", exc)
        return self._kits

    def _stop_kits(self) -> None:
        """Tell the kit helper to stop; it is collected by a later :meth:`tick`."""
        maker, self._kits = self._kits, None
        if maker is not None:
            log.info("the kit helper made %d units' programs", maker.made)
            maker.stop()
            self._stopping.append(maker)

    def tick(self) -> None:
        """Stop the kit helper once no matches were pending for KITS_IDLE seconds; collect
        helpers that exited (the daemon's poll calls this every cycle; a reload holding
        the binder meanwhile leaves it to the next)."""
        if not self._lock.acquire(blocking=False):
            return
        try:
            if self._kits is not None and not self.pending and \
                    time.monotonic() - self._kits_idle >= KITS_IDLE:
                self._stop_kits()
            self._stopping = [m for m in self._stopping if not m.reap()]
        finally:
            self._lock.release()

    def close(self) -> None:
        """Stop the kit helpers and wait for them (the daemon stops)."""
        with self._lock:
            self._stop_kits()
            for maker in self._stopping:
                maker.close()
            self._stopping = []

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

    def _bound(self, b: Binding, result: Unit | Error) -> tuple[str, Unit]:
        """The log line of one attach's ``result`` and the unit bound (its error raised)."""
        if isinstance(result, AlreadyExists):
            # The OCI hook bound this container a moment ago (our view of the units is
            # older): the same unit on the same cgroup is done, not a conflict.
            with contextlib.suppress(NotFound):
                unit = self.manager.unit(b.name)
                if unit.cgroup == b.cgroup:
                    return f"{b.name}: bound to {b.cgroup} already (by the OCI hook)", unit
        if isinstance(result, Error):
            raise result
        merged = f" (merged: {', '.join(f.path for f in b.files)})" if len(b.files) > 1 else ""
        return f"bound {b.name} to {b.cgroup}{merged}", result


def _nameable(f: UnitFile, pattern: str) -> bool:
    """Whether a container may name the cgroups ``f``'s ``pattern`` matches: a glob's, or
    one of several exact paths of a file (:meth:`UnitFile.unit_name_for`); one exact path
    gives the file's own name."""
    return len(f.cgroups) > 1 or is_glob(pattern)


def glob_cgroups(mount: str, pattern: str, ids: dict[str, int] | None = None) -> list[str]:
    """The cgroups (relative to ``mount``) matching a glob ``pattern``, sorted.

    As ``glob.glob`` matches, component by component, and as cheaply as a directory
    listing: one ``scandir`` per directory a glob component spans, its directories alone
    (on cgroup2 every directory is a cgroup and nothing is a symlink), no stat and no
    realpath per match — a glob matching ten thousand cgroups is listed on a full pass.
    Each name is matched by :func:`component_matcher`. Literal components after the last
    glob are checked to be cgroups at the end.

    ``ids``: filled with the cgroup id of each match the listing saw (a directory entry's
    inode is the cgroup's id on cgroup2, the same number stat gives)."""
    base = mount.rstrip("/")
    rels = [""]
    seen: dict[str, int] = {}  # the ids the last glob component's listing saw
    checked = True
    for part in (p for p in pattern.split("/") if p):
        if not is_glob(part):
            rels = [f"{rel}/{part}" for rel in rels]
            checked = False
            continue
        fits = component_matcher(part)
        found: list[str] = []
        seen = {}
        for rel in rels:
            try:
                with os.scandir(base + rel or "/") as it:
                    for e in it:
                        if fits(e.name) and e.is_dir(follow_symlinks=False):
                            found.append(f"{rel}/{e.name}")
                            seen[found[-1]] = e.inode()
            except (FileNotFoundError, NotADirectoryError, PermissionError):
                continue
        rels, checked = found, True
    if not checked:  # a literal tail: its cgroups were not listed
        return sorted(rel for rel in rels if cgroup.exists(base + rel))
    if ids is not None:
        ids.update(seen)
    return sorted(rels)


def _parents(units: Iterable[Unit], sources: set[str]) -> set[str]:
    """The parent cgroups of the units no unit file in ``sources`` binds: where their
    cgroups are made again (a glob's or an exact path's directory is watched for its
    file). A set of paths, each looked up once: ten thousand units share a few parents."""
    return {os.path.dirname(u.cgroup) or "/" for u in units
            if u.source is None or u.source not in sources}


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
