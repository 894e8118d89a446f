"""The daemon's view of a unit its binder has just bound (:meth:`Registry.bound`) is taken
from what the engine made — the unit :meth:`Manager.attach_many` returned and the record
its batch wrote — not read back; the kernel's facts are read as a refresh reads them. It
must be the very status the read-back gives: compared here, unit by unit, with a second
registry's :meth:`Registry.refresh` and with :meth:`Manager.status` (real cgroups, real
programs, one of them with a process inside), and for the cases the engine's result cannot
vouch for (the record changed since, a unit shown already) the read-back is what is shown.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading

import pytest
from daemon_support import MANAGER, ROOT, DaemonEnv, egress_progs, glob_unit
from support import wait_for

from ipacctd.bpf.links import open_cgroup, prog_query
from ipacctd.bpf.types import AttachType
from ipacctd.daemon.binder import Binder
from ipacctd.daemon.registry import Registry
from ipacctd.datapath.counters import Direction
from ipacctd.datapath.unit import LINK
from ipacctd.manager.unit import Unit

pytestmark = pytest.mark.kernel

DENIED = "198.51.100.1"


def ingress_progs(fs: str) -> tuple[int, ...]:
    fd = open_cgroup(fs)
    try:
        return tuple(prog_query(fd, AttachType.CGROUP_INET_INGRESS).prog_ids)
    finally:
        os.close(fd)


def _same_entry(shown, read) -> None:
    """The entry the binder's registry shows equals the one a read-back makes."""
    a, b = shown.status, read.status
    assert a.unit == b.unit
    assert (a.active_state, a.sub_state, a.pids) == (b.active_state, b.sub_state, b.pids)
    assert a.enforcement == b.enforcement and a.enforcement.enforced
    assert a.enforcement.problem == b.enforcement.problem == ""
    assert (a.attached, a.kernel_generation, a.broken) == (b.attached, b.kernel_generation, None)
    assert a.counters is not None and a.counters == b.counters
    assert a == b  # every field of the status, whatever is added to it later
    assert (shown.meta_mtime, shown.probe, shown.identity) == (
        read.meta_mtime,
        read.probe,
        read.identity,
    )


