"""Start a command directly inside a cgroup.

``clone3(CLONE_INTO_CGROUP)`` creates the child in the unit's cgroup: no migration (which
waits for an RCU grace period, several ms), and no instant in which the child runs
outside the unit's programs. Kernels without it (before 5.7) get fork + a write to
``cgroup.procs`` before exec, which keeps the second property.
"""

from __future__ import annotations

# signal.py's C core: the same functions and numbers, without the enums signal.py
# builds at import (~0.5 ms of every run); names of signals come from signal.py where shown.
import _signal as signal
import contextlib
import ctypes
import errno
import os
from collections.abc import Callable, Sequence

from ipacctd.libc import last_error, libc
from ipacctd.uapi import CloneArgs

CLONE_INTO_CGROUP = 0x200000000
_NR_CLONE3 = {"x86_64": 435, "aarch64": 435, "riscv64": 435, "ppc64le": 435, "s390x": 435}


def _clone3_number() -> int | None:
    return _NR_CLONE3.get(os.uname().machine)


def spawn(argv: Sequence[str], cgroup_fs: str) -> int:
    """Start ``argv`` (PATH searched) in the cgroup at ``cgroup_fs``; return its PID.

    Raises FileNotFoundError / PermissionError when the command cannot be executed.
    """
    nr = _clone3_number()
    if nr is not None:
        try:
            return _spawn_clone3(nr, list(argv), cgroup_fs)
        except OSError as exc:
            if exc.errno not in (errno.ENOSYS, errno.EINVAL, errno.E2BIG, errno.EPERM):
                raise
    return _spawn_fork(list(argv), cgroup_fs)


def _spawn_clone3(nr: int, argv: list[str], cgroup_fs: str) -> int:
    cg = os.open(cgroup_fs, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        args = CloneArgs(flags=CLONE_INTO_CGROUP, exit_signal=signal.SIGCHLD, cgroup=cg)

        def clone() -> int:
            pid = libc.syscall(nr, ctypes.byref(args), ctypes.c_size_t(ctypes.sizeof(args)))
            if pid < 0:
                raise last_error()
            return pid

        return _start(argv, clone, lambda: None)
    finally:
        os.close(cg)


def _spawn_fork(argv: list[str], cgroup_fs: str) -> int:
    def enter() -> None:
        with open(os.path.join(cgroup_fs, "cgroup.procs"), "w") as f:
            f.write("0")

    return _start(argv, os.fork, enter)


def _found(name: str) -> str | None:
    """Where ``os.execvp`` would find the command ``name``: the first executable regular
    file of that name on ``$PATH`` (None: a path, or not found; the child searches
    itself). Searched here, in the parent, so that the child — a copy of this process,
    each page it touches copied — makes one exec, not one failed exec per directory before
    the command's (~0.6 ms of every run). The directories are ``os.get_exec_path()``'s
    for ``os.environ`` (PATH, or ``os.defpath`` when unset), read without calling it: it
    imports :mod:`warnings` (~0.3 ms) to silence a BytesWarning only a bytes mapping raises."""
    if "/" in name:
        return None
    for directory in os.environ.get("PATH", os.defpath).split(os.pathsep):
        path = os.path.join(directory, name)
        try:
            st = os.stat(path)
        except (OSError, ValueError):
            continue
        if st.st_mode & 0o170000 == 0o100000 and os.access(path, os.X_OK):
            return path
    return None


def _start(argv: list[str], fork: Callable[[], int], in_child: Callable[[], None]) -> int:
    """Fork with ``fork``, run ``in_child`` and exec in the child; report exec failures."""
    found = _found(argv[0])
    # The child reports a failed exec through this pipe; a successful exec closes it.
    r, w = os.pipe2(os.O_CLOEXEC)
    try:
        pid = fork()
        if pid == 0:  # the child: exec at once, touch nothing else
            code = 127
            try:
                in_child()
                if found is not None:
                    # Where execvp would succeed first; should this exec fail all the
                    # same, execvp's own search (and its error) follows, as without it.
                    with contextlib.suppress(OSError):
                        os.execv(found, argv)
                os.execvp(argv[0], argv)
            except OSError as exc:
                os.write(w, str(exc.errno or errno.EIO).encode())
                code = 126
            finally:
                os._exit(code)
        os.close(w)
        w = -1
        report = os.read(r, 16)
        if report:
            os.waitpid(pid, 0)
            err = int(report)
            if err == errno.ENOENT:
                raise FileNotFoundError(err, os.strerror(err), argv[0])
            if err in (errno.EACCES, errno.EPERM):
                raise PermissionError(err, os.strerror(err), argv[0])
            raise OSError(err, os.strerror(err), argv[0])
        return pid
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)
