"""Statuses of many units: ``list-units``, ``DescribeUnits`` and the daemon's start-up.

:meth:`Manager.status` answers for one unit and takes each fact from where it lives,
asking again where two of its parts need the same one (the cgroup's existence and id, the
metadata's path, the counters map opened and closed). Over 10,000 units that was ~0.3 ms
of CPU and 32 syscalls a unit: 6.6 s of CPU before the daemon answered, 5 s for
``list-units --all`` (bench/results-daemon.txt). :class:`StatusReader` reads the same
facts once each (27 syscalls a unit, half the CPU; the daemon keeps the counters fd):

* the metadata: one open, fstat, read and close (the file is replaced by rename, never
  written in place: a read of its size is all of it);
* the cgroup: its directory opened once, its id (inode) from that fd and ``cgroup.events``
  read through it (the processes are listed only when it is populated);
* the counters through a :class:`~ipacctd.manager.reader.CounterReader` (the daemon's
  own, whose fds stay open: no open at all);
* the links: each pinned link's info, compared with the cgroup id already known.

It decides nothing on its own: any unit off the common path (metadata missing, unreadable
or of another name, no cgroup at its path, programs systemd attaches, user filters, a link
not on the cgroup, a policy generation not the recorded one) is read by
:meth:`Manager.status` itself, so that every status — the problem text of an unenforced
unit included — is exactly the engine's.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import stat
import struct
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

from ipacctd import cgroup, jsontext
from ipacctd.bpf.syscall import NR_BPF
from ipacctd.bpf.types import Cmd, LinkType, MapType
from ipacctd.datapath.counters import Direction
from ipacctd.datapath.unit import COUNTERS, LINK, PROG_PIN
from ipacctd.errors import Error, NotFound
from ipacctd.libc import libc
from ipacctd.manager import generation
from ipacctd.manager.reader import CounterReader
from ipacctd.manager.store import MAX_META_BYTES, SUFFIX, canonical
from ipacctd.manager.unit import Enforcement, Unit, UnitStatus, spec_for
from ipacctd.policy.names import pin_name
from ipacctd.uapi import ATTR_SIZE, BpfAttr, BpfLinkInfo, BpfMapInfo

if TYPE_CHECKING:
    from ipacctd.manager.engine import Manager

_OPEN_META = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_LINKS = tuple(LINK[d] for d in Direction)
_OBJ_GET = int(Cmd.OBJ_GET)
_INFO = int(Cmd.OBJ_GET_INFO_BY_FD)
_LOOKUP = int(Cmd.MAP_LOOKUP_ELEM)
_GEN_SHAPE = (MapType.ARRAY, 4, 8)
_GEN_PIN = os.path.basename(generation.path(""))


class _Kernel:
    """The bpf(2) calls of a fast status, each one syscall with buffers made once (per
    :class:`StatusReader`; not shared between threads). Any failure answers None: the
    caller then takes the engine's way, which raises or explains."""

    def __init__(self) -> None:
        self.get = BpfAttr()
        self.get_ref = ctypes.byref(self.get)
        self.info = BpfAttr()
        self.info_ref = ctypes.byref(self.info)
        self.link = BpfLinkInfo()
        self.map = BpfMapInfo()
        self.key = ctypes.create_string_buffer(4)  # index 0
        self.value = ctypes.create_string_buffer(8)
        self.lookup = BpfAttr()
        self.lookup.key = ctypes.addressof(self.key)
        self.lookup.value = ctypes.addressof(self.value)
        self.lookup_ref = ctypes.byref(self.lookup)

    def _obj_get(self, path: str) -> int:
        buf = ctypes.create_string_buffer(path.encode())
        self.get.pathname = ctypes.addressof(buf)
        return libc.syscall(NR_BPF, _OBJ_GET, self.get_ref, ATTR_SIZE)

    def _info(self, fd: int, info: ctypes.Structure) -> bool:
        # Zeroed each time: the kernel reads some link types' buffers from the struct.
        ctypes.memset(ctypes.addressof(info), 0, ctypes.sizeof(info))
        self.info.info.bpf_fd = fd
        self.info.info.info_len = ctypes.sizeof(info)
        self.info.info.info = ctypes.addressof(info)
        return libc.syscall(NR_BPF, _INFO, self.info_ref, ATTR_SIZE) == 0

    def link_cgroup(self, path: str) -> int | None:
        """The id of the cgroup the cgroup link pinned at ``path`` is on (0: none)."""
        fd = self._obj_get(path)
        if fd < 0:
            return None
        try:
            if not self._info(fd, self.link) or self.link.type != LinkType.CGROUP:
                return None
            return self.link.cgroup.cgroup_id
        finally:
            os.close(fd)

    def generation(self, path: str) -> int | None:
        """The u64 at index 0 of the one-value array pinned at ``path`` (the enforced
        policy generation, :mod:`.generation`)."""
        fd = self._obj_get(path)
        if fd < 0:
            return None
        try:
            m = self.map
            if not self._info(fd, m) or (m.type, m.key_size, m.value_size) != _GEN_SHAPE:
                return None
            self.lookup.map_fd = fd
            if libc.syscall(NR_BPF, _LOOKUP, self.lookup_ref, ATTR_SIZE) != 0:
                return None
            return struct.unpack("=Q", self.value.raw)[0]
        finally:
            os.close(fd)


