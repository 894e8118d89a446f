"""Unit files bound to cgroups that come and go (inotify), reload, and retention GC."""

from __future__ import annotations

import os
import time

import pytest
from daemon_support import MANAGER, ROOT, DaemonEnv, entries

from ipacctd import cgroup

pytestmark = pytest.mark.kernel

ALLOWED = "203.0.113.1"
DENIED = "198.51.100.1"


def write_unit(env: DaemonEnv, file: str, match: str, service: str) -> str:
    path = os.path.join(env.inst.unit_dir, file)
    with open(path, "w") as f:
        f.write(
            f"[Unit]\nDescription=test {file}\n\n[Match]\nControlGroup={match}\n\n"
            f"[Service]\n{service}\n"
        )
    return path


def test_glob_unit_file_follows_cgroups(env: DaemonEnv) -> None:
    inst = env.inst
    ext = f"/ipacctd-test-{inst.id}-ext"
    inst.make_cgroup(ext)
    unit_file = write_unit(env, "boxes.unit", f"{ext}/box-*", f"IPAddressDeny={DENIED}")
    env.start()
    c = env.client
    assert not [n for n in c.units() if n.startswith("boxes@")]

    # A cgroup made after the daemon started is bound within a bounded wait.
    box1 = inst.make_cgroup(f"{ext}/box-1")
    name1 = "boxes@box-1.service"
    c.wait(lambda: name1 in c.units(), 5, f"{name1} bound via inotify")
    props = c.props(name1)
    assert props["ControlGroup"] == f"{ext}/box-1"
    assert props["Transient"] is False
    assert props["IPFirewallEnforced"] is True
    ns = inst.netns([ALLOWED, DENIED])
    agent = inst.start_in_cgroup(ns, box1)
    assert agent.send(DENIED, 10) == "err 1"
    assert agent.send(ALLOWED, 10) == "ok 10"
    c.wait(
        lambda: (
            c.props(name1)["ActiveState"] == "active"
            and c.props(name1)["IPEgressDroppedPackets"] == 1
        ),
        5,
        "box-1 counters",
    )
    inst.make_cgroup(f"{ext}/other")  # does not match the glob
    box2 = inst.make_cgroup(f"{ext}/box-2")
    name2 = "boxes@box-2.service"
    c.wait(lambda: name2 in c.units(), 5, f"{name2} bound")
    assert "boxes@other.service" not in c.units()

    # The cgroup goes: its unit turns inactive, counters still readable.
    agent.proc.stdin.write(b"exit\n")
    agent.proc.stdin.flush()
    agent.wait(timeout=10)
    cgroup.remove(box1, timeout=5)
    c.wait(lambda: c.props(name1)["ActiveState"] == "inactive", 5, f"{name1} inactive")
    assert c.props(name1)["IPEgressDroppedPackets"] == 1

    # The file goes: `ipacctd reload` detaches every unit it made; the cgroups stay.
    os.unlink(unit_file)
    inst.ok("reload")
    c.wait(
        lambda: not [n for n in c.units() if n.startswith("boxes@")],
        5,
        "units of the removed file detached",
    )
    assert os.path.isdir(box2)
    assert inst.pin_dirs() == []
    assert inst.unit_names() == []


def test_invalid_unit_file_is_reported_and_skipped(env: DaemonEnv) -> None:
    inst = env.inst
    ext = f"/ipacctd-test-{inst.id}-ext"
    inst.make_cgroup(ext)
    inst.make_cgroup(f"{ext}/good")
    inst.make_cgroup(f"{ext}/bad")
    write_unit(env, "good.unit", f"{ext}/good", f"IPAddressDeny={DENIED}")
    bad_file = write_unit(env, "bad.unit", f"{ext}/bad", "IPAddressDeny=not-an-address")
    env.start()
    c = env.client
    units = c.units()
    assert "good.service" in units
    assert "bad.service" not in units
    assert c.props("good.service")["IPFirewallEnforced"] is True
    log = env.log()
    assert "bad.unit" in log and "not-an-address" in log, log

    # Fixed and reloaded with SIGHUP: now it binds too; the good one is untouched.
    started = c.props("good.service")
    write_unit(env, "bad.unit", f"{ext}/bad", "IPAddressDeny=198.51.100.0/24")
    env.sighup()
    c.wait(lambda: "bad.service" in c.units(), 5, "bad.service bound after SIGHUP")
    assert entries(c.props("bad.service")["IPAddressDeny"]) == [(2, bytes([198, 51, 100, 0]), 24)]
    assert c.props("good.service")["IPAddressDeny"] == started["IPAddressDeny"]
    os.unlink(bad_file)
    env.sighup()
    c.wait(lambda: "bad.service" not in c.units(), 5, "bad.service detached after SIGHUP")
    assert "good.service" in c.units()


def test_gc_forgets_inactive_transient_units_after_retention(env: DaemonEnv) -> None:
    env.start("--retention", "1")
    inst, c = env.inst, env.client
    listener = env.new_client()
    listener.add_match(f"type='signal',path='{ROOT}',interface='{MANAGER}'")
    ns = inst.netns([ALLOWED])
    inst.start_unit(ns, "long")  # active: never collected

    before = time.monotonic()
    inst.ok("run", "--unit", "short", "--", "true")

    def seen(member: str) -> float | None:
        for msg in listener.signals:
            if msg.member == member and msg.body[0] == "short.service":
                return time.monotonic()
        return None

    listener.wait(lambda: seen("UnitNew"), 5, "UnitNew short.service")
    removed = listener.wait(lambda: seen("UnitRemoved"), 8, "UnitRemoved short.service")
    assert removed - before >= 1.0  # not before the retention time
    assert "short.service" not in c.units()
    assert "short.service" not in inst.unit_names()
    assert inst.unit_cgroups() == ["long.service"]
    assert [p for p in inst.pin_dirs() if p.startswith("short")] == []
    listener.pump(1.2)  # more GC rounds: the active unit stays
    assert c.units()["long.service"][3] == "active"
