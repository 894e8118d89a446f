"""Changes: ``set-property``, ``stop``, ``reset``, ``reset-failed``, ``attach``, ``detach``."""

from __future__ import annotations

import argparse
import sys

from ipacctd.cli import selection
from ipacctd.cli.engine import manager_for
from ipacctd.manager.engine import BUSY_STATES, parse_assignments
from ipacctd.policy.names import is_glob


def dispatch(args: argparse.Namespace) -> int:
    mgr = manager_for(args)
    if args.verb == "reset-failed":
        return _reset_failed(mgr, args.units)
    if args.verb == "reset":
        args.units = _resettable(mgr, args.units)
    elif args.verb in ("stop", "detach"):
        # Unknown units fail here, before anything changes; a container's unit may also be
        # named by the container's name or short id.
        args.units = [mgr.resolve(n) for n in args.units]
    if args.verb == "set-property":
        pairs = parse_assignments(args.assignments)
        name = mgr.resolve(args.unit)  # unknown unit: NotFound before anything else
        mgr.set_properties(name, pairs)
    elif args.verb == "stop":
        for name in args.units:
            mgr.stop(name)
    elif args.verb == "reset":
        for name in args.units:
            mgr.reset(name)
    elif args.verb == "attach":
        pairs = parse_assignments(args.property)
        unit = mgr.attach(args.cgroup, pairs, name=args.unit,
                          allow_unenforced=args.allow_unenforced)
        print(f"Attached unit: {unit.name} ({unit.cgroup})", file=sys.stderr)
        if not unit.enforced:
            print(f"ipacctd: warning: unit {unit.name} is not counting or filtering: "
                  f"{unit.not_enforced_reason}", file=sys.stderr)
    elif args.verb == "detach":
        for name in args.units:
            mgr.detach(name)
    return 0


def _resettable(mgr, words: list[str]) -> list[str]:
    """The units ``reset`` forgets: each one named (unknown ones fail here, before anything
    changes; a running one fails in the engine, which says to stop it first) and, for a
    glob pattern, the matching units that are not running — a pattern means "the dead ones
    among these", as ``systemctl reset-failed 'run-*'`` does not touch running units."""
    out: list[str] = []
    for word in words:
        if is_glob(word):
            hits = [n for n in selection.expand(mgr, [word])
                    if mgr.status(n).active_state not in BUSY_STATES]
        else:
            hits = [mgr.resolve(word)]
        out += [n for n in hits if n not in out]
    return out


def _reset_failed(mgr, words: list[str]) -> int:
    """systemctl reset-failed: every failed unit (none named), or the failed ones among those
    named or matched; the others are left alone, silently, as systemctl does. A failed unit's
    record goes with its counters, as a failed transient unit of systemd's is collected after
    reset-failed. A *broken* unit (its metadata unreadable) is failed too but is not forgotten
    here: its policy is unknown, and forgetting it removes programs that may still filter
    a cgroup; ``ipacctd reset NAME`` does that deliberately."""
    names = selection.expand(mgr, words) if words else mgr.names()
    for name in names:
        st = mgr.status(name)
        if st.active_state != "failed":
            continue
        if st.broken is not None:
            print(f"ipacctd: unit {name} is broken ({st.broken}), not reset; "
                  f"'ipacctd reset {name}' forgets it and its programs", file=sys.stderr)
            continue
        mgr.reset(name)
    return 0
