"""A unit's datapath in the kernel: programs, maps and cgroup links pinned in one directory.

Pins in the unit's bpffs directory::

    counters        per-CPU array of the unit's counters (kept across policy changes)
    denied          LRU hash of denied remote addresses (once the unit has a deny list)
    denied_slots    per-CPU slots in front of it: the address each CPU denied last
    link_ingress    bpf_link of the ingress program on the unit's cgroup
    link_egress     bpf_link of the egress program
    filter_<dir>_N  links of user programs (IPIngressFilterPath=/IPEgressFilterPath=)
    <link>_new      a link attached but not yet renamed into place (make-before-break)

or, for a unit whose cgroup systemd attaches the programs to (a systemd service: see
:mod:`ipacctd.manager.systemd`), instead of the links::

    prog_ingress    the ingress program, which systemd attaches at every start of the
    prog_egress     service (and to its running cgroup at daemon-reload); no links of ours

Any process can open the directory and carry on where another left off: the kernel
holds the state, so a crash of the creator loses nothing. A policy change builds new
programs (and their lookup tables) beside the running ones and swaps each link's program in one step
(``BPF_LINK_UPDATE`` with the old program as the expected value), so no packet ever
meets an empty hook, and the counters map goes on unchanged.

A cgroup is known by its id (the inode of its directory on cgroup2, which is the kernel's
cgroup id). When the cgroup at a unit's path is removed and made again (a service or
container restart), the unit's links stay pinned but hold their programs on nothing (the
kernel reports cgroup id 0); :meth:`UnitDatapath.rebind` attaches the same programs to
the cgroup now at the path, and :meth:`UnitDatapath.problem` says whether they are in
force there.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
from collections.abc import Collection

from ipacctd.bpf import bpffs
from ipacctd.bpf.errors import BPFError
from ipacctd.bpf.links import CgroupLink, open_cgroup, prog_attach, prog_detach, prog_query
from ipacctd.bpf.maps import LPMTrieMap, PerCPUArrayMap
from ipacctd.bpf.programs import Program
from ipacctd.bpf.types import AttachType
from ipacctd.datapath import counters as counters_mod
from ipacctd.datapath.counters import Counters, Direction
from ipacctd.errors import AlreadyExists, Error, NotFound
from ipacctd.policy.names import tmp_pin_name
from ipacctd.record import Record

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing
if TYPE_CHECKING:
    # The builder (rules, lookup tables, program emitter and its assembler) and the denied
    # log (whose program part needs the assembler too) are imported where a datapath is
    # built or the log opened: reading a unit's counters and state (show, list-units, the
    # daemon's polls) opens pinned maps and links only.
    from ipacctd.bpf.objects import Object
    from ipacctd.datapath import denied, lookup
    from ipacctd.datapath.rules import FamilyRules

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

COUNTERS = "counters"
LINK = {Direction.INGRESS: "link_ingress", Direction.EGRESS: "link_egress"}
ATTACH = {
    Direction.INGRESS: AttachType.CGROUP_INET_INGRESS,
    Direction.EGRESS: AttachType.CGROUP_INET_EGRESS,
}
PROG_NAME = {Direction.INGRESS: "ipacctd_ingress", Direction.EGRESS: "ipacctd_egress"}
#: Pins of the programs themselves, for units whose cgroup systemd attaches them to.
PROG_PIN = {Direction.INGRESS: "prog_ingress", Direction.EGRESS: "prog_egress"}
NEW_PROG = "_new"  # pin suffix of a program built but not yet renamed into place
NEW_FILTER = "_new"  # pin suffix of links attached but not yet in place
FILTER_PREFIX = {Direction.INGRESS: "filter_ingress_", Direction.EGRESS: "filter_egress_"}


class Spec(Record):
    """What the datapath enforces and counts: the kernel-facing part of a unit's policy.

    ``allow`` and ``deny`` are read (iterated) only when programs are built: a unit's
    address list may be known by its text until then (see
    :class:`~ipacctd.policy.addresses.AddressList`), so checking where a unit's programs
    run, or comparing two specs, parses no list.
    """

    _fields = ("allow", "deny", "accounting", "audit", "ingress_filters", "egress_filters")
    __slots__ = _fields
    allow: Collection[Network]
    deny: Collection[Network]
    accounting: bool
    audit: bool
    ingress_filters: tuple[str, ...]
    egress_filters: tuple[str, ...]

    def __init__(
        self,
        allow: Collection[Network] = (),
        deny: Collection[Network] = (),
        accounting: bool = True,
        audit: bool = False,
        ingress_filters: tuple[str, ...] = (),
        egress_filters: tuple[str, ...] = (),
    ) -> None:
        set_ = object.__setattr__
        set_(self, "allow", allow)
        set_(self, "deny", deny)
        set_(self, "accounting", accounting)
        set_(self, "audit", audit)
        set_(self, "ingress_filters", ingress_filters)
        set_(self, "egress_filters", egress_filters)

    def filters(self, direction: Direction) -> tuple[str, ...]:
        """Paths of the user programs pinned in bpffs for one direction."""
        return self.ingress_filters if direction == Direction.INGRESS else self.egress_filters


class Programs(Record, frozen=False):
    """A freshly built pair of programs and the lookup tables they reference."""

    _fields = ("ingress", "egress", "tables", "rules")
    __slots__ = _fields
    ingress: Program
    egress: Program
    tables: list[lookup.Table]
    rules: tuple[FamilyRules, FamilyRules] | None

    def __init__(
        self,
        ingress: Program,
        egress: Program,
        tables: list[lookup.Table] | None = None,
        rules: tuple[FamilyRules, FamilyRules] | None = None,
    ) -> None:
        self.ingress = ingress
        self.egress = egress
        self.tables = [] if tables is None else tables
        self.rules = rules

    def by_direction(self, direction: Direction) -> Program:
        return self.ingress if direction == Direction.INGRESS else self.egress

    def table(self, version: int) -> lookup.Table | None:
        """The lookup of one family (None: constant verdict, no lookup)."""
        return next((t for t in self.tables if t.version == version), None)

    def strategy(self, version: int) -> str | None:
        """How one family is looked up: inline, lpm, multibit, or None (no lookup)."""
        t = self.table(version)
        return t.strategy if t is not None else None

    @property
    def tries(self) -> list[LPMTrieMap]:
        """The LPM tries among the tables."""
        return [t.map for t in self.tables if isinstance(t.map, LPMTrieMap)]

    def close(self) -> None:
        """Close our fds (links and other holders keep the kernel objects alive)."""
        for obj in (self.ingress, self.egress, *self.tables):
            obj.close()


def build_programs(
    spec: Spec, counters_map: PerCPUArrayMap, denied_map: denied.Log | None = None
) -> Programs:
    """Compile the spec and load ingress and egress programs that use ``counters_map``
    (and record denied addresses in ``denied_map`` when given). Each family's lookup
    strategy follows from its compiled table's size (:func:`lookup.build_table`)."""
    from ipacctd.datapath import lookup
    from ipacctd.datapath import program as program_mod
    from ipacctd.datapath.rules import compile_rules

    v4, v6 = compile_rules(spec.allow, spec.deny)
    tables: list[lookup.Table] = []
    loaded: list[Program] = []
    try:
        table4 = lookup.build_table(v4)
        if table4:
            tables.append(table4)
        table6 = lookup.build_table(v6)
        if table6:
            tables.append(table6)
        for direction in Direction:
            shape = program_mod.Shape(
                direction, spec.accounting, spec.audit, v4, v6, log_denied=denied_map is not None
            )
            # Assembled once per shape, relocated to this unit's maps (program.bytecode).
            code = program_mod.bytecode(shape, counters_map, table4, table6, denied_map)
            loaded.append(
                Program.load(code, attach_type=ATTACH[direction], name=PROG_NAME[direction])
            )
    except BaseException:
        for obj in (*loaded, *tables):
            obj.close()
        raise
    return Programs(loaded[0], loaded[1], tables, (v4, v6))


