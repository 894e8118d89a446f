"""The manager's program statistics (the cost column of ``top`` and ``/metrics``): the
programs a unit's links hold, or, for a unit systemd arms, its pinned programs; real packets
in a private namespace while BPF statistics are on."""

from __future__ import annotations

import os

from test_pinning import ADDRS, ALLOWED, attached, udp

from ipacctd.bpf.programs import program_stats_by_id
from ipacctd.datapath.counters import Direction
from ipacctd.datapath.unit import Spec, UnitDatapath
from ipacctd.manager.stats import StatsProbe, StatsReader, enabled_stats, program_stats

SENDS = 3


def _check(pin_dir: str, cgroup_dir: str, ns) -> None:
    stats = program_stats(pin_dir)
    assert set(stats) == set(Direction)
    # Every send ran the egress program once (nothing else in the cgroup sends).
    assert stats[Direction.EGRESS].run_cnt == SENDS
    assert stats[Direction.EGRESS].run_time_ns > 0
    # Those of the very programs that run on the cgroup (BPF_PROG_QUERY), read by id.
    running = attached(cgroup_dir)
    assert all(len(ids) == 1 for ids in running.values()), running
    assert stats == {d: program_stats_by_id(ids[0]) for d, ids in running.items()}
    # The same through fds kept per unit (/metrics): the same programs, read again later.
    reader, key = StatsReader(), object()
    try:
        assert reader.read("u", key, lambda _: pin_dir) == stats
        assert udp(ns, [(ALLOWED, 20)] * SENDS, cgroup_dir) == ["ok"] * SENDS
        again = reader.read("u", key, lambda _: "/nonexistent")  # kept: not opened again
        assert again[Direction.EGRESS].run_cnt == 2 * SENDS
        assert again == program_stats(pin_dir)
        # Beyond the fds it may keep: read by the programs' ids, no fd kept.
        assert reader.read("v", key, lambda _: pin_dir, keep=False) == again
        assert "v" not in reader and "u" in reader
        assert udp(ns, [(ALLOWED, 20)] * SENDS, cgroup_dir) == ["ok"] * SENDS
        later = reader.read("v", key, lambda _: "/nonexistent", keep=False)  # ids kept
        assert later[Direction.EGRESS].run_cnt == 3 * SENDS
        assert later == program_stats(pin_dir) == reader.read("u", key, lambda _: "/x")
    finally:
        reader.close()
    assert reader.read("u", key, lambda _: "/nonexistent") == {}  # closed: opened anew


def test_linked_programs(netns_factory, cgroup_dir, pin_root) -> None:
    ns = netns_factory(ADDRS)
    pin_dir = os.path.join(pin_root, "unit")
    with enabled_stats():
        probe = StatsProbe()
        assert probe.on()
        with UnitDatapath.create(pin_dir, cgroup_dir, Spec()) as dp:
            try:
                assert not dp.pinned_programs
                assert udp(ns, [(ALLOWED, 20)] * SENDS, cgroup_dir) == ["ok"] * SENDS
                _check(pin_dir, cgroup_dir, ns)
            finally:
                dp.remove(cgroup_dir)
    assert program_stats(pin_dir) == {}  # no pins: nothing to read, no error


def test_programs_pinned_for_systemd(netns_factory, cgroup_dir, pin_root) -> None:
    ns = netns_factory(ADDRS)
    pin_dir = os.path.join(pin_root, "unit")
    with enabled_stats(), UnitDatapath.create(pin_dir, None, Spec()) as dp:
        try:
            assert dp.pinned_programs
            dp.attach_pinned(cgroup_dir)  # as systemd does at the service's start
            assert udp(ns, [(ALLOWED, 20)] * SENDS, cgroup_dir) == ["ok"] * SENDS
            _check(pin_dir, cgroup_dir, ns)
        finally:
            dp.remove(cgroup_dir)
