"""``ipacctd``: the systemctl/systemd-run-like command line.

Each group of verbs lives in its own module (``run``, ``query``, ``change``); this one
reads the command line (a plain ``run`` with :mod:`ipacctd.cli.runline`, everything else
with the argparse parser of :mod:`ipacctd.cli.parser`), builds the engine and turns
ipacctd errors into one-line messages and exit codes.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (see ipacctd.record)
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import NoReturn

EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 4  # like systemctl for unknown units
EXIT_PERMISSION = 77  # EX_NOPERM
EXIT_UNSUPPORTED = 69  # EX_UNAVAILABLE


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status.

    Run as the program (``argv`` None: the ``ipacctd`` command, ``python -m ipacctd``), the
    cyclic garbage collector stays out of the way of a short command: it is off while the
    verb's modules load; what they made (modules, classes, functions) is then frozen out
    of it (``gc.freeze``) before it is on again, so that the verb's first full collection
    — due soon, the collector having never run — walks only what the verb makes; and what
    is alive when the verb is done is frozen too, so that the interpreter's final
    collection does not walk it all once more (~2 + ~8 ms of every command). Exit handlers
    and the flush of stdout/stderr run as before; everything ipacctd writes is closed (and
    fsynced where it must be) before the verb returns. Called with an ``argv``
    (in-process, as tests do), the collector is left alone.
    """
    if argv is not None:
        return _main(argv)
    import gc

    # Nearly all that importing builds stays alive: collecting meanwhile only walks it.
    gc.disable()
    try:
        return _main(sys.argv[1:], loaded=_frozen_then_enabled)  # before the verb runs
    finally:
        gc.enable()
        gc.freeze()


def command() -> NoReturn:
    """The ``ipacctd`` command (pyproject's entry point, contrib/launcher.py, ``python -m
    ipacctd``): :func:`main`, then the exit.

    The exit skips the interpreter's finalization (``os._exit`` after flushing stdout and
    stderr) when nothing needs it: no exit handler is registered and no other thread is
    alive. Tearing down the ~100 modules a command imports took ~1.3 ms of every ``ipacctd
    run`` back to back, ~2.7 ms after a pause (bench/results-cli.txt), and does nothing a
    command needs: everything ipacctd writes is closed before the verb returns (see
    :func:`main`), and the kernel closes the rest of the fds. Otherwise — handlers (logging
    registers one), threads, a profiler or tracer (``python -m cProfile``, a debugger: they
    write their results after the script), or a flush that fails (a closed pipe) — it
    exits as usual, and the interpreter reports and finishes as it always has.
    """
    status = main()
    import _thread
    import atexit

    handlers = getattr(atexit, "_ncallbacks", None)
    if status is None:  # as sys.exit(None): success
        status = 0
    if (type(status) is int and handlers is not None and handlers() == 0
            and _thread._count() == 0 and sys.getprofile() is None and sys.gettrace() is None):
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except BaseException:
            sys.exit(status)
        os._exit(status)
    sys.exit(status)


def _frozen_then_enabled() -> None:
    import gc

    gc.freeze()
    gc.enable()


def _main(argv: Sequence[str], loaded: Callable[[], None] = lambda: None) -> int:
    # ipacctd.journal (and with it logging) is imported only when there is an error to
    # print: a run that succeeds never needs it.
    from ipacctd.cli.runline import parse_run
    from ipacctd.errors import Error, InvalidInput, NotFound, NotSupported, PermissionDenied

    args = parse_run(argv)
    if args is None:  # anything but a plain run: argparse reads it (and explains mistakes)
        from ipacctd.cli.parser import parse_args

        args = parse_args(argv)
    try:
        if args.verb == "run":
            from ipacctd.cli import run as mod
        elif args.verb == "inspect":
            from ipacctd.cli import inspect as mod  # type: ignore[no-redef]
        elif args.verb == "top":
            from ipacctd.cli import top as mod  # type: ignore[no-redef]
        elif args.verb == "completion":
            from ipacctd.cli import completion as mod  # type: ignore[no-redef]
        elif args.verb == "oci-hook":
            from ipacctd.cli import ocihook as mod  # type: ignore[no-redef]
        elif args.verb in ("daemon", "reload", "daemon-reload"):
            from ipacctd.cli import daemon as mod  # type: ignore[no-redef]
        elif args.verb in ("status", "list-units", "show"):
            from ipacctd.cli import query as mod  # type: ignore[no-redef]
        elif args.verb in ("is-active", "is-failed"):
            from ipacctd.cli import state as mod  # type: ignore[no-redef]
        elif args.verb in ("cat", "list-unit-files", "edit"):
            from ipacctd.cli import unitfiles as mod  # type: ignore[no-redef]
        elif args.verb == "kill":
            from ipacctd.cli import kill as mod  # type: ignore[no-redef]
        else:
            from ipacctd.cli import change as mod  # type: ignore[no-redef]
        loaded()
        return mod.dispatch(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    except Error as exc:
        _say(f"ipacctd: {exc}{_missing(args.verb, exc)}")
        codes = ((InvalidInput, EXIT_USAGE), (NotFound, EXIT_NOT_FOUND),
                 (PermissionDenied, EXIT_PERMISSION), (NotSupported, EXIT_UNSUPPORTED))
        return next((code for cls, code in codes if isinstance(exc, cls)), EXIT_FAILURE)
    except MemoryError:
        # Outside the engine's changes (which undo what they started and raise OutOfMemory,
        # an Error): a read, the parser. Still one line, not a traceback.
        from ipacctd.errors import OutOfMemory  # loaded already (Error is): no new import

        _say(f"ipacctd: out of memory ({OutOfMemory.HINT})")
        return EXIT_FAILURE
    except OSError as exc:
        # A safety net: an unmapped system error is still one line, not a traceback.
        where = f": {exc.filename}" if exc.filename else ""
        _say(f"ipacctd: {exc.strerror or exc}{where}")
        return EXIT_PERMISSION if isinstance(exc, PermissionError) else EXIT_FAILURE


def _say(text: str) -> None:
    """An error on stderr, filed as an error when stderr is the journal (``<3>``). The
    journal helpers are imported here, off the start-up path; when that import fails — the
    error being reported may be the lack of file descriptors or memory it needs — the line
    goes out as it is."""
    try:
        from ipacctd.journal import error_line

        text = error_line(text)
    except (ImportError, OSError, MemoryError):
        pass
    print(text, file=sys.stderr)


READ_VERBS = frozenset({"status", "list-units", "show", "inspect", "top", "is-active",
                        "is-failed", "cat", "list-unit-files"})


def _missing(verb: str, exc: Exception) -> str:
    """For a user refused a read: what is missing, and the two ways to get it."""
    from ipacctd.errors import PermissionDenied

    if not isinstance(exc, PermissionDenied) or os.geteuid() == 0 or verb not in READ_VERBS:
        return ""
    from ipacctd.cli import remote

    why = remote.why_no_daemon or "the ipacctd daemon is not reachable"
    return (f". '{verb}' reads root's state directly, or — for any user — through "
            f"the ipacctd daemon's D-Bus API ({remote.BUS_NAME} on the system bus), and {why}."
            " Run it as root, or start the daemon (systemctl start ipacctd).")
