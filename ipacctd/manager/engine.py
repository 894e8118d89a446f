"""The engine: every front door (CLI, D-Bus, unit-file loader) calls these functions.

Mutations validate everything first, then take the store lock, then record their intent
in the metadata, then change the kernel, then record the result. A failure leaves the
kernel and the metadata as they were; a crash (kill -9) part-way leaves an intent that
:meth:`Manager.reconcile` completes — at daemon start and before every mutation of the
unit (see :mod:`ipacctd.manager.generation`).
"""

from __future__ import annotations

# signal.py's C core: the same functions and numbers, without the enums signal.py
# builds at import (~0.5 ms of every run); names of signals come from signal.py where shown.
import _signal as signal
import contextlib
import errno
import os
import time
from collections.abc import Iterable, Iterator, Sequence

from ipacctd import cgroup
from ipacctd.bpf import bpffs
from ipacctd.datapath.counters import Counters, Direction
from ipacctd.datapath.unit import COUNTERS, PROG_PIN, UnitDatapath, cgroup_id, link_problem
from ipacctd.errors import (
    AlreadyExists,
    Busy,
    Corrupt,
    Error,
    InvalidInput,
    NotFound,
    NotSupported,
    OutOfMemory,
    PermissionDenied,
)
from ipacctd.manager import generation, owner, systemd
from ipacctd.manager.config import Config
from ipacctd.manager.logs import LazyLogger
from ipacctd.manager.store import SUFFIX, Store, canonical
from ipacctd.manager.unit import (
    NOT_ARMED,
    POLICY_CUT_OFF,
    Enforcement,
    Unit,
    UnitStatus,
    policy_changed,
    spec_for,
)
from ipacctd.policy.names import (
    TMP_PIN_PREFIX,
    candidate_paths,
    pin_name,
    tmp_pin_name,
    tmp_pin_pid,
    transient_name,
    unpin_name,
    validate_unit_name,
)
from ipacctd.policy.properties import Assignment, Properties, parse_assignment
from ipacctd.record import replace

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing
if TYPE_CHECKING:
    from ipacctd.containers import ContainerInfo
    from ipacctd.manager.dirwatch import DirChanges
    from ipacctd.manager.kits import KitMaker
    from ipacctd.manager.stats import ProgramStats
    from ipacctd.policy.unitfile import UnitFile

ENV_DISABLE_BPF = "IPACCTD_DISABLE_BPF"
log = LazyLogger("ipacctd.engine")

#: Exit statuses of a main process that leave a unit inactive rather than failed: as
#: systemd's services, a normal exit 0 and death by SIGHUP, SIGINT, SIGTERM or SIGPIPE
#: (what ``stop`` sends), recorded as minus the signal number.
CLEAN_EXIT = frozenset({None, 0, -signal.SIGHUP, -signal.SIGINT, -signal.SIGTERM,
                        -signal.SIGPIPE})
PROBE_NAMES = 256  # candidates _free_transient_name looks at before it lists every unit

#: Active states in which a unit's name is in use: its processes run, or the ``ipacctd run``
#: that owns it is starting its command or recording its exit. Such a unit is never removed.
BUSY_STATES = frozenset({"active", "activating", "deactivating"})
#: attach_many sweeps the remains of crashed creators at most this often (seconds).
SWEEP_EVERY = 1.0


class Unenforceable(NotSupported):
    """A unit's firewall cannot be enforced here; it is refused unless overridden."""


def parse_assignments(texts: Iterable[str]) -> list[tuple[str, str]]:
    """``NAME=VALUE`` strings → pairs, validated as a whole (nothing applied yet); each
    carries its parsed value (:class:`Assignment`), so applying it parses nothing again."""
    pairs = [Assignment.parse(*parse_assignment(t)) for t in texts]
    Properties().apply(pairs)  # validate the whole now, before any state changes
    return pairs


@contextlib.contextmanager
def _refused_for_memory(what: str) -> Iterator[None]:
    """Running out of memory part-way through ``what`` — a memory cgroup's limit met by a
    Python allocation (MemoryError) or by a system call (ENOMEM; bpf(2)'s own ENOMEM is
    mapped already) — becomes one clear error instead of a traceback. The caller undoes
    what it started, so nothing is applied."""
    try:
        yield
    except OutOfMemory:
        raise
    except (MemoryError, OSError) as exc:
        if isinstance(exc, OSError) and (exc.errno != errno.ENOMEM or isinstance(exc, Error)):
            raise
        raise OutOfMemory(
            f"out of memory while {what}; nothing was applied ({OutOfMemory.HINT})"
        ) from None


def _let_go(exc: BaseException) -> None:
    """Free what the frames of a failed step still hold (a half-built datapath's tables
    and instructions), so that undoing it has memory to work with."""
    # traceback.clear_frames, written out: an import here could fail for the very lack of
    # memory (or file descriptors) this clean-up is for.
    tb = exc.__traceback__
    while tb is not None:
        try:
            tb.tb_frame.clear()
        except RuntimeError:  # a frame still running (the caller's own)
            pass
        tb = tb.tb_next


def datapath_problem() -> str | None:
    """Why this host cannot attach cgroup BPF programs (None when it can)."""
    if os.environ.get(ENV_DISABLE_BPF) == "1":
        return f"BPF disabled by ${ENV_DISABLE_BPF}=1"
    if os.geteuid() != 0:
        return "not running as root (needs CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN)"
    try:
        cgroup.mount_point()
        bpffs.ensure_mounted()
    except Error as exc:
        return str(exc)
    return None


