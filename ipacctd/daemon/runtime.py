"""The daemon's runtime file (``<state>/daemon.json``): which process serves an installation.

Only the daemon holding the installation's lock (``<state>/daemon.lock``) writes or
removes it. A file outlives a daemon killed with ``kill -9`` and its PID may be reused by
any process, so a PID read from it proves nothing alone: it counts only together with the
process's start time (field 22 of ``/proc/PID/stat``, in clock ticks since boot — two
processes never share PID and start time), checked on a pidfd, so that the process we
checked is the process we signal.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from typing import Any

from ipacctd.errors import NotFound
from ipacctd.manager.owner import start_time  # one home for "process identity"


def write(path: str, extra: dict[str, Any]) -> None:
    """Write the runtime file for this process: a new file under a name of our own
    (``O_EXCL|O_NOFOLLOW``: never through a planted symlink), then renamed into place."""
    pid = os.getpid()
    data = {"pid": pid, "starttime": start_time(pid), "started_at": time.time(), **extra}
    tmp = f"{path}.{pid}.tmp"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)  # ours by name: a stale one from a crashed daemon with our PID
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f)
        os.rename(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def read(path: str) -> dict[str, Any] | None:
    """The runtime file's content when it is well-formed, else None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd) as f:
            data = json.loads(f.read(65536))
    except (OSError, ValueError):
        return None
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("pid"), int)
        or not isinstance(data.get("starttime"), int)
        or data["pid"] <= 0
    ):
        return None
    return data


def alive(info: dict[str, Any]) -> bool:
    """True when the process the file names still runs (same PID *and* start time)."""
    return start_time(info["pid"]) == info["starttime"]


def send_signal(path: str, sig: int) -> int:
    """Signal the daemon named by the runtime file; its PID. NotFound (nothing signalled)
    when there is no file or its process is gone, even if the PID now names another."""
    info = read(path)
    if info is None:
        raise NotFound(f"no ipacctd daemon is running ({path} is missing or unreadable)")
    pid = info["pid"]
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        pidfd = None
    if pidfd is None:
        raise NotFound(f"no ipacctd daemon is running (stale {path}: pid {pid} is gone)")
    try:
        # Checked after the pidfd pins the process: a PID reused in between fails here.
        if start_time(pid) != info["starttime"]:
            raise NotFound(
                f"no ipacctd daemon is running (stale {path}: pid {pid} is now "
                "another process, which was left alone)"
            )
        signal.pidfd_send_signal(pidfd, sig)
    finally:
        os.close(pidfd)
    return pid