class Kit(Record, frozen=False):
    """What a new unit's datapath holds before anything is pinned or attached: a fresh
    counters map, the denied-address log (a spec with a deny list), the two programs built
    on them and their lookup tables. File descriptors only: a kit never used — or whose
    maker died — leaves nothing in the kernel once they are closed.

    :meth:`UnitDatapath.create` builds its kit, or takes one made before (binding a glob's
    thousands of cgroups, another process makes them: see :mod:`ipacctd.manager.kits`).
    Such a kit crosses processes as its descriptors (:meth:`fds`, SCM_RIGHTS) in this
    order: counters, then the log's hash and slots (when ``log`` is set), then the ingress
    and egress programs; :meth:`from_fds` takes them back. Only a kit whose lookups are
    inline (no table maps: :attr:`portable`) crosses.
    """

    _fields = ("spec", "counters", "log", "programs")
    __slots__ = _fields
    spec: Spec
    counters: PerCPUArrayMap
    log: denied.Log | None
    programs: Programs

    def __init__(self, spec: Spec, counters: PerCPUArrayMap, log: denied.Log | None,
                 programs: Programs) -> None:
        self.spec = spec
        self.counters = counters
        self.log = log
        self.programs = programs

    @classmethod
    def build(cls, spec: Spec) -> Kit:
        """Make the maps and load the programs of a new unit with policy ``spec``."""
        cmap = counters_mod.create_map()
        dmap: denied.Log | None = None
        try:
            if spec.deny:
                from ipacctd.datapath import denied

                dmap = denied.create_map()
            return cls(spec, cmap, dmap, build_programs(spec, cmap, dmap))
        except BaseException:
            if dmap is not None:
                dmap.close()
            cmap.close()
            raise

    @property
    def portable(self) -> bool:
        """Whether the kit can cross to another process by :meth:`fds` alone."""
        return all(t.map is None and not t.hashes for t in self.programs.tables)

    def fds(self) -> list[int]:
        """Its descriptors in wire order (see the class's docstring)."""
        if not self.portable:
            raise ValueError("a kit with lookup table maps does not cross processes")
        logs = [] if self.log is None else [self.log.table.fd, self.log.slots.fd]
        return [self.counters.fd, *logs, self.programs.ingress.fd, self.programs.egress.fd]

    @classmethod
    def from_fds(cls, spec: Spec, fds: list[int]) -> Kit:
        """The kit whose descriptors (:meth:`fds`' order) came from another process, for
        ``spec``; each map's type is checked. Takes the descriptors over (closed on
        failure)."""
        from ipacctd.bpf.maps import LRUHashMap

        want = 5 if spec.deny else 3
        objs: list[Object] = []
        try:
            if len(fds) != want:
                raise ValueError(f"a kit has {want} descriptors, not {len(fds)}")
            cmap = PerCPUArrayMap.from_fd(fds[0])
            objs.append(cmap)
            log = None
            if spec.deny:
                from ipacctd.datapath import denied

                table = LRUHashMap.from_fd(fds[1])
                objs.append(table)
                slots = PerCPUArrayMap.from_fd(fds[2])
                objs.append(slots)
                log = denied.Log(table, slots)
            ingress = Program(fds[-2], PROG_NAME[Direction.INGRESS])
            objs.append(ingress)
            egress = Program(fds[-1], PROG_NAME[Direction.EGRESS])
            objs.append(egress)
        except BaseException:
            for obj in objs:
                obj.close()
            for fd in fds[len(objs):]:
                os.close(fd)
            raise
        return cls(spec, cmap, log, Programs(ingress, egress))

    def close(self) -> None:
        """Close every descriptor (the kernel frees what nothing pinned or attached)."""
        self.programs.close()
        if self.log is not None:
            self.log.close()
        self.counters.close()


