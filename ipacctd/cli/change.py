"""Changes: ``set-property``, ``stop``, ``reset``, ``attach``, ``detach``."""

from __future__ import annotations

import argparse
import sys

from ipacctd.cli.engine import manager_for
from ipacctd.manager.engine import parse_assignments


def dispatch(args: argparse.Namespace) -> int:
    mgr = manager_for(args)
    if args.verb in ("stop", "reset", "detach"):
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
