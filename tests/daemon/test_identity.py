"""The daemon knows cgroups by id: a cgroup removed and made again at the same path is
re-bound (however inotify events were coalesced), lost pins are rebuilt, and what cannot
be repaired is reported as not enforced by every view (status, show, D-Bus, metrics, the
error log) until it is. Real daemon, real cgroups, real packets in private namespaces."""

from __future__ import annotations

import json
import os
import time

import pytest
from daemon_support import DaemonEnv, egress_progs, entries
from e2e_helpers import Agent
from support import wait_for

from ipacctd.bpf import bpffs
from ipacctd.bpf.programs import Program, return_one
from ipacctd.bpf.types import AttachType

pytestmark = pytest.mark.kernel

ALLOWED = "203.0.113.1"
DENIED = "198.51.100.1"
OTHER = "198.51.100.7"
ENFORCED = "ipacctd_unit_firewall_enforced"


def write_unit(env: DaemonEnv, file: str, match: str, service: str, desc: str = "") -> str:
    path = os.path.join(env.inst.unit_dir, file)
    with open(path, "w") as f:
        f.write(
            f"[Unit]\nDescription={desc or 'test ' + file}\n\n[Match]\nControlGroup={match}\n\n"
            f"[Service]\n{service}\n"
        )
    return path


def metric(env: DaemonEnv, name: str, **labels: str) -> float | None:
    return env.scrape().get((name, frozenset(labels.items())))


def end(agent: Agent) -> None:
    agent.proc.stdin.write(b"exit\n")
    agent.proc.stdin.flush()
    assert agent.wait(timeout=10) == 0


def refused(inst, ns, fs: str, *addresses: str) -> None:
    """A process in cgroup ``fs`` sends to each address and is refused (EPERM) every time."""
    agent = inst.start_in_cgroup(ns, fs)
    for address in addresses:
        assert agent.send(address, 10) == "err 1", address
    end(agent)


def blocked_after_repair(agent: Agent, tries: int = 300) -> tuple[int, int]:
    """Send to the denied address until the first EPERM (the repair), then 5 more, which
    must all be refused. Returns (sent before the repair, refused)."""
    early = 0
    for _ in range(tries):
        if agent.send(DENIED, 10) == "err 1":
            break
        early += 1
        time.sleep(0.01)
    else:
        raise AssertionError(f"no repair within {tries} datagrams")
    after = [agent.send(DENIED, 10) for _ in range(5)]
    assert after == ["err 1"] * 5, after  # 0 denied datagrams pass once repaired
    return early, 6


def test_recreated_cgroups_are_rebound_by_id_exact_and_glob(env: DaemonEnv) -> None:
    inst = env.inst
    ext = f"/ipacctd-test-{inst.id}-ext"
    inst.make_cgroup(ext)
    write_unit(env, "exact.unit", f"{ext}/svc", f"IPAddressDeny={DENIED}")
    write_unit(env, "boxes.unit", f"{ext}/box-*", f"IPAddressDeny={DENIED}")
    cgroups = {
        "exact.service": inst.make_cgroup(f"{ext}/svc"),
        "boxes@box-1.service": inst.make_cgroup(f"{ext}/box-1"),
    }
    env.start()
    c = env.client
    for name in cgroups:
        c.wait(lambda n=name: n in c.units() and c.props(n)["IPFirewallEnforced"], 10, name)
    ns = inst.netns([DENIED, ALLOWED])
    refused = dict.fromkeys(cgroups, 0)
    for _ in range(6):
        for name, fs in cgroups.items():
            # rmdir + mkdir back to back: one debounce window, the same path set before
            # and after; only the cgroup id tells them apart.
            os.rmdir(fs)
            os.mkdir(fs)
            agent = inst.start_in_cgroup(ns, fs)
            _, n = blocked_after_repair(agent)
            refused[name] += n
            assert agent.send(ALLOWED, 10) == "ok 10"  # nothing allowed is dropped
            end(agent)
    for name, fs in cgroups.items():
        # Counters carried on across the six cgroups; each refusal counted once.
        c.wait(lambda n=name: c.props(n)["IPEgressDroppedPackets"] == refused[n], 10, f"{n} count")
        props = c.props(name)
        assert props["IPFirewallEnforced"] is True and props["IPFirewallProblem"] == ""
        assert props["ActiveState"] == "active"
        assert len(egress_progs(fs)) == 1  # never a second copy
        assert metric(env, ENFORCED, unit=name) == 1
    assert "unit exact.service: attached its programs to the cgroup now at" in env.log()


