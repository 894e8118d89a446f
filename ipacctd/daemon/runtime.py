"""The daemon's runtime file (``<state>/daemon.json``): which process serves an installation.

Only the daemon holding the installation's lock (``<state>/daemon.lock``) writes or
removes it. Its readers (``ipacctd reload``, a second daemon) use
:func:`ipacctd.daemon.contract.read_runtime`, which says why a PID in it proves nothing alone.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from typing import Any

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
