"""A unit's policy is either in force on the cgroup now at its path or every view says it is
not, loudly, with the cause; a CLI mutation repairs it. No daemon runs here: what the
kernel does without one is what an operator sees after a crash or before a start."""

from __future__ import annotations

import os
import shutil

from e2e_helpers import UDP4, Installation, line_matching
from support import wait_for

from ipacctd.bpf import bpffs
from ipacctd.bpf.links import open_cgroup, prog_query
from ipacctd.bpf.types import AttachType

DENIED = "198.51.100.1"
ALLOWED = "198.51.100.2"


def _attach(inst: Installation, name: str) -> tuple[str, str]:
    rel = f"/ipacctd-test-{inst.id}-ext/{name}"
    fs = inst.make_cgroup(rel)
    inst.ok("attach", rel, "-p", f"IPAddressDeny={DENIED}")
    return rel, fs


def _recreate(fs: str) -> None:
    os.rmdir(fs)
    os.mkdir(fs)


def _progs(fs: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Programs on the cgroup's ingress and egress hooks."""
    fd = open_cgroup(fs)
    try:
        return tuple(
            prog_query(fd, t).prog_ids
            for t in (AttachType.CGROUP_INET_INGRESS, AttachType.CGROUP_INET_EGRESS)
        )
    finally:
        os.close(fd)


def _end(agent) -> None:
    agent.proc.stdin.write(b"exit\n")
    agent.proc.stdin.flush()
    assert agent.wait(timeout=10) == 0


def test_recreated_cgroup_is_reported_not_enforced_until_repaired(inst: Installation) -> None:
    _, fs = _attach(inst, "svc")
    ns = inst.netns([DENIED, ALLOWED])
    agent = inst.start_in_cgroup(ns, fs)
    assert agent.send(DENIED, 10) == "err 1"
    _end(agent)

    _recreate(fs)  # a service restart: a new cgroup at the same path
    agent = inst.start_in_cgroup(ns, fs)
    # What the kernel does now (no daemon): nothing filters the new cgroup.
    assert agent.send(DENIED, 10) == "ok 10"

    res = inst.cli("status", "svc.service")
    lines = res.stdout.splitlines()
    # First and loudly: the state line, then the cause.
    assert lines[2].startswith("     Active: active (running) — NOT ENFORCED since "), lines
    assert lines[3].startswith("   Firewall: NOT ENFORCED: cgroup re-created"), lines
    assert "(enforced)" not in res.stdout and "cgroup gone" not in res.stdout
    line_matching(
        res.stdout, r"     Policy: IPAddressDeny=198\.51\.100\.1/32 \(NOT ENFORCED, see above\)"
    )
    props = inst.show("svc.service")
    assert props["IPFirewallEnforced"] == "no"
    assert props["IPFirewallProblem"].startswith("cgroup re-created"), props
    listing = inst.ok("list-units").stdout
    assert "FIREWALL NOT ENFORCED on 1 live unit: svc.service" in listing, listing
    shown = inst.ok("inspect", "svc.service").stdout
    assert "  NOT ENFORCED: cgroup re-created" in shown, shown

    # A mutation of the unit repairs first: the deny list holds on the new cgroup, and the
    # counters carry on from the old one's.
    inst.ok("set-property", "svc.service", f"IPAddressAllow={ALLOWED}")
    props = inst.show("svc.service")
    assert props["IPFirewallEnforced"] == "yes" and props["IPFirewallProblem"] == "", props
    assert agent.send(DENIED, 10) == "err 1"
    assert agent.send(ALLOWED, 10) == "ok 10"
    props = inst.show("svc.service")
    assert props["IPEgressDroppedPackets"] == "2"  # one per cgroup
    assert props["IPEgressBytes"] == str(10 + UDP4)  # the unfiltered one went uncounted
    status = inst.ok("status", "svc.service").stdout
    assert "NOT ENFORCED" not in status
    line_matching(status, r"   Firewall: .*\(enforced\)")


def test_lost_link_pin_is_reported_and_rebuilt(inst: Installation) -> None:
    """Issue 10.2: ``rm .../units/U/link_egress`` detaches the egress program at once."""
    _, fs = _attach(inst, "pinned")
    ns = inst.netns([DENIED, ALLOWED])
    agent = inst.start_in_cgroup(ns, fs)
    assert agent.send(DENIED, 10) == "err 1"
    pin_dir = os.path.join(inst.bpf_dir, "units", "pinned_dservice")
    bpffs.unpin(os.path.join(pin_dir, "link_egress"))
    # The last reference to the link is gone: the kernel detaches it (a moment later).
    wait_for(lambda: _progs(fs)[1] == (), 5, "the egress link to detach")
    assert agent.send(DENIED, 10) == "ok -1"  # out unfiltered (ingress still drops replies)

    status = inst.cli("status", "pinned.service").stdout
    assert "— NOT ENFORCED" in status.splitlines()[2], status
    line_matching(status, r"   Firewall: NOT ENFORCED: pins lost: link_egress is missing")
    assert inst.show("pinned.service")["IPFirewallEnforced"] == "no"

    inst.ok("set-property", "pinned.service", f"IPAddressAllow={ALLOWED}")
    assert inst.show("pinned.service")["IPFirewallEnforced"] == "yes"
    assert agent.send(DENIED, 10) == "err 1"
    props = inst.show("pinned.service")
    assert props["IPEgressDroppedPackets"] == "2"  # counters kept
    assert props["IPIngressDroppedPackets"] == "1"


def test_lost_pin_directory_is_reported_and_reset_and_stop_work(inst: Installation) -> None:
    ns = inst.netns([DENIED])
    agent = inst.start_unit(ns, "gone", f"IPAddressDeny={DENIED}")
    assert agent.send(DENIED, 10) == "err 1"
    pin_dir = os.path.join(inst.bpf_dir, "units", "gone_dservice")
    bpffs.remove_tree(pin_dir)
    assert not os.path.exists(pin_dir)
    fs = os.path.join(inst.root_fs, "gone.service")
    wait_for(lambda: _progs(fs) == ((), ()), 5, "the links to detach")
    assert agent.send(DENIED, 10) == "ok 10"  # both links detached with their pins

    status = inst.cli("status", "gone.service").stdout
    assert "— NOT ENFORCED" in status.splitlines()[2], status
    line_matching(status, r"   Firewall: NOT ENFORCED: pins lost.*")
    props = inst.show("gone.service")
    assert props["IPFirewallEnforced"] == "no" and props["IPFirewallProblem"].startswith(
        "pins lost"
    )
    # stop and reset work on it.
    inst.ok("stop", "gone.service")
    assert agent.wait(timeout=10) != 0  # `ipacctd run` ends with its killed command
    inst.ok("reset", "gone.service")
    assert "gone.service" not in inst.unit_names()
    assert not os.path.exists(pin_dir)


def test_rebuilt_pin_directory_enforces_again(inst: Installation) -> None:
    _, fs = _attach(inst, "rebuilt")
    ns = inst.netns([DENIED])
    agent = inst.start_in_cgroup(ns, fs)
    pin_dir = os.path.join(inst.bpf_dir, "units", "rebuilt_dservice")
    shutil.rmtree(pin_dir)
    wait_for(lambda: _progs(fs) == ((), ()), 5, "the links to detach")
    assert agent.send(DENIED, 10) == "ok 10"
    inst.ok("set-property", "rebuilt.service", "Description=rebuilt")
    assert inst.show("rebuilt.service")["IPFirewallEnforced"] == "yes"
    assert agent.send(DENIED, 10) == "err 1"
    assert inst.show("rebuilt.service")["IPEgressDroppedPackets"] == "1"  # a new map


def test_attached_unit_whose_cgroup_vanished_shows_no_invented_stop_time(
    inst: Installation,
) -> None:
    """Without a daemon nobody saw the cgroup go: status shows no time rather than the
    attach time as the stop time (the daemon records the real one)."""
    _, fs = _attach(inst, "vanished")
    os.rmdir(fs)
    res = inst.cli("status", "vanished.service")
    assert res.returncode == 3, res.stderr  # inactive, as systemctl
    lines = res.stdout.splitlines()
    assert lines[2] == "     Active: inactive (dead)", lines
    line_matching(res.stdout, r"   Firewall: IPAddressDeny=198\.51\.100\.1/32 \(cgroup gone; .*\)")
    assert "NOT ENFORCED" not in res.stdout  # nothing runs there: nothing to enforce
