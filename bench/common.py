"""What the benchmarks share: the report (printed and optionally written to ``--out``), a
process's CPU time, where a benchmark's state directory goes (a tmpfs, as ``/run`` is), and
starting ``ipacctd daemon`` against a private bus until it owns its name. Imported by the
scripts beside it (``python3 bench/<name>.py`` puts this directory on ``sys.path``)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUS_NAME = "org.ipacctd1"
CLK_TCK = os.sysconf("SC_CLK_TCK")


class Report:
    """Lines printed as they come (a long run shows progress) and kept for ``--out``."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, text: str = "") -> None:
        print(text, flush=True)
        self.lines.append(text)

    def save(self, path: str | None) -> None:
        if path:
            with open(path, "w") as f:
                f.write("\n".join(self.lines) + "\n")


def publish(text: str, path: str | None) -> None:
    """A finished report: printed, and written to ``path`` when one is given."""
    print(text)
    if path:
        Path(path).write_text(text + "\n")


def fs_type(path: str) -> str:
    """The type of the filesystem holding ``path`` (the longest mount point above it)."""
    best, kind = "", "?"
    real = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            point = left.split(" ")[4]
            inside = real == point or real.startswith(point.rstrip("/") + "/")
            if inside and len(point) >= len(best):
                best, kind = point, right.split(" ", 1)[0]
    return kind


def default_state_parent() -> str | None:
    """/dev/shm when it is a tmpfs, else None (the temporary directory's default).

    Where a benchmark puts its state directory: ipacctd's is /run/ipacctd, and /run is a
    tmpfs on the hosts users run (systemd mounts it so; so does Debian's initramfs without
    systemd), where the fsync of a unit's record and the syncfs of a batch cost nothing. On
    this machine /run and /tmp are on the disk (PID 1 is not systemd): state there measures
    the disk's journal, not ipacctd (a unit's record took 0.03-0.45 ms to create in
    /tmp, varying with what the disk was doing).
    """
    return "/dev/shm" if fs_type("/dev/shm") == "tmpfs" else None


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14, 15)


async def name_owned(address: str) -> bool:
    from dbus_fast import Message
    from dbus_fast.aio import MessageBus

    bus = await MessageBus(bus_address=address).connect()
    try:
        reply = await bus.call(
            Message(
                destination="org.freedesktop.DBus",
                path="/org/freedesktop/DBus",
                interface="org.freedesktop.DBus",
                member="NameHasOwner",
                signature="s",
                body=[BUS_NAME],
            )
        )
        return bool(reply.body and reply.body[0])
    finally:
        bus.disconnect()


def start_daemon(
    env: dict[str, str], log_path: str, bus_address: str, port: int, poll_interval: float
) -> subprocess.Popen:
    """``python -m ipacctd daemon`` on the bus and port, its output in ``log_path``."""
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ipacctd",
                "daemon",
                "--bus",
                bus_address,
                "--listen",
                f"127.0.0.1:{port}",
                "--poll-interval",
                str(poll_interval),
            ],
            env=env,
            cwd=str(ROOT),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )


def wait_ready(
    daemon: subprocess.Popen,
    bus_address: str,
    log_path: str,
    since: float,
    timeout: float = 300,
    then: Callable[[], object] = lambda: None,
) -> None:
    """Until the daemon owns its bus name (and ``then`` succeeds); at most ``timeout`` s
    after ``since`` (``time.monotonic``), an error with the daemon's log when it exits."""
    deadline = since + timeout
    while True:
        if daemon.poll() is not None:
            raise RuntimeError("daemon exited:\n" + Path(log_path).read_text())
        with contextlib.suppress(OSError):
            if asyncio.run(name_owned(bus_address)):
                then()
                break
        if time.monotonic() > deadline:
            raise RuntimeError(f"daemon not ready within {timeout:.0f} s")
        time.sleep(0.1)
