"""Cheap repeated reads of many units' counters: one open map fd per unit, kept."""

from __future__ import annotations

import contextlib

from ipacctd.bpf.maps import PerCPUArrayMap
from ipacctd.datapath.counters import Counters
from ipacctd.datapath.unit import COUNTERS
from ipacctd.errors import Error
from ipacctd.manager.store import Store


class _Lookup:
    """A prepared read of one unit's counters map (one syscall per read); an unchanged value
    returns the Counters object of the previous read without building it again."""

    __slots__ = ("cmap", "last", "last_sums", "sums")

    def __init__(self, cmap: PerCPUArrayMap) -> None:
        self.cmap = cmap
        self.sums = cmap.prepared_sum(0)
        self.last_sums: tuple[int, ...] = ()
        self.last: Counters | None = None

    def read(self) -> Counters:
        sums = self.sums.read()
        if sums is not self.last_sums or self.last is None:
            self.last = Counters(*sums)
            self.last_sums = sums
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