class Manager:
    """Units of one ipacctd installation (one :class:`Config`)."""

    def __init__(self, config: Config | None = None) -> None:
        self.config = config or Config.from_env()
        self.store = Store(self.config)
        self._mount: str | None = None
        # unit → (its metadata file's inode, size, mtime; its cgroup): _cgroup_owners
        self._owner_cache: dict[str, tuple[tuple[int, int, int], str]] = {}
        self._owner_watch: DirChanges | None = None  # what changed since: _cgroup_owners
        self._owners: dict[str, str] = {}  # cgroup → unit, as _owner_cache has it
        self._swept = -SWEEP_EVERY  # when attach_many last swept stale pins (monotonic)
        # (datapath_problem(), cgroup2 mount) during attach_many: see _host_facts_once
        self._facts: tuple[str | None, str] | None = None
        self._kits: KitMaker | None = None  # during attach_many: its kit helper, if any

    # -- queries ---------------------------------------------------------------------------

    def names(self) -> list[str]:
        """All unit names, sorted: those with metadata, and broken ones that have only pins
        (their metadata deleted by hand) so that they can be seen and reset."""
        names = self.store.names()
        try:
            entries = os.listdir(self.config.pins_dir)
        except OSError:
            return names
        # Only the pin directories of no unit with metadata are read as names (unescaped
        # and checked, as Store.pinned_names does): doing so for all cost ~6 µs a unit.
        expected = {pin_name(n) for n in names}
        orphans = set()
        for entry in entries:
            if entry in expected or entry.startswith("~"):
                continue
            name = unpin_name(entry)
            if name is None:
                continue
            with contextlib.suppress(ValueError):  # not a name of ours
                orphans.add(canonical(name))
        orphans.difference_update(names)
        return sorted([*names, *orphans]) if orphans else names

    def unit(self, name: str) -> Unit:
        """A unit's recorded metadata (NotFound when unknown, Corrupt when unreadable)."""
        data = self.store.read(name)
        if data.get("name") != canonical(name):
            raise Corrupt(f"metadata {self.store.meta_path(name)} is of another unit "
                          f"({str(data.get('name'))[:100]!r})")
        return Unit.from_json(data)

    def broken(self, name: str) -> tuple[Unit, str] | None:
        """For a unit whose metadata is unreadable or missing while its pins exist: a
        stand-in (its default cgroup, no known policy, not enforced) and the cause.
        None for a sound unit; NotFound when there is nothing of it at all."""
        try:
            self.unit(name)
            return None
        except Corrupt as exc:
            cause = str(exc)
        except NotFound:
            if not os.path.lexists(self.store.pin_dir(name)):
                raise
            cause = "pins without metadata (metadata deleted?)"
        full = canonical(name)
        root = cgroup.validate_path(self.config.cgroup_root)
        unit = Unit(full, f"{root.rstrip('/')}/{full}", transient=True, enforced=False,
                    not_enforced_reason=f"broken unit: {cause}; its policy is unknown "
                                        f"('ipacctd reset {full}' removes what is left)")
        return unit, cause

    def resolve(self, query: str) -> str:
        """The unit a user means: its name, or for a container's unit also the container's
        name or (short) id, as ``podman ps`` shows them. Among several units of one
        container name (a name reused), the active one; NotFound or, when ambiguous,
        InvalidInput naming the candidates.
        """
        with contextlib.suppress(InvalidInput):
            if self.store.exists(query):
                return validate_unit_name(query)
        hits = []
        for name in self.names():
            with contextlib.suppress(NotFound, Corrupt):  # a broken unit names no container
                c = self.unit(name).container
                if c is not None and (c.name == query
                                      or (len(query) >= 4 and c.id.startswith(query))):
                    hits.append(name)
        if len(hits) > 1:
            live = [n for n in hits if self.status(n).active_state == "active"]
            if len(live) == 1:
                return live[0]
            raise InvalidInput(f"{query!r} names several container units: {', '.join(hits)}; "
                               "give the unit's full name")
        if hits:
            return hits[0]
        # NotFound with the usual message (or InvalidInput for bad names); a broken unit
        # (unreadable metadata, or pins only) is found, so that it can be stopped and reset.
        self.broken(query)
        return validate_unit_name(query)

    def cgroup_fs(self, unit: Unit) -> str:
        """Filesystem path of the unit's cgroup."""
        return cgroup.fs_path(unit.cgroup, self._cgroup_mount())

    def _cgroup_mount(self) -> str:
        """The cgroup2 mount point, looked up once: parsing mountinfo costs more than the
        rest of a status, and a run would parse it four times."""
        if self._mount is None:
            self._mount = cgroup.mount_point()
        return self._mount

    def counters(self, name: str) -> Counters | None:
        """The unit's counters, or None when it has no datapath."""
        try:
            with UnitDatapath.open(self.store.pin_dir(name)) as dp:
                return dp.read()
        except (NotFound, OSError):
            return None

    def denied(self, name: str, limit: int | None = None) -> list[dict]:
        """Remote addresses the unit's firewall denied, most packets first."""
        from ipacctd.datapath import denied as denied_mod  # status's, not every view's

        try:
            with UnitDatapath.open(self.store.pin_dir(name)) as dp:
                dmap = dp.denied_map()
                if dmap is None:
                    return []
                from ipacctd.datapath import denied as denied_mod  # the log's reader

                with dmap:
                    entries = denied_mod.decode(dmap)
        except (NotFound, OSError):
            return []
        return entries[:limit] if limit is not None else entries

    def program_stats(self, name: str) -> dict[Direction, ProgramStats]:
        """Run time and run count of the unit's programs per direction, linked or (armed by
        systemd) pinned; counted only while BPF statistics are on (see :mod:`.stats`)."""
        from ipacctd.manager.stats import program_stats  # BPF stats: off the start-up path

        return program_stats(self.store.pin_dir(name))

    def status(self, name: str) -> UnitStatus:
        """The unit with its live state: processes, counters, attachment.

        A broken unit (see :meth:`broken`) has a status too: ``failed (broken)``, or active
        while processes run in its cgroup, with the cause as ``broken``.
        """
        try:
            unit = self.unit(name)
        except (Corrupt, NotFound):
            found = self.broken(name)
            if found is None:  # repaired meanwhile
                return self.status(name)
            return self._broken_status(*found)
        fs = self.cgroup_fs(unit)
        exists = cgroup.exists(fs)
        pids = tuple(sorted(cgroup.procs_recursive(fs))) if exists else ()
        counters = None
        kgen = None
        with contextlib.suppress(Error, OSError):  # an unreadable pin: "programs missing"
            with UnitDatapath.open(self.store.pin_dir(name)) as dp:
                counters = dp.read()
            kgen = generation.read(self.store.pin_dir(name))
        enf = self.enforcement(name, unit, kgen)
        attached = enf.enforced or enf.policy_cut_off
        active, sub = self.active_state(unit, pids, exists)
        return UnitStatus(unit, active, sub, pids, counters, attached, kgen, enf)

    @staticmethod
    def active_state(unit: Unit, pids: tuple[int, ...], exists: bool) -> tuple[str, str]:
        """(active state, sub state) of a unit with these processes in its cgroup, which
        exists (``exists``) or not."""
        if pids:
            return "active", "running"
        if unit.transient and owner.alive(unit.owner) and (
                unit.exited_at is None or (unit.main_pid is None and unit.exit_status is None)):
            # Its run reserved the name and is about to start the command (also after a
            # stop that came first), or the command ended and the run is recording it: the
            # name is taken either way.
            return (("activating", "start") if unit.main_pid is None
                    else ("deactivating", "stop"))
        if unit.exit_status not in CLEAN_EXIT:
            return "failed", "failed"
        if unit.exited_at is not None:
            return "inactive", "dead"
        if not unit.transient and exists:
            return "active", "idle"
        return "inactive", "dead"

    def enforcement(
        self, name: str, unit: Unit | None = None, kgen: int | None = None
    ) -> Enforcement:
        """Whether the unit's recorded policy is in force on the cgroup now at its path,
        and if not, why: the kernel is asked (links, the programs on the cgroup, the
        enforced generation), not the metadata. ``kgen``: the enforced generation as
        :meth:`status` read it a moment before (None: read here)."""
        unit = unit or self.unit(name)
        fs = self.cgroup_fs(unit)
        cid = cgroup_id(fs) if cgroup.exists(fs) else None
        if cid is None:
            return self._armed_for_next_start(name, unit)
        if not unit.enforced:
            return Enforcement(False, f"BPF unusable: {unit.not_enforced_reason}", cgroup_id=cid)
        pin_dir = self.store.pin_dir(name)
        if not os.path.exists(os.path.join(pin_dir, COUNTERS)):
            problem: str | None = f"pins lost: nothing is pinned at {pin_dir}"
        else:
            try:
                problem = link_problem(pin_dir, fs, spec_for(unit.properties), unit.cgroup_id)
            except OSError as exc:  # BPFError included: the kernel refused to answer
                problem = f"programs missing: {exc}"
        if problem is None:
            if kgen is None:  # not given, or not pinned a moment ago: ask now
                kgen = generation.read(pin_dir)
            if kgen != unit.generation:
                problem = (f"{POLICY_CUT_OFF}: the kernel enforces policy generation {kgen}, "
                           f"recorded {unit.generation}")
        if problem is None:
            return Enforcement(True, cgroup_id=cid)
        if problem == "cgroup gone":  # removed between the two looks
            return Enforcement(False, problem, live=False)
        return Enforcement(False, problem, cgroup_id=cid)

    def _armed_for_next_start(self, name: str, unit: Unit) -> Enforcement:
        """No cgroup at the unit's path: nothing to enforce on now. For a unit systemd arms
        (a stopped service, or one never started since it was bound) what must hold is its
        next start: the drop-in naming its pinned programs, and those pins — else the
        problem says ``not armed`` (:attr:`Enforcement.disarmed`), and reconcile (daemon
        poll, ``reload``) writes them again."""
        service = unit.systemd_service
        if service is None or not unit.enforced:
            return Enforcement(False, "cgroup gone", live=False)
        pin_dir = self.store.pin_dir(name)
        lost = [p for p in PROG_PIN.values() if not os.path.exists(os.path.join(pin_dir, p))]
        problem = ""
        if lost:
            problem = f"{NOT_ARMED}: pins lost ({', '.join(sorted(lost))} in {pin_dir})"
        else:
            try:
                same = systemd.read(service) == self._dropin(unit)
            except Error:
                same = False
            if not same:
                problem = (f"{NOT_ARMED}: the systemd drop-in {systemd.dropin_path(service)} "
                           "is missing or changed")
        if problem:
            problem += f"; the next start of {service} runs without the firewall"
        else:  # nothing to enforce on, and in force from the next start's first instruction
            problem = f"cgroup gone: {service} is not running; systemd arms its next start"
        return Enforcement(False, problem, live=False)

    def _broken_status(self, unit: Unit, cause: str) -> UnitStatus:
        fs = self.cgroup_fs(unit)
        pids: tuple[int, ...] = ()
        with contextlib.suppress(Error, OSError):
            pids = tuple(sorted(cgroup.procs_recursive(fs))) if cgroup.exists(fs) else ()
        counters = None
        with contextlib.suppress(Error, OSError):
            with UnitDatapath.open(self.store.pin_dir(unit.name)) as dp:
                counters = dp.read()
        active, sub = ("active", "broken") if pids else ("failed", "broken")
        # Its policy is unknown, so it is not known to be in force: never report it so.
        live = False
        with contextlib.suppress(Error, OSError):
            live = cgroup.exists(fs)
        enf = Enforcement(False, f"broken unit: {cause}", live=live)
        return UnitStatus(unit, active, sub, pids, counters, False, None, broken=cause,
                          enforcement=enf)

    def statuses(self, names: Sequence[str] | None = None) -> list[UnitStatus]:
        """Status of the named units (all when None); unknown names raise NotFound.
        Read as :meth:`status` reads them, each fact once (:mod:`.listing`)."""
        from ipacctd.manager.listing import StatusReader

        with StatusReader(self) as reader:
            return list(reader.statuses(names))

    def unit_file(self, name: str) -> UnitFile | None:
        """The policy file for ``name`` in the unit directory, if there is one.

        Only the files that can define ``name`` are read (not every file on every run),
        each bounded (see :func:`~ipacctd.policy.unitfile.load_unit_file`).
        """
        paths = [p for p in candidate_paths(self.config.unit_dir, name) if os.path.lexists(p)]
        if not paths:
            return None  # the usual run: no file, and no parser imported to say so
        from ipacctd.policy.unitfile import load_unit_file

        first_error: InvalidInput | None = None
        for path in paths:
            try:
                found = load_unit_file(path, self.config.unit_dir)
            except InvalidInput as exc:
                first_error = first_error or exc
                continue
            if found.name == canonical(name):
                return found
        if first_error is not None:
            raise first_error
        return None

    # -- creating --------------------------------------------------------------------------

    def start_transient(self, assignments: Sequence[tuple[str, str]] = (), *,
                        name: str | None = None, description: str | None = None,
                        command: Sequence[str] = (), allow_unenforced: bool = False,
                        dbus_items: Sequence[tuple[str, str, object]] = (),
                        owned_by: owner.Owner | None = None) -> Unit:
        """Create a unit with its own cgroup under the cgroup root, programs attached.

        The unit's file in the unit directory (if any) supplies the base properties;
        ``assignments`` apply on top. Nothing runs in the cgroup yet: the caller starts
        the command there, so the firewall is in force before the first packet.

        A name that is taken in any way (a unit of any state, or pins left without
        metadata) is refused, never reused, so no start and no cleanup of one process can
        act on a unit another process is starting. ``owned_by``: the process that will
        start the command and record its exit (``ipacctd run``): until then the unit is
        "activating" and nothing removes it (see :mod:`ipacctd.manager.owner`).
        """
        name = validate_unit_name(name) if name else None
        # The unit file is read before the lock (bounded, see policy.unitfile): a slow or
        # hostile file delays only this start.
        source = self.unit_file(name) if name is not None else None
        with self.store.locked():
            self._sweep_stale_pins()
            if name is None:
                name = self._free_transient_name()
                source = self.unit_file(name)
            props = source.properties() if source else Properties()
            props = props.apply(assignments).apply_dbus(dbus_items)
            if description is not None:
                props = props.apply([("Description", description)])
            self._make_room(name)
            root = cgroup.validate_path(self.config.cgroup_root)
            rel = f"{root.rstrip('/')}/{name}"
            unit = Unit(name, rel, props, transient=True, command=tuple(command),
                        started_at=time.time(), source=source.path if source else None,
                        owner=owned_by)
            return self._create(unit, allow_unenforced, make_cgroup=True)

    def attach(self, cgroup_path: str, assignments: Sequence[tuple[str, str]] = (), *,
               name: str | None = None, allow_unenforced: bool = False,
               dbus_items: Sequence[tuple[str, str, object]] = (),
               base: Properties | None = None, source: str | None = None,
               container: ContainerInfo | None = None) -> Unit:
        """Bind a policy to an existing cgroup that ipacctd did not create.

        ``base`` (with ``source``, the unit file it came from) replaces the lookup of a
        unit file by name; ``assignments`` and ``dbus_items`` apply on top. ``container``
        records the container the cgroup belongs to (OCI hook, binder).
        """
        with self.store.locked():
            self._sweep_stale_pins()
            return self._attach(cgroup_path, assignments, name=name,
                                allow_unenforced=allow_unenforced, dbus_items=dbus_items,
                                base=base, source=source, container=container)

    def attach_many(self, requests: Iterable[dict], budget: float | None = None,
                    kits: KitMaker | None = None) -> list[Unit | Error]:
        """:meth:`attach` for each request (its keyword arguments, ``cgroup_path`` among
        them) under one hold of the lock: the cgroups bound already are listed once for
        the batch, not once per unit (a glob matching thousands of cgroups). Returns each
        request's unit or the error that refused it, in order; one refusal stops none of
        the others.

        ``budget`` (seconds): stop after about that long — or as long as listing the bound
        cgroups took, if longer, so that the listing stays at most half of a batch and the
        whole stays linear in the units — having done at least one; the requests left
        (past the end of the answer) are not taken from ``requests``.

        ``kits``: a helper making the maps and programs of units of one policy ahead
        (:mod:`ipacctd.manager.kits`); a unit of that policy takes one when it is ready."""
        out: list[Unit | Error] = []
        # The records are made durable together, once per call (Store.batch), before any
        # unit is returned as bound; the host facts every unit asks about (can BPF be
        # used here, where cgroup2 is mounted) are looked up once per call too.
        with self.store.locked(), self.store.batch(), self._host_facts_once(), \
                self._kits_of_batch(kits):
            if time.monotonic() >= self._swept + SWEEP_EVERY:
                # Remains of a crashed creator are left for a moment (ours are removed by
                # their own creation): a sweep lists every unit's pins, each slice would.
                self._sweep_stale_pins()
                self._swept = time.monotonic()
            start = time.monotonic()
            owners = self._cgroup_owners()  # complete while we hold the lock
            now = time.monotonic()
            until = None if budget is None else now + max(budget, now - start)
            for req in requests:
                try:
                    unit = self._attach(owners=owners, **req)
                except Error as exc:
                    out.append(exc)
                    if until is not None and time.monotonic() >= until:
                        break
                    continue
                owners[unit.cgroup] = unit.name
                out.append(unit)
                if until is not None and time.monotonic() >= until:
                    break
        return out

    @contextlib.contextmanager
    def _kits_of_batch(self, kits: KitMaker | None) -> Iterator[None]:
        """``kits`` for the units of one attach_many batch (:meth:`_build` takes from it)."""
        self._kits = kits
        try:
            yield
        finally:
            self._kits = None

    @contextlib.contextmanager
    def _host_facts_once(self) -> Iterator[None]:
        """:func:`datapath_problem`, looked up at the start of a batch of attaches and reused
        by each (each lookup reads /proc/self/mountinfo; the cgroup2 mount is
        :meth:`_cgroup_mount`'s, looked up once)."""
        self._facts = (datapath_problem(), self._cgroup_mount())
        try:
            yield
        finally:
            self._facts = None

    def _datapath_problem(self) -> str | None:
        facts = self._facts
        return datapath_problem() if facts is None else facts[0]

    def _cgroup_owners(self) -> dict[str, str]:
        """cgroup → unit of every unit with metadata (lock held, so complete until it is
        released). A metadata file is parsed again only when it changed (inode, size and
        mtime, as a rename into place changes them): a unit's cgroup is fixed for its life.

        Between calls the directory's inotify queue (:class:`DirChanges`) names the files
        that changed, so a call costs what changed, not a stat per unit (it runs once per
        slice of a glob's binding); the first call, or one after lost events, lists all."""
        changes = self._owner_watch
        changed = changes.take() if changes is not None else None
        if changed is None:
            from ipacctd.manager.dirwatch import DirChanges  # attaching only

            with contextlib.suppress(OSError):  # no inotify: a listing every time
                self._owner_watch = DirChanges(self.config.units_dir)  # before the listing
            return self._list_cgroup_owners()
        cache, owners = self._owner_cache, self._owners
        for entry in changed:
            if not entry.endswith(SUFFIX) or entry.startswith("."):
                continue
            name = entry[: -len(SUFFIX)]
            old = cache.get(name)
            hit = self._owner_entry(name, None, old)
            if old is not None and owners.get(old[1]) == name and (hit is None or
                                                                   hit[1] != old[1]):
                del owners[old[1]]
            if hit is None:
                cache.pop(name, None)
            else:
                cache[name] = hit
                owners.setdefault(hit[1], name)
        return owners

    def remember_owner(self, name: str, key: tuple[int, int, int], rel: str) -> None:
        """What a reader of unit ``name``'s metadata file (key: its inode, size, mtime) found
        its cgroup to be, so that :meth:`_cgroup_owners` need not parse the file again. The
        cgroup → unit map itself is :meth:`_cgroup_owners`' to fill (the file's change is
        queued for it); but a cgroup this unit no longer owns (its name re-made for another
        cgroup) leaves it here, or that cgroup would count as bound and never be bound."""
        old = self._owner_cache.get(name)
        if old is not None and old[1] != rel and self._owners.get(old[1]) == name:
            del self._owners[old[1]]
        self._owner_cache[name] = (key, rel)

    def _list_cgroup_owners(self) -> dict[str, str]:
        """:meth:`_cgroup_owners` by a listing of every metadata file."""
        cache = self._owner_cache
        fresh: dict[str, tuple[tuple[int, int, int], str]] = {}
        owners: dict[str, str] = {}
        try:
            entries = list(os.scandir(self.config.units_dir))
        except FileNotFoundError:
            entries = []
        for entry in entries:  # as Store.names(), without a path built per name
            if not entry.name.endswith(SUFFIX) or entry.name.startswith("."):
                continue
            name = entry.name[: -len(SUFFIX)]
            hit = self._owner_entry(name, entry, cache.get(name))
            if hit is None:
                continue
            fresh[name] = hit
            owners.setdefault(hit[1], name)
        self._owner_cache, self._owners = fresh, owners
        return owners

    def _owner_entry(self, name: str, entry: os.DirEntry | None,
                     hit: tuple[tuple[int, int, int], str] | None
                     ) -> tuple[tuple[int, int, int], str] | None:
        """(file key, cgroup) of one unit's metadata file, parsed again only when its key
        changed; None when it is gone or broken."""
        try:
            st = entry.stat(follow_symlinks=False) if entry is not None else \
                os.lstat(self.store.meta_path(name))
        except (FileNotFoundError, ValueError):  # ValueError: not a unit name of ours
            return None
        key = (st.st_ino, st.st_size, st.st_mtime_ns)
        if hit is not None and hit[0] == key:
            return hit
        try:  # as unit() reads it, without parsing the rest of the unit
            data = self.store.read(name)
            rel = data.get("cgroup")
            if data.get("name") == canonical(name) and isinstance(rel, str):
                return (key, rel)
        except (NotFound, Corrupt, InvalidInput):
            pass
        # gone, or broken (its views say so; reset removes it): it holds no cgroup we can
        # know of, and one bad file must not stop every binding
        return None

    def _attach(self, cgroup_path: str, assignments: Sequence[tuple[str, str]] = (), *,
                name: str | None = None, allow_unenforced: bool = False,
                dbus_items: Sequence[tuple[str, str, object]] = (),
                base: Properties | None = None, source: str | None = None,
                container: ContainerInfo | None = None,
                owners: dict[str, str] | None = None) -> Unit:
        """:meth:`attach` with the lock held; ``owners``: :meth:`_cgroup_owners`, kept
        current by the caller (None: listed now)."""
        rel = cgroup.validate_path(cgroup_path)
        fs = cgroup.fs_path(rel, self._cgroup_mount())
        if not cgroup.exists(fs) and not self.stopped_systemd_service(rel):
            raise NotFound(f"cgroup {rel} does not exist (looked at {fs})")
        name = validate_unit_name(name or os.path.basename(rel) or "root")
        if self.store.exists(name):
            self._reconcile(name)
        if self.store.exists(name):
            old = self.status(name)
            if old.unit.systemd_service is not None and old.unit.cgroup == rel:
                # Armed already (the service is merely stopped): removing it to bind
                # again would leave a start in between unarmed.
                raise AlreadyExists(f"unit {name} is bound to {old.unit.systemd_service} "
                                    "already (systemd arms its every start)",
                                    hint=f"change it with 'ipacctd set-property {name}'")
            if old.unit.transient or old.active_state == "active" or old.unit.cgroup != rel:
                raise AlreadyExists(f"unit {name} exists already",
                                    hint="pick another with --unit")
            self._remove(old.unit)  # a bound cgroup that vanished and came back
        # ``name`` has no unit here (refused or removed above): an entry naming it is
        # stale; any other is read again to be sure.
        other = (self._cgroup_owners() if owners is None else owners).get(rel)
        if other is not None and other != name:
            with contextlib.suppress(NotFound):
                if self.unit(other).cgroup == rel:
                    raise AlreadyExists(f"cgroup {rel} is bound to unit {other} already")
        if base is None:
            found = self.unit_file(name)
            base = found.properties() if found else Properties()
            source = found.path if found else source
        props = base.apply(assignments).apply_dbus(dbus_items)
        unit = Unit(name, rel, props, transient=False, started_at=time.time(),
                    source=source, container=container,
                    systemd_service=self._systemd_service(name, rel))
        return self._create(unit, allow_unenforced, make_cgroup=False)

    def _systemd_service(self, name: str, rel: str) -> str | None:
        """The systemd service whose cgroup ``rel`` is, when systemd is to attach the unit's
        programs at its every start (see :mod:`ipacctd.manager.systemd`); refuses a service
        another unit armed already."""
        if self._datapath_problem() is not None:
            return None  # nothing to pin: the unit is refused or runs unenforced
        service = systemd.service_for(rel)
        if service is not None:
            systemd.check_owner(service, name, self.store.pin_dir(name))
        return service

    @staticmethod
    def stopped_systemd_service(rel: str) -> bool:
        """True when ``rel`` is where a loaded but stopped systemd service's next start makes
        its cgroup (see :mod:`ipacctd.manager.systemd`): binding it arms the service at
        once — pins, drop-in, daemon-reload — so that its first start is enforced before
        its first instruction. Only where the programs can be pinned: an unenforced unit
        on no cgroup would be nothing at all."""
        return datapath_problem() is None and systemd.service_for(rel) is not None

    def _make_room(self, name: str) -> None:
        """Refuse a name that is taken (lock held), as systemd-run refuses a loaded unit.

        Only the remains of an interrupted removal are cleared first: that unit was being
        forgotten already. Anything else stays for its owner (or for ``reset``): an
        inactive unit keeps its counters until reset, and a unit that seems inactive may
        be one another ``ipacctd run`` is about to start its command in.
        """
        if self.store.exists(name):
            with contextlib.suppress(NotFound, Corrupt):  # a broken one: refused below
                if self.unit(name).removing:
                    self._reconcile(name)  # completes the removal
        if self.store.exists(name):
            st = self.status(name)
            if st.active_state in BUSY_STATES:
                raise AlreadyExists(f"unit {name} is {st.active_state} already",
                                    hint="stop it first or pick another name with --unit")
            raise AlreadyExists(f"unit {name} exists already ({st.active_state}, counters "
                                f"kept)", hint=f"reset it first ('ipacctd reset {name}') or "
                                "pick another name with --unit")
        if os.path.lexists(self.store.pin_dir(name)):
            raise AlreadyExists(f"unit {name} has pins but no metadata (a broken unit)",
                                hint=f"reset it first ('ipacctd reset {name}') or pick "
                                "another name with --unit")
        root = cgroup.validate_path(self.config.cgroup_root)
        fs = cgroup.fs_path(f"{root.rstrip('/')}/{name}", self._cgroup_mount())
        if cgroup.exists(fs) and cgroup.procs_recursive(fs):
            raise AlreadyExists(f"cgroup {fs} of unit {name} holds processes but ipacctd has "
                                "no record of it", hint="pick another name with --unit")

    def _create(self, unit: Unit, allow_unenforced: bool, make_cgroup: bool) -> Unit:
        # One file descriptor is held in reserve while the unit is built: when the process
        # runs out of them (RLIMIT_NOFILE) part-way, :meth:`_undo_create` frees it first,
        # so the cleanup can still list the directories it removes.
        self._spare_fd = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
        try:
            with _refused_for_memory(f"creating unit {unit.name}"):
                return self._build(unit, allow_unenforced, make_cgroup)
        finally:
            self._release_spare_fd()

    def _release_spare_fd(self) -> None:
        fd, self._spare_fd = getattr(self, "_spare_fd", None), None
        if fd is not None:
            os.close(fd)

    def _build(self, unit: Unit, allow_unenforced: bool, make_cgroup: bool) -> Unit:
        fs = cgroup.fs_path(unit.cgroup, self._cgroup_mount())
        problem = self._datapath_problem()
        if problem is not None:
            unit = self._unenforced(unit, problem, allow_unenforced)
        unit = replace(unit, generation=1, rollback=None, removing=False)
        if make_cgroup:
            # The record before the cgroup, and again with the cgroup's id below: a crash
            # between mkdir and the record would leave a cgroup of no unit, which neither
            # status nor reset knows (a cgroup2 directory cannot be built under another name
            # and renamed into place). Killed between the two, it is a unit without its id
            # or programs, which status reports and reset removes (cgroup included).
            try:
                self.store.write(unit.name, unit.to_json(), durable=not unit.transient)
                cgroup.create(fs)
            except BaseException:
                self._undo_create(unit, False)
                raise
        try:
            # None: a stopped systemd service, armed before its cgroup exists (systemd makes
            # it at the next start; the binder or the next rebind records its id).
            unit = replace(unit, cgroup_id=cgroup_id(fs))
            # Metadata first: pins never exist without it, and a crash before the pins are
            # complete leaves a unit that status reports ("programs missing") and reset
            # removes. It also reserves the name (the lock is held). A transient unit's
            # record is not fsynced: everything it records — its cgroup, its command, its
            # pins on bpffs — ends with the host, so a record that outlived a power cut
            # would describe nothing; the rename keeps it all-or-nothing for readers, and
            # the order (record, then pins) holds against a crash of this process as is.
            # Inside attach_many the fsync is the batch's one syncfs, before any unit of it
            # is returned (Store.batch): a power cut before then takes the pins with it.
            self.store.write(unit.name, unit.to_json(), durable=not unit.transient)
        except BaseException:  # e.g. a full state directory: nothing may stay behind
            self._undo_create(unit, make_cgroup)
            raise
        if unit.enforced:
            with contextlib.suppress(OSError):  # the installation's pins: root's only
                os.makedirs(self.config.bpf_dir, mode=0o700, exist_ok=True)
            try:
                pin_dir = self.store.pin_dir(unit.name)
                if unit.systemd_service is not None:
                    self._create_systemd_armed(unit, fs)
                else:
                    spec = spec_for(unit.properties)
                    kit = self._kits.take(spec) if self._kits is not None else None
                    with UnitDatapath.create(pin_dir, fs, spec, kit=kit):
                        pass
                    generation.write(pin_dir, unit.generation)
            except (NotSupported, PermissionDenied) as exc:
                # UnitDatapath.create pins nothing before its maps exist, and removes its
                # own temporary directory when it fails; what earlier creators left of
                # theirs is swept all the same.
                with contextlib.suppress(Error, OSError):
                    self._sweep_stale_pins()
                try:
                    unit = self._unenforced(unit, str(exc), allow_unenforced)
                    self.store.write(unit.name, unit.to_json())
                except BaseException:
                    self._undo_create(unit, make_cgroup)
                    raise
            except BaseException as exc:
                _let_go(exc)
                self._undo_create(unit, make_cgroup)
                raise
        return unit

    def _create_systemd_armed(self, unit: Unit, fs: str) -> None:
        """Pin the unit's programs and have systemd attach them: to the running cgroup now
        (daemon-reload does), and at every later start of the service. No links of ours: a
        second attachment of the same programs would count every packet twice. Fails —
        with the drop-in as it was — unless both programs then run on the live cgroup;
        the caller removes the pins."""
        assert unit.systemd_service is not None
        pin_dir = self.store.pin_dir(unit.name)
        with UnitDatapath.create(pin_dir, None, spec_for(unit.properties)) as dp:
            generation.write(pin_dir, unit.generation)
            previous = systemd.arm(unit.systemd_service, self._dropin(unit))
            if not dp.attached_to(fs) and cgroup.exists(fs):
                systemd.restore(unit.systemd_service, previous)
                raise Error(f"systemd did not attach the programs of unit {unit.name} to "
                            f"{unit.cgroup} after daemon-reload (see its journal); nothing "
                            "was applied")

    def _dropin(self, unit: Unit) -> str:
        """The systemd drop-in of a unit armed by systemd: its programs, then its filters."""
        pin_dir = self.store.pin_dir(unit.name)
        props = unit.properties
        return systemd.dropin_text(
            unit.name, pin_dir,
            (os.path.join(pin_dir, PROG_PIN[Direction.INGRESS]), *props.ip_ingress_filter_path),
            (os.path.join(pin_dir, PROG_PIN[Direction.EGRESS]), *props.ip_egress_filter_path))

    def _unenforced(self, unit: Unit, problem: str, allow: bool) -> Unit:
        if unit.properties.has_firewall() and not allow:
            raise Unenforceable(
                f"cannot enforce the firewall of unit {unit.name}: {problem}; refusing to "
                "start it (pass --allow-unenforced to run without the firewall)")
        return replace(unit, enforced=False, not_enforced_reason=problem)

    def _undo_create(self, unit: Unit, made_cgroup: bool) -> None:
        """Remove what a failed creation made: pins (also its own temporary directory),
        metadata (and its temporary file), cgroup. Each step on its own, so that one that
        fails (no file descriptors left, no space) does not keep the others from running."""
        self._release_spare_fd()
        with contextlib.suppress(Error, OSError):
            # e.g. pinned, but the generation failed; programs systemd attached come off
            self._remove_datapath(unit.name, cgroup.fs_path(unit.cgroup))
        with contextlib.suppress(Error, OSError):
            bpffs.remove_tree(os.path.join(self.config.pins_dir, self._own_tmp_pin(unit.name)))
        with contextlib.suppress(Error, OSError):
            self._sweep_stale_pins()
        with contextlib.suppress(OSError):
            self.store.delete(unit.name)
        with contextlib.suppress(OSError):
            self.store.delete_tmp(unit.name)
        if made_cgroup:
            with contextlib.suppress(Error, OSError):
                cgroup.remove(cgroup.fs_path(unit.cgroup))

    def _own_tmp_pin(self, name: str) -> str:
        """The temporary directory this process builds ``name``'s datapath in."""
        from ipacctd.manager.store import pin_name

        return tmp_pin_name(pin_name(name), os.getpid())

    # -- recording a run -------------------------------------------------------------------

    def record_start(self, name: str, pid: int, owned_by: owner.Owner | None = None) -> Unit:
        """Note the main PID of a unit's command (``owned_by``: only if the unit is still
        the one that process created). A new run of its command: the last exit is
        forgotten."""
        with self.store.locked():
            unit = replace(self._owned(name, owned_by), main_pid=pid, started_at=time.time(),
                           exited_at=None, exit_status=None)
            # Not fsynced: a crash that loses the main PID loses nothing that matters.
            self.store.write(name, unit.to_json(), durable=False)
            return unit

    def record_exit(self, name: str, status: int, owned_by: owner.Owner | None = None) -> Unit:
        """Note that a unit's main process ended (exit code, or -signal)."""
        with self.store.locked():
            unit = replace(self._owned(name, owned_by), exit_status=status,
                           exited_at=time.time())
            # Not fsynced either (the unit's creation was): a crash may lose the exit
            # record, never leave half of one (rename).
            self.store.write(name, unit.to_json(), durable=False)
            return unit

    def _owned(self, name: str, owned_by: owner.Owner | None) -> Unit:
        """The unit, if ``owned_by`` (when given) is the process that created it."""
        unit = self.unit(name)
        if owned_by is not None and unit.owner != owned_by:
            raise NotFound(f"unit {name} is no longer the one this process started")
        return unit

    # -- changing --------------------------------------------------------------------------

    def set_properties(self, name: str, assignments: Sequence[tuple[str, str]]) -> Unit:
        """Apply property assignments live and atomically; counters carry on."""
        with self.store.locked():
            unit = self._reconciled(name)
            new = replace(unit, properties=unit.properties.apply(assignments))
            return self._commit_properties(unit, new)

    def set_properties_dbus(self, name: str, items: Sequence[tuple[str, str, object]]) -> Unit:
        """Like :meth:`set_properties`, with D-Bus typed values (name, signature, value)."""
        with self.store.locked():
            unit = self._reconciled(name)
            new = replace(unit, properties=unit.properties.apply_dbus(items))
            return self._commit_properties(unit, new)

    def replace_properties(self, name: str, props: Properties) -> Unit:
        """Make ``props`` the unit's whole policy (a unit file was edited)."""
        with self.store.locked():
            unit = self._reconciled(name)
            return self._commit_properties(unit, replace(unit, properties=props))

    def _commit_properties(self, old: Unit, new: Unit) -> Unit:
        if new.properties == old.properties:
            return old
        if not new.enforced and new.properties.has_firewall():
            raise Unenforceable(f"unit {new.name} runs without BPF ({new.not_enforced_reason}); "
                                "its firewall cannot be changed")
        if (new.enforced and new.systemd_service is None
                and not cgroup.exists(cgroup.fs_path(new.cgroup))):
            # Its links are severed: nothing to swap programs on (LINK_UPDATE: ENOLINK).
            # (A stopped service systemd arms takes the change: its next start reads the pins.)
            raise InvalidInput(f"unit {new.name} is inactive (its cgroup {new.cgroup} is "
                               "gone): its policy cannot change; reset it and start it again")
        if new.enforced:
            _check_filter_programs(old.properties, new.properties)
        if old.rollback is None and not policy_changed(old.properties, new.properties):
            # Nothing the kernel enforces or counts changes (Description=): no programs, no
            # new policy generation, no intent to roll back — one atomic metadata write.
            # Lists the store keeps in files are named again, not read, hashed or written.
            self.store.write(new.name, new.to_json())
            return new
        with _refused_for_memory(f"changing the policy of unit {new.name}"):
            intent = self._swap_policy(old, new)
        # 3. the kernel records that it enforces this generation.
        if new.enforced:
            generation.write(self.store.pin_dir(new.name), intent.generation)
        # 4. done: no rollback needed any more.
        done = replace(intent, rollback=None)
        try:
            self.store.write(done.name, done.to_json())
        except (MemoryError, OSError) as exc:
            # The change is complete: the kernel enforces its generation and the metadata
            # records it. Only the rollback is left in the record; reconcile drops it.
            log.warning("unit %s: policy changed; its record keeps the rollback for now: %s",
                        new.name, exc)
        return done

    def _swap_policy(self, old: Unit, new: Unit) -> Unit:
        """Steps 1 and 2 of a policy change; returns the intent. On failure the kernel and
        the metadata are as they were (also when memory ran out part-way)."""
        # 1. intent: the new policy, its generation and the policy to return to.
        intent = replace(new, generation=old.generation + 1, rollback=old.properties)
        self.store.write(new.name, intent.to_json())
        if not new.enforced:
            return intent
        pin_dir = self.store.pin_dir(new.name)
        fs = cgroup.fs_path(new.cgroup)
        filters_changed = (
            old.properties.ip_ingress_filter_path != new.properties.ip_ingress_filter_path
            or old.properties.ip_egress_filter_path != new.properties.ip_egress_filter_path)
        try:
            # 2. the kernel: one atomic program swap per direction (none for a change
            # that leaves the datapath as it is, e.g. Description=: no rebuild).
            with UnitDatapath.open(pin_dir) as dp:
                if not policy_changed(old.properties, new.properties):
                    pass
                elif new.systemd_service is not None:
                    self._apply_systemd_armed(new, dp, fs, filters_changed)
                else:
                    dp.apply(spec_for(new.properties), fs if filters_changed else None)
        except BaseException as exc:
            # Nothing changed in the kernel (apply rolls itself back): restore the
            # metadata byte for byte, with the memory the failed build held let go.
            _let_go(exc)
            self.store.write(old.name, old.to_json())
            raise
        return intent

    def _apply_systemd_armed(self, new: Unit, dp: UnitDatapath, fs: str,
                             filters_changed: bool) -> None:
        """A policy change of a unit systemd arms: the pinned programs are replaced (for the
        next start) and swapped on the running cgroup (see :class:`UnitDatapath`); user
        filters are systemd's to attach, so a change of them rewrites the drop-in first
        (daemon-reload attaches the new ones to the running cgroup and detaches the old).
        On failure both are as they were."""
        assert new.systemd_service is not None
        previous = systemd.arm(new.systemd_service, self._dropin(new)) if filters_changed \
            else None
        try:
            dp.apply(spec_for(new.properties), fs)
        except BaseException:
            if filters_changed:
                systemd.restore(new.systemd_service, previous)
            raise

    # -- re-created cgroups ----------------------------------------------------------------

    def rebind(self, name: str) -> Unit:
        """Re-attach the unit's datapath to the cgroup that is now at its path.

        A service or container restart removes its cgroup and makes a new one at the same
        path: the unit's links then hold its programs on nothing. This attaches the same
        programs (the same counters map: counters carry on across re-created cgroups, as
        systemd's do across a service's runs) to the new cgroup and records its id.
        Idempotent: programs that already run on that cgroup (ours, or systemd's
        attachment of our pinned programs) are never attached twice.
        """
        with self.store.locked():
            return self._rebind(self.unit(name))

    def _rebind(self, unit: Unit) -> Unit:
        """:meth:`rebind` with the lock held."""
        from ipacctd.manager import recovery  # crash recovery: off the start-up path

        fs = self.cgroup_fs(unit)
        cid = recovery.live_cgroup_id(self, unit)
        if cid is None:
            raise NotFound(f"cgroup {unit.cgroup} of unit {unit.name} does not exist")
        if unit.enforced:
            rebuilt = recovery.rebuild_datapath(self, unit)
            if rebuilt is not None and unit.systemd_service is None:
                return rebuilt  # built on the live cgroup, links and all
            unit = rebuilt or unit  # pinned programs only: attach them below
            with UnitDatapath.open(self.store.pin_dir(unit.name)) as dp:
                remade = dp.rebind(fs, spec_for(unit.properties))
            if remade:
                log.warning("unit %s: attached its programs to the cgroup now at %s (id %d): "
                            "%s", unit.name, unit.cgroup, cid, ", ".join(remade))
        return recovery.record_cgroup(self, unit, cid)

    # -- crash recovery --------------------------------------------------------------------

    def reconcile(
        self, name: str | None = None, *, only: Sequence[str] | None = None
    ) -> list[str]:
        """Complete what a crashed ipacctd left half done; returns the units repaired.

        For each unit (or only ``name``, or only the units named in ``only``, under one
        lock): finish an interrupted removal; re-apply the recorded policy when the kernel
        enforces another generation (returning to the recorded rollback policy if it cannot
        be applied); rebuild a missing datapath on a live cgroup. Also removes datapaths
        left half built by a crashed creator.
        """
        with self.store.locked():
            self._sweep_stale_pins()
            if name is not None:
                return [name] if self._reconcile(name) else []
            done = []
            # One broken unit must not keep the others unrepaired.
            for n in self.names() if only is None else only:
                try:
                    if self._reconcile(n):
                        done.append(n)
                except Error as exc:
                    log.error("unit %s: cannot reconcile: %s", n, exc)
            return done

    def _reconciled(self, name: str) -> Unit:
        """The unit after any repair (lock held); its metadata is read once when all is well."""
        unit = self.unit(name)
        with _refused_for_memory(f"repairing unit {name} before changing it"):
            repaired = self._reconcile(name, unit)
        return self.unit(name) if repaired else unit

    def _reconcile(self, name: str, unit: Unit | None = None) -> bool:
        """Repair one unit (lock held); True when something was done. The steps, and the
        states they repair, are :mod:`ipacctd.manager.recovery`'s."""
        from ipacctd.manager import recovery  # crash recovery: off the start-up path

        return recovery.reconcile(self, name, unit)

    def _free_transient_name(self) -> str:
        """``transient_name(self.names())`` (lock held): the first ``run-u<N>.service``
        taken in no way, found by looking at each candidate's metadata and pin directory
        in turn. Listing every unit for it took ~26 ms at 10,000 units, on every start of
        a transient unit; the candidates before the first free one are the ``run-u``
        units there are (the daemon collects inactive ones after the retention time).
        Past PROBE_NAMES candidates, the listing answers."""
        store = self.store
        for n in range(1, PROBE_NAMES + 1):
            candidate = f"run-u{n}.service"
            if not os.path.lexists(store.meta_path(candidate)) and not os.path.lexists(
                store.pin_dir(candidate)
            ):
                return candidate
        return transient_name(self.names())

    def _sweep_stale_pins(self) -> None:
        """Remove datapaths a crashed creator left in its temporary directory (lock held).

        Unpinning their links detaches them: the creator's fds died with it. Temporary
        metadata files of writers that died go too.
        """
        for entry in self.store.sweep_tmp():
            log.info("removed %s left by a crashed ipacctd", entry)
        try:
            entries = os.listdir(self.config.pins_dir)
        except OSError:  # none yet, or not ours to read (the datapath step will say so)
            return
        # Only temporary names are a creator's (a unit's pins are never named so): the
        # rest, every unit's pin directory, are passed over without a call each.
        for entry in [e for e in entries if e.startswith(TMP_PIN_PREFIX)]:
            pid = tmp_pin_pid(entry)
            if pid is None:
                continue
            if pid != os.getpid() and _alive(pid):
                continue
            log.info("removing %s left by a crashed ipacctd (pid %d)", entry, pid)
            bpffs.remove_tree(os.path.join(self.config.pins_dir, entry))

    def stop(self, name: str, timeout: float = 5.0) -> list[int]:
        """Terminate the unit's processes: SIGTERM, then SIGKILL after ``timeout`` seconds.

        Works on a broken unit too (its default cgroup). The exit is recorded when it can
        be: a full state directory does not make a stop that ended the processes fail.
        """
        found = self.broken(name)
        unit = found[0] if found else self.unit(name)
        fs = self.cgroup_fs(unit)
        pids = cgroup.kill_all(fs, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while cgroup.procs_recursive(fs) and time.monotonic() < deadline:
            time.sleep(0.02)
        if cgroup.procs_recursive(fs):
            cgroup.kill_all(fs, signal.SIGKILL)
            deadline = time.monotonic() + timeout
            while cgroup.procs_recursive(fs) and time.monotonic() < deadline:
                time.sleep(0.02)
        if found:
            return pids
        try:
            with self.store.locked():
                with contextlib.suppress(NotFound, Corrupt):
                    unit = self.unit(name)
                    if unit.exited_at is None:
                        unit = replace(unit, exited_at=time.time(),
                                       exit_status=unit.exit_status)
                        self.store.write(name, unit.to_json(), durable=False)
        except OSError as exc:  # ENOSPC: the processes are gone all the same
            log.warning("unit %s: stopped, but its exit cannot be recorded: %s", name, exc)
        return pids

    def kill(self, name: str, sig: int, main_only: bool = False) -> list[int]:
        """Send ``sig`` to the processes of a unit ipacctd started (``ipacctd kill``): all
        in its cgroup, or only its main process. A unit attached to a cgroup ipacctd did not
        make is refused: that cgroup's owner (systemd, a container engine) signals it.
        Returns the PIDs signalled."""
        unit = self.unit(name)
        if not unit.transient:
            raise InvalidInput(
                f"unit {unit.name} is attached to a cgroup ipacctd did not create "
                f"({unit.cgroup}); signal it through its owner (systemctl kill, podman kill)")
        fs = self.cgroup_fs(unit)
        pids = cgroup.procs_recursive(fs) if cgroup.exists(fs) else []
        if not main_only:
            return cgroup.kill_all(fs, sig) if pids else []
        if not unit.main_pid or unit.main_pid not in pids:
            raise Error("No main process to kill")
        try:  # the pidfd pins the process: a PID reused after the check is not signalled
            pidfd = os.pidfd_open(unit.main_pid)
        except ProcessLookupError:
            raise Error("No main process to kill") from None
        try:
            if unit.main_pid not in cgroup.procs_recursive(fs):
                raise Error("No main process to kill")
            signal.pidfd_send_signal(pidfd, sig)
        finally:
            os.close(pidfd)
        return [unit.main_pid]

    def release_cgroup(self, name: str, timeout: float = 5.0,
                       owned_by: owner.Owner | None = None) -> None:
        """End what is left in a transient unit's cgroup and remove the cgroup.

        The counters stay pinned and readable; the links detach as the cgroup goes.
        ``owned_by``: only if the unit is still the one that process created.
        """
        unit = self._owned(name, owned_by)
        if not unit.transient:
            return
        fs = self.cgroup_fs(unit)
        if cgroup.procs_recursive(fs):
            self.stop(name, timeout)
        with contextlib.suppress(Error, OSError):
            cgroup.remove(fs, timeout)

    def detach(self, name: str) -> None:
        """Remove an attached unit's programs and pins; the cgroup is left alone."""
        with self.store.locked():
            self._sweep_stale_pins()
            unit = self.unit(name)
            if unit.transient:
                raise InvalidInput(f"unit {name} was started by ipacctd run, not attached",
                                   hint="use 'ipacctd stop' and 'ipacctd reset'")
            self._remove(unit)

    def reset(self, name: str) -> None:
        """Forget an inactive unit: its counters, pins, metadata and (own) cgroup."""
        with self.store.locked():
            with contextlib.suppress(Error, OSError):  # a full disk must not stop a reset
                self._sweep_stale_pins()
            st = self.status(name)
            if st.active_state in BUSY_STATES and st.unit.transient:
                raise Busy(f"unit {name} is {st.active_state}",
                           hint=f"stop it first ('ipacctd stop {name}')")
            if st.broken is not None:
                self._remove_broken(st.unit)
            else:
                self._remove(st.unit)

    def _remove(self, unit: Unit) -> None:
        self._remove_own_cgroup(unit)
        if not unit.removing:  # intent first: a crash part-way is finished by reconcile
            unit = replace(unit, removing=True)
            try:
                self.store.write(unit.name, unit.to_json())
            except OSError as exc:
                # No space for the intent (ENOSPC): remove without it; removing frees
                # space. A crash part-way leaves pins without metadata or metadata without
                # pins, both of which status reports and reset removes.
                log.warning("unit %s: removing without recording the intent: %s",
                            unit.name, exc)
        if unit.systemd_service is not None:
            # Before the pins go: no start may look for them. A failed reload leaves the
            # drop-in and the unit (marked removing) as they were; reconcile tries again.
            systemd.disarm(unit.systemd_service)
        self._remove_datapath(unit.name, cgroup.fs_path(unit.cgroup))
        self.store.delete(unit.name)

    def _remove_own_cgroup(self, unit: Unit) -> None:
        """Remove a transient unit's cgroup before its programs (lock held).

        Once the cgroup is gone no process can be started in it (``clone3`` into a removed
        cgroup fails), so removing the programs afterwards can never leave a process of the
        unit unfirewalled, even one that another ``ipacctd run`` starts at this moment.
        A cgroup that still holds processes stops the removal with nothing removed.
        """
        if not unit.transient:
            return
        try:
            cgroup.remove(cgroup.fs_path(unit.cgroup), timeout=1.0)
        except Busy:
            raise Busy(f"unit {unit.name} still has processes in {unit.cgroup}",
                       hint=f"stop it first ('ipacctd stop {unit.name}')") from None
        except (Error, OSError) as exc:
            log.warning("unit %s: cannot remove its cgroup: %s", unit.name, exc)

    def _remove_broken(self, unit: Unit) -> None:
        """Remove what is left of a broken unit: pins, its (empty) default cgroup, the
        unreadable metadata file."""
        log.warning("unit %s: removing a broken unit (%s)", unit.name,
                    unit.not_enforced_reason)
        self._remove_own_cgroup(unit)
        self._remove_datapath(unit.name, cgroup.fs_path(unit.cgroup))
        path = self.store.meta_path(unit.name)
        if os.path.isdir(path) and not os.path.islink(path):
            os.rmdir(path)
        else:
            self.store.delete(unit.name)

    def _remove_datapath(self, name: str, fs: str | None = None) -> None:
        """Detach and unpin a unit's datapath (``fs``: its cgroup, where programs pinned for
        systemd may run)."""
        pin_dir = self.store.pin_dir(name)
        try:
            dp = UnitDatapath.open(pin_dir)
        except (Error, OSError):  # none, or not a datapath (damaged): unpin what is there
            if os.path.isdir(pin_dir) and not os.path.islink(pin_dir):
                bpffs.remove_tree(pin_dir)
            elif os.path.lexists(pin_dir):
                os.unlink(pin_dir)
            return
        dp.remove(fs)


def _check_filter_programs(old: Properties, new: Properties) -> None:
    """Refuse filter paths that hold no cgroup_skb program before anything changes: the
    datapath would swap the unit's programs and detach the old filters first."""
    from ipacctd.bpf.programs import Program, ProgType

    known = set(old.ip_ingress_filter_path) | set(old.ip_egress_filter_path)
    for prop, paths in (("IPIngressFilterPath", new.ip_ingress_filter_path),
                        ("IPEgressFilterPath", new.ip_egress_filter_path)):
        for path in paths:
            if path in known:
                continue
            try:
                with Program.open_pinned(path) as prog:
                    kind = prog.prog_type
            except (Error, OSError) as exc:
                raise InvalidInput(f"{prop}={path}: no BPF program is pinned there "
                                   f"({exc})") from None
            if kind != ProgType.CGROUP_SKB:
                raise InvalidInput(f"{prop}={path}: the program pinned there is not a "
                                   "cgroup_skb program")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

