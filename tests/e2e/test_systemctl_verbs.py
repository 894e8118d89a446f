"""The verbs systemctl has and ipacctd took over, on what ipacctd alone has: ``edit`` of
unit files (validated before saving, then the daemon reloads), ``kill`` of a unit's main
process or all of its processes, ``cat`` of a unit file, and the singular in ``run``'s
summary. Their systemctl-facing output is compared with systemd's in
:mod:`test_systemctl_habits`."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from daemon_support import DaemonEnv
from e2e_helpers import ECHO, PY, Installation
from support import wait_for

EDITOR = """#!/bin/sh
# a non-interactive editor: writes $NEW into the file it is given, exits $EDITOR_EXIT
[ -n "$NEW" ] && printf '%s' "$NEW" > "$1"
exit "${EDITOR_EXIT:-0}"
"""


def _editor(tmp: Path) -> str:
    path = tmp / "editor.sh"
    path.write_text(EDITOR)
    path.chmod(0o755)
    return str(path)


def _policy(cgroup: str, deny: str) -> str:
    return (
        f"[Unit]\nDescription=web\n[Match]\nControlGroup={cgroup}\n"
        f"[Service]\nIPAddressDeny={deny}\n"
    )


def test_edit_validates_saves_and_the_daemon_reloads(tmp_path: Path) -> None:
    with DaemonEnv(tmp_path) as env:
        inst = env.inst
        rel = f"{inst.cgroup_root}-web"
        inst.make_cgroup(rel)
        unit_file = Path(inst.unit_dir) / "web.unit"
        unit_file.write_text(_policy(rel, "198.51.100.1"))
        # a glob file over the same cgroup merges into the unit, as a drop-in would
        glob_file = Path(inst.unit_dir) / "all-web.unit"
        glob_text = f"[Match]\nControlGroup={rel[:-1]}*\n[Service]\nIPAddressAllow=203.0.113.99\n"
        glob_file.write_text(glob_text)
        env.start()

        def deny() -> str:
            return inst.cli("show", "-P", "IPAddressDeny", "web").stdout.strip()

        wait_for(lambda: deny() == "198.51.100.1/32", 30, "the daemon to bind web.unit")
        editor = {"EDITOR": _editor(tmp_path)}

        # invalid: an error naming the line, the file as it was, the policy as it was
        before = unit_file.read_bytes()
        res = inst.cli("edit", "web", env={**editor, "NEW": _policy(rel, "198.51.100.300")})
        assert res.returncode == 1, res
        assert "web.unit:6: invalid address '198.51.100.300'" in res.stderr, res.stderr
        assert f"{unit_file} is unchanged" in res.stderr, res.stderr
        assert unit_file.read_bytes() == before and deny() == "198.51.100.1/32"
        # the editor failing: nothing saved either
        res = inst.cli(
            "edit", "web", env={**editor, "NEW": _policy(rel, "203.0.113.9"), "EDITOR_EXIT": "1"}
        )
        assert res.returncode == 1 and unit_file.read_bytes() == before, res
        assert not [p for p in os.listdir(inst.unit_dir) if p.startswith(".#")]  # no copy left

        # valid: saved in place, and the daemon applies it (reload) without anything else
        res = inst.cli("edit", "web", env={**editor, "NEW": _policy(rel, "203.0.113.7")})
        assert res.returncode == 0, res
        assert unit_file.read_text() == _policy(rel, "203.0.113.7")
        wait_for(lambda: deny() == "203.0.113.7/32", 30, "the daemon to apply the edit")
        assert "reloading unit files" in env.log()
        # cat: the unit's own file, then the one merging into it
        cat = inst.ok("cat", "web").stdout
        assert cat == f"# {unit_file}\n{_policy(rel, '203.0.113.7')}\n# {glob_file}\n{glob_text}", (
            cat
        )
        assert inst.cli("show", "-P", "IPAddressAllow", "web").stdout == "203.0.113.99/32\n"


def test_edit_of_a_unit_without_a_file_and_with_force(inst: Installation, tmp_path: Path) -> None:
    ns = inst.netns([])
    inst.start_unit(ns, "tr", "IPAddressDeny=198.51.100.1")
    editor = {"EDITOR": _editor(tmp_path)}  # NEW unset: saves what it was given
    res = inst.cli("edit", "tr", env=editor)
    assert res.returncode == 2, res
    assert "Cannot edit tr.service: it has no unit file" in res.stderr, res.stderr
    assert "'ipacctd set-property tr.service" in res.stderr, res.stderr
    # --force writes the file that would make the unit, seeded with its properties
    res = inst.cli("edit", "--force", "tr", env=editor)
    assert res.returncode == 0, res
    text = (Path(inst.unit_dir) / "tr.unit").read_text()
    assert "IPAddressDeny=198.51.100.1/32" in text and "[Service]" in text, text
    assert "no ipacctd daemon is running" in res.stderr, res.stderr
    res = inst.cli("edit", "nothing-here", env=editor)
    assert res.returncode == 4 and "'ipacctd edit --force nothing-here.service'" in res.stderr


#: A main process and a child that note each SIGUSR1 they get in a file (bounded: ten
#: minutes at most, the test ends them long before).
SIGNALLED = r"""
import os, signal, sys, time
log = sys.argv[1]

