"""The daemon's state poll follows cgroup events (inotify), not a read of every unit.

A unit whose cgroup had no event is not read again (no rolling slice here:
``FULL_MAX = 0``); a process starting and ending in its cgroup, the cgroup removed and made
again at the same path each change its state on the next state poll. The removal is the
case the unit's own files say nothing about (kernfs), caught through the parent directory.
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
    fs = inst.make_cgroup(f"{inst.cgroup_root}/evsvc")
    mgr = inst.manager()
    mgr.attach(f"{inst.cgroup_root}/evsvc", [("IPAddressDeny", "198.51.100.1")], name=UNIT)
    reg = Registry(mgr)
    reads: list[str] = []
    status = mgr.status

    def counted(name: str):
        reads.append(name)
        return status(name)

    monkeypatch.setattr(mgr, "status", counted)
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
    finally:
        if proc is not None:
            proc.kill()
            proc.wait(10)
        reg.close()
