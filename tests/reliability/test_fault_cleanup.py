"""Failure paths clean up (issue 10 item 6).

- A full state directory (a small tmpfs mounted by the test): a new ``run`` fails with a
  clear error and leaves no cgroup, pin or temporary file; ``stop`` and ``reset`` still
  do their job and exit 0. (Before: orphan cgroups that reset could not find, ``reset``
  failing with ENOSPC, ``stop`` killing but exiting 1.)
- Too few file descriptors (``prlimit --nofile=N``, N from 5 up), directly and through the
  daemon: whatever step fails, no orphan cgroup, no ``~tmp`` pin, no traceback. (Before:
  an orphan cgroup and ``~tmp`` pin; through the daemon an asyncio AttributeError.)
- Temporary metadata files of killed writers (``.X.service.PID.tmp``) are swept.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys

import pytest
from e2e_helpers import REPO, Installation
from rel import count, report

pytestmark = pytest.mark.kernel


def _leaks(inst: Installation) -> dict[str, list[str]]:
    """cgroups and pins without a unit, temporary pins and metadata files."""
    names = set(inst.unit_names())
    cgroups = [c for c in inst.unit_cgroups() if os.path.basename(c) not in names]
    pins_dir = os.path.join(inst.bpf_dir, "units")
    tmp_pins = [e for e in _listdir(pins_dir) if e.startswith("~")]
    units_dir = os.path.join(inst.state_dir, "units")
    tmp_meta = [e for e in _listdir(units_dir) if e.endswith(".tmp")]
    return {"cgroups": cgroups, "tmp_pins": tmp_pins, "tmp_meta": tmp_meta}


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except FileNotFoundError:
        return []


@contextlib.contextmanager
def _small_tmpfs(path: str, size: str):
    os.makedirs(path, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", path], check=True
    )
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", path], check=False)


def _fill(path: str) -> None:
    """Fill the filesystem of ``path`` to the last byte (bounded by its size)."""
    for name, chunk in (("filler", 4096), ("filler2", 1)):
        fd = os.open(os.path.join(path, name), os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            for _ in range(1 << 20):
                os.write(fd, b"\0" * chunk)
        except OSError:
            pass
        finally:
            os.close(fd)


def test_full_state_dir(inst: Installation) -> None:
    env = {"IPACCTD_NO_DAEMON": "1"}
    with _small_tmpfs(inst.state_dir, "256k"):
        inst.ok("run", "--unit", "done", "-p", "IPAddressDeny=198.51.100.9", "--", "true", env=env)
        live = subprocess.Popen(
            inst.argv("run", "--unit", "live", "--", "sleep", "300"),
            env=inst.environ(env),
            cwd=REPO,
            stderr=subprocess.DEVNULL,
        )
        try:
            from support import wait_for

            wait_for(
                lambda: (
                    "live.service" in inst.unit_names()
                    and inst.manager().status("live").active_state == "active"
                ),
                30,
                "the live unit",
            )
            _fill(inst.state_dir)
            res = inst.cli("run", "--unit", "new", "--", "true", env=env)
            assert res.returncode != 0
            assert "No space left on device" in res.stderr, res.stderr
            assert "Traceback" not in res.stderr
            assert "new.service" not in inst.unit_names()
            assert not any("new" in p for p in inst.pin_dirs())
            assert _leaks(inst) == {"cgroups": [], "tmp_pins": [], "tmp_meta": []}
            res = inst.cli("stop", "live", env=env)
            assert res.returncode == 0, res.stderr
            live.wait(timeout=30)
            assert inst.manager().status("live").pids == ()
            for name in ("done", "live"):
                res = inst.cli("reset", name, env=env)
                assert res.returncode == 0, (name, res.stderr)
            assert inst.unit_names() == [] and inst.pin_dirs() == []
            assert inst.unit_cgroups() == []
        finally:
            if live.poll() is None:
                live.kill()
                live.wait()
    report("full_state_dir", runs=1, leaks_found=0, objects_tracked=3, stop_rc=0, reset_rc=0)


def _nofile_runs(inst: Installation, env: dict[str, str], tag: str) -> dict[str, int]:
    failed = started = 0
    for n in range(5, 5 + count(8, 30)):  # 5..12: every step that can fail (12 works)
        res = inst.cli(
            "run",
            "--unit",
            f"{tag}{n}",
            "-p",
            "IPAddressDeny=198.51.100.9",
            "--",
            "true",
            prefix=["prlimit", f"--nofile={n}", "--"],
            env=env,
        )
        assert "Traceback" not in res.stderr, (n, res.stderr)
        assert "AttributeError" not in res.stderr, (n, res.stderr)
        if res.returncode == 0:
            started += 1
        else:
            failed += 1
        leaks = _leaks(inst)
        assert leaks == {"cgroups": [], "tmp_pins": [], "tmp_meta": []}, (n, res.stderr, leaks)
        # a unit that exists is complete: metadata, pins, no live cgroup left after the run
        for name in inst.unit_names():
            st = inst.manager().status(name)
            assert st.unit.enforced and st.counters is not None, (n, name, res.stderr)
    for name in inst.unit_names():
        inst.ok("reset", name, env=env)
    return {"failed": failed, "started": started}


def test_nofile_limits(denv) -> None:
    inst: Installation = denv.inst
    direct = _nofile_runs(inst, {"IPACCTD_NO_DAEMON": "1"}, "nd")
    denv.start()
    daemon = _nofile_runs(inst, {}, "dd")
    assert "Traceback" not in denv.log()
    report(
        "nofile_limits",
        direct_failed=direct["failed"],
        direct_started=direct["started"],
        daemon_failed=daemon["failed"],
        daemon_started=daemon["started"],
        runs=direct["failed"] + direct["started"] + daemon["failed"] + daemon["started"],
        leaks_found=0,
        objects_tracked=3 * 2 * len(range(5, 5 + count(8, 30))),  # cgroup, pins, temp file
    )


def test_temp_files_of_killed_writers_swept(inst: Installation) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    units = os.path.join(inst.state_dir, "units")
    os.makedirs(units, exist_ok=True)
    stale = os.path.join(units, f".ghost.service.{dead.pid}.tmp")
    with open(stale, "w") as f:
        f.write('{"name": "ghost.service"')  # cut off mid-write
    mine = os.path.join(units, f".live.service.{os.getpid()}.tmp")  # a writer that runs
    open(mine, "w").close()
    inst.ok("run", "--unit", "sweep", "--", "true")
    assert not os.path.exists(stale)
    assert os.path.exists(mine)
    os.unlink(mine)
    assert inst.unit_names() == ["sweep.service"]
