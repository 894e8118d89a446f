"""A cgroup re-created at the same path (a service or container restart) is a new cgroup:
the unit's links hold their programs on the removed one, and nothing filters the new one
until the datapath is re-bound. These tests remove and make the cgroup again for real,
send real packets from the new cgroup, and check that a rebind restores the firewall,
keeps the counters, never attaches a program twice, and rebuilds a lost link pin."""

from __future__ import annotations

import ipaddress
import os

import model
import pytest
from support import wait_for
from test_pinning import ADDRS, ALLOWED, DENIED, attached, udp

from ipacctd.bpf import bpffs
from ipacctd.bpf.links import CgroupLink, open_cgroup
from ipacctd.datapath.counters import Counters, Direction
from ipacctd.datapath.unit import ATTACH, LINK, Spec, UnitDatapath, cgroup_id

net = ipaddress.ip_network
SPEC = Spec(deny=(net(f"{DENIED}/32"),))
N = model.udp_ip_bytes(20, 4)
#: What ``udp(ns, [(ALLOWED, 20), (DENIED, 20)], ...)`` counts: the allowed datagram out and
#: in (the receiver is in the cgroup too), the denied one dropped; N bytes each.
ONE_EACH = Counters(
    ingress_packets=1,
    ingress_bytes=N,
    egress_packets=1,
    egress_bytes=N,
    egress_dropped_packets=1,
    egress_dropped_bytes=N,
)


def recreate(cgroup_fs: str) -> tuple[int, int]:
    """rmdir + mkdir: a new cgroup at the same path; returns (old id, new id)."""
    old = os.stat(cgroup_fs).st_ino
    os.rmdir(cgroup_fs)
    os.mkdir(cgroup_fs)
    new = os.stat(cgroup_fs).st_ino
    assert new != old, "the kernel gave the new cgroup the old id"
    return old, new


@pytest.fixture
def pin_dir(pin_root):
    path = os.path.join(pin_root, "unit")
    yield path
    if os.path.exists(path):
        UnitDatapath.open(path).remove()


def test_rebind_after_recreated_cgroup_blocks_again_and_counts_on(
    netns_factory, cgroup_dir, pin_dir
) -> None:
    ns = netns_factory(ADDRS)
    with UnitDatapath.create(pin_dir, cgroup_dir, SPEC) as dp:
        assert dp.problem(cgroup_dir, SPEC) is None
        assert udp(ns, [(ALLOWED, 20), (DENIED, 20)], cgroup_dir) == ["ok", "EPERM"]
        before = dp.read()
        assert before.egress_dropped_packets == 1

        old_id, new_id = recreate(cgroup_dir)
        # The failure this is about: the new cgroup has no programs and traffic passes.
        problem = dp.problem(cgroup_dir, SPEC, old_id)
        assert problem is not None and problem.startswith("cgroup re-created"), problem
        assert f"id {new_id}" in problem
        assert attached(cgroup_dir) == {d: () for d in Direction}
        assert udp(ns, [(DENIED, 20)], cgroup_dir) == ["ok"]
        assert dp.read() == before, "nothing counts traffic of the new cgroup yet"

        assert sorted(dp.rebind(cgroup_dir, SPEC)) == sorted(LINK.values())
        assert dp.problem(cgroup_dir, SPEC) is None
        hooks = attached(cgroup_dir)
        for d in Direction:
            with dp.link(d) as link:
                info = link.info()
            assert info.cgroup_id == os.stat(cgroup_dir).st_ino == cgroup_id(cgroup_dir)
            assert hooks[d] == (info.prog_id,)
        assert udp(ns, [(ALLOWED, 20), (DENIED, 20)], cgroup_dir) == ["ok", "EPERM"]
        # The same counters map: the counts go on from where they were.
        assert dp.read() - before == ONE_EACH

        # Idempotent: a second rebind changes nothing, one program per hook.
        assert dp.rebind(cgroup_dir, SPEC) == []
        assert attached(cgroup_dir) == hooks
        assert [n for n in os.listdir(pin_dir) if n.endswith("_new")] == []


def test_rebind_never_attaches_a_program_that_already_runs_there(
    netns_factory, cgroup_dir, pin_dir
) -> None:
    """Someone else (systemd, from a pinned program) attached the unit's programs to the
    new cgroup: a rebind must not attach a second copy, which would count twice."""
    ns = netns_factory(ADDRS)
    with UnitDatapath.create(pin_dir, cgroup_dir, SPEC) as dp:
        recreate(cgroup_dir)
        cg = open_cgroup(cgroup_dir)
        theirs = []
        try:
            for d in Direction:
                with dp.link(d) as link, link.program() as prog:
                    theirs.append(CgroupLink.create(cg, prog, ATTACH[d]))
        finally:
            os.close(cg)
        try:
            hooks = attached(cgroup_dir)
            assert dp.problem(cgroup_dir, SPEC) is None  # in force, whoever attached it
            assert dp.rebind(cgroup_dir, SPEC) == []
            assert attached(cgroup_dir) == hooks
            before = dp.read()
            assert udp(ns, [(ALLOWED, 20), (DENIED, 20)], cgroup_dir) == ["ok", "EPERM"]
            assert dp.read() - before == ONE_EACH, "counted once"
        finally:
            for link in theirs:
                link.detach()
                link.close()


