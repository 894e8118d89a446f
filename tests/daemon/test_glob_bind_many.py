"""Binding many cgroups of one glob: what the engine keeps between slices, and a crash of
the daemon in the middle of a binding.

Between two batches of attaches (:meth:`Manager.attach_many`, one per slice) the engine
keeps what it read of every unit's metadata and learns what changed from the state
directory's inotify queue; a unit another process made, removed or made again under the
same name meanwhile must be seen (or a cgroup would be bound twice). The records of one
batch are synced together at its end: a daemon killed (SIGKILL) part-way leaves every
unit it bound recorded, none half-attached, and its restart binds the rest, each cgroup
exactly once, with the programs (and counters) of those bound before the crash kept.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time

import pytest
from daemon_support import DaemonEnv, egress_progs, glob_unit
from support import wait_for

from ipacctd.errors import AlreadyExists
from ipacctd.manager.unit import Unit

pytestmark = pytest.mark.kernel

DENIED = "198.51.100.1"
ALLOWED = "203.0.113.1"


def _request(ext: str, cg: str, name: str) -> dict:
    return dict(cgroup_path=f"{ext}/{cg}", name=name)


def test_attach_many_sees_units_other_processes_made_between_batches(env: DaemonEnv) -> None:
    inst = env.inst
    ext = f"/ipacctd-test-{inst.id}-ext"
    inst.make_cgroup(ext)
    fs = {c: inst.make_cgroup(f"{ext}/{c}") for c in ("a", "b", "c", "d")}
    binder, other = inst.manager(), inst.manager()  # the daemon's engine; a CLI's
    [u1] = binder.attach_many([_request(ext, "a", "u1")])
    assert isinstance(u1, Unit)
    # Made by another process after the first batch listed the units: refused.
    other.attach(f"{ext}/b", name="byhand")
    [refused] = binder.attach_many([_request(ext, "b", "u2")])
    assert isinstance(refused, AlreadyExists) and "byhand" in str(refused)
    # Removed, and made again under the same name on another cgroup, between two batches:
    # the old cgroup is free, the new one is taken.
    other.detach("u1.service")
    other.attach(f"{ext}/c", name="u1")
    got = binder.attach_many([_request(ext, "c", "u3"), _request(ext, "a", "u4")])
    assert isinstance(got[0], AlreadyExists) and "u1" in str(got[0]), got
    assert isinstance(got[1], Unit) and got[1].cgroup == f"{ext}/a"
    # A unit's record rewritten by another process (a policy change) is read again.
    other.set_properties("u4.service", [("IPAddressDeny", DENIED)])
    [u5] = binder.attach_many([_request(ext, "d", "u5")])
    assert isinstance(u5, Unit)
    [again] = binder.attach_many([_request(ext, "a", "u6")])
    assert isinstance(again, AlreadyExists) and "u4" in str(again)
    assert inst.unit_names() == ["byhand.service", "u1.service", "u4.service", "u5.service"]
    assert {c: len(egress_progs(p)) for c, p in fs.items()} == {"a": 1, "b": 1, "c": 1, "d": 1}
    assert not [n for n in os.listdir(os.path.join(inst.state_dir, "units")) if n.endswith(".tmp")]


def _recorded(inst) -> set[str]:
    return {n for n in inst.unit_names() if n.startswith("gb@")}


def _kit_helpers(pid: int) -> list[int]:
    """The daemon's kit helpers (ipacctd.manager.kits): its children running one."""
    found = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/children") as f:
            for child in f.read().split():
                with contextlib.suppress(FileNotFoundError), \
                        open(f"/proc/{child}/cmdline", "rb") as c:
                    if b"ipacctd.manager.kits" in c.read():
                        found.append(int(child))
    return found