class UnitDatapath:
    """The pinned kernel state of one unit. Open it, or create it on a cgroup."""

    def __init__(self, pin_dir: str, counters_map: PerCPUArrayMap) -> None:
        self.pin_dir = pin_dir
        self.counters_map = counters_map

    # -- lifecycle -------------------------------------------------------------------------

    @classmethod
    def create(cls, pin_dir: str, cgroup_path: str | None, spec: Spec,
               kit: Kit | None = None) -> UnitDatapath:
        """Build, attach and pin a unit's datapath; the pin directory appears complete or not
        at all (built under a temporary name, then renamed). ``kit``: the maps and programs
        made for ``spec`` already (:class:`Kit`, e.g. by another process); taken over,
        closed whatever happens.

        With ``cgroup_path`` None nothing is attached: the programs are pinned as
        ``prog_ingress``/``prog_egress`` for systemd to attach (user filters included: they
        are systemd's to attach too).
        """
        refusal: Exception | None = None
        if os.path.exists(pin_dir):
            refusal = AlreadyExists(f"datapath pins exist already at {pin_dir}")
        elif kit is not None and kit.spec != spec:
            refusal = ValueError("a kit made for another policy")
        if refusal is not None:
            if kit is not None:
                kit.close()
            raise refusal
        # The maps and programs first: nothing is on bpffs until they exist.
        kit = Kit.build(spec) if kit is None else kit
        cmap, dmap, progs = kit.counters, kit.log, kit.programs
        links: list[CgroupLink] = []
        tmp = None
        try:
            parent = os.path.dirname(pin_dir)
            bpffs.make_dir(parent)
            # bpffs refuses names with a dot; "~" appears in no unit pin name.
            tmp = os.path.join(parent, tmp_pin_name(os.path.basename(pin_dir), os.getpid()))
            bpffs.remove_tree(tmp)
            bpffs.make_dir(tmp)
            cmap.pin(os.path.join(tmp, COUNTERS))
            if dmap is not None:
                from ipacctd.datapath import denied

                dmap.pin(os.path.join(tmp, denied.PIN))
            if cgroup_path is None:
                with contextlib.closing(progs):
                    for direction in Direction:
                        progs.by_direction(direction).pin(os.path.join(tmp, PROG_PIN[direction]))
                os.rename(tmp, pin_dir)
                return cls(pin_dir, cmap)
            cg = _open_cgroup(cgroup_path)
            try:
                for direction in Direction:
                    link = CgroupLink.create(cg, progs.by_direction(direction), ATTACH[direction])
                    links.append(link)
                    link.pin(os.path.join(tmp, LINK[direction]))
                    _attach_filters(cg, tmp, direction, spec.filters(direction), links)
            finally:
                os.close(cg)
                progs.close()
            os.rename(tmp, pin_dir)
        except BaseException:
            for link in links:
                _detach_quietly(link)
            if tmp is not None:
                bpffs.remove_tree(tmp)
            progs.close()
            cmap.close()
            raise
        finally:
            for link in links:
                link.close()
            if dmap is not None:
                dmap.close()
        return cls(pin_dir, cmap)

    @classmethod
    def open(cls, pin_dir: str) -> UnitDatapath:
        """Open a unit's pinned datapath."""
        path = os.path.join(pin_dir, COUNTERS)
        if not os.path.exists(path):
            raise NotFound(f"no datapath pinned at {pin_dir}")
        return cls(pin_dir, PerCPUArrayMap.open_pinned(path))

    def close(self) -> None:
        """Close our fds; the pinned state stays in the kernel."""
        self.counters_map.close()

    def __enter__(self) -> UnitDatapath:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def remove(self, cgroup_path: str | None = None) -> None:
        """Detach every program from the cgroup and remove all pins.

        Programs pinned for systemd are detached from the cgroup at ``cgroup_path`` (where
        systemd, or a policy swap, attached them); stop systemd attaching them first (remove
        the drop-in and daemon-reload), or the next start attaches them again.
        """
        if cgroup_path is not None and self.pinned_programs:
            self._detach_ours(cgroup_path)
        for name in self._link_pins():
            path = os.path.join(self.pin_dir, name)
            try:
                link = CgroupLink.open_pinned(path)
            except BPFError:
                continue
            with link:
                _detach_quietly(link)
        bpffs.remove_tree(self.pin_dir)
        self.close()

    # -- reading ---------------------------------------------------------------------------

    def read(self) -> Counters:
        """The unit's counters now."""
        return counters_mod.read(self.counters_map)

    def link(self, direction: Direction) -> CgroupLink:
        """Open the unit's own link for one direction (caller closes it)."""
        return CgroupLink.open_pinned(os.path.join(self.pin_dir, LINK[direction]))

    def attached(self) -> bool:
        """True when both links still hold their programs on a live cgroup."""
        try:
            for direction in Direction:
                with self.link(direction) as link:
                    if link.info().cgroup_id == 0:
                        return False
        except BPFError:
            return False
        return True

    def problem(self, cgroup_path: str, spec: Spec, bound_id: int | None = None) -> str | None:
        """Why ``spec``'s programs are not in force on the cgroup now at ``cgroup_path``
        (None when they are); see :func:`link_problem`."""
        return link_problem(self.pin_dir, cgroup_path, spec, bound_id)

    def rebind(self, cgroup_path: str, spec: Spec) -> list[str]:
        """Attach the unit's programs to the cgroup now at ``cgroup_path`` wherever they do
        not run yet; returns the pins re-made (empty: all was in force, nothing changed).

        The programs come from the unit's links (a link keeps its program after its cgroup
        is removed) or, where a link pin was lost (which detached the link, and freed its
        program), are built again from ``spec`` on the same counters map, so counters carry
        on. A program already running on the cgroup (attached by an earlier rebind, or by
        systemd from a pinned program) is never attached a second time: it would count
        every packet twice. Make-before-break, as :meth:`_apply_filters`: the new links are
        pinned under temporary names, then renamed over the old pins (releasing the old
        links); a failure detaches what was made and leaves the old pins as they were.

        ipacctd's own two links are re-made first and in place before the user filters
        (``IPIngressFilterPath=``...): a filter program that is no longer pinned fails the
        call, but not before the unit's allow/deny lists are in force again.
        """
        if self.pinned_programs:
            return self.attach_pinned(cgroup_path)
        self._unpin_new()  # remnants of a crashed rebind or filter change (lock held)
        cg = _open_cgroup(cgroup_path)
        try:
            wanted = _wanted_links(spec)
            made = self._relink(cg, [w for w in wanted if w[2] is None], spec)
            return made + self._relink(cg, [w for w in wanted if w[2] is not None], spec)
        finally:
            os.close(cg)

    def _relink(
        self, cg: int, wanted: list[tuple[str, Direction, str | None]], spec: Spec
    ) -> list[str]:
        """:meth:`rebind` of some of the unit's links, all or none."""
        built: Programs | None = None
        made: list[tuple[str, CgroupLink]] = []
        try:
            for pin, direction, filter_path in wanted:
                if filter_path is None and built is None and not self._has_link(pin):
                    built = self._build(spec)
                prog = self._program_of(pin, direction, filter_path, built)
                try:
                    if prog.info().id in _effective(cg, ATTACH[direction]):
                        continue
                    link = CgroupLink.create(cg, prog, ATTACH[direction])
                finally:
                    if built is None or prog is not built.by_direction(direction):
                        prog.close()
                made.append((pin, link))
                link.pin(os.path.join(self.pin_dir, pin + NEW_FILTER))
            for pin, _ in made:  # break: each rename releases one old link
                os.rename(
                    os.path.join(self.pin_dir, pin + NEW_FILTER), os.path.join(self.pin_dir, pin)
                )
        except BaseException:
            for _, link in made:
                _detach_quietly(link)
            self._unpin_new()
            raise
        finally:
            for _, link in made:
                link.close()
            if built is not None:
                built.close()
        return [pin for pin, _ in made]

    def _has_link(self, pin: str) -> bool:
        try:
            CgroupLink.open_pinned(os.path.join(self.pin_dir, pin)).close()
        except BPFError:
            return False
        return True

    def _build(self, spec: Spec) -> Programs:
        dmap = self.denied_map(create=bool(spec.deny))
        try:
            return build_programs(spec, self.counters_map, dmap)
        finally:
            if dmap is not None:
                dmap.close()

    def _program_of(
        self, pin: str, direction: Direction, filter_path: str | None, built: Programs | None
    ) -> Program:
        """The program link ``pin`` holds; a lost link's program from ``built`` (ours) or
        from its pinned path (a user filter)."""
        try:
            with CgroupLink.open_pinned(os.path.join(self.pin_dir, pin)) as link:
                return link.program()
        except BPFError:
            pass
        if filter_path is not None:
            try:
                return Program.open_pinned(filter_path)
            except BPFError as exc:
                raise Error(f"cannot open BPF program pinned at {filter_path}: {exc}") from exc
        assert built is not None
        return built.by_direction(direction)

    def _unpin_new(self) -> None:
        for name in self._link_pins():
            if name.endswith(NEW_FILTER):
                with (
                    contextlib.suppress(BPFError),
                    CgroupLink.open_pinned(os.path.join(self.pin_dir, name)) as link,
                ):
                    _detach_quietly(link)
                bpffs.unpin(os.path.join(self.pin_dir, name))

    def _link_pins(self) -> list[str]:
        try:
            names = os.listdir(self.pin_dir)
        except FileNotFoundError:
            return []
        return sorted(n for n in names if n.startswith(("link_", "filter_")))

    # -- programs systemd attaches (no links of ours) --------------------------------------
    #
    # systemd attaches each pinned program with BPF_PROG_ATTACH + BPF_F_ALLOW_MULTI at every
    # start of the service, and to the running cgroup at daemon-reload. A policy swap
    # therefore changes two things: the pins (what the next start reads) and the program on
    # the running cgroup (BPF_PROG_ATTACH with BPF_F_REPLACE, whoever attached it). Order:
    #
    #   1. build the new programs on the same counters map (nothing changed yet);
    #   2. pin each under a temporary name, rename it over the old pin: from here on every
    #      start of the service attaches the new policy;
    #   3. on the cgroup now at the path, replace each older program of this unit (one that
    #      references the unit's counters map, is not the pinned one) by the new one;
    #   4. look again (same as 3): a start that read the old pin before step 2 and attached
    #      after step 3 looked is caught here.
    #
    # Remaining race: a start that read the old pin before step 2 and attaches after step 4
    # (systemd loads and attaches in one main-loop iteration: microseconds). That cgroup
    # runs the previous policy in full (never no policy); :meth:`attached_to` reports it as
    # not in force (the pinned program is not there) and :meth:`replace_stale`, which the
    # engine's reconcile runs, swaps it. A tail-call dispatcher (a fixed pinned program that
    # tail-calls into a prog array the swap updates) would close that race, but it puts a
    # second program between the hook and the policy on every packet, hides the policy
    # program from PROG_QUERY (which is how ipacctd and bpftool tell what runs where) and
    # binds the policy programs to the prog array's owner rules; the race it removes is
    # bounded, visible and repaired, so the programs stay the ones on the hook.

    @property
    def pinned_programs(self) -> bool:
        """True when the unit's programs are pinned for systemd to attach (no links)."""
        return os.path.exists(os.path.join(self.pin_dir, PROG_PIN[Direction.INGRESS]))

    def pinned_program(self, direction: Direction) -> Program:
        """Open the pinned program of one direction (caller closes it)."""
        return Program.open_pinned(os.path.join(self.pin_dir, PROG_PIN[direction]))

    def program_ids(self) -> dict[Direction, int]:
        """Kernel ids of the pinned programs."""
        ids = {}
        for direction in Direction:
            with self.pinned_program(direction) as prog:
                ids[direction] = prog.info().id
        return ids

    def attached_to(self, cgroup_path: str) -> bool:
        """True when both pinned programs run on the cgroup at ``cgroup_path``."""
        try:
            ids = self.program_ids()
            cg = _open_cgroup(cgroup_path)
        except (BPFError, NotFound):
            return False
        try:
            return all(ids[d] in prog_query(cg, ATTACH[d]).prog_ids for d in Direction)
        except BPFError:
            return False
        finally:
            os.close(cg)

    def attach_pinned(self, cgroup_path: str) -> list[str]:
        """Attach the pinned programs to the cgroup as systemd does (BPF_PROG_ATTACH with
        BPF_F_ALLOW_MULTI), where they do not run yet; returns the pins attached. The
        kernel refuses a second PROG_ATTACH of a program on the same hook (EINVAL), so
        whichever of systemd and ipacctd comes second, each program runs once (verified on
        systemd 252: a service whose cgroup already runs them starts normally, silently).
        Programs of a previous policy there are swapped first (:meth:`replace_stale`):
        attached beside them, the current ones would count every packet twice."""
        self.replace_stale(cgroup_path)
        cg = _open_cgroup(cgroup_path)
        done: list[str] = []
        try:
            for direction in Direction:
                with self.pinned_program(direction) as prog:
                    if prog.info().id in prog_query(cg, ATTACH[direction]).prog_ids:
                        continue
                    try:
                        prog_attach(cg, prog, ATTACH[direction])
                        done.append(PROG_PIN[direction])
                    except BPFError as exc:
                        if exc.errno != errno.EINVAL or prog.info().id not in prog_query(
                                cg, ATTACH[direction]).prog_ids:
                            raise
        finally:
            os.close(cg)
        return done

    def replace_stale(self, cgroup_path: str) -> int:
        """Swap every older program of this unit on the cgroup at ``cgroup_path`` for the
        pinned one (step 3/4 above); returns how many were swapped."""
        try:
            cg = _open_cgroup(cgroup_path)
        except NotFound:
            return 0
        swapped = 0
        try:
            for direction in Direction:
                with self.pinned_program(direction) as new:
                    for old in self._stale_on(cg, direction, new.info().id):
                        with old:
                            try:
                                prog_attach(cg, new, ATTACH[direction], replace=old)
                            except BPFError as exc:
                                if exc.errno != errno.ENOENT:  # gone meanwhile: nothing to do
                                    raise
                            else:
                                swapped += 1
        finally:
            os.close(cg)
        return swapped

    def _stale_on(self, cg: int, direction: Direction, current_id: int) -> list[Program]:
        """Programs on one hook of the cgroup that are this unit's but not ``current_id``:
        they count into the unit's counters map. Held by a link (never, for units systemd
        arms) they are not ours to replace."""
        cmap_id = self.counters_map.info().id
        out = []
        for pid in prog_query(cg, ATTACH[direction]).prog_ids:
            if pid == current_id:
                continue
            try:
                prog = Program.from_id(pid)
            except BPFError:
                continue
            if cmap_id in prog.info().map_ids:
                out.append(prog)
            else:
                prog.close()
        return out

    def _detach_ours(self, cgroup_path: str) -> None:
        """PROG_DETACH every program of this unit (current or stale) from the cgroup."""
        try:
            cg = _open_cgroup(cgroup_path)
        except NotFound:
            return
        try:
            for direction in Direction:
                try:
                    current = self.pinned_program(direction)
                except BPFError:
                    continue
                progs = [current, *self._stale_on(cg, direction, current.info().id)]
                for prog in progs:
                    with prog:
                        try:
                            prog_detach(cg, prog, ATTACH[direction])
                        except BPFError as exc:
                            if exc.errno != errno.ENOENT:  # not attached there
                                raise
        finally:
            os.close(cg)

    def _apply_pinned(self, progs: Programs, cgroup_path: str | None) -> None:
        """Steps 2 to 4 for freshly built ``progs``; on failure the old pins and the old
        programs on the cgroup are put back."""
        old = {d: self.pinned_program(d) for d in Direction}
        try:
            try:
                self._pin_programs({d: progs.by_direction(d) for d in Direction})  # 2
                if cgroup_path is not None:
                    self.replace_stale(cgroup_path)  # 3
                    self.replace_stale(cgroup_path)  # 4
            except BaseException:
                self._pin_programs(old)
                if cgroup_path is not None:
                    with contextlib.suppress(Error):
                        self.replace_stale(cgroup_path)  # the old ones are current again
                raise
        finally:
            for prog in old.values():
                prog.close()

    def _pin_programs(self, progs: dict[Direction, Program]) -> None:
        """Pin each program under a temporary name, then rename it over its pin (a start
        that reads the pin meanwhile sees the old program or the new one, never none)."""
        for direction, prog in progs.items():
            tmp = os.path.join(self.pin_dir, PROG_PIN[direction] + NEW_PROG)
            bpffs.unpin(tmp)
            prog.pin(tmp)
        for direction in progs:
            path = os.path.join(self.pin_dir, PROG_PIN[direction])
            os.rename(path + NEW_PROG, path)

    # -- changing --------------------------------------------------------------------------

    def denied_map(self, create: bool = False) -> denied.Log | None:
        """Open the unit's denied-addresses log; with ``create``, make and pin what is
        missing of it."""
        from ipacctd.datapath import denied

        path = os.path.join(self.pin_dir, denied.PIN)
        if os.path.exists(path):
            return denied.open_pinned(path, create)
        if not create:
            return None
        # Legacy slots: this unit's counters may have been written without the busy flag
        # (programs of a version before the log; see denied.py's docstring, 4).
        dmap = denied.create_map(guarded=False)
        try:
            dmap.pin(path)
        except BaseException:
            dmap.close()
            raise
        return dmap

    def apply(self, spec: Spec, cgroup_path: str | None = None) -> None:
        """Swap in programs for ``spec``; counters carry on. On failure nothing changes.

        For programs pinned for systemd, ``cgroup_path`` is the cgroup to swap them on (see
        above); user filters are systemd's to attach there (the drop-in names them).
        """
        dmap = self.denied_map(create=bool(spec.deny))
        try:
            progs = build_programs(spec, self.counters_map, dmap)
        finally:
            if dmap is not None:
                dmap.close()
        if self.pinned_programs:
            with contextlib.closing(progs):
                self._apply_pinned(progs, cgroup_path)
            return
        swapped: list[tuple[CgroupLink, Program]] = []
        try:
            for direction in Direction:
                link = self.link(direction)
                old = link.program()
                try:
                    link.update(progs.by_direction(direction), old_prog=old)
                except BaseException:
                    old.close()
                    link.close()
                    raise
                swapped.append((link, old))
        except BaseException:
            for link, old in swapped:  # roll back what was swapped already
                with contextlib.suppress(BPFError):
                    link.update(old)
            raise
        finally:
            for link, old in swapped:
                old.close()
                link.close()
            progs.close()
        if cgroup_path is not None:
            self._apply_filters(spec, cgroup_path)

    def _apply_filters(self, spec: Spec, cgroup_path: str) -> None:
        """Replace the user filter links, make-before-break: the new links are attached and
        pinned under temporary names before the old ones go, so a failure (or a crash) in
        between leaves a unit with both sets (stricter), never with none."""
        cg = _open_cgroup(cgroup_path)
        links: list[CgroupLink] = []
        try:
            old = [n for n in self._link_pins() if n.startswith(tuple(FILTER_PREFIX.values()))]
            try:
                for direction in Direction:
                    _attach_filters(
                        cg,
                        self.pin_dir,
                        direction,
                        spec.filters(direction),
                        links,
                        suffix=NEW_FILTER,
                    )
            except BaseException:
                for link in links:
                    _detach_quietly(link)
                for name in self._link_pins():
                    if name.endswith(NEW_FILTER):
                        bpffs.unpin(os.path.join(self.pin_dir, name))
                raise
            for name in old:
                with CgroupLink.open_pinned(os.path.join(self.pin_dir, name)) as link:
                    _detach_quietly(link)
                bpffs.unpin(os.path.join(self.pin_dir, name))
            for name in self._link_pins():
                if name.endswith(NEW_FILTER):
                    os.rename(
                        os.path.join(self.pin_dir, name),
                        os.path.join(self.pin_dir, name[: -len(NEW_FILTER)]),
                    )
        finally:
            for link in links:
                link.close()
            os.close(cg)


