"""The daemon's view of all units, rebuilt from the kernel and the metadata files.

Nothing here is authoritative: a restarted daemon builds the same view from the pins and
metadata. The registry only remembers what it last announced, so that it can tell
D-Bus clients what changed.
"""

from __future__ import annotations

import contextlib
import logging
import operator
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from ipacctd import cgroup
from ipacctd.daemon.cgroupwatch import CgroupWatch
from ipacctd.errors import Error, NotFound
from ipacctd.manager.counters import Counters
from ipacctd.manager.engine import Manager
from ipacctd.manager.listing import StatusReader
from ipacctd.manager.reader import CounterReader
from ipacctd.manager.store import SUFFIX
from ipacctd.manager.unit import Unit, UnitStatus
from ipacctd.record import fields


@dataclass(slots=True)
class Entry:
    """What the daemon last saw of one unit."""

    status: UnitStatus
    meta_mtime: int
    counters: Counters | None = None
    extra: dict = field(default_factory=dict)
    probe: tuple[bool, bool] | None = None  # (cgroup exists, populated) when status was read
    identity: tuple | None = None  # (cgroup id at the path, pin dir) when status was read
    # The metadata file's (inode, size, mtime) that status.unit was parsed from, when known
    # (see Registry._known).
    meta_key: tuple[int, int, int] | None = None
    # The unit's GetCounters row in two marshalled pieces (see Registry.counter_rows): the
    # name's, and the counters' as made from ``wire_of``.
    wire_head: bytes | None = None
    wire_counts: bytes | None = None
    wire_of: Counters | None = None


log = logging.getLogger("ipacctd.daemon")

#: A state poll re-reads every unit whose cgroup changed (exists / populated: inotify, see
#: :mod:`.cgroupwatch`), every unit whose state follows a process of its owner rather than
#: its cgroup (:data:`OWNER_STATES`), and besides them a rolling slice of the others, so that
#: each unit is read in full at least once in this many state polls (catching changes no
#: cgroup event shows, e.g. links removed by hand) ...
FULL_EVERY = 20
#: ... but no more than this many a state poll: a full read costs ~0.5 ms, and a twentieth
#: of 10,000 units took 0.25 s a state poll. At 10,000 units each unit is re-read every 200
#: state polls; the changes that matter have their own faster path (cgroup events here, the
#: enforcement identity check on every poll, metadata changes by inotify).
FULL_MAX = 50
#: States that end when the owner of a transient unit (``ipacctd run``) exits, which no
#: cgroup event shows: such units are read in full on every state poll.
OWNER_STATES = ("activating", "deactivating")

#: Each poll checks every unit's enforcement cheaply (:meth:`Registry.identity`), and in
#: full those that changed and a rolling slice of the others, so that each unit is checked
#: in full at least once in this many polls ...
ENFORCEMENT_FULL_EVERY = 50
#: ... but no more than this many a poll besides those that changed: a full check asks the
#: kernel about each link (~0.25 ms), and a fiftieth of 10,000 units cost 50 ms every poll.
#: At 10,000 units each unit is checked in full every 200 polls; what the rolling check
#: catches (a link detached by hand, which no pin or cgroup event shows) is rare, what
#: changes a pin or a cgroup is checked on the poll after it happens.
ENFORCEMENT_FULL_MAX = 50

#: A :class:`Counters`' twelve values in field order, as a tuple: where
#: ``dataclasses.asdict`` (``to_dict``) costs 32 µs a unit, 0.3 s at 10,000 units.
counter_fields = operator.attrgetter(*fields(Counters))

Listener = Callable[[str, str, "Entry | None"], None]  # (event, name, entry)


