"""Who holds a unit's name: the process that starts its command (``ipacctd run``).

A unit's name is taken from the moment its metadata is written (under the store lock) until
its command's exit is recorded. In between, the unit has no process yet (or no more), so
its cgroup alone cannot tell a unit being started from a dead one; the recorded owner can.
A process is identified by its PID and its start time (``/proc/PID/stat`` field 22, in
clock ticks since boot), so a PID reused by another process never passes for the owner.
"""

from __future__ import annotations

import os

Owner = tuple[int, int]


def start_time(pid: int) -> int | None:
    """The start time of process ``pid`` (None when there is no such process)."""
    try:
        return _read_start_time(pid)
    except OSError:
        return None


def _read_start_time(pid: int) -> int | None:
    """Like :func:`start_time`, but a failure to read (ENOENT, EMFILE...) raises OSError."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    # The command name (field 2) is in parentheses and may contain anything, ')' too:
    # the fields after it start behind the last ')'.
    try:
        return int(stat[stat.rindex(b")") + 2:].split()[19])
    except (ValueError, IndexError):
        return None


def identify(pid: int) -> Owner | None:
    """``(pid, start time)`` of a live process, None when it is gone."""
    started = start_time(pid)
    return None if started is None else (pid, started)


def me() -> Owner:
    """This process."""
    # /proc/self is always there on Linux: a failure is ours (no descriptor left: EMFILE),
    # raised as such so the CLI says so instead of guessing.
    pid = os.getpid()
    started = _read_start_time(pid)
    if started is None:
        raise OSError(f"cannot parse /proc/{pid}/stat")
    return pid, started


def alive(owner: Owner | None) -> bool:
    """Whether the owner still runs (a reused PID is another process: False)."""
    return owner is not None and start_time(owner[0]) == owner[1]