def _exited(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_daemon_killed_mid_binding_restarts_and_binds_each_cgroup_once(env: DaemonEnv) -> None:
    inst = env.inst
    ext = glob_unit(inst)
    env.start()
    assert env.proc is not None
    c = env.client
    n = 600
    # The first cgroup bound before the burst, a process in it denied once: counted.
    made = {"gb@gb-000.service": inst.make_cgroup(f"{ext}/gb-000")}
    c.wait(lambda: "gb@gb-000.service" in c.units(), 10, "gb-000 bound")
    ns = inst.netns([ALLOWED, DENIED])
    first = inst.start_in_cgroup(ns, made["gb@gb-000.service"])
    assert first.send(DENIED, 10) == "err 1"
    os.kill(env.proc.pid, signal.SIGSTOP)  # the whole burst in one read of its queue
    try:
        for i in range(1, n):
            made[f"gb@gb-{i:03d}.service"] = inst.make_cgroup(f"{ext}/gb-{i:03d}")
    finally:
        os.kill(env.proc.pid, signal.SIGCONT)
    deadline = time.monotonic() + 120
    while len(_recorded(inst)) < n // 10 and time.monotonic() < deadline:
        time.sleep(0.002)
    helpers = _kit_helpers(env.proc.pid)  # a burst this size: a helper makes the programs
    env.kill9()
    before = _recorded(inst)
    assert 0 < len(before) < n, f"not killed mid-binding ({len(before)} of {n} recorded)"
    # Every cgroup holds at most one program of ours; each one bound is recorded (no
    # program attached that the daemon cannot find), the one in flight may be neither.
    progs = {name: egress_progs(fs) for name, fs in made.items()}
    assert all(len(p) <= 1 for p in progs.values()), progs
    attached = {name for name, p in progs.items() if p}
    assert attached <= before, attached - before
    # Bound before the crash: its pin directory in place. One killed between its links
    # and the rename of its pin directory into place has a program on its cgroup, held by
    # the temporary directory's pins: the restart sweeps those and builds it again.
    pin_dir = inst.manager().store.pin_dir
    kept = {name: progs[name] for name in attached if os.path.isdir(pin_dir(name))}
    assert len(attached) - len(kept) <= 1, attached - set(kept)
    assert first.send(DENIED, 10) == "err 1"  # no daemon: enforced all the same
    # The daemon's helper ends with it (its socket closed): none is left running.
    assert helpers, "no kit helper for a burst of 600"
    wait_for(lambda: all(_exited(p) for p in helpers), 30, "the kit helper's exit")

    env.start()
    c.wait(lambda: len(_recorded(inst)) == n, 120, f"all {n} cgroups bound after the restart")
    wait_for(
        lambda: all(len(egress_progs(fs)) == 1 for fs in made.values()),
        60,
        "one program on every cgroup",
    )
    assert _recorded(inst) == set(made)
    assert {name: len(egress_progs(fs)) for name, fs in made.items()} == dict.fromkeys(made, 1)
    # Those bound before the crash kept their programs (and so their counters).
    assert {name: egress_progs(made[name]) for name in kept} == kept
    m = inst.manager()
    for name in made:
        st = m.status(name)
        assert st.enforcement.enforced and st.enforcement.live, (name, st.enforcement)
    leftovers = [e for e in inst.pin_dirs() if e.startswith("~")]
    assert not leftovers, leftovers
    assert not [e for e in os.listdir(os.path.join(inst.state_dir, "units")) if e.endswith(".tmp")]
    # Real traffic: the first unit's counts went on through the crash; the last cgroup,
    # bound after the restart, drops the denied address and passes the other.
    assert first.send(ALLOWED, 10) == "ok 10"
    c.wait(
        lambda: (
            c.props("gb@gb-000.service")["IPEgressDroppedPackets"] == 2
            and c.props("gb@gb-000.service")["IPEgressPackets"] >= 1
        ),
        10,
        "gb-000's counters",
    )
    last = inst.start_in_cgroup(ns, made[f"gb@gb-{n - 1:03d}.service"], port=7001)
    assert last.send(DENIED, 10) == "err 1"
    assert last.send(ALLOWED, 10) == "ok 10"
    c.wait(
        lambda: c.props(f"gb@gb-{n - 1:03d}.service")["IPEgressDroppedPackets"] == 1,
        10,
        "the last cgroup's counters",
    )
    # After the restart the rest were bound with a helper's kits too; it stops once idle.
    c.wait(lambda: re.search(r"the kit helper made [1-9]\d* units", env.log()), 30,
           "the kit helper's report")
    assert "Traceback" not in env.log()
    assert "kit helper stopped" not in env.log(), env.log()  # it never failed