class Registry:
    """Units by name, with change detection for polling and metadata changes."""

    def __init__(self, manager: Manager) -> None:
        self.manager = manager
        self.reader = CounterReader(manager.store)
        self.lister = StatusReader(manager, self.reader, known=self._known)
        self.units: dict[str, Entry] = {}
        self.listeners: list[Listener] = []
        self._mount: str | None = None
        self._cursor = 0
        self._enf_cursor = 0
        self._paths: dict[tuple[str, str], tuple[str, str]] = {}  # (name, cgroup) → fs, pins
        self._watch: CgroupWatch | None = None
        self._watch_failed = False
        self._pin_names: dict[str, str] = {}  # pin directory → unit (see _named)
        # Units each event-driven poll looks at besides those events name: per consumer of
        # the events, those whose watches are not all in place or whose last read could
        # not be compared (identity or probe unknown, an owner-following state), and those
        # announced new or changed since (see refresh).
        self._slow: dict[str, set[str]] = {"state": set(), "enforcement": set()}
        # Inside :meth:`held`: the thread holding its announcements, and what it announced.
        self._held: tuple[int, list[tuple[str, str, Entry | None]]] | None = None

    def _known(self, name: str) -> tuple[tuple[int, int, int], Unit] | None:
        """The unit as last parsed, with its metadata file's key, for the status reader
        (``StatusReader(known=...)``): kept in the entries, no table of its own."""
        entry = self.units.get(name)
        if entry is None or entry.meta_key is None:
            return None
        return entry.meta_key, entry.status.unit

    def _emit(self, event: str, name: str, entry: Entry | None) -> None:
        held = self._held
        if held is not None and held[0] == threading.get_ident():
            held[1].append((event, name, entry))
            return
        for listener in self.listeners:
            listener(event, name, entry)

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Announce what this thread shows inside the block when it ends, in order.

        A binding slice shows each unit as it is bound; its ``UnitNew`` sent there and then
        was one write to the bus socket per unit, each waking the bus daemon between two
        attaches (~70 µs of the daemon's CPU a unit, three times that of wall time on two
        CPUs). Sent together after the slice — the loop serves nothing during it anyway —
        they are the same signals in the same order, written back to back. Other threads'
        announcements are not held."""
        if self._held is not None and self._held[0] == threading.get_ident():
            yield  # nested: the outer block announces
            return
        queue: list[tuple[str, str, Entry | None]] = []
        self._held = (threading.get_ident(), queue)
        try:
            yield
        finally:
            self._held = None
            for event in queue:
                self._emit(*event)

    def _mtime(self, name: str) -> int:
        try:
            return os.stat(self.manager.store.meta_path(name)).st_mtime_ns
        except FileNotFoundError:
            return 0

    def _forget(self, entry: Entry) -> None:
        """Let go of what was kept for a unit that is gone."""
        self.reader.forget(entry.status.unit.name)
        self._forget_watch(entry)

    def _forget_watch(self, entry: Entry) -> None:
        name = entry.status.unit.name
        paths = self._paths.get((name, entry.status.unit.cgroup))
        if paths is not None and self._watch is not None:
            self._watch.discard(name, *paths)

    def _fs(self, name: str, cgroup_path: str) -> str | None:
        paths = self._paths_of(name, cgroup_path)
        return paths[0] if paths is not None else None

    def _paths_of(self, name: str, cgroup_path: str) -> tuple[str, str] | None:
        """(cgroup filesystem path, pin directory) of a unit, computed once."""
        paths = self._paths.get((name, cgroup_path))
        if paths is None:
            try:
                if self._mount is None:
                    self._mount = cgroup.mount_point()
                paths = (cgroup.fs_path(cgroup_path, self._mount), self.manager.store.pin_dir(name))
            except Error:
                return None
            if len(self._paths) > 4 * len(self.units) + 64:  # names and paths come and go
                self._paths.clear()
                self._pin_names.clear()
            self._paths[(name, cgroup_path)] = paths
            self._pin_names[paths[1]] = name
        return paths

    def _watched(self, name: str, cgroup_path: str) -> None:
        """Watch the unit's cgroup and pin directory (before its state or identity is
        read), where it can be."""
        if self._watch is None and not self._watch_failed:
            try:
                self._watch = CgroupWatch()
            except OSError as exc:  # no inotify instance left: read every unit's cgroup
                log.warning("no inotify for cgroup events (%s): polling cgroup.events", exc)
                self._watch_failed = True
        paths = self._paths_of(name, cgroup_path)
        if paths is not None and self._watch is not None:
            self._watch.add(name, *paths)

    def _mtimes(self) -> dict[str, int]:
        """Unit → its metadata file's mtime (ns), from one scan of the directory: a stat by
        path per unit (path built, name checked) cost ~10 µs a unit, 0.1 s a sync at 10,000
        units, and the daemon syncs on every change of the directory."""
        out = {}
        try:
            with os.scandir(self.manager.config.units_dir) as it:
                for entry in it:
                    if not entry.name.endswith(SUFFIX) or entry.name.startswith("."):
                        continue
                    try:
                        out[entry.name[: -len(SUFFIX)]] = entry.stat().st_mtime_ns
                    except FileNotFoundError:
                        continue
        except FileNotFoundError:
            pass
        return out

    def sync(self) -> None:
        """Pick up units created, changed or removed by anyone (CLI, another daemon)."""
        mtimes = self._mtimes()
        names = self.manager.names()
        for gone in set(self.units).difference(names):
            self._forget(self.units.pop(gone))
            self._emit("removed", gone, None)
        for name in names:
            mtime = mtimes.get(name, 0)  # 0: no metadata (a broken unit), as _mtime says
            entry = self.units.get(name)
            if entry is not None and entry.meta_mtime == mtime:
                continue
            self.refresh(name, mtime)

    def sync_names(self, names: list[str]) -> None:
        """What :meth:`sync` does, for these units only: those the state directory's
        events named (a record written, renamed into place or removed). A unit whose record
        is gone and has no pins is forgotten (its read says so), one with pins left shows as
        broken — as the full pass finds them."""
        for name in names:
            try:
                st = os.stat(self.manager.store.meta_path(name))
            except FileNotFoundError:
                # No metadata (a broken unit, or one gone): read again whatever the entry
                # holds. Its 0 ("no metadata") may be that of a read that raced the
                # record's removal by another process, which must not hide the removal.
                self.refresh(name, 0)
                continue
            except (OSError, Error):  # not a unit's record name: the full pass judges it
                self.sync()
                return
            entry = self.units.get(name)
            if entry is not None and entry.meta_mtime == st.st_mtime_ns:
                continue
            self.refresh(name, st.st_mtime_ns)

    def _probe(self, cgroup_path: str) -> tuple[bool, bool] | None:
        """(exists, populated) of a cgroup from its ``cgroup.events``: one small read, where
        a full status walks the cgroup tree, parses the metadata and opens the pins."""
        try:
            if self._mount is None:
                self._mount = cgroup.mount_point()
            path = cgroup.fs_path(cgroup_path, self._mount) + "/cgroup.events"
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            return False, False
        except Exception:  # unknown: make the caller read the full status
            return None
        try:
            return True, b"populated 1" in os.read(fd, 512)
        except OSError:
            return None
        finally:
            os.close(fd)

    def identity(self, name: str, cgroup_path: str) -> tuple:
        """What every poll compares to see that a unit needs a full enforcement check: the
        id of the cgroup at its path, and the identity and modification time of its pin
        directory (bpffs updates it when a pin is added, removed or renamed): two stats,
        where the full check asks the kernel about each link."""
        paths = self._paths_of(name, cgroup_path)
        if paths is None:
            return None, None
        try:
            cid: int | None = os.stat(paths[0]).st_ino
        except OSError:
            cid = None
        try:
            st = os.stat(paths[1])
            pins: tuple[int, int] | None = (st.st_ino, st.st_mtime_ns)
        except OSError:
            pins = None
        return cid, pins

    def units_at(self, fs_paths: set[str]) -> list[str]:
        """Units whose cgroup is at one of these filesystem paths: from the watches' index
        of cgroups (every unit is in it from its first read on), not a walk of every unit
        per cgroup made (a glob binding thousands of cgroups at 10,000 units)."""
        if self._watch is not None:
            units = self.units
            found = {n for p in fs_paths for n in self._watch.units_at(p) if n in units}
            at = self._fs
            return [n for n in sorted(found) if at(n, units[n].status.unit.cgroup) in fs_paths]
        out = []
        for name, entry in self.units.items():
            paths = self._paths.get((name, entry.status.unit.cgroup))
            if paths is not None and paths[0] in fs_paths:
                out.append(name)
        return out

    def _rolling(self, names: list[str], every: int, cap: int, cursor: int) -> tuple[set, int]:
        """The next slice of ``names`` (a ``every``-th of them, at most ``cap``) from
        ``cursor``, and the cursor after it."""
        n = len(names)
        if not n:
            return set(), cursor
        k = min(-(-n // every), cap)
        start = cursor % n
        end = start + k
        return set(names[start:end]) | set(names[: end - n] if end > n else ()), end

    def _named(self, events: set[str]) -> set[str]:
        """Units whose cgroup or pin directory is at one of these paths (or under it: an
        event on a pin names the pin directory as well, see :mod:`.cgroupwatch`)."""
        assert self._watch is not None
        by_fs = self._watch.units_at
        by_pins = self._pin_names
        out: set[str] = set()
        for path in events:
            out.update(by_fs(path))
            name = by_pins.get(path)
            if name is not None:
                out.add(name)
        return out

    def _candidates(self, consumer: str, rolling: set[str]) -> tuple[list[str], set | None]:
        """The units a poll of ``consumer`` looks at, in the registry's order, and the events
        (paths) since its last poll: with inotify working, the rolling slice, the units the
        events name and those it must look at every time (:attr:`_slow`); every unit when
        there are no events to go by (no inotify, a queue overflow, a watched directory
        replaced). Walking every unit cost ~3 µs each a poll, 30 ms at 10,000 units, for
        nothing in the common case: no event, nothing changed."""
        watch = self._watch
        events = watch.changed(consumer) if watch is not None else None
        if events is None:
            self._slow[consumer] = set()
            return list(self.units), None
        want = rolling | self._slow[consumer] | self._named(events)
        self._slow[consumer] = set()
        units = self.units
        return [n for n in want if n in units], events

    def enforcement_due(self) -> list[str]:
        """Units whose enforcement must be checked in full now: those whose cgroup or pins
        changed since their status was read, and a rolling :data:`ENFORCEMENT_FULL_EVERY`-th
        of the others (catching what neither shows, e.g. a link detached by hand).

        A unit's identity (two stats, 40 ms a poll at 10,000 units) is read again only when
        inotify saw its cgroup or pin directory change, or cannot tell (see
        :mod:`.cgroupwatch`); units with nothing to look at are not walked at all
        (:meth:`_candidates`)."""
        rolling, self._enf_cursor = self._rolling(
            list(self.units), ENFORCEMENT_FULL_EVERY, ENFORCEMENT_FULL_MAX, self._enf_cursor
        )
        names, events = self._candidates("enforcement", rolling)
        watch = self._watch
        slow = self._slow["enforcement"]
        due = []
        for name in names:
            entry = self.units[name]
            cg = entry.status.unit.cgroup
            if name in rolling:
                due.append(name)
                continue
            if events is not None and entry.identity is not None:
                paths = self._paths.get((name, cg))
                if (
                    paths is not None
                    and paths[0] not in events
                    and paths[1] not in events
                    and watch.identity_watched(*paths)
                ):
                    continue  # nothing happened to its cgroup or pins
            self._watched(name, cg)
            if self.identity(name, cg) != entry.identity:
                due.append(name)
            paths = self._paths.get((name, cg))
            if watch is None or paths is None or not watch.identity_watched(*paths):
                slow.add(name)  # no event would show its next change: look every poll
        # A unit checked now (due) gets its identity set by the check (or is refreshed,
        # which announces it): look at it once more on the next poll, where the events
        # since then are compared with what the check read.
        slow.update(due)
        return due

    def refresh(self, name: str, mtime: int | None = None) -> Entry | None:
        """Re-read one unit's metadata and live state; announce it."""
        old = self.units.get(name)
        if old is None or self._paths.get((name, old.status.unit.cgroup)) is not None:
            try:
                entry = self._refresh_fast(name, old)
            except NotFound:
                entry = None
            if entry is not None:
                return entry
        return self._refresh(name, old, mtime)

    def _refresh_fast(self, name: str, old: Entry | None) -> Entry | None:
        """:meth:`refresh` through the status reader (:mod:`ipacctd.manager.listing`), the
        unit watched between its metadata and the kernel's facts, which the probe and the
        identity come from: none read twice. None when the reader took the long way (or the
        unit's cgroup moved): then :meth:`_refresh` reads it."""

        def before(unit: Unit) -> None:
            if old is not None and old.status.unit.started_at != unit.started_at:
                self.reader.forget(name)  # replaced by a new unit of the same name
            if old is None or old.status.unit.cgroup == unit.cgroup:
                self._watched(name, unit.cgroup)

        status, seen = self.lister.read(name, before=before)
        if seen is None or (old is not None and old.status.unit.cgroup != status.unit.cgroup):
            return None
        entry = Entry(
            status,
            seen.meta[2],
            status.counters,
            probe=seen.probe,
            identity=self._pins_identity(name, status),
            meta_key=seen.meta,
        )
        self._install(name, old, entry)
        return entry

    def bound(self, unit: Unit) -> Entry | None:
        """Show a unit the binder has just bound: ``unit`` as :meth:`Manager.attach_many`
        returned it, its record durable. The status is the one :meth:`refresh` would read,
        without reading the record back (its JSON parsed, its policy built again: half of a
        refresh, a glob binding thousands of cgroups paid it for each): the store says which
        file its last batch wrote for the unit, and one stat shows that file is still the
        record in place — so its content is ``unit`` (a later change of the file is a new
        file, which :meth:`sync` reads). The kernel's facts (cgroup, counters, links, the
        enforced generation) are read as a refresh reads them, after the watches are
        placed. Anything else — a unit already shown, its record changed meanwhile, a unit
        off the status reader's common path — is read back by :meth:`refresh`."""
        name = unit.name
        key = self.manager.store.written.get(name)
        if key is None or name in self.units:
            return self.refresh(name)
        try:
            st = os.stat(self.manager.store.meta_path(name))
        except OSError:
            return self.refresh(name)
        if (st.st_ino, st.st_size, st.st_mtime_ns) != key:
            return self.refresh(name)  # rewritten since (a CLI's change, a removal)
        # The engine's cache of who owns which cgroup (as the status reader tells it).
        self.manager.remember_owner(name, key, unit.cgroup)
        self._watched(name, unit.cgroup)
        paths = self._paths_of(name, unit.cgroup)
        if paths is not None and self._watch is not None:
            self._watch.read_from_here(paths)  # its making's events: the read below is later
        got = self.lister.live(name, unit, key)
        if got is None:
            return self.refresh(name)
        status, seen = got
        entry = Entry(
            status,
            key[2],
            status.counters,
            probe=seen.probe,
            identity=self._pins_identity(name, status),
            meta_key=key,  # the file ``unit`` is, as the status reader's known units are
        )
        self._install(name, None, entry)
        return entry

    def _pins_identity(self, name: str, status: UnitStatus) -> tuple | None:
        """A fresh status's identity (see :meth:`identity`): the cgroup id the status read
        (after the watches were placed), and the pin directory as it is now (a change since
        the status's reads is an event)."""
        paths = self._paths_of(name, status.unit.cgroup)
        if paths is None:
            return None
        try:
            st = os.stat(paths[1])
        except OSError:
            return None
        return status.enforcement.cgroup_id, (st.st_ino, st.st_mtime_ns)

    def _install(self, name: str, old: Entry | None, entry: Entry) -> None:
        self.units[name] = entry
        for slow in self._slow.values():  # compared with the events from now on
            slow.add(name)
        self._emit("changed" if old is not None else "new", name, entry)

    def _refresh(self, name: str, old: Entry | None, mtime: int | None) -> Entry | None:
        # Watch, then probe, then read the status: a change in between shows on the next
        # poll.
        if old is not None:
            self._watched(name, old.status.unit.cgroup)
        probe = self._probe(old.status.unit.cgroup) if old is not None else None
        ident = self.identity(name, old.status.unit.cgroup) if old is not None else None
        if mtime is None:
            # Before the read: a record replaced or removed after it shows a newer mtime
            # (or none) to the next sync; taken after, it could claim the removal's 0 for
            # a status read from the record.
            mtime = self._mtime(name)
        try:
            status = self.manager.status(name)
        except NotFound:
            entry = self.units.pop(name, None)
            if entry is not None:
                self._forget(entry)
                self._emit("removed", name, None)
            return None
        if old is not None and old.status.unit.started_at != status.unit.started_at:
            self.reader.forget(name)  # replaced by a new unit of the same name
        if old is None or old.status.unit.cgroup != status.unit.cgroup:
            # A new unit: probe now, and keep the probe only if it agrees with the status
            # (otherwise the next state poll reads the status again). A cgroup made or
            # removed in the microseconds between is caught by the rolling full reads.
            if old is not None:
                self._forget_watch(old)
            self._watched(name, status.unit.cgroup)
            probe = self._probe(status.unit.cgroup)
            if probe is not None and probe[1] != bool(status.pids):
                probe = None
        if old is None or old.status.unit.cgroup != status.unit.cgroup:
            ident = self.identity(name, status.unit.cgroup)
            if ident[0] != status.enforcement.cgroup_id:  # changed meanwhile: check again
                ident = None
        entry = Entry(status, mtime, status.counters, probe=probe, identity=ident)
        self._install(name, old, entry)
        return entry

    def poll_counters(self) -> list[str]:
        """Read every unit's counters; return the names whose counters changed."""
        changed = []
        units = self.units
        for (name, entry), c in zip(units.items(), self.reader.read_many(units), strict=True):
            if c is not entry.counters:
                if c != entry.counters:
                    changed.append(name)
                # The reader's object even when equal (the status read its own): the next
                # poll compares by identity, not field by field (20 ms at 10,000 units).
                entry.counters = c
        for name in changed:
            self._emit("counters", name, self.units[name])
        return changed

    def counter_rows(
        self, head: Callable[[str], bytes], counts: Callable[[Counters | None], bytes]
    ) -> list[bytes]:
        """Every unit's GetCounters row by name, with the counters the last poll read, in
        two pieces: ``head(name)`` and ``counts(counters)`` (marshalled: :mod:`.wire`).
        Both are kept in the unit's entry; the counters' piece is made again only when its
        counters changed (the reader keeps the object of an unchanged read), once for units
        that share a :class:`Counters` (all zero). At 10,000 units converting every row on
        each call cost 320 ms (``dataclasses.asdict``); dbus-fast marshalling the 120,000
        ints of the rows, 14 of the 27 ms a call took in the daemon, 4 ms now."""
        out: list[bytes] = []
        made: dict[int, bytes] = {}
        for name, entry in sorted(self.units.items()):
            c = entry.counters
            if entry.wire_counts is None or entry.wire_of is not c:
                piece = made.get(id(c))
                if piece is None:
                    piece = made[id(c)] = counts(c)
                entry.wire_counts, entry.wire_of = piece, c
            if entry.wire_head is None:
                entry.wire_head = head(name)
            out += (entry.wire_head, entry.wire_counts)
        return out

    def poll_states(self) -> list[str]:
        """Re-check active states (processes come and go without metadata changes).

        A unit's status is read again when its cgroup appeared, vanished, or gained or
        lost its last process since the status was read, as inotify tells (see
        :mod:`.cgroupwatch`; a unit it cannot tell about: one ``cgroup.events`` read), when
        its state follows its owner's process (:data:`OWNER_STATES`), and for a rolling
        slice of :data:`FULL_EVERY`-th (at most :data:`FULL_MAX`) of the units. Units with
        nothing to look at are not walked (:meth:`_candidates`).
        """
        changed = []
        rolling, self._cursor = self._rolling(list(self.units), FULL_EVERY, FULL_MAX, self._cursor)
        names, events = self._candidates("state", rolling)
        watch = self._watch
        for name in names:
            entry = self.units[name]
            st = entry.status
            due = name in rolling or st.active_state in OWNER_STATES
            if not due and events is not None and entry.probe is not None:
                fs = self._fs(name, st.unit.cgroup)
                if fs is not None and fs not in events and watch.watched(fs, entry.probe[0]):
                    continue  # nothing happened to its cgroup
            self._watched(name, st.unit.cgroup)
            probe = self._probe(st.unit.cgroup)
            if probe is not None and probe == entry.probe and not due:
                self._look_again(name, entry)
                continue
            with contextlib.suppress(NotFound):
                new = self.lister.status(name)
                entry.probe = probe
                if (new.active_state, new.sub_state, new.attached) != (
                    st.active_state,
                    st.sub_state,
                    st.attached,
                ):
                    if new.unit is not st.unit:  # parsed anew: from which file, unknown
                        entry.meta_key = None
                    entry.status = new
                    changed.append(name)
                    self._emit("changed", name, entry)
            self._look_again(name, entry)
        return changed

    def _look_again(self, name: str, entry: Entry) -> None:
        """Keep a unit in the next state poll's look when no event would show its next
        change: its state follows a process of its owner, its probe is unknown, or its
        cgroup is not watched."""
        st = entry.status
        fs = self._fs(name, st.unit.cgroup)
        if (
            st.active_state in OWNER_STATES
            or entry.probe is None
            or fs is None
            or self._watch is None
            or not self._watch.watched(fs, entry.probe[0])
        ):
            self._slow["state"].add(name)

    def close(self) -> None:
        self.reader.close()
        if self._watch is not None:
            self._watch.close()
            self._watch = None
