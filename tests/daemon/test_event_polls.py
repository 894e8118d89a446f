"""The 10,000-unit paths keep their answers (issue 13 item 6).

* :class:`~ipacctd.manager.listing.StatusReader` (``list-units``, ``DescribeUnits``, the
  daemon's start-up and refreshes) gives :meth:`Manager.status`'s answer for every kind of
  unit: the common ones by its own reads, the others by the engine's.
* The daemon's polls look only at the units inotify names, a rolling slice and those it
  cannot watch: a program detached behind its back (no pin, no cgroup event) is still
  found by the rolling check, and reported NOT ENFORCED in the status and the metrics
  when it cannot be repaired.
"""

from __future__ import annotations

import os
import subprocess
import time

import pytest
from daemon_support import egress_progs

from ipacctd.bpf.links import CgroupLink
from ipacctd.daemon import metrics
from ipacctd.daemon import registry as registry_mod
from ipacctd.daemon.config import DaemonConfig
from ipacctd.daemon.service import Daemon
from ipacctd.manager.listing import StatusReader

pytestmark = pytest.mark.kernel

DENY = [("IPAddressDeny", "198.51.100.1")]


def _enter(fs: str):
    def enter() -> None:
        with open(f"{fs}/cgroup.procs", "w") as f:
            f.write(str(os.getpid()))

    return enter


def test_status_reader_is_manager_status(inst) -> None:
    mgr = inst.manager()
    fs = {}
    for name in ("idle", "busy", "gone", "cut"):
        fs[name] = inst.make_cgroup(f"{inst.cgroup_root}/{name}")
        mgr.attach(f"{inst.cgroup_root}/{name}", DENY, name=f"{name}.service")
    mgr.start_transient(DENY, name="trans.service")
    inst.make_cgroup(f"{inst.cgroup_root}/broken")
    mgr.attach(f"{inst.cgroup_root}/broken", DENY, name="broken.service")
    proc = subprocess.Popen(["sleep", "60"], preexec_fn=_enter(fs["busy"]))
    try:
        os.rmdir(fs["gone"])
        with CgroupLink.open_pinned(f"{mgr.store.pin_dir('cut.service')}/link_egress") as link:
            link.detach()  # behind everyone's back: no pin, no cgroup event
        with open(mgr.store.meta_path("broken.service"), "w") as f:
            f.write("{not json")
        names = mgr.names()
        assert len(names) == 6, names
        with StatusReader(mgr) as reader:
            fast = {n: reader.read(n)[1] is not None for n in names}
            for n in names:
                assert reader.status(n) == mgr.status(n), n
            assert list(reader.statuses()) == [mgr.status(n) for n in names]
            for n in names:  # the daemon's enforcement check by the same reads
                if n != "broken.service":
                    unit = mgr.unit(n)
                    assert reader.enforcement(n, unit) == mgr.enforcement(n, unit), n
        # The common units were read by the reader's own path, the others by the engine's.
        assert fast == {
            "broken.service": False,
            "busy.service": True,
            "cut.service": False,
            "gone.service": False,
            "idle.service": True,
            "trans.service": True,
        }
        assert mgr.statuses() == [mgr.status(n) for n in names]
        cut = mgr.status("cut.service")
        assert not cut.enforcement.enforced and cut.enforcement.alarming, cut.enforcement
        busy = mgr.status("busy.service")
        assert busy.active_state == "active" and proc.pid in busy.pids
        assert mgr.status("idle.service").enforcement.enforced
    finally:
        proc.kill()
        proc.wait(10)


def _daemon(inst) -> Daemon:
    d = Daemon(DaemonConfig(paths=inst.config(), bus="", listen=""))
    d.registry.sync()
    d.check_enforcement(list(d.registry.units), just_read=True)
    return d


