"""The binder's pass over the cgroups just made (:meth:`Binder.reconcile_made`): what the
watches' events named is bound, or followed when a unit holds it already, without
listing every match of the glob; what only a full pass can judge is left to it. And the
daemon, which takes that pass for a burst's waves, still binds every cgroup — those made
below a level made later too."""

from __future__ import annotations

import os
import signal
import threading

import pytest
from daemon_support import DaemonEnv, egress_progs, glob_unit
from support import wait_for

from ipacctd.daemon import binder as binder_mod
from ipacctd.daemon.binder import Binder

pytestmark = pytest.mark.kernel


def _no_listing(*_args, **_kw):
    raise AssertionError("the pass listed the glob's cgroups")


def _app_unit(inst) -> str:
    """``app.unit``: ``ControlGroup=<ext>/*/app-*`` (two levels below a cgroup of the
    test's own, ``<ext>``, which is returned)."""
    ext = f"/ipacctd-test-{inst.id}-ext"
    inst.make_cgroup(ext)
    with open(os.path.join(inst.unit_dir, "app.unit"), "w") as f:
        f.write(f"[Match]\nControlGroup={ext}/*/app-*\n\n[Service]\nIPAddressDeny=any\n")
    return ext


def test_cgroups_made_are_bound_from_the_events_alone(env: DaemonEnv, monkeypatch) -> None:
    inst = env.inst
    ext = glob_unit(inst)
    old = [inst.make_cgroup(f"{ext}/gb-{i}") for i in range(2)]
    seen: list[str] = []
    binder = Binder(inst.manager(), on_bound=lambda unit: seen.append(unit.name))
    binder.load()
    assert binder.reconcile_made([]) is None  # no full pass yet: the watches follow it
    assert len(binder.reconcile()) == 2
    made = [inst.make_cgroup(f"{ext}/gb-{i}") for i in range(2, 5)]
    other = inst.make_cgroup(f"{ext}/other")
    monkeypatch.setattr(binder_mod, "glob_cgroups", _no_listing)
    lines = binder.reconcile_made([made[0], made[1], other])
    assert lines == [f"bound gb@gb-{i}.service to {ext}/gb-{i}" for i in (2, 3)]
    assert seen == ["gb@gb-0.service", "gb@gb-1.service", "gb@gb-2.service", "gb@gb-3.service"]
    assert [len(egress_progs(fs)) for fs in [*old, *made[:2]]] == [1, 1, 1, 1]
    # What no event named waits for the full pass (the daemon's events name every one).
    assert egress_progs(made[2]) == () and egress_progs(other) == ()
    # A cgroup made again at a bound unit's path: the unit follows it, counters kept.
    first = inst.manager().unit("gb@gb-0.service").cgroup_id
    os.rmdir(old[0])
    os.mkdir(old[0])
    lines = binder.reconcile_made([old[0]])
    assert lines is not None and len(lines) == 1 and lines[0].startswith("re-bound gb@gb-0")
    assert inst.manager().unit("gb@gb-0.service").cgroup_id == os.stat(old[0]).st_ino != first
    assert len(egress_progs(old[0])) == 1
    # Made again and already followed (the daemon's enforcement check came first): nothing.
    assert binder.reconcile_made([old[0], made[0]]) == []
    monkeypatch.undo()
    assert binder.reconcile() == [f"bound gb@gb-4.service to {ext}/gb-4"]
    assert [len(egress_progs(fs)) for fs in [*old, *made]] == [1] * 5
    assert egress_progs(other) == ()


