"""A unit's datapath in the kernel: programs, maps and cgroup links pinned in one directory.

Pins in the unit's bpffs directory::

    counters        per-CPU array of the unit's counters (kept across policy changes)
    denied          LRU hash of denied remote addresses (once the unit has a deny list)
    denied_slots    per-CPU slots in front of it: the address each CPU denied last
    link_ingress    bpf_link of the ingress program on the unit's cgroup
    link_egress     bpf_link of the egress program
    filter_<dir>_N  links of user programs (IPIngressFilterPath=/IPEgressFilterPath=)

Any process can open the directory and carry on where another left off: the kernel
holds the state, so a crash of the creator loses nothing. A policy change builds new
programs (and their lookup tables) beside the running ones and swaps each link's program in one step
(``BPF_LINK_UPDATE`` with the old program as the expected value), so no packet ever
meets an empty hook, and the counters map goes on unchanged.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
from dataclasses import dataclass, field

from ipacctd.bpf import bpffs
from ipacctd.bpf.errors import BPFError
from ipacctd.bpf.links import CgroupLink, open_cgroup
from ipacctd.bpf.maps import LPMTrieMap, PerCPUArrayMap
from ipacctd.bpf.programs import AttachType, Program
from ipacctd.datapath import counters as counters_mod
from ipacctd.datapath import denied, lookup
from ipacctd.datapath import program as program_mod
from ipacctd.datapath.counters import Counters, Direction
from ipacctd.datapath.rules import FamilyRules, compile_rules
from ipacctd.errors import AlreadyExists, Error, NotFound

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

COUNTERS = "counters"
LINK = {Direction.INGRESS: "link_ingress", Direction.EGRESS: "link_egress"}
ATTACH = {
    Direction.INGRESS: AttachType.CGROUP_INET_INGRESS,
    Direction.EGRESS: AttachType.CGROUP_INET_EGRESS,
}
PROG_NAME = {Direction.INGRESS: "ipacctd_ingress", Direction.EGRESS: "ipacctd_egress"}
NEW_FILTER = "_new"  # pin suffix of filter links attached but not yet in place
FILTER_PREFIX = {Direction.INGRESS: "filter_ingress_", Direction.EGRESS: "filter_egress_"}


@dataclass(frozen=True)
class Spec:
    """What the datapath enforces and counts: the kernel-facing part of a unit's policy."""

    allow: tuple[Network, ...] = ()
    deny: tuple[Network, ...] = ()
    accounting: bool = True
    audit: bool = False
    ingress_filters: tuple[str, ...] = ()
    egress_filters: tuple[str, ...] = ()

    def filters(self, direction: Direction) -> tuple[str, ...]:
        """Paths of the user programs pinned in bpffs for one direction."""
        return self.ingress_filters if direction == Direction.INGRESS else self.egress_filters


@dataclass
class Programs:
    """A freshly built pair of programs and the lookup tables they reference."""

    ingress: Program
    egress: Program
    tables: list[lookup.Table] = field(default_factory=list)
    rules: tuple[FamilyRules, FamilyRules] | None = None

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
            insns = program_mod.build(shape, counters_map, table4, table6, denied_map)
            loaded.append(
                Program.load(insns, attach_type=ATTACH[direction], name=PROG_NAME[direction])
            )
    except BaseException:
        for obj in (*loaded, *tables):
            obj.close()
        raise
    return Programs(loaded[0], loaded[1], tables, (v4, v6))


class UnitDatapath:
    """The pinned kernel state of one unit. Open it, or create it on a cgroup."""

    def __init__(self, pin_dir: str, counters_map: PerCPUArrayMap) -> None:
        self.pin_dir = pin_dir
        self.counters_map = counters_map

    # -- lifecycle -------------------------------------------------------------------------

    @classmethod
    def create(cls, pin_dir: str, cgroup_path: str, spec: Spec) -> UnitDatapath:
        """Build, attach and pin a unit's datapath; the pin directory appears complete or not
        at all (built under a temporary name, then renamed)."""
        if os.path.exists(pin_dir):
            raise AlreadyExists(f"datapath pins exist already at {pin_dir}")
        parent = os.path.dirname(pin_dir)
        bpffs.make_dir(parent)
        # bpffs refuses names with a dot; "~" appears in no unit pin name.
        tmp = os.path.join(parent, f"~tmp-{os.path.basename(pin_dir)}-{os.getpid()}")
        bpffs.remove_tree(tmp)
        bpffs.make_dir(tmp)
        cmap = counters_mod.create_map()
        links: list[CgroupLink] = []
        dmap: denied.Log | None = None
        try:
            cmap.pin(os.path.join(tmp, COUNTERS))
            if spec.deny:
                dmap = denied.create_map()
                dmap.pin(os.path.join(tmp, denied.PIN))
            progs = build_programs(spec, cmap, dmap)
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
            bpffs.remove_tree(tmp)
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

    def remove(self) -> None:
        """Detach every program from the cgroup and remove all pins."""
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

    def _link_pins(self) -> list[str]:
        try:
            names = os.listdir(self.pin_dir)
        except FileNotFoundError:
            return []
        return sorted(n for n in names if n.startswith(("link_", "filter_")))

    # -- changing --------------------------------------------------------------------------

    def denied_map(self, create: bool = False) -> denied.Log | None:
        """Open the unit's denied-addresses log; with ``create``, make and pin what is
        missing of it."""
        path = os.path.join(self.pin_dir, denied.PIN)
        if os.path.exists(path):
            return denied.open_pinned(path, create)
        if not create:
            return None
        dmap = denied.create_map()
        try:
            dmap.pin(path)
        except BaseException:
            dmap.close()
            raise
        return dmap

    def apply(self, spec: Spec, cgroup_path: str | None = None) -> None:
        """Swap in programs for ``spec``; counters carry on. On failure nothing changes."""
        dmap = self.denied_map(create=bool(spec.deny))
        try:
            progs = build_programs(spec, self.counters_map, dmap)
        finally:
            if dmap is not None:
                dmap.close()
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
