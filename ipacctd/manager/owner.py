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
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
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
    found = identify(os.getpid())
    assert found is not None  # /proc/self is always there on Linux
    return found


def alive(owner: Owner | None) -> bool:
    """Whether the owner still runs (a reused PID is another process: False)."""
    return owner is not None and start_time(owner[0]) == owner[1]
