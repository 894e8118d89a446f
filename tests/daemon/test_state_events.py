"""The daemon's polls follow cgroup and pin events (inotify), not a read of every unit.

State poll: a unit whose cgroup had no event is not read again (no rolling slice here:
``FULL_MAX = 0``); a process starting and ending in its cgroup, the cgroup removed and made
again at the same path, its parent removed and made again, each change its state on the
next state poll. Removals are what the removed cgroup's own files say nothing about
(kernfs): caught through the parent directory, and the parent's own removal by its inode.

Enforcement check: a unit's identity (cgroup id at its path, pin directory) is read again
only after its cgroup or its pins changed.
"""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from ipacctd.daemon import registry as registry_mod
from ipacctd.daemon.registry import Registry

pytestmark = pytest.mark.kernel

UNIT = "evsvc.service"


def settle(reg: Registry, want: tuple[str, str]) -> tuple[str, str]:
    """Poll states until the unit's (active, sub) state is ``want`` (bounded: 10 s)."""
    deadline = time.monotonic() + 10
    while True:
        reg.poll_states()
        st = reg.units[UNIT].status
        got = (st.active_state, st.sub_state)
        if got == want or time.monotonic() > deadline:
            return got
        time.sleep(0.05)


def test_state_poll_follows_cgroup_events(inst, monkeypatch) -> None:
    monkeypatch.setattr(registry_mod, "FULL_MAX", 0)
    parent = inst.make_cgroup(f"{inst.cgroup_root}/evpar")
    fs = inst.make_cgroup(f"{inst.cgroup_root}/evpar/evsvc")
    mgr = inst.manager()
    mgr.attach(f"{inst.cgroup_root}/evpar/evsvc", [("IPAddressDeny", "198.51.100.1")], name=UNIT)
    reg = Registry(mgr)
    reads: list[str] = []
    status = reg.lister.status

    def counted(name: str):
        reads.append(name)
        return status(name)

    monkeypatch.setattr(reg.lister, "status", counted)
    proc = None
    try:
        reg.sync()
        assert (reg.units[UNIT].status.active_state, reg.units[UNIT].status.sub_state) == (
            "active",
            "idle",
        )
        reads.clear()
        for _ in range(3):  # nothing happens to the cgroup: the unit is not read at all
            assert reg.poll_states() == []
        assert reads == []

        def enter() -> None:
            with open(f"{fs}/cgroup.procs", "w") as f:
                f.write(str(os.getpid()))

        proc = subprocess.Popen(["sleep", "60"], preexec_fn=enter)
        assert settle(reg, ("active", "running")) == ("active", "running")
        assert reads and set(reads) == {UNIT}
        reads.clear()
        assert reg.poll_states() == [] and reads == []  # quiet again

        proc.kill()
        proc.wait(10)
        proc = None
        assert settle(reg, ("active", "idle")) == ("active", "idle")

        os.rmdir(fs)  # no event on the cgroup's own files: the parent tells
        removed = settle(reg, ("inactive", "dead"))
        assert removed[0] != "active", removed
        reads.clear()
        assert reg.poll_states() == [] and reads == []

        os.mkdir(fs)  # made again at the same path: watched anew
        assert settle(reg, removed)[0] in ("active", "inactive")
        proc = subprocess.Popen(["sleep", "60"], preexec_fn=enter)
        assert settle(reg, ("active", "running")) == ("active", "running")
        proc.kill()
        proc.wait(10)
        proc = None
        settle(reg, ("active", "idle"))

        os.rmdir(fs)  # the parent too: the watch on it is dead, no event will come
        os.rmdir(parent)
        settle(reg, removed)
        os.mkdir(parent)
        os.mkdir(fs)
        proc = subprocess.Popen(["sleep", "60"], preexec_fn=enter)
        assert settle(reg, ("active", "running")) == ("active", "running")
    finally:
        if proc is not None:
            proc.kill()
            proc.wait(10)
        reg.close()


def test_identity_read_only_after_events(inst, monkeypatch) -> None:
    from ipacctd.bpf.maps import ArrayMap

    mgr = inst.manager()
    names = [f"evid{i}.service" for i in range(60)]  # a rolling slice of 2 a poll
    for i, name in enumerate(names):
        inst.make_cgroup(f"{inst.cgroup_root}/evid{i}")
        mgr.attach(f"{inst.cgroup_root}/evid{i}", [("IPAddressDeny", "198.51.100.1")], name=name)
    reg = Registry(mgr)
    reads: list[str] = []
    identity = reg.identity

    def counted(name: str, cgroup_path: str):
        reads.append(name)
        return identity(name, cgroup_path)

    try:
        reg.sync()
        reg.enforcement_due()
        monkeypatch.setattr(reg, "identity", counted)
        for _ in range(3):  # nothing changes: only the rolling slice is due, none is read
            due = reg.enforcement_due()
            assert len(due) == 2 and reads == [], (due, reads)

        target = names[30]
        fs = os.path.join(inst.mount, f"{inst.cgroup_root}/evid30".lstrip("/"))
        os.rmdir(fs)  # the cgroup at the unit's path replaced: a new cgroup id
        os.mkdir(fs)
        due = reg.enforcement_due()
        assert reads == [target] and target in due, (reads, due)

        reads.clear()
        pins = mgr.store.pin_dir(names[40])
        with ArrayMap.new(8, 1, "evid_probe") as extra:  # a pin made in its directory
            extra.pin(f"{pins}/evid_probe")
        try:
            due = reg.enforcement_due()
            assert reads == [names[40]] and names[40] in due, (reads, due)
        finally:
            os.unlink(f"{pins}/evid_probe")
    finally:
        reg.close()