def test_detached_program_is_found_without_any_event(inst, monkeypatch) -> None:
    """60 units, a rolling slice of 2 a poll: the unit whose egress program was detached
    (nothing in bpffs or cgroupfs changes) is checked in full within 30 polls, while the
    other units are not looked at beyond their slice; what cannot be repaired is NOT
    ENFORCED in its status and its metric; what can is repaired."""
    mgr = inst.manager()
    names = [f"ev{i:02d}.service" for i in range(60)]
    for i, name in enumerate(names):
        inst.make_cgroup(f"{inst.cgroup_root}/ev{i:02d}")
        mgr.attach(f"{inst.cgroup_root}/ev{i:02d}", DENY, name=name)
    target = names[37]
    target_fs = os.path.join(inst.root_fs, "ev37")
    d = _daemon(inst)
    try:
        assert d.registry.units_at({target_fs, "/nonexistent"}) == [target]  # by the index
        watch, d.registry._watch = d.registry._watch, None
        assert d.registry.units_at({target_fs}) == [target]  # by a walk, without inotify
        d.registry._watch = watch
        for cycle in range(1, 4):
            d.poll(cycle)  # settle: the units announced at the sync are looked at once
        checked: list[str] = []
        check = d.check_enforcement

        def counted(units: list[str], just_read: bool = False) -> list[str]:
            checked.extend(units)
            return check(units, just_read)

        monkeypatch.setattr(d, "check_enforcement", counted)
        monkeypatch.setattr(d.manager, "reconcile", lambda *a, **k: [])  # cannot repair
        with CgroupLink.open_pinned(f"{mgr.store.pin_dir(target)}/link_egress") as link:
            link.detach()
        assert egress_progs(target_fs) == ()
        polls = 0
        while d.registry.units[target].status.enforcement.enforced:
            polls += 1
            assert polls <= registry_mod.ENFORCEMENT_FULL_EVERY + 2, "never checked in full"
            d.poll(polls)
        assert len(checked) <= 2 * polls + 2, (polls, len(checked))  # the slice, no walk
        st = d.registry.units[target].status
        assert not st.enforcement.enforced and st.enforcement.alarming, st.enforcement
        assert not st.attached
        units, prom = metrics.UnitCollector(d.registry), metrics.make_registry()
        text = b"".join(metrics.exposition(units, prom, None)[1]).decode()
        assert f'ipacctd_unit_firewall_enforced{{unit="{target}"}} 0' in text
        assert f'ipacctd_unit_firewall_enforced{{unit="{names[0]}"}} 1' in text
        # And the status a user reads, through the reader the daemon uses.
        assert not StatusReader(mgr).status(target).enforcement.enforced

        monkeypatch.undo()  # a daemon that can repair does so on the next full check
        deadline = time.monotonic() + 30
        while not d.registry.units[target].status.enforcement.enforced:
            assert time.monotonic() < deadline, "not repaired"
            polls += 1
            d.poll(polls)
        assert egress_progs(target_fs) != ()
    finally:
        d.registry.close()


def test_metrics_keep_program_fds_within_the_fd_limit(inst, monkeypatch) -> None:
    """While BPF statistics are on, a scrape keeps two program fds a unit only within
    what RLIMIT_NOFILE leaves beside the counters fds and a reserve; the other units' are
    opened and closed; none are kept once statistics are off."""
    from ipacctd.manager.stats import enabled_stats

    mgr = inst.manager()
    for i in range(6):
        inst.make_cgroup(f"{inst.cgroup_root}/fd{i}")
        mgr.attach(f"{inst.cgroup_root}/fd{i}", DENY, name=f"fd{i}.service")
    d = _daemon(inst)
    try:
        units, prom = metrics.UnitCollector(d.registry), metrics.make_registry()
        limit = 2 * 6 + metrics.FD_RESERVE + 2 * 2  # room for the fds of two units
        monkeypatch.setattr(metrics, "_fd_limit", lambda: limit)
        with enabled_stats():
            for _ in range(2):
                b"".join(metrics.exposition(units, prom, None)[1])
                assert len(units._stats._units) == 2
            monkeypatch.setattr(metrics, "_fd_limit", lambda: 1 << 20)
            b"".join(metrics.exposition(units, prom, None)[1])
            assert len(units._stats._units) == 6
        units.stats_probe.on()  # the probe's own count moves on: off from here
        b"".join(metrics.exposition(units, prom, None)[1])
        assert len(units._stats._units) == 0
    finally:
        d.registry.close()