def note(who):
    def handler(*_):
        with open(log, "a") as f:
            f.write(who + "\n")
    signal.signal(signal.SIGUSR1, handler)
    note_ready = open(log, "a")
    note_ready.write("ready-" + who + "\n")
    note_ready.close()

signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # until each has its own handler
who = "child" if os.fork() == 0 else "main"
note(who)
for _ in range(6000):
    time.sleep(0.1)
"""


def test_kill_main_or_all(inst: Installation, tmp_path: Path) -> None:
    ns = inst.netns([])
    log = tmp_path / "signals"
    log.touch()
    script = tmp_path / "signalled.py"
    script.write_text(SIGNALLED)
    proc = ns.popen(
        inst.argv("run", "-q", "--unit", "k", "--", PY, str(script), str(log)), env=inst.env
    )

    def seen() -> list[str]:
        return sorted(log.read_text().split())

    wait_for(lambda: seen() == ["ready-child", "ready-main"], 30, "both processes of unit k")
    inst.ok("kill", "--kill-whom=main", "-s", "USR1", "k")
    wait_for(lambda: "main" in seen(), 30, "the main process to get SIGUSR1")
    inst.ok("kill", "-s", "SIGUSR1", "k.service")  # all of them: the default
    wait_for(lambda: seen().count("main") == 2 and "child" in seen(), 30, "both to get it")
    assert seen() == ["child", "main", "main", "ready-child", "ready-main"]
    assert inst.cli("is-active", "k").stdout == "active\n"
    inst.ok("kill", "-s", "9", "k")
    assert proc.wait(timeout=30) == 128 + signal.SIGKILL  # run passes its main's death on
    wait_for(lambda: inst.cli("is-failed", "k").returncode == 0, 30, "unit k to fail")


def test_run_summary_says_1_packet(inst: Installation) -> None:
    ns = inst.netns(["198.51.100.1"])
    res = inst.cli(
        "run",
        "--wait",
        "-p",
        "IPAddressDeny=198.51.100.1",
        "--",
        "ping",
        "-c1",
        "-W1",
        "198.51.100.1",
        ns=ns,
    )
    assert f"IP traffic dropped: 0B received (0 packets), {ECHO}B sent (1 packet)" in (
        res.stderr.splitlines()
    ), res.stderr


def test_kill_leaves_cgroups_ipacctd_did_not_make(inst: Installation) -> None:
    """An attached cgroup belongs to systemd or a container engine: their kill signals it."""
    rel = f"{inst.cgroup_root}-theirs"
    fs = inst.make_cgroup(rel)
    sleeper = inst.netns([]).popen(["/bin/sleep", "600"], cgroup_fs=fs)
    inst.ok("attach", rel, "--unit", "theirs")
    res = inst.cli("kill", "theirs")
    assert res.returncode == 1, res
    assert res.stderr == (
        f"Failed to kill unit theirs.service: unit theirs.service is attached to a cgroup "
        f"ipacctd did not create ({rel}); signal it through its owner (systemctl kill, "
        "podman kill)\n"
    ), res.stderr
    assert sleeper.poll() is None  # still running
    sleeper.kill()
    sleeper.wait(timeout=10)
    inst.ok("detach", "theirs")


def test_reset_failed_and_reset_by_pattern(inst: Installation) -> None:
    """``reset-failed`` forgets failed units only (all of them, or those named or matched),
    as systemctl does; ``reset PATTERN`` forgets the matching units that are not running
    and leaves a running one (and its firewall) alone; an unknown name fails first."""
    ns = inst.netns([])
    for name, cmd in (("rf-bad1", "false"), ("rf-bad2", "false"), ("rf-good", "true")):
        res = inst.cli("run", "-q", "--unit", name, "--", cmd)
        assert res.returncode == (1 if cmd == "false" else 0), res
    inst.start_unit(ns, "rf-live", "IPAddressDeny=198.51.100.1")
    assert inst.cli("is-failed", "rf-bad1").stdout == "failed\n"

    def listed() -> set[str]:
        out = inst.ok("list-units", "--all", "--no-legend", "rf-*").stdout
        return {word for word in out.split() if word.startswith("rf-")}

    everything = {"rf-bad1.service", "rf-bad2.service", "rf-good.service", "rf-live.service"}
    assert listed() == everything
    # a named unit that is not failed, and one that does not exist: nothing changes
    res = inst.cli("reset-failed", "rf-good", "rf-nosuch")
    assert res.returncode != 0 and "rf-nosuch" in res.stderr, res
    assert listed() == everything
    inst.ok("reset-failed", "rf-good", "rf-live")  # neither failed: left alone
    assert listed() == everything
    inst.ok("reset-failed", "rf-bad1")
    assert listed() == everything - {"rf-bad1.service"}
    inst.ok("reset-failed")  # every failed unit
    assert listed() == {"rf-good.service", "rf-live.service"}
    # a pattern: the dead one goes, the running one stays, its policy in force
    inst.ok("reset", "rf-*")
    assert listed() == {"rf-live.service"}
    assert inst.cli("show", "-P", "IPAddressDeny", "rf-live").stdout == "198.51.100.1/32\n"
    assert "(enforced)" in inst.ok("status", "rf-live").stdout
    # a running unit named outright is refused, as before
    res = inst.cli("reset", "rf-live")
    assert res.returncode != 0 and "stop it first" in res.stderr, res
