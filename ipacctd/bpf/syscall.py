"""The bpf(2) system call through ctypes, with errno mapped to ipacctd's exceptions.

Everything in ``ipacctd.bpf`` goes through :func:`bpf`; it is the only place that turns
a failing syscall into an exception.
"""

from __future__ import annotations

import ctypes
import errno
import os

from ipacctd.bpf.errors import map_errno
from ipacctd.bpf.types import Cmd
from ipacctd.libc import libc as _libc
from ipacctd.uapi import ATTR_SIZE, BpfAttr

_NR_BPF = {"x86_64": 321, "aarch64": 280, "arm64": 280, "riscv64": 280, "ppc64le": 361,
           "s390x": 351, "i686": 357, "armv7l": 386}

def _syscall_number() -> int:
    machine = os.uname().machine  # what platform.machine() returns, without importing it
    try:
        return _NR_BPF[machine]
    except KeyError:
        from ipacctd.bpf.errors import BPFNotSupported

        raise BPFNotSupported(f"bpf(2) syscall number unknown for {machine}") from None


NR_BPF = _syscall_number()


def bpf(cmd: Cmd, attr: BpfAttr, what: str = "") -> int:
    """Call bpf(2) with ``attr`` (the kernel writes its outputs back into it); return the
    non-negative result or raise a mapped exception.

    ``what`` names the object acted on (a map, a program, a pin path) for the message.
    """
    ref = ctypes.byref(attr)
    while True:
        ret = _libc.syscall(NR_BPF, int(cmd), ref, ATTR_SIZE)
        if ret >= 0:
            return ret
        err = ctypes.get_errno()
        if err != errno.EINTR:
            raise map_errno(err, Cmd(cmd).name, what)


def addr(buf: ctypes.Array | ctypes.Structure | None) -> int:
    """Address of a ctypes buffer or struct, or 0 for None (a NULL pointer in bpf_attr)."""
    return 0 if buf is None else ctypes.addressof(buf)


def close(fd: int) -> None:
    """Close a file descriptor, ignoring EBADF (the caller may close twice on error paths)."""
    try:
        os.close(fd)
    except OSError as exc:
        if exc.errno != errno.EBADF:
            raise
