"""A glob unit file matching a burst of cgroups: each is bound exactly once, in slices
(the daemon's loop serves D-Bus between them), and none is left out."""

from __future__ import annotations

import os
import signal

import pytest
from daemon_support import DaemonEnv, egress_progs, glob_unit

from ipacctd.daemon.binder import Binder

pytestmark = pytest.mark.kernel

DENIED = "198.51.100.1"


def test_binder_binds_pending_matches_in_slices_once_each(env: DaemonEnv) -> None:
    inst = env.inst
    ext = glob_unit(inst)
    made = [inst.make_cgroup(f"{ext}/gb-{i}") for i in range(6)]
    # Bound by hand already: the glob's unit is refused for it (one unit per cgroup).
    inst.manager().attach(f"{ext}/gb-5", name="byhand")
    hand = made.pop()
    seen: list[str] = []
    binder = Binder(inst.manager(), on_bound=lambda unit: seen.append(unit.name))
    binder.load()
    # A slice with no time left still binds one match: the rest wait, in order.
    assert len(binder.reconcile(budget=0)) == 1
    assert seen == ["gb@gb-0.service"]
    assert [b.name for b in binder.pending] == [f"gb@gb-{i}.service" for i in range(1, 6)]
    os.rmdir(made.pop())  # gone while pending: refused and dropped, the others go on
    while binder.pending:
        binder.bind_pending(0)
    want = [f"gb@gb-{i}.service" for i in range(4)]
    assert seen == want
    assert inst.unit_names() == ["byhand.service", *want]
    assert len(egress_progs(hand)) == 1
    assert [len(egress_progs(fs)) for fs in made] == [1, 1, 1, 1]
    # Nothing more to do: no unit bound twice, no program attached twice.
    assert binder.reconcile() == []
    assert not binder.pending
    assert [len(egress_progs(fs)) for fs in [*made, hand]] == [1, 1, 1, 1, 1]
    assert inst.unit_names() == ["byhand.service", *want]
    assert inst.manager().unit("gb@gb-2.service").cgroup == f"{ext}/gb-2"


def test_burst_under_a_glob_is_bound_once_each_while_the_bus_answers(env: DaemonEnv) -> None:
    inst = env.inst
    ext = glob_unit(inst)
    env.start()
    c = env.client
    n = 150
    assert env.proc is not None
    # Stopped, the daemon sees the whole burst in one read of its inotify queue: without
    # slices one binding pass would hold its loop until all are bound.
    os.kill(env.proc.pid, signal.SIGSTOP)
    try:
        made = [inst.make_cgroup(f"{ext}/gb-{i:03d}") for i in range(n)]
    finally:
        os.kill(env.proc.pid, signal.SIGCONT)
    counts: list[int] = []

    def bound() -> bool:
        counts.append(sum(1 for u in c.units() if u.startswith("gb@")))
        return counts[-1] == n

    c.wait(bound, 120, f"{n} cgroups bound")
    # ListUnits answered while the burst was being bound: it saw part of it.
    assert [k for k in counts if 0 < k < n], counts
    assert sorted(u for u in c.units() if u.startswith("gb@")) == [
        f"gb@gb-{i:03d}.service" for i in range(n)
    ]
    assert [len(egress_progs(fs)) for fs in made] == [1] * n
    assert c.props(f"gb@gb-{n - 1:03d}.service")["IPFirewallEnforced"] is True
    assert "cannot bind" not in env.log(), env.log()