def test_lost_link_pin_detaches_and_rebind_rebuilds_it(netns_factory, cgroup_dir, pin_dir) -> None:
    ns = netns_factory(ADDRS)
    with UnitDatapath.create(pin_dir, cgroup_dir, SPEC) as dp:
        assert udp(ns, [(DENIED, 20)], cgroup_dir) == ["EPERM"]
        before = dp.read()
        bpffs.unpin(os.path.join(pin_dir, LINK[Direction.EGRESS]))
        # The last reference to the link is gone: the kernel detaches it (a moment later).
        wait_for(lambda: attached(cgroup_dir)[Direction.EGRESS] == (), 5, "egress detached")
        # The datagram leaves unfiltered ("lost", not EPERM: the ingress program, still in
        # place, drops it on its way back in, as its source is the denied address).
        assert udp(ns, [(DENIED, 20)], cgroup_dir) == ["lost"]
        problem = dp.problem(cgroup_dir, SPEC)
        assert problem is not None and problem.startswith("pins lost"), problem

        assert dp.rebind(cgroup_dir, SPEC) == [LINK[Direction.EGRESS]]
        assert dp.problem(cgroup_dir, SPEC) is None
        assert all(len(ids) == 1 for ids in attached(cgroup_dir).values())
        assert udp(ns, [(DENIED, 20)], cgroup_dir) == ["EPERM"]
        assert dp.read() - before == Counters(
            egress_dropped_packets=1,
            egress_dropped_bytes=N,  # the rebuilt egress link
            ingress_dropped_packets=1,
            ingress_dropped_bytes=N,
        )  # the unchanged ingress one


def test_engine_rebind_records_the_new_cgroup_and_reports_until_then(inst) -> None:
    """Manager.rebind and Manager.enforcement on an attached unit whose cgroup is made
    again: reported unenforced (with the cause) until re-bound; then enforced, the new
    cgroup id recorded, counters carried on."""
    ns = inst.netns(ADDRS)
    fs = inst.make_cgroup(f"/ipacctd-rebind-{inst.id}/svc")
    rel = "/" + os.path.relpath(fs, inst.mount)
    mgr = inst.manager()
    unit = mgr.attach(rel, [("IPAddressDeny", DENIED)], name="svc")
    assert unit.cgroup_id == os.stat(fs).st_ino == mgr.unit("svc.service").cgroup_id
    assert mgr.enforcement("svc.service").enforced
    assert udp(ns, [(DENIED, 20)], fs) == ["EPERM"]
    before = mgr.counters("svc.service")

    _, new_id = recreate(fs)
    enf = mgr.enforcement("svc.service")
    assert not enf.enforced and enf.live and enf.alarming
    assert enf.problem.startswith("cgroup re-created"), enf.problem
    assert enf.cgroup_id == new_id
    st = mgr.status("svc.service")
    assert not st.attached and not st.policy_in_force
    assert st.to_json()["firewall_enforced"] is False

    unit = mgr.rebind("svc.service")
    assert unit.cgroup_id == new_id == mgr.unit("svc.service").cgroup_id
    assert mgr.enforcement("svc.service").enforced
    assert mgr.status("svc.service").policy_in_force
    assert udp(ns, [(DENIED, 20)], fs) == ["EPERM"]
    assert mgr.counters("svc.service") - before == Counters(
        egress_dropped_packets=1, egress_dropped_bytes=N
    )
    hooks = attached(fs)
    assert mgr.rebind("svc.service") == unit  # idempotent
    assert attached(fs) == hooks and all(len(ids) == 1 for ids in hooks.values())

    # The cgroup gone for good: not live, so not an alarm (the unit is inactive).
    os.rmdir(fs)
    enf = mgr.enforcement("svc.service")
    assert not enf.enforced and not enf.live and not enf.alarming


def test_metadata_without_cgroup_id_still_loads() -> None:
    from ipacctd.manager.unit import Unit

    old = {"version": 1, "name": "a.service", "cgroup": "/x/a.service", "properties": {}}
    unit = Unit.from_json(old)
    assert unit.cgroup_id is None
    assert Unit.from_json(unit.to_json()) == unit
    assert Unit.from_json({**old, "cgroup_id": 77}).cgroup_id == 77