def test_unenforced_while_daemon_down_then_repaired_at_start(env: DaemonEnv) -> None:
    inst = env.inst
    ext = f"/ipacctd-test-{inst.id}-ext"
    inst.make_cgroup(ext)
    write_unit(env, "file.unit", f"{ext}/file", f"IPAddressDeny={DENIED}")
    by_file = inst.make_cgroup(f"{ext}/file")
    by_hand = inst.make_cgroup(f"{ext}/hand")
    inst.ok("attach", f"{ext}/hand", "-p", f"IPAddressDeny={DENIED}")
    env.start()
    env.client.wait(lambda: "file.service" in env.client.units(), 10, "file.service bound")
    env.stop()

    ns = inst.netns([DENIED])
    agents = {}
    for port, (name, fs) in enumerate((("file.service", by_file), ("hand.service", by_hand))):
        os.rmdir(fs)
        os.mkdir(fs)
        agents[name] = inst.start_in_cgroup(ns, fs, port=7000 + port)
        assert agents[name].send(DENIED, 10) == "ok 10"  # unfiltered: and reported so
        status = inst.cli("status", name).stdout.splitlines()
        assert "— NOT ENFORCED" in status[2], status
        assert status[3].startswith("   Firewall: NOT ENFORCED: cgroup re-created"), status
        props = inst.show(name)
        assert props["IPFirewallEnforced"] == "no", props
        assert props["IPFirewallProblem"].startswith("cgroup re-created"), props

    env.start()  # repairs every unit whose links are not on the cgroup now at its path
    c = env.client
    for name, agent in agents.items():
        assert inst.show(name)["IPFirewallEnforced"] == "yes"
        assert agent.send(DENIED, 10) == "err 1"
        assert c.props(name)["IPFirewallEnforced"] is True
        assert metric(env, ENFORCED, unit=name) == 1


@pytest.fixture
def user_prog(env: DaemonEnv):
    """A user filter program (``return 1``) pinned in a bpffs directory of the test."""
    d = f"/sys/fs/bpf/ipacctd-test-{env.inst.id}-user"
    bpffs.make_dir(d)
    path = os.path.join(d, "allow_all")

    def pin() -> None:
        with Program.load(return_one(), attach_type=AttachType.CGROUP_INET_EGRESS) as p:
            p.pin(path)

    pin()
    try:
        yield path, pin
    finally:
        bpffs.remove_tree(d)


def test_unrepairable_unit_is_reported_everywhere_until_repaired(env: DaemonEnv, user_prog):
    path, pin_again = user_prog
    inst = env.inst
    rel = f"/ipacctd-test-{inst.id}-ext/app"
    fs = inst.make_cgroup(rel)
    env.start()
    c = env.client
    inst.ok("attach", rel, "-p", f"IPAddressDeny={DENIED}", "-p", f"IPEgressFilterPath={path}")
    name = "app.service"
    c.wait(lambda: name in c.units() and c.props(name)["IPFirewallEnforced"], 10, "bound")
    ns = inst.netns([DENIED])
    agent = inst.start_in_cgroup(ns, fs)

    # The user's program and the unit's link to it both go: nothing can rebuild that link.
    bpffs.unpin(path)
    bpffs.unpin(os.path.join(inst.bpf_dir, "units", "app_dservice", "filter_egress_0"))
    c.wait(lambda: not c.props(name)["IPFirewallEnforced"], 10, "reported on D-Bus")
    props = c.props(name)
    assert props["IPFirewallProblem"] == "pins lost: filter_egress_0 is missing", props
    assert metric(env, ENFORCED, unit=name) == 0
    status = inst.cli("status", name).stdout.splitlines()
    assert status[2].startswith("     Active: active (running) — NOT ENFORCED"), status
    assert status[3] == "   Firewall: NOT ENFORCED: pins lost: filter_egress_0 is missing"
    assert inst.show(name)["IPFirewallEnforced"] == "no"
    assert agent.send(DENIED, 10) == "err 1"  # ipacctd's own deny list still holds
    time.sleep(2.0)  # ten polls: still unenforced, logged once
    log = env.log()
    assert log.count(f"ERROR ipacctd.daemon: unit {name}: firewall NOT ENFORCED") == 1, log

    pin_again()  # the program is back: the rolling full check repairs the unit
    c.wait(lambda: c.props(name)["IPFirewallEnforced"], 30, "repaired")
    assert metric(env, ENFORCED, unit=name) == 1
    assert inst.show(name)["IPFirewallEnforced"] == "yes"
    assert f"unit {name}: firewall in force again" in env.log()
    assert len(egress_progs(fs)) == 2  # ipacctd's program and the user's, once each
    end(agent)


