"""Programs pinned for systemd to attach (a unit bound to a systemd service): the kernel side,
without systemd. ipacctd attaches them here as systemd does (BPF_PROG_ATTACH with
BPF_F_ALLOW_MULTI), and a start that read the pins just before a policy change is played by
leaving the running cgroup with the previous programs. Real packets in a private namespace."""

from __future__ import annotations

import errno
import ipaddress
import os

import model
import pytest
from test_pinning import ADDRS, ALLOWED, DENIED, attached, udp

from ipacctd.bpf.errors import BPFError
from ipacctd.bpf.links import open_cgroup, prog_attach
from ipacctd.datapath.counters import Counters, Direction
from ipacctd.datapath.unit import ATTACH, PROG_PIN, Spec, UnitDatapath, link_problem

net = ipaddress.ip_network
DENY_DENIED = Spec(deny=(net(f"{DENIED}/32"),))
DENY_ALLOWED = Spec(deny=(net(f"{ALLOWED}/32"),))
N = model.udp_ip_bytes(20, 4)


@pytest.fixture
def pin_dir(pin_root, cgroup_dir):
    path = os.path.join(pin_root, "unit")
    yield path
    if os.path.exists(path):
        UnitDatapath.open(path).remove(cgroup_dir)


def _ids(dp: UnitDatapath) -> dict[Direction, tuple[int, ...]]:
    return {d: (i,) for d, i in dp.program_ids().items()}


def test_pinned_programs_run_once_swap_in_place_and_stale_ones_are_replaced(
    netns_factory, cgroup_dir, pin_dir
) -> None:
    ns = netns_factory(ADDRS)
    with UnitDatapath.create(pin_dir, None, DENY_DENIED) as dp:
        assert dp.pinned_programs
        assert sorted(os.listdir(pin_dir)) == sorted(["counters", "denied", *PROG_PIN.values()])
        assert attached(cgroup_dir) == {d: () for d in Direction}, "nothing attached by create"
        assert not dp.attached_to(cgroup_dir)

        assert sorted(dp.attach_pinned(cgroup_dir)) == sorted(PROG_PIN.values())
        assert dp.attach_pinned(cgroup_dir) == []  # in force already: nothing attached twice
        assert attached(cgroup_dir) == _ids(dp)
        # The kernel's own rule: the same program cannot be PROG_ATTACHed twice to a hook
        # (what systemd meets when ipacctd attached first, and the reverse).
        cg = open_cgroup(cgroup_dir)
        try:
            with dp.pinned_program(Direction.EGRESS) as prog, pytest.raises(BPFError) as exc:
                prog_attach(cg, prog, ATTACH[Direction.EGRESS])
            assert exc.value.errno == errno.EINVAL
        finally:
            os.close(cg)
        assert link_problem(pin_dir, cgroup_dir, DENY_DENIED) is None
        assert udp(ns, [(ALLOWED, 20), (DENIED, 20)], cgroup_dir) == ["ok", "EPERM"]
        first = dp.read()
        assert first.egress_packets == 1 and first.egress_dropped_packets == 1

        # A start that read the pins just before a change: its cgroup keeps the previous
        # programs while the pins move on (apply without the cgroup).
        old = _ids(dp)
        dp.apply(DENY_ALLOWED, None)
        assert _ids(dp) != old
        assert attached(cgroup_dir) == old
        assert not dp.attached_to(cgroup_dir)
        problem = link_problem(pin_dir, cgroup_dir, DENY_ALLOWED)
        assert problem is not None and problem.startswith("programs missing"), problem
        assert udp(ns, [(ALLOWED, 20), (DENIED, 20)], cgroup_dir) == ["ok", "EPERM"]

        # Reconcile's step: each previous program swapped for the pinned one in one step.
        assert dp.replace_stale(cgroup_dir) == 2
        assert dp.replace_stale(cgroup_dir) == 0
        assert attached(cgroup_dir) == _ids(dp)
        assert link_problem(pin_dir, cgroup_dir, DENY_ALLOWED) is None
        assert udp(ns, [(ALLOWED, 20), (DENIED, 20)], cgroup_dir) == ["EPERM", "ok"]

        # A change with the cgroup: pins and the running cgroup, one program per hook.
        dp.apply(DENY_DENIED, cgroup_dir)
        assert attached(cgroup_dir) == _ids(dp)
        assert udp(ns, [(ALLOWED, 20), (DENIED, 20)], cgroup_dir) == ["ok", "EPERM"]
        # One counters map throughout, each datagram counted once by whichever program.
        assert dp.read() - first == Counters(
            egress_packets=3,
            egress_bytes=3 * N,
            egress_dropped_packets=3,
            egress_dropped_bytes=3 * N,
            ingress_packets=3,
            ingress_bytes=3 * N,
        )

    UnitDatapath.open(pin_dir).remove(cgroup_dir)
    assert attached(cgroup_dir) == {d: () for d in Direction}
    assert not os.path.exists(pin_dir)
