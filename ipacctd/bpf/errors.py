"""Sentinel errors of the BPF layer, and the errno → exception mapping at the syscall boundary."""

from __future__ import annotations

import errno
import os

from ipacctd.bpf.types import ENOTSUPP
from ipacctd.errors import AlreadyExists, Busy, Error, NotFound, NotSupported, PermissionDenied


class BPFError(Error, OSError):
    """A bpf(2) call failed. ``errno`` holds the kernel's error number."""

    def __init__(self, err: int, message: str) -> None:
        OSError.__init__(self, err, message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class BPFNotSupported(BPFError, NotSupported):
    """The kernel lacks the command, map type, program type or attach type asked for."""

    def __init__(self, message: str, err: int = errno.EOPNOTSUPP) -> None:
        super().__init__(err, message)


class BPFPermissionError(BPFError, PermissionDenied):
    """The caller may not use bpf(2) for this (needs root or CAP_BPF + CAP_NET_ADMIN)."""


class BPFNotFound(BPFError, NotFound):
    """No such map element, object id or pin."""


class BPFExists(BPFError, AlreadyExists):
    """The element or pin exists already."""


class BPFBusy(BPFError, Busy):
    """The object is busy (e.g. a link's program was replaced concurrently)."""


class BPFLimitError(BPFError):
    """A kernel limit was hit: map full, memlock/memcg limit, too many instructions."""


class VerifierError(BPFError):
    """The verifier rejected a program. ``log`` holds the verifier's log."""

    def __init__(self, err: int, message: str, log: str) -> None:
        super().__init__(err, message)
        self.log = log

    def __str__(self) -> str:
        tail = "\n".join(self.log.rstrip().splitlines()[-12:])
        return f"{self.message}\nverifier log (last lines):\n{tail}" if tail else self.message


_HINTS = {
    errno.EPERM: "run as root (needs CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN)",
    errno.EACCES: "run as root (needs CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN)",
    errno.ENOSYS: "this kernel has no bpf(2)",
    errno.EOPNOTSUPP: "this kernel does not support it",
    ENOTSUPP: "this kernel does not support it",
    errno.ENOMEM: "out of memory: raise RLIMIT_MEMLOCK or the cgroup's memory limit",
    errno.E2BIG: "too large for the map or the kernel",
    errno.ENOSPC: "the map is full",
}


def map_errno(err: int, op: str, what: str = "") -> BPFError:
    """Turn a bpf(2) errno into the matching exception with an actionable message."""
    subject = f"{op} {what}".strip()
    text = f"bpf {subject}: {os.strerror(err)}"
    hint = _HINTS.get(err)
    if hint:
        text += f" ({hint})"
    if err in (errno.EPERM, errno.EACCES):
        return BPFPermissionError(err, text)
    if err in (errno.ENOSYS, errno.EOPNOTSUPP, ENOTSUPP):
        return BPFNotSupported(text, err)
    if err == errno.ENOENT:
        return BPFNotFound(err, text)
    if err == errno.EEXIST:
        return BPFExists(err, text)
    if err == errno.EBUSY:
        return BPFBusy(err, text)
    if err in (errno.ENOMEM, errno.E2BIG, errno.ENOSPC):
        return BPFLimitError(err, text)
    return BPFError(err, text)