def test_lost_pins_are_rebuilt_within_a_poll(daemon: DaemonEnv) -> None:
    inst, c = daemon.inst, daemon.client
    ns = inst.netns([DENIED])
    agent = inst.start_unit(ns, "web", f"IPAddressDeny={DENIED}")
    name = "web.service"
    fs = os.path.join(inst.root_fs, name)
    assert agent.send(DENIED, 10) == "err 1"
    pin_dir = os.path.join(inst.bpf_dir, "units", "web_dservice")
    link = os.path.join(pin_dir, "link_egress")
    old = egress_progs(fs)
    bpffs.unpin(link)
    # Rebuilt from the metadata on the same counters map: the link is back on the cgroup.
    c.wait(lambda: os.path.exists(link) and egress_progs(fs) not in ((), old), 10, "rebuilt")
    c.wait(lambda: c.props(name)["IPFirewallEnforced"], 10, "reported enforced")
    assert agent.send(DENIED, 10) == "err 1"
    c.wait(lambda: c.props(name)["IPEgressDroppedPackets"] == 2, 10, "counters kept")
    assert "link_egress" in daemon.log()

    bpffs.remove_tree(pin_dir)  # the whole directory: rebuilt, counters start again
    c.wait(lambda: os.path.exists(link) and len(egress_progs(fs)) == 1, 10, "dir rebuilt")
    _, refused = blocked_after_repair(agent)
    c.wait(lambda: c.props(name)["IPEgressDroppedPackets"] == refused, 10, "new counters")
    assert c.props(name)["IPFirewallEnforced"] is True
    assert metric(daemon, ENFORCED, unit=name) == 1
    end(agent)


def test_glob_under_a_parent_made_later_is_followed(env: DaemonEnv) -> None:
    inst = env.inst
    late = f"/ipacctd-test-{inst.id}-late"
    write_unit(env, "pods.unit", f"{late}/libpod-*", f"IPAddressDeny={DENIED}")
    env.start()
    c = env.client
    first = inst.make_cgroup(f"{late}/libpod-a")  # the parent and a child at once
    c.wait(lambda: "pods@libpod-a.service" in c.units(), 10, "child of a new parent bound")
    inst.make_cgroup(f"{late}/libpod-b")
    c.wait(lambda: "pods@libpod-b.service" in c.units(), 10, "a later child bound")
    ns = inst.netns([DENIED])
    refused(inst, ns, first, DENIED)