def link_problem(
    pin_dir: str, cgroup_path: str, spec: Spec, bound_id: int | None = None
) -> str | None:
    """Why ``spec``'s programs are not in force on the cgroup now at ``cgroup_path``;
    None when every link's program runs there (whoever attached it: for a systemd
    service, systemd attaches the pinned programs itself at each start).

    ``bound_id``: the id of the cgroup the links were made for, if known. The kernel
    severs the links of a removed cgroup (id 0) a moment after the rmdir, not at once;
    until then they still name the removed cgroup's id.
    """
    try:
        cg = _open_cgroup(cgroup_path)
    except NotFound:
        return "cgroup gone"
    try:
        if os.path.exists(os.path.join(pin_dir, PROG_PIN[Direction.INGRESS])):
            return _pinned_problem(pin_dir, cg, spec)
        now = os.fstat(cg).st_ino
        for pin, direction, _ in _wanted_links(spec):
            try:
                link = CgroupLink.open_pinned(os.path.join(pin_dir, pin))
            except BPFError:
                return f"pins lost: {pin} is missing"
            with link:
                info = link.info()
            # A link on this very cgroup runs its program there; otherwise ask the cgroup
            # (systemd may run the program from its own attachment).
            if info.cgroup_id == now or info.prog_id in _effective(cg, ATTACH[direction]):
                continue
            if info.cgroup_id in (0, bound_id) and info.cgroup_id != now:
                return (
                    f"cgroup re-created: {pin} holds its program on a removed cgroup, "
                    f"not on the one now at the path (id {now})"
                )
            if info.cgroup_id != now:
                return (
                    f"link on another cgroup: {pin} is on cgroup id {info.cgroup_id}, "
                    f"the one at the path is id {now}"
                )
            return f"programs missing: the program of {pin} is not on the cgroup"
    finally:
        os.close(cg)
    return None


