"""The daemon under systemd: its stderr is the journal stream (``JOURNAL_STREAM``), so each
line carries its syslog priority — a unit file that cannot be bound is an error (``<3>``),
start and stop are logged once each (``<6>``)."""

from __future__ import annotations

import os
import re

from daemon_support import DaemonEnv


def test_daemon_lines_carry_their_priority_for_the_journal(env: DaemonEnv) -> None:
    inst = env.inst
    with open(os.path.join(inst.unit_dir, "bad.unit"), "w") as f:
        f.write(
            "[Unit]\nDescription=bad\n\n[Match]\n"
            f"ControlGroup=/ipacctd-test-{inst.id}-ext/bad\n\n"
            "[Service]\nIPAddressDeny=not-an-address\n"
        )
    env.log_path.touch()  # the "journal stream": the file the daemon's stderr goes to
    st = os.stat(env.log_path)
    inst.env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
    env.start()
    env.stop()
    assert env.proc is not None and env.proc.returncode == 0, env.log()
    lines = env.log().splitlines()
    assert lines and all(re.match(r"<[0-7]>", line) for line in lines), lines
    errors = [line for line in lines if line.startswith("<3>")]
    assert any("bad.unit" in line and "not-an-address" in line for line in errors), lines
    started = [line for line in lines if re.match(r"<6>ipacctd \S+: \d+ units", line)]
    stopped = [line for line in lines if line.startswith("<6>ipacctd stopped")]
    assert len(started) == 1 and len(stopped) == 1, lines


def test_daemon_lines_name_their_level_off_the_journal(env: DaemonEnv) -> None:
    # The variable is inherited, but stderr is another file: no prefixes there.
    other = env.tmp / "elsewhere"
    other.touch()
    st = os.stat(other)
    env.inst.env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
    env.start()
    env.stop()
    lines = env.log().splitlines()
    assert any(line.startswith("INFO ipacctd.daemon: ipacctd ") for line in lines), lines
    assert not any(re.match(r"<\d>", line) for line in lines), lines