def test_overlapping_unit_files_merge_like_drop_ins(env: DaemonEnv) -> None:
    inst = env.inst
    ext = f"/ipacctd-test-{inst.id}-ext"
    web = inst.make_cgroup(f"{ext}/web")
    inst.make_cgroup(f"{ext}/api")
    write_unit(env, "all.unit", f"{ext}/*", f"IPAddressDeny={OTHER}", desc="every box")
    write_unit(env, "web.unit", f"{ext}/web", f"IPAddressDeny={DENIED}", desc="the web box")
    env.start()
    c = env.client
    c.wait(lambda: {"web.service", "all@api.service"} <= set(c.units()), 10, "bound")
    assert "all@web.service" not in c.units()
    props = c.props("web.service")
    # glob file first, then the exact one: the lists append, the later scalar wins
    assert entries(props["IPAddressDeny"]) == [
        (2, bytes([198, 51, 100, 1]), 32),
        (2, bytes([198, 51, 100, 7]), 32),
    ]
    assert props["Description"] == "the web box"
    assert entries(c.props("all@api.service")["IPAddressDeny"]) == [
        (2, bytes([198, 51, 100, 7]), 32)
    ]
    res = inst.cli("reload")
    assert res.returncode == 0, res.stderr
    assert "ERROR" not in env.log(), env.log()
    ns = inst.netns([DENIED, OTHER])
    refused(inst, ns, web, DENIED, OTHER)


def test_attached_by_hand_records_exit_expires_and_rebinds(env: DaemonEnv) -> None:
    inst = env.inst
    ext = f"/ipacctd-test-{inst.id}-ext"
    gone = inst.make_cgroup(f"{ext}/gone")
    back = inst.make_cgroup(f"{ext}/back")
    env.start("--retention", "8")
    c = env.client
    for n in ("gone", "back"):
        inst.ok("attach", f"{ext}/{n}", "-p", f"IPAddressDeny={DENIED}")
    c.wait(lambda: {"gone.service", "back.service"} <= set(c.units()), 10, "attached")
    ns = inst.netns([DENIED])
    refused(inst, ns, back, DENIED)

    t0 = time.time()
    os.rmdir(gone)
    os.rmdir(back)

    def exited(name: str) -> float | None:
        (st,) = json.loads(inst.cli("status", "--json", name).stdout)
        return st["exited_at"]

    c.wait(lambda: exited("gone.service") and exited("back.service"), 10, "exits recorded")
    assert exited("gone.service") >= t0
    res = inst.cli("status", "gone.service")
    status = res.stdout.splitlines()
    assert len(status) > 2, (res.stderr, env.log())
    assert status[2].startswith("     Active: inactive (dead) since "), status
    assert "NOT ENFORCED" not in status[2]

    os.mkdir(back)  # back before the retention time: re-bound, counters carried on
    c.wait(lambda: c.props("back.service")["IPFirewallEnforced"], 10, "re-bound")
    refused(inst, ns, back, DENIED)
    c.wait(lambda: c.props("back.service")["IPEgressDroppedPackets"] == 2, 10, "carried on")
    assert exited("back.service") is None

    # The vanished one expires like any other unit.
    wait_for(lambda: "gone.service" not in inst.unit_names(), 30, "gone.service expired")
    assert "back.service" in inst.unit_names()


def test_reload_repairs_every_unit(env: DaemonEnv) -> None:
    """``ipacctd reload`` repairs what no poll has looked at yet (an hour between polls)."""
    inst = env.inst
    env.start("--poll-interval", "3600")
    ns = inst.netns([DENIED])
    agent = inst.start_unit(ns, "rl", f"IPAddressDeny={DENIED}")
    name = "rl.service"
    fs = os.path.join(inst.root_fs, name)
    time.sleep(0.5)  # let the daemon settle what the start of the unit wrote
    link = os.path.join(inst.bpf_dir, "units", "rl_dservice", "link_egress")
    bpffs.unpin(link)
    wait_for(lambda: egress_progs(fs) == (), 5, "the egress link to detach")
    time.sleep(1.0)
    assert not os.path.exists(link), "repaired without reload: the test shows nothing"
    assert inst.show(name)["IPFirewallEnforced"] == "no"
    assert agent.send(DENIED, 10) == "ok -1"  # out unfiltered; the reply dropped on ingress

    res = inst.cli("reload")
    assert res.returncode == 0, res.stderr
    wait_for(lambda: inst.show(name)["IPFirewallEnforced"] == "yes", 10, "repaired by reload")
    assert agent.send(DENIED, 10) == "err 1"
    end(agent)
