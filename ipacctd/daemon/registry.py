"""The daemon's view of all units, rebuilt from the kernel and the metadata files.

Nothing here is authoritative: a restarted daemon builds the same view from the pins and
metadata. The registry only remembers what it last announced, so that it can tell
D-Bus clients what changed.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from ipacctd.datapath.counters import Counters
from ipacctd.errors import NotFound
from ipacctd.manager.engine import Manager
from ipacctd.manager.reader import CounterReader
from ipacctd.manager.unit import UnitStatus


@dataclass
class Entry:
    """What the daemon last saw of one unit."""

    status: UnitStatus
    meta_mtime: int
    counters: Counters | None = None
    extra: dict = field(default_factory=dict)


Listener = Callable[[str, str, "Entry | None"], None]  # (event, name, entry)


class Registry:
    """Units by name, with change detection for polling and metadata changes."""

    def __init__(self, manager: Manager) -> None:
        self.manager = manager
        self.reader = CounterReader(manager.store)
        self.units: dict[str, Entry] = {}
        self.listeners: list[Listener] = []

    def _emit(self, event: str, name: str, entry: Entry | None) -> None:
        for listener in self.listeners:
            listener(event, name, entry)

    def _mtime(self, name: str) -> int:
        try:
            return os.stat(self.manager.store.meta_path(name)).st_mtime_ns
        except FileNotFoundError:
            return 0

    def sync(self) -> None:
        """Pick up units created, changed or removed by anyone (CLI, another daemon)."""
        names = set(self.manager.names())
        for gone in set(self.units) - names:
            self.units.pop(gone)
            self.reader.forget(gone)
            self._emit("removed", gone, None)
        for name in sorted(names):
            mtime = self._mtime(name)
            entry = self.units.get(name)
            if entry is not None and entry.meta_mtime == mtime:
                continue
            self.refresh(name, mtime)

    def refresh(self, name: str, mtime: int | None = None) -> Entry | None:
        """Re-read one unit's metadata and live state; announce it."""
        try:
            status = self.manager.status(name)
        except NotFound:
            if self.units.pop(name, None) is not None:
                self.reader.forget(name)
                self._emit("removed", name, None)
            return None
        old = self.units.get(name)
        if old is not None and old.status.unit.started_at != status.unit.started_at:
            self.reader.forget(name)  # replaced by a new unit of the same name
        entry = Entry(status, self._mtime(name) if mtime is None else mtime, status.counters)
        self.units[name] = entry
        self._emit("changed" if old is not None else "new", name, entry)
        return entry

    def poll_counters(self) -> list[str]:
        """Read every unit's counters; return the names whose counters changed."""
        changed = []
        for name, entry in self.units.items():
            c = self.reader.read(name)
            if c != entry.counters:
                entry.counters = c
                changed.append(name)
        for name in changed:
            self._emit("counters", name, self.units[name])
        return changed

    def poll_states(self) -> list[str]:
        """Re-check active states (processes come and go without metadata changes)."""
        changed = []
        for name, entry in list(self.units.items()):
            with contextlib.suppress(NotFound):
                st = self.manager.status(name)
                if (st.active_state, st.sub_state, st.attached) != (
                        entry.status.active_state, entry.status.sub_state,
                        entry.status.attached):
                    entry.status = st
                    changed.append(name)
                    self._emit("changed", name, entry)
        return changed

    def close(self) -> None:
        self.reader.close()
