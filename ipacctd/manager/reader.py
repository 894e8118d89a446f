"""Cheap repeated reads of many units' counters: one open map fd per unit, kept.

Each unit has its own per-CPU counters map, so no one batched lookup (``BPF_MAP_LOOKUP_
BATCH`` works within one map) reads them all: a poll is one ``BPF_MAP_LOOKUP_ELEM`` a unit.
:meth:`CounterReader.read_many` makes that syscall straight from one loop, with buffers made
once per thread and shape and no Python object built for a value that did not change since
the unit's previous read (the common case: most units are idle between two polls). At
10,000 units the per-unit path (a method call per unit through the map's prepared read)
cost ~80 ms a poll on this 2-CPU machine; the loop ~30 ms (bench/results-daemon.txt).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import struct
import threading
from collections.abc import Iterable, Iterator

from ipacctd.bpf.maps import possible_cpus
from ipacctd.bpf.objects import info_by_fd, obj_get
from ipacctd.bpf.syscall import NR_BPF, bpf, close
from ipacctd.bpf.types import Cmd, MapType
from ipacctd.datapath.counters import Counters
from ipacctd.datapath.unit import COUNTERS
from ipacctd.errors import Error
from ipacctd.libc import libc
from ipacctd.manager.store import Store
from ipacctd.uapi import ATTR_SIZE, BpfAttr, BpfMapInfo

_LOOKUP = int(Cmd.MAP_LOOKUP_ELEM)
#: struct bpf_map_info up to max_entries: type, id, key_size, value_size (what a read needs).
_MAP_SHAPE_END = BpfMapInfo.max_entries.offset


class _Lookup:
    """One unit's open counters map and what its previous read saw: an unchanged value
    returns the Counters object of the previous read without building it again. Only the
    fd and the map's shape are kept (no map object: ~0.4 KiB a unit less at 10,000 units).
    """

    __slots__ = ("fd", "fields", "last", "last_raw", "size", "words")

    def __init__(self, fd: int, value_size: int) -> None:
        self.fd = fd
        stride = (value_size + 7) & ~7
        self.words = stride // 8
        self.fields = value_size // 8
        self.size = stride * possible_cpus()
        self.last_raw = b""
        self.last: Counters | None = None

    def counters(self, raw: bytes) -> Counters:
        """The Counters of the value ``raw`` just read (the previous object if unchanged).

        A value of all zeros (a unit that never sent nor received: most of 10,000 units)
        is one shared object and one shared bytes, not two objects per unit."""
        if raw != self.last_raw or self.last is None:
            zero = _zero(len(raw), self.fields)
            if raw == zero[0]:
                self.last_raw, self.last = zero
                return self.last
            flat = struct.unpack(f"={len(raw) // 8}Q", raw)
            words = self.words
            self.last = Counters(*(sum(flat[f::words]) for f in range(self.fields)))
            self.last_raw = raw
        return self.last


@functools.cache
def _zero(size: int, fields: int) -> tuple[bytes, Counters]:
    """The value of an untouched counters map of this size, and its (shared) Counters."""
    return bytes(size), Counters(*([0] * fields))


class _Buffers(threading.local):
    """Key, value and attr of a lookup, per thread (a bpf(2) call through ctypes releases
    the GIL: another thread must not write the same buffers meanwhile) and value size."""

    def __init__(self) -> None:
        self.by_size: dict[int, tuple[ctypes.Array, BpfAttr, object]] = {}

    def get(self, size: int) -> tuple[ctypes.Array, BpfAttr, object]:
        found = self.by_size.get(size)
        if found is None:
            key = ctypes.create_string_buffer(bytes(4), 4)  # index 0
            value = ctypes.create_string_buffer(size)
            attr = BpfAttr()
            attr.key = ctypes.addressof(key)
            attr.value = ctypes.addressof(value)
            found = self.by_size[size] = (value, attr, (key, ctypes.byref(attr)))
        return found


class CounterReader:
    """Reads counters through cached map fds (one syscall per unit per read).

    A unit whose pins vanish is dropped from the cache on the next failed read.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self._maps: dict[str, _Lookup] = {}
        self._buffers = _Buffers()

    def _open(self, name: str) -> _Lookup | None:
        """Open the unit's counters map: BPF_OBJ_GET and a check that it is the per-CPU
        array it must be (its value size sizes every later lookup's buffer)."""
        try:
            fd = obj_get(f"{self.store.pin_dir(name)}/{COUNTERS}", "map")
        except (Error, OSError):
            return None
        try:
            info = info_by_fd(fd, BpfMapInfo(), "map", _MAP_SHAPE_END)
        except (Error, OSError):
            info = None
        if info is None or info.type != MapType.PERCPU_ARRAY or info.key_size != 4:
            close(fd)
            return None
        lookup = self._maps[name] = _Lookup(fd, info.value_size)
        return lookup

    def read(self, name: str) -> Counters | None:
        """The unit's counters, or None when it has no pinned counters map."""
        return next(self.read_many((name,)))

    def read_many(self, names: Iterable[str]) -> Iterator[Counters | None]:
        """The counters of each named unit in turn (None: no pinned counters map), one
        bpf(2) call each."""
        maps = self._maps
        syscall = libc.syscall
        buffers = self._buffers
        size = -1
        value = attr = ref = None
        for name in names:
            lookup = maps.get(name)
            if lookup is None:
                lookup = self._open(name)
                if lookup is None:
                    yield None
                    continue
            if lookup.size != size:
                size = lookup.size
                value, attr, (_, ref) = buffers.get(size)
            attr.map_fd = lookup.fd
            if syscall(NR_BPF, _LOOKUP, ref, ATTR_SIZE) < 0:
                yield self._slow(name, lookup)
                size = -1  # the slow path may have used the buffers of this thread
                continue
            yield lookup.counters(value.raw)

    def _slow(self, name: str, lookup: _Lookup) -> Counters | None:
        """A failed lookup asked again through :func:`~ipacctd.bpf.syscall.bpf` (EINTR
        retried, errno mapped): a unit whose map is gone or unreadable is forgotten, None."""
        value, attr, _ = self._buffers.get(lookup.size)
        attr.map_fd = lookup.fd
        try:
            bpf(Cmd.MAP_LOOKUP_ELEM, attr, f"counters map of {name}")
            return lookup.counters(value.raw)
        except (Error, OSError, ValueError):
            self.forget(name)
            return None

    def forget(self, name: str) -> None:
        """Close the cached fd of a unit (it was removed or replaced)."""
        lookup = self._maps.pop(name, None)
        if lookup is not None:
            close(lookup.fd)

    def keep_only(self, names: set[str]) -> None:
        """Forget every unit not in ``names``."""
        for name in list(self._maps):
            if name not in names:
                self.forget(name)

    def close(self) -> None:
        """Close all cached fds."""
        for name in list(self._maps):
            self.forget(name)

    def __enter__(self) -> CounterReader:
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            self.close()