def test_bound_units_show_the_status_the_read_back_gives(env: DaemonEnv) -> None:
    inst = env.inst
    ext = glob_unit(inst, f"IPAddressDeny={DENIED}\nIPAddressAllow=203.0.113.0/24",
                    unit="Description=glob")
    made = {f"gb@gb-{i}.service": inst.make_cgroup(f"{ext}/gb-{i}") for i in range(5)}
    # A process in one of them: active (running) with its PID, not idle.
    sleeper = subprocess.Popen(["sleep", "120"])
    try:
        with open(os.path.join(made["gb@gb-2.service"], "cgroup.procs"), "w") as f:
            f.write(str(sleeper.pid))
        manager = inst.manager()
        registry = Registry(manager)
        read_back: list[str] = []
        real_refresh = registry.refresh

        def refresh(name: str, mtime: int | None = None):
            read_back.append(name)
            return real_refresh(name, mtime)

        registry.refresh = refresh  # type: ignore[method-assign]
        bound: list[Unit] = []

        def on_bound(unit: Unit) -> None:
            bound.append(unit)
            registry.bound(unit)

        binder = Binder(manager, lambda: [e.status.unit for e in registry.units.values()], on_bound)
        binder.load()
        binder.reconcile()
        assert sorted(u.name for u in bound) == sorted(made)
        assert read_back == []  # every one shown from what the engine made
        other = Registry(inst.manager())  # the read-back, as the daemon did it before
        try:
            for name, fs in made.items():
                shown = registry.units[name]
                read = other.refresh(name)
                assert read is not None
                _same_entry(shown, read)
                assert shown.status == manager.status(name)  # the engine's own read
                assert shown.status.unit.cgroup_id == os.stat(fs).st_ino
                # The programs the status vouches for are on the cgroup, once each.
                assert len(egress_progs(fs)) == 1 and len(ingress_progs(fs)) == 1
            running = registry.units["gb@gb-2.service"].status
            assert (running.active_state, running.sub_state) == ("active", "running")
            assert running.pids == (sleeper.pid,)
            idle = registry.units["gb@gb-0.service"].status
            assert (idle.active_state, idle.sub_state, idle.pids) == ("active", "idle", ())
        finally:
            other.close()
            registry.close()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_bound_reads_back_what_the_engine_result_cannot_vouch_for(env: DaemonEnv) -> None:
    inst = env.inst
    ext = glob_unit(inst)
    made = [inst.make_cgroup(f"{ext}/gb-{i}") for i in range(4)]
    manager, cli = inst.manager(), inst.manager()
    registry = Registry(manager)
    try:
        units: list[Unit] = []
        binder = Binder(manager, on_bound=units.append)
        binder.load()
        binder.reconcile()
        assert sorted(u.name for u in units) == [f"gb@gb-{i}.service" for i in range(4)]
        # In the cgroups' order (the binder does not promise its own): cut is gb-3's unit.
        changed, shown, plain, cut = sorted(units, key=lambda u: u.name)
        # Another process changes one record after the binding, before the registry shows
        # it: the engine's unit is not what is recorded now, so the record is read back.
        cli.set_properties(changed.name, [("Description", "changed by hand")])
        entry = registry.bound(changed)
        assert entry is not None
        assert entry.status.unit.properties.description == "changed by hand"
        assert entry.status == manager.status(changed.name)
        # A unit the registry shows already: read back (an older view is replaced).
        registry.refresh(shown.name)
        again = registry.bound(shown)
        assert again is not None and again.status == manager.status(shown.name)
        # Its egress link unpinned by hand meanwhile (the program comes off the cgroup),
        # the record unchanged: the kernel's facts are read, not assumed, so the view says
        # NOT in force, with the engine's own problem text.
        os.unlink(os.path.join(manager.store.pin_dir(cut.name), LINK[Direction.EGRESS]))
        # The kernel lets go of a link whose last reference went in a work item of its own
        # (bpf_link_put): the program comes off a moment after the unlink.
        wait_for(lambda: egress_progs(made[3]) == (), 10, "the unpinned link to detach")
        entry = registry.bound(cut)
        assert entry is not None and entry.status == manager.status(cut.name)
        enf = entry.status.enforcement
        assert not enf.enforced and enf.alarming and enf.problem, enf
        assert entry.status.attached is False
        # The record removed meanwhile: nothing is shown for it.
        cli.detach(plain.name)
        assert registry.bound(plain) is None
        assert plain.name not in registry.units
    finally:
        registry.close()


def test_held_announcements_go_out_after_the_block_in_order(env: DaemonEnv) -> None:
    """Inside :meth:`Registry.held` this thread's announcements wait for the block's end,
    then go out in the order made; another thread's are not held."""
    inst = env.inst
    ext = f"/ipacctd-test-{inst.id}-ext"
    inst.make_cgroup(ext)
    for i in range(2):
        inst.make_cgroup(f"{ext}/u{i}")
        inst.manager().attach(f"{ext}/u{i}", name=f"u{i}")
    registry = Registry(inst.manager())
    try:
        seen: list[tuple[str, str]] = []
        registry.listeners.append(lambda event, name, entry: seen.append((event, name)))
        with registry.held():
            registry.refresh("u0.service")
            with registry.held():  # nested: the outer block announces
                registry.refresh("u1.service")
            registry.refresh("u0.service")
            other = threading.Thread(target=registry.refresh, args=("u1.service",))
            other.start()
            other.join()
            assert seen == [("changed", "u1.service")]  # the other thread's, at once
        assert seen == [
            ("changed", "u1.service"),
            ("new", "u0.service"),
            ("new", "u1.service"),
            ("changed", "u0.service"),
        ]
    finally:
        registry.close()


