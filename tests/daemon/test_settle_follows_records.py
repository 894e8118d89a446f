"""After changes by other writers (root's CLI acting directly), the daemon reads again the
units whose records the state directory's events named, not every unit: a full pass
(``Registry.sync``) after every change anyone made held the loop ~50 ms at 10,000 units. A
burst of more than SETTLE_RECORDS named units, lost events (the queue overflowed) or the
directory itself gone still get the full pass.

The daemon's own objects with real units; its state-directory watch and settle as the
loop runs them; the changes made by ``ipacctd`` processes (no daemon on their bus)."""

from __future__ import annotations

import asyncio

import pytest

from ipacctd.daemon import service as service_mod
from ipacctd.daemon.config import DaemonConfig
from ipacctd.daemon.inotify import IN_Q_OVERFLOW, Inotify
from ipacctd.daemon.service import DEBOUNCE, Daemon

pytestmark = pytest.mark.kernel

DENY = "198.51.100.9"


def test_settle_reads_the_named_units_and_all_only_when_it_must(inst, monkeypatch) -> None:
    mgr = inst.manager()
    for i in range(6):
        mgr.start_transient([("IPAddressDeny", DENY)], name=f"u{i}")
    d = Daemon(DaemonConfig(paths=inst.config(), bus="", listen=""))
    reg = d.registry
    passes: list[int] = []
    read: list[str] = []
    full, one = reg.sync, reg.refresh

    def counted_sync() -> None:
        passes.append(1)
        full()

    def counted_refresh(name: str, mtime: int | None = None):
        read.append(name)
        return one(name, mtime)

    async def settled() -> None:
        d._on_inotify()
        for _ in range(200):  # bounded: 2 s
            await asyncio.sleep(DEBOUNCE)
            if d._pending is None:
                return
        raise AssertionError("no settle")

    async def scenario() -> None:
        d._loop = asyncio.get_running_loop()
        d.inotify = Inotify()
        d.inotify.watch(d.manager.config.units_dir)
        # Another process changes one unit: that unit is read again, nothing else.
        inst.ok("set-property", "u2", "Description=changed elsewhere")
        await settled()
        assert reg.units["u2.service"].status.unit.description == "changed elsewhere"
        assert passes == [] and read == ["u2.service"]
        # A new unit, and one reset: shown and gone.
        read.clear()
        inst.ok("run", "-q", "--unit", "fresh", "-p", f"IPAddressDeny={DENY}", "--", "true")
        inst.ok("reset", "u4")
        await settled()
        assert "fresh.service" in reg.units and "u4.service" not in reg.units
        assert passes == [] and sorted(set(read)) == ["fresh.service", "u4.service"]
        # More units named than SETTLE_RECORDS: the full pass.
        monkeypatch.setattr(service_mod, "SETTLE_RECORDS", 1)
        inst.ok("set-property", "u0", "Description=a")
        inst.ok("set-property", "u1", "Description=b")
        await settled()
        assert passes == [1]
        assert reg.units["u1.service"].status.unit.description == "b"
        monkeypatch.setattr(service_mod, "SETTLE_RECORDS", 256)
        # Lost events: the full pass (and the binder's own, for the cgroups' events lost).
        real_read = d.inotify.read
        monkeypatch.setattr(d.inotify, "read", lambda: iter([("", IN_Q_OVERFLOW, "")]))
        await settled()
        assert len(passes) > 1
        monkeypatch.setattr(d.inotify, "read", real_read)

    try:
        reg.sync()
        monkeypatch.setattr(reg, "sync", counted_sync)
        monkeypatch.setattr(reg, "refresh", counted_refresh)
        monkeypatch.setattr(d, "check_enforcement", lambda names, just_read=False: [])
        asyncio.run(scenario())
    finally:
        if d.inotify is not None:
            d.inotify.close()
        reg.close()


def test_a_unit_read_as_another_process_removes_it_is_gone_after_the_settle(inst) -> None:
    """The race the reliability suite's load test hit now and then: the daemon read a unit
    (a poll's refresh) just as another process reset it — status read from the record,
    record removed right after. The entry must not claim the removal's "no metadata", or
    the settle for the removal skipped it and the unit stayed listed, inactive, for good."""
    mgr = inst.manager()
    mgr.start_transient([("IPAddressDeny", DENY)], name="racy")
    d = Daemon(DaemonConfig(paths=inst.config(), bus="", listen=""))
    reg = d.registry
    name = "racy.service"
    real_status = reg.manager.status

    def status_then_removed(unit: str):
        st = real_status(unit)
        if unit == name:
            inst.ok("reset", unit)  # another process removes it, right after our read
        return st

    async def scenario() -> None:
        d._loop = asyncio.get_running_loop()
        d.inotify = Inotify()
        d.inotify.watch(d.manager.config.units_dir)
        reg.manager.status = status_then_removed  # type: ignore[method-assign]
        try:
            entry = reg._refresh(name, reg.units[name], None)  # the read the poll makes
        finally:
            reg.manager.status = real_status  # type: ignore[method-assign]
        assert entry is not None and name in reg.units  # what it read: the unit, still
        assert mgr.names() == []  # gone meanwhile
        d._on_inotify()  # the removal's events
        for _ in range(200):  # bounded: 2 s
            await asyncio.sleep(DEBOUNCE)
            if d._pending is None:
                break
        assert name not in reg.units, "the removed unit is still shown"

    try:
        reg.sync()
        assert name in reg.units
        d.check_enforcement = lambda names, just_read=False: []  # type: ignore[method-assign]
        asyncio.run(scenario())
    finally:
        if d.inotify is not None:
            d.inotify.close()
        reg.close()
