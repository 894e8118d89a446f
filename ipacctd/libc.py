"""The C library, opened once for the whole process (bpf(2), clone3(2), inotify(7)).

A leaf of the standard library only, so the BPF layer, the CLI and the daemon share one
handle without importing each other. ``use_errno``: ctypes.get_errno() after a failed call
is that call's errno. ``syscall`` returns a long (a pid, an fd, or -1).
"""

from __future__ import annotations

import ctypes
import os

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long


def last_error(what: str = "") -> OSError:
    """The OSError for the errno a failed libc call just left (``what`` prefixes it)."""
    err = ctypes.get_errno()
    text = os.strerror(err)
    return OSError(err, f"{what}: {text}" if what else text)
