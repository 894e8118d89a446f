"""The one exception hierarchy of ipacctd.

Every error a user can see derives from :class:`Error`; its message says what went wrong
and, where possible, what to do about it. Syscall errors are mapped to these classes at
the boundary (``ipacctd.bpf.syscall``, ``ipacctd.cgroup``), so callers never see a bare
``OSError`` from the kernel interface.
"""

from __future__ import annotations


class Error(Exception):
    """Base class of every ipacctd error.

    ``hint`` (optional) says what to type next (``reset it first ('ipacctd reset web')``):
    the CLI prints it after the message; the D-Bus API sends the :attr:`plain` message
    alone as the error's text (and the hint apart, for ipacctd's own CLI), as systemd's
    errors carry no advice for one particular client.
    """

    hint = ""

    def __init__(self, *args: object, hint: str = "") -> None:
        super().__init__(*args)
        self.hint = hint

    @property
    def plain(self) -> str:
        """The message without the hint."""
        return super().__str__()

    def __str__(self) -> str:
        return f"{self.plain}; {self.hint}" if self.hint else self.plain


class InvalidInput(Error, ValueError):
    """A property, address, unit file, unit name or argument is malformed.

    Raised before anything is changed: the state stays as it was.
    """


class NotFound(Error, LookupError):
    """A unit, pin, map or program does not exist."""


class AlreadyExists(Error):
    """A unit or pin with that name exists already."""


class PermissionDenied(Error, PermissionError):
    """The caller lacks a privilege (root, CAP_BPF, CAP_NET_ADMIN)."""


class AccessDenied(PermissionDenied):
    """The caller may not do this (the daemon refuses a D-Bus caller that is not root, or the
    owner of the daemon's bus name is not root)."""


class NotSupported(Error):
    """The kernel or host lacks a feature (cgroup v2, BPF, a map or program type)."""


class Corrupt(Error):
    """State on disk cannot be read (a metadata file, a pin directory): the unit is broken.

    Views report it with this cause; ``reset`` removes what is left of it.
    """


class Busy(Error):
    """Another ipacctd process holds the lock, or the object is in use."""


class OutOfMemory(Error, MemoryError):
    """The process ran out of memory part-way (its memory cgroup's limit, RLIMIT_AS): a
    Python allocation failed, or a system call with ENOMEM.

    Raised by the engine once it has undone what it started: nothing was applied.
    """

    #: What to do about it (the engine's message and the CLI's last resort end with it).
    HINT = "raise the memory limit of the cgroup ipacctd runs in, or its RLIMIT_AS"
