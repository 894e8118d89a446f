"""``kill [-s SIGNAL] [--kill-whom=all|main] UNIT...``: signal a unit's processes.

Only units ipacctd started (``run``: it made their cgroups) are signalled here, found by
their cgroup, as systemctl does for its services; a cgroup ipacctd merely attached to
belongs to systemd or a container engine, whose own ``kill`` is the one to use. The
messages and the exit status 1 are systemctl's (``Failed to kill unit …``).
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys

from ipacctd.cli.engine import config_for
from ipacctd.cli.selection import expand
from ipacctd.errors import Error, InvalidInput, NotFound
from ipacctd.manager.engine import Manager
from ipacctd.manager.store import canonical

WHOM = ("all", "main")


def parse_signal(text: str) -> int:
    """``TERM``, ``SIGTERM``, ``15``, ``RTMIN+1`` → the signal number."""
    t = text.strip().upper()
    if t.isdigit() and 0 < int(t) < signal.NSIG:
        return int(t)
    name = t if t.startswith("SIG") else "SIG" + t
    if name.startswith("SIGRTMIN+") and name[9:].isdigit():
        n = signal.SIGRTMIN + int(name[9:])
        if n <= signal.SIGRTMAX:
            return n
    try:
        return int(signal.Signals[name])
    except KeyError:
        raise InvalidInput(f'Failed to parse signal string "{text}".') from None


def dispatch(args: argparse.Namespace) -> int:
    try:
        sig = parse_signal(args.signal)
    except InvalidInput as exc:
        print(exc, file=sys.stderr)
        return 1
    # Signalling changes no state of ipacctd's: the engine does it directly (no daemon
    # call), as root, on the cgroups it made.
    mgr = Manager(config_for(args))
    rc = 0
    for word in args.units:
        try:
            names = expand(mgr, [word])
        except NotFound:
            names = [word]
        for name in names:
            with contextlib.suppress(InvalidInput):  # an invalid name fails below, as is
                name = canonical(name)
            try:
                if args.kill_whom not in WHOM:
                    raise InvalidInput(f"Invalid who argument {args.kill_whom}")
                mgr.kill(name, sig, main_only=args.kill_whom == "main")
            except NotFound:
                print(f"Failed to kill unit {name}: Unit {name} not loaded.", file=sys.stderr)
                rc = 1
            except Error as exc:
                print(f"Failed to kill unit {name}: {exc}", file=sys.stderr)
                rc = 1
    return rc