def _pinned_problem(pin_dir: str, cg: int, spec: Spec) -> str | None:
    """:func:`link_problem` of a unit whose programs systemd attaches (pinned programs, no
    links): each pinned program, and each user filter the drop-in names, runs on the
    cgroup."""
    for direction in Direction:
        pin = PROG_PIN[direction]
        try:
            with Program.open_pinned(os.path.join(pin_dir, pin)) as prog:
                pid = prog.info().id
        except BPFError:
            return f"pins lost: {pin} is missing"
        running = _effective(cg, ATTACH[direction])
        if pid not in running:
            return (f"programs missing: {pin} is not on the cgroup (systemd did not attach "
                    "it, or a start read the previous policy's pin)")
        for path in spec.filters(direction):
            try:
                with Program.open_pinned(path) as prog:
                    fid = prog.info().id
            except BPFError:
                return f"programs missing: no filter program is pinned at {path}"
            if fid not in running:
                return f"programs missing: the filter {path} is not on the cgroup"
    return None


def _wanted_links(spec: Spec) -> list[tuple[str, Direction, str | None]]:
    """The link pins a unit with ``spec`` has: (pin name, direction, user filter path)."""
    out: list[tuple[str, Direction, str | None]] = [(LINK[d], d, None) for d in Direction]
    for d in Direction:
        out += [(f"{FILTER_PREFIX[d]}{i}", d, p) for i, p in enumerate(spec.filters(d))]
    return out


