"""Loggers imported on first use: only crash recovery and failure paths log, and importing
:mod:`logging` is a noticeable part of a CLI command's start-up (~3-5 ms of a ``run`` or a
``set-property``)."""

from __future__ import annotations

import sys


class LazyLogger:
    """``logging.getLogger(name)``, imported on first use.

    A failure path may be the one that ran out of file descriptors or memory, where the
    import itself fails (EMFILE opening logging/__init__.py): then the message goes to
    stderr as it is, so that the clean-up it is part of goes on."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __getattr__(self, attr: str) -> object:
        try:
            import logging
        except (ImportError, OSError, MemoryError):
            return _to_stderr
        return getattr(logging.getLogger(self.name), attr)


def _to_stderr(msg: str, *args: object, **_kwargs: object) -> None:
    try:
        sys.stderr.write(f"ipacctd: {msg % args if args else msg}\n")
    except (OSError, ValueError, MemoryError):
        pass  # nowhere to say it: the clean-up matters more than the message