class Seen:
    """What a fast status read besides the status, for a caller that watches for changes
    (the daemon's registry): the metadata file's (inode, size, mtime in ns) and the
    cgroup's (exists, populated) as ``cgroup.events`` said."""

    __slots__ = ("meta", "probe")

    def __init__(self, meta: tuple[int, int, int], probe: tuple[bool, bool]) -> None:
        self.meta = meta
        self.probe = probe


class StatusReader:
    """Statuses as :meth:`Manager.status` reads them, for many units at a time.

    ``reader``: the counters are read through it (its fds are kept); without one a reader
    of this object's own is used and closed by :meth:`close`.

    ``known``: the unit as last parsed with the key of the metadata file it came from
    (inode, size, mtime), or None; while the file has that key the unit is taken as it is
    instead of reading and parsing the file (a :class:`Unit` is immutable; the store
    replaces the file by rename, never writes it in place). Parsing was 40 % of a status
    (0.1 ms); the daemon (its registry keeps them: ``Registry._known``) reads every unit
    for each ``DescribeUnits`` of all units.
    """

    def __init__(
        self,
        manager: Manager,
        reader: CounterReader | None = None,
        known: Callable[[str], tuple[tuple[int, int, int], Unit] | None] | None = None,
    ) -> None:
        self.manager = manager
        self.own_reader = reader is None
        self.reader = reader if reader is not None else CounterReader(manager.store)
        cfg = manager.config
        self.units_dir = cfg.units_dir
        self.pins_dir = cfg.pins_dir
        self.kernel = _Kernel()
        self.known = known

    def close(self) -> None:
        if self.own_reader:
            self.reader.close()

    def __enter__(self) -> StatusReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def statuses(self, names: Sequence[str] | None = None) -> Iterator[UnitStatus]:
        """As :meth:`Manager.statuses`, one at a time (a caller that writes each out need
        not hold them all): all units when ``names`` is None; unknown names raise NotFound.
        Counters fds opened for these statuses alone are closed as each is read."""
        for name in self.manager.names() if names is None else names:
            try:
                yield self.read(name, keep=not self.own_reader)[0]
            except NotFound:
                if names is not None:
                    raise

    def status(self, name: str) -> UnitStatus:
        return self.read(name)[0]

    def read(
        self, name: str, keep: bool = True, before: Callable[[Unit], None] | None = None
    ) -> tuple[UnitStatus, Seen | None]:
        """The unit's status and, when the fast path read it, what it saw (else None).
        ``keep``: leave the unit's counters fd open in the reader (False: close it).
        ``before``: called with the unit as its metadata says, before anything of the
        kernel's is read (the daemon places its watches there: a change after them is
        never lost)."""
        name = canonical(name)
        try:
            fast = self._fast(name, before)
        finally:
            if not keep:
                self.reader.forget(name)
        if fast is not None:
            return fast
        return self.manager.status(name), None

    def _meta(self, name: str) -> tuple[Unit, tuple[int, int, int]] | None:
        try:
            fd = os.open(f"{self.units_dir}/{name}{SUFFIX}", _OPEN_META)
        except OSError:
            return None
        known = self.known(name) if self.known is not None else None
        data = b""
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_META_BYTES:
                return None
            key = (st.st_ino, st.st_size, st.st_mtime_ns)
            hit = known is not None and known[0] == key  # the file as parsed before
            if not hit:
                data = os.read(fd, st.st_size + 1)
        except OSError:
            return None
        finally:
            os.close(fd)
        if hit:
            unit = known[1]
        else:
            if len(data) != st.st_size:  # replaced or growing meanwhile: the long way
                return None
            try:
                obj = jsontext.loads(data)
                if not isinstance(obj, dict) or obj.get("name") != name:
                    return None
                unit = Unit.from_json(obj)
            except (Error, ValueError):
                return None
        # The engine's cache of who owns which cgroup (Manager._cgroup_owners, keyed the
        # same way) need not parse this file again: the daemon's first binding pass did,
        # for every unit (1 s at 10,000 units).
        self.manager.remember_owner(name, key, unit.cgroup)
        return unit, key

    def _common(self, unit: Unit) -> str | None:
        """The filesystem path of the unit's cgroup when the unit is of the kind this
        reader answers for itself (enforced, its links ipacctd's own, no user filters)."""
        if not unit.enforced or unit.systemd_service is not None:
            return None  # its enforcement is another question (Manager.enforcement)
        spec = spec_for(unit.properties)
        if spec.ingress_filters or spec.egress_filters:
            return None
        try:
            return self.manager.cgroup_fs(unit)
        except Error:
            return None

    def _in_force(self, name: str, unit: Unit, cid: int) -> int | None:
        """The enforced generation when the unit's programs are in force on the cgroup
        ``cid`` as the engine would find them (counters pinned, no programs systemd
        attaches, the recorded generation, both links on that very cgroup); else None."""
        pin_dir = f"{self.pins_dir}/{pin_name(name)}"
        if not os.path.exists(f"{pin_dir}/{COUNTERS}") or os.path.exists(
            f"{pin_dir}/{PROG_PIN[Direction.INGRESS]}"
        ):
            return None  # pins lost, or programs systemd attaches
        kernel = self.kernel
        kgen = kernel.generation(f"{pin_dir}/{_GEN_PIN}")
        if kgen is None or kgen != unit.generation:
            return None
        for pin in _LINKS:
            if kernel.link_cgroup(f"{pin_dir}/{pin}") != cid:
                return None  # on no cgroup or another: Manager.status says which
        return kgen

    def enforcement(self, name: str, unit: Unit) -> Enforcement:
        """:meth:`Manager.enforcement` of the unit as recorded in ``unit``: in force when
        this reader finds it so by its own reads, else the engine's answer (and cause)."""
        fs = self._common(unit)
        if fs is not None:
            try:
                cid = os.stat(fs).st_ino
            except OSError:
                cid = None
            if cid is not None and self._in_force(canonical(name), unit, cid) is not None:
                return Enforcement(True, cgroup_id=cid)
        return self.manager.enforcement(name, unit)

    def _fast(
        self, name: str, before: Callable[[Unit], None] | None
    ) -> tuple[UnitStatus, Seen] | None:
        found = self._meta(name)
        if found is None:
            return None
        unit, meta = found
        if before is not None:
            before(unit)
        return self.live(name, unit, meta)

    def live(
        self, name: str, unit: Unit, meta: tuple[int, int, int]
    ) -> tuple[UnitStatus, Seen] | None:
        """The fast status of ``unit`` as its metadata file (key ``meta``: inode, size,
        mtime in ns) holds it: the kernel's facts read as :meth:`read` reads them, the
        metadata not read again (the daemon's registry has the unit its binder just bound
        and recorded). None when the unit is off the common path."""
        fs = self._common(unit)
        if fs is None:
            return None
        try:
            dfd = os.open(fs, _OPEN_DIR)
        except OSError:
            return None  # no cgroup at its path: Manager.status tells what that means
        try:
            cid = os.fstat(dfd).st_ino
            efd = os.open("cgroup.events", os.O_RDONLY | os.O_CLOEXEC, dir_fd=dfd)
            try:
                populated = b"populated 1" in os.read(efd, 512)
            finally:
                os.close(efd)
        except OSError:
            return None
        finally:
            os.close(dfd)
        counters = self.reader.read(name)
        if counters is None:
            return None
        kgen = self._in_force(name, unit, cid)
        if kgen is None:
            return None
        pids: tuple[int, ...] = ()
        if populated:
            with contextlib.suppress(OSError):
                pids = tuple(sorted(cgroup.procs_recursive(fs)))
        active, sub = self.manager.active_state(unit, pids, True)
        enf = Enforcement(True, cgroup_id=cid)
        status = UnitStatus(unit, active, sub, pids, counters, True, kgen, enf)
        return status, Seen(meta, (True, populated))