def _effective(cg: int, attach: AttachType) -> frozenset[int]:
    """Ids of the programs that run on one hook of a cgroup (its own and inherited)."""
    slots = 64
    while True:
        try:
            return frozenset(prog_query(cg, attach, effective=True, slots=slots).prog_ids)
        except BPFError as exc:
            if exc.errno != errno.ENOSPC or slots >= 1 << 16:
                raise
            slots *= 8


def cgroup_id(cgroup_path: str) -> int | None:
    """The id of the cgroup at ``cgroup_path`` (its directory's inode on cgroup2, which is
    what the kernel reports as the cgroup id); None when there is none."""
    try:
        return os.stat(cgroup_path).st_ino
    except OSError:
        return None


def _open_cgroup(path: str) -> int:
    try:
        return open_cgroup(path)
    except FileNotFoundError:
        raise NotFound(f"cgroup {path} does not exist") from None
    except NotADirectoryError:
        raise NotFound(f"{path} is not a cgroup directory") from None


def _attach_filters(
    cg: int,
    pin_dir: str,
    direction: Direction,
    paths: tuple[str, ...],
    links: list[CgroupLink],
    suffix: str = "",
) -> None:
    for i, path in enumerate(paths):
        try:
            prog = Program.open_pinned(path)
        except BPFError as exc:
            raise Error(f"cannot open BPF program pinned at {path}: {exc}") from exc
        with prog:
            link = CgroupLink.create(cg, prog, ATTACH[direction])
        links.append(link)
        link.pin(os.path.join(pin_dir, f"{FILTER_PREFIX[direction]}{i}{suffix}"))


def _detach_quietly(link: CgroupLink) -> None:
    try:
        link.detach()
    except BPFError as exc:
        if exc.errno not in (errno.ENOLINK, errno.ENOENT, errno.EINVAL):
            raise
