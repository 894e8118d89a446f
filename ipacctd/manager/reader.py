"""Cheap repeated reads of many units' counters: one open map fd per unit, kept."""

from __future__ import annotations

import contextlib
import ctypes
import struct

from ipacctd.bpf.maps import PerCPUArrayMap, possible_cpus
from ipacctd.bpf.syscall import Attr, Cmd, addr, bpf
from ipacctd.datapath.counters import Counters
from ipacctd.datapath.unit import COUNTERS
from ipacctd.errors import Error
from ipacctd.manager.store import Store


class _Lookup:
    """A prepared MAP_LOOKUP_ELEM of index 0 of one counters map: the key, value and attr
    buffers are made once, so a read is one syscall; an unchanged value returns the
    Counters object of the previous read without unpacking it again."""

    __slots__ = ("attr", "cmap", "fields", "key", "last", "last_raw", "value", "words")

    def __init__(self, cmap: PerCPUArrayMap) -> None:
        self.cmap = cmap
        stride = (cmap.value_size + 7) & ~7
        self.words = stride // 8
        self.fields = cmap.value_size // 8
        self.key = ctypes.create_string_buffer(4)
        self.value = ctypes.create_string_buffer(stride * possible_cpus())
        self.attr = Attr(struct.pack("=IIQQQ", cmap.fd, 0, addr(self.key), addr(self.value),
                                     0))
        self.last_raw = b""
        self.last: Counters | None = None

    def read(self) -> Counters:
        bpf(Cmd.MAP_LOOKUP_ELEM, self.attr, "counters map")
        raw = self.value.raw
        if raw == self.last_raw and self.last is not None:
            return self.last
        words = self.words
        flat = struct.unpack(f"={len(raw) // 8}Q", raw)
        self.last = Counters(*(sum(flat[f::words]) for f in range(self.fields)))
        self.last_raw = raw
        return self.last


class CounterReader:
    """Reads counters through cached map fds (one syscall per unit per read).

    A unit whose pins vanish is dropped from the cache on the next failed read.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self._maps: dict[str, _Lookup] = {}

    def read(self, name: str) -> Counters | None:
        """The unit's counters, or None when it has no pinned counters map."""
        lookup = self._maps.get(name)
        if lookup is None:
            try:
                cmap = PerCPUArrayMap.open_pinned(f"{self.store.pin_dir(name)}/{COUNTERS}")
            except (Error, OSError):
                return None
            lookup = self._maps[name] = _Lookup(cmap)
        try:
            return lookup.read()
        except (Error, OSError, ValueError):
            self.forget(name)
            return None

    def forget(self, name: str) -> None:
        """Close the cached fd of a unit (it was removed or replaced)."""
        lookup = self._maps.pop(name, None)
        if lookup is not None:
            lookup.cmap.close()

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
