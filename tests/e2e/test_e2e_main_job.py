"""The main job, exactly as the README gives it, on a terminal: an interactive shell
behind the firewall (inside a private network namespace with 1.1.1.1 on its lo)."""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import time

from e2e_helpers import PY, REPO, Installation


def _read_until(fd: int, pattern: bytes, timeout: float) -> bytes:
    buf = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not re.search(pattern, buf):
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # EIO: the terminal's last writer has gone
                break
            if not chunk:
                break
            buf += chunk
    return buf


def test_interactive_shell_behind_the_firewall(inst: Installation) -> None:
    ns = inst.netns(["1.1.1.1", "198.51.100.2"])
    argv = [
        "nsenter",
        f"--net=/proc/{ns.pid}/ns/net",
        "--",
        PY,
        "-m",
        "ipacctd",
        "run",
        "-p",
        "IPAddressDeny=1.1.1.1",
        "--",
        "/bin/sh",
    ]
    pid, fd = pty.fork()
    if pid == 0:
        os.chdir(REPO)
        os.execvpe(argv[0], argv, inst.environ())
    try:
        out = _read_until(fd, rb"Running as unit: run-u1\.service", 20)
        assert b"Running as unit: run-u1.service" in out, out
        os.write(fd, b"ping -c1 -W1 1.1.1.1 >/dev/null 2>&1; echo denied=$?\n")
        out = _read_until(fd, rb"denied=\d", 15)
        assert re.search(rb"denied=[12]", out), out  # the echo request never left
        os.write(fd, b"ping -c1 -W1 198.51.100.2 >/dev/null 2>&1; echo allowed=$?\n")
        out = _read_until(fd, rb"allowed=\d", 15)
        assert b"allowed=0" in out, out
        os.write(fd, b"exit 3\n")
        _read_until(fd, rb"$^", 5)  # drain until the shell is gone
        _, wstatus = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(wstatus) == 3
        pid = 0
    finally:
        if pid:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        os.close(fd)
    props = inst.show("run-u1.service")
    assert props["IPEgressDroppedPackets"] == "1"  # the echo request to 1.1.1.1
    assert props["IPEgressBytes"] == "84"  # the echo request to 198.51.100.2
    assert props["IPIngressBytes"] == "84"  # and its reply