def test_what_only_a_full_pass_can_tell_is_left_to_it(env: DaemonEnv) -> None:
    inst = env.inst
    ext = _app_unit(inst)
    a = inst.make_cgroup(f"{ext}/a/app-1")
    binder = Binder(inst.manager())
    binder.load()
    assert len(binder.reconcile()) == 1 and not binder.full_due
    # A level above the matches: cgroups below it are to be watched and listed. What the
    # events named is bound all the same.
    b = inst.make_cgroup(f"{ext}/b")
    b1 = inst.make_cgroup(f"{ext}/b/app-2")
    b2 = inst.make_cgroup(f"{ext}/b/app-3")  # no event named it (b was not watched)
    assert binder.reconcile_made([b, b1]) == [f"bound app@app-2.service to {ext}/b/app-2"]
    assert binder.full_due and not binder.busy
    assert len(egress_progs(b1)) == 1 and egress_progs(b2) == ()
    assert binder.reconcile() == [f"bound app@app-3.service to {ext}/b/app-3"]
    assert not binder.full_due
    # A name another cgroup's unit holds (app@app-1.service is a/app-1's): not bound.
    c1 = inst.make_cgroup(f"{ext}/c/app-1")
    assert binder.reconcile_made([c1]) == [] and binder.full_due
    assert egress_progs(c1) == () and len(egress_progs(a)) == 1
    # The full pass decides as it always has: the first in order keeps the name.
    assert binder.reconcile() == [] and not binder.full_due
    assert inst.manager().unit("app@app-1.service").cgroup == f"{ext}/a/app-1"
    assert egress_progs(c1) == ()


def test_the_daemon_binds_waves_and_levels_made_later(env: DaemonEnv) -> None:
    inst = env.inst
    ext = _app_unit(inst)
    inst.make_cgroup(f"{ext}/a")
    env.start()
    c = env.client
    assert env.proc is not None
    fs: list[str] = []
    for wave in range(3):  # each wave seen in one read of the daemon's queue
        os.kill(env.proc.pid, signal.SIGSTOP)  # the daemon this test started, by its PID
        try:
            fs += [inst.make_cgroup(f"{ext}/a/app-{wave}{i}") for i in range(20)]
            if wave == 1:  # a level made with the wave: watched, then listed
                fs += [inst.make_cgroup(f"{ext}/n/app-{i}") for i in range(3)]
        finally:
            os.kill(env.proc.pid, signal.SIGCONT)
        want = 20 * (wave + 1) + (3 if wave >= 1 else 0)
        c.wait(lambda want=want: sum(1 for u in c.units() if u.startswith("app@")) == want,
               60, f"{want} cgroups bound")
    # Made after the level's pass: its watch follows it.
    fs.append(inst.make_cgroup(f"{ext}/n/app-x"))
    c.wait(lambda: "app@app-x.service" in c.units(), 60, "n/app-x bound")
    assert [len(egress_progs(p)) for p in fs] == [1] * len(fs)
    # A cgroup removed: its unit turns inactive, its exit recorded.
    os.rmdir(fs[0])
    c.wait(lambda: c.props("app@app-00.service")["ActiveState"] == "inactive", 60,
           "app-00 inactive")
    assert inst.manager().unit("app@app-00.service").exited_at is not None
    assert "cannot bind" not in env.log() and "binding unit files" not in env.log(), env.log()


def test_a_cgroup_made_before_the_watches_is_bound(env: DaemonEnv) -> None:
    """The daemon's start lists the matches, then connects to the bus, then places its
    watches: a cgroup made in between is in neither the listing nor an event. The full
    pass made once the watches are in place binds it."""
    inst = env.inst
    ext = glob_unit(inst)
    inst.make_cgroup(f"{ext}/gb-a")
    bus = env.bus.proc
    starter = threading.Thread(target=env.start, daemon=True)
    os.kill(bus.pid, signal.SIGSTOP)  # the bus this test started, by its PID
    try:
        starter.start()  # its start waits for the bus after the first pass
        wait_for(lambda: "gb@gb-a.service" in inst.unit_names(), 30, "the start's pass")
        late = inst.make_cgroup(f"{ext}/gb-b")
    finally:
        os.kill(bus.pid, signal.SIGCONT)
    starter.join(60)
    assert not starter.is_alive() and env.proc is not None and env.proc.poll() is None
    c = env.client
    c.wait(lambda: "gb@gb-b.service" in c.units(), 10, "gb-b bound")
    assert len(egress_progs(late)) == 1
