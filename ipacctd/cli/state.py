"""``is-active`` and ``is-failed``, with systemctl's output and exit statuses.

Each named unit's active state is printed on its own line (``--quiet``: nothing); a glob
names the known units it matches. The exit status is 0 when *any* of them is in the state
asked about, else 3 for ``is-active`` and 1 for ``is-failed`` (systemd 252 does exactly
this, and reports a unit it does not know as ``inactive``: scripts test
``is-active --quiet``, and an unknown unit is certainly not active).
"""

from __future__ import annotations

import argparse

from ipacctd.cli import selection
from ipacctd.cli.engine import manager_for
from ipacctd.errors import NotFound
from ipacctd.policy.names import is_glob

#: verb → (the states it asks about, exit status when none is in them)
CHECKS = {
    "is-active": (frozenset({"active", "reloading"}), 3),
    "is-failed": (frozenset({"failed"}), 1),
}


def dispatch(args: argparse.Namespace) -> int:
    mgr = manager_for(args, write=False)
    wanted, otherwise = CHECKS[args.verb]
    hit = False
    for word in args.units:
        names = selection.matching(mgr, [word]) if is_glob(word) else [word]
        for name in names or ():
            try:
                state = mgr.status(mgr.resolve(name)).active_state
            except NotFound:
                state = "inactive"
            hit = hit or state in wanted
            if not args.quiet:
                print(state)
    return 0 if hit else otherwise
