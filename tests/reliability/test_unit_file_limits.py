"""Unit files are read with limits, outside the lock (issue 10 item 5).

A FIFO, a symlink to /dev/zero, a symlink to a secret file outside the unit directory, a
file over the size cap and a 16k-line file in the unit directory: the daemon starts and
every ``run`` ends with a clear error or works, in bounded time; the secret and the long
line are never echoed; other units' ``run`` keeps working while the big file is parsed.
(Before: the FIFO hung every ``run``, /dev/zero ended in MemoryError, the secret's first
line was printed, and the 16k-line file held the global lock for a minute.)
"""

from __future__ import annotations

import os
import subprocess
import time

import pytest
from e2e_helpers import REPO, Installation
from rel import count, report

pytestmark = pytest.mark.kernel

SECRET = "TOPSECRET-a1b2c3-do-not-echo"


def _write_unit_dir(inst: Installation, lines: int) -> None:
    d = inst.unit_dir
    os.mkfifo(os.path.join(d, "fifo.unit"))
    os.symlink("/dev/zero", os.path.join(d, "zero.unit"))
    secret = inst.tmp / "shadow"
    secret.write_text(f"{SECRET}:x:0:0\n")
    os.symlink(secret, os.path.join(d, "secret.unit"))
    with open(os.path.join(d, "long.unit"), "w") as f:  # over the cap, one line
        f.write("[Service]\nIPAddressDeny=" + SECRET + "x" * (5 << 20) + "\n")
    with open(os.path.join(d, "big.unit"), "w") as f:
        f.write("[Service]\n")
        for i in range(lines):
            f.write(f"IPAddressDeny=10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}\n")
    with open(os.path.join(d, "bad.unit"), "w") as f:  # a parse error quotes an excerpt
        f.write("[Service]\nIPAddressDeny " + "y" * 10000 + SECRET + "\n")


def test_hostile_unit_files(denv) -> None:
    inst: Installation = denv.inst
    lines = count(16000, 64000)
    _write_unit_dir(inst, lines)
    denv.start()  # the daemon reads the whole directory at start: it must not hang
    refused = {
        "fifo": "not a regular file",
        "zero": "leads out of the unit directory",
        "secret": "leads out of the unit directory",
        "long": "a unit file may have",
        "bad": "missing '='",
    }
    for name, why in refused.items():
        res = inst.cli("run", "--unit", name, "--", "true", timeout=60)
        assert res.returncode != 0, (name, res.stderr)
        assert why in res.stderr, (name, res.stderr)
        assert SECRET not in res.stderr and len(res.stderr) < 1000, (name, res.stderr[:300])
        assert "Traceback" not in res.stderr
    # the big file works, and other units start meanwhile (its parse holds no lock)
    env = inst.environ()
    started = time.monotonic()
    big = subprocess.Popen(
        inst.argv("run", "--unit", "big", "--", "true"),
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    others = 0
    for i in range(count(5, 20)):
        inst.ok("run", "--unit", f"other{i}", "--", "true", timeout=60)
        others += 1
    err = big.communicate(timeout=300)[1].decode()
    big_seconds = time.monotonic() - started
    assert big.returncode == 0, err
    assert inst.show("big")["IPAddressDeny"].count(" ") == lines - 1
    log = denv.log()
    assert SECRET not in log, "the daemon's log quotes a file that is not a unit file"
    assert "Traceback" not in log
    report(
        "hostile_unit_files",
        lines=lines,
        big_seconds=round(big_seconds, 1),
        other_runs=others,
        refused=len(refused),
        inputs_tried=len(refused) + 1,
    )