def test_a_burst_bound_by_the_daemon_announces_each_unit_once(env: DaemonEnv) -> None:
    """The daemon binds a burst in slices and sends each slice's ``UnitNew`` signals after
    it: every unit is announced exactly once, in the order bound, with the object path
    ``GetUnit`` gives it."""
    inst = env.inst
    ext = glob_unit(inst)
    env.start()
    assert env.proc is not None
    c = env.client
    listener = env.new_client()
    listener.add_match(f"type='signal',path='{ROOT}',interface='{MANAGER}',member='UnitNew'")
    n = 120
    # Stopped, the daemon finds the whole burst at once: several slices.
    os.kill(env.proc.pid, signal.SIGSTOP)
    try:
        made = [inst.make_cgroup(f"{ext}/gb-{i:03d}") for i in range(n)]
    finally:
        os.kill(env.proc.pid, signal.SIGCONT)
    want = [f"gb@gb-{i:03d}.service" for i in range(n)]

    def announced() -> list[str]:
        return [m.body[0] for m in listener.signals if m.member == "UnitNew"]

    listener.wait(lambda: len(announced()) >= n, 120, f"UnitNew for {n} units")
    listener.pump(0.5)  # none more
    assert announced() == want  # each once, in the order the binder binds them
    paths = {m.body[0]: m.body[1] for m in listener.signals if m.member == "UnitNew"}
    for name in want:
        assert c.manager("GetUnit", "s", name) == [paths[name]]
    assert [len(egress_progs(fs)) for fs in made] == [1] * n


def test_a_match_bound_meanwhile_by_another_process_is_shown_as_recorded(
    env: DaemonEnv,
) -> None:
    """A pending match that another process bound under the same name to the same cgroup
    meanwhile (the OCI hook does so for a container) is done, not refused: the binder
    hands the unit as recorded to the registry, which reads it back (no record of the
    binder's batch vouches for it)."""
    inst = env.inst
    ext = glob_unit(inst)
    made = [inst.make_cgroup(f"{ext}/gb-{i}") for i in range(2)]
    manager = inst.manager()
    registry = Registry(manager)
    try:
        given: list[Unit] = []

        def on_bound(unit: Unit) -> None:
            given.append(unit)
            registry.bound(unit)

        binder = Binder(manager, on_bound=on_bound)
        binder.load()
        assert len(binder.reconcile(budget=0)) == 1  # gb-0 bound, gb-1 pending
        assert [b.name for b in binder.pending] == ["gb@gb-1.service"]
        other = inst.manager().attach(f"{ext}/gb-1", name="gb@gb-1")  # the other process
        lines = binder.bind_pending()
        assert lines == [f"gb@gb-1.service: bound to {ext}/gb-1 already (by the OCI hook)"]
        assert [u.name for u in given] == ["gb@gb-0.service", "gb@gb-1.service"]
        assert given[1].started_at == other.started_at  # the unit as the other one made it
        shown = registry.units["gb@gb-1.service"]
        assert shown.status == manager.status("gb@gb-1.service")
        assert shown.status.enforcement.enforced
        assert [len(egress_progs(fs)) for fs in made] == [1, 1]
    finally:
        registry.close()


def test_units_bound_are_not_read_again_for_the_events_of_their_making(env: DaemonEnv) -> None:
    """A burst's units are named by the events of their own making (pin directories renamed
    into place, cgroups made): the status :meth:`Registry.bound` reads comes after them,
    so no poll reads those units again for them. A change after it is seen as ever."""
    inst = env.inst
    ext = glob_unit(inst)
    for i in range(30):
        inst.make_cgroup(f"{ext}/gb-{i:02d}")
    manager = inst.manager()
    registry = Registry(manager)
    try:
        binder = Binder(manager, on_bound=registry.bound)
        binder.load()
        binder.reconcile(budget=0)  # the first: its watches in place before the others
        while binder.pending:  # bounded: one bound a call
            binder.bind_pending(0)
        assert len(registry.units) == 30
        looked: list[str] = []
        real_identity = registry.identity

        def identity(name: str, cgroup_path: str) -> tuple:
            looked.append(name)
            return real_identity(name, cgroup_path)

        registry.identity = identity  # type: ignore[method-assign]
        due = registry.enforcement_due()
        assert looked == [] and len(due) == 1  # the rolling one alone (a 50th, at least one)
        # Its egress link unpinned by hand: that unit is due, and none other.
        victim = "gb@gb-07.service"
        os.unlink(os.path.join(manager.store.pin_dir(victim), LINK[Direction.EGRESS]))
        due = registry.enforcement_due()
        assert looked == [victim] and victim in due and len(due) <= 2
    finally:
        registry.close()
