"""Which units a command line names, as systemctl reads it: glob patterns and ``--state=``.

* A word with glob characters (``*?[``) names every known unit whose name matches it
  (fnmatch, as systemctl's ``list-units 'web*'``); none matching is no error (nothing to
  show). Any other word is one unit: its name, or a container's name or short id
  (:meth:`~ipacctd.manager.engine.Manager.resolve`), and an unknown one fails as before.
* ``--state=`` (repeatable, comma lists) keeps the units whose active state *or* sub state
  is one of those named; an unknown state matches nothing, as in systemctl.
* Without ``--all`` or ``--state=``, ``list-units`` leaves out inactive units (the failed
  ones stay: systemctl lists them, and they are what an operator looks for).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from ipacctd.policy.names import is_glob

if TYPE_CHECKING:
    from ipacctd.manager.unit import UnitStatus

#: The states a unit can be in (``--state=help``).
ACTIVE_STATES = ("active", "activating", "deactivating", "inactive", "failed")
SUB_STATES = ("running", "idle", "exited", "dead", "failed", "start", "stop")
STATES_HELP = (
    "Available unit active states:\n"
    + "\n".join(ACTIVE_STATES)
    + "\n\nAvailable unit sub states:\n"
    + "\n".join(SUB_STATES)
)


def matching(mgr, patterns: Sequence[str]) -> list[str] | None:
    """The known units matching any of ``patterns`` (None: no pattern, all units)."""
    if not patterns:
        return None
    import fnmatch  # only for patterns (re, and its compiled pattern per glob)

    return [n for n in mgr.names() if any(fnmatch.fnmatchcase(n, p) for p in patterns)]


def expand(mgr, words: Sequence[str]) -> list[str]:
    """Unit names for the words of a command line, in their order, each once."""
    out: list[str] = []
    known: list[str] | None = None
    for word in words:
        if is_glob(word):
            import fnmatch

            if known is None:
                known = mgr.names()
            hits = [n for n in known if fnmatch.fnmatchcase(n, word)]
        else:
            hits = [mgr.resolve(word)]
        out += [n for n in hits if n not in out]
    return out


def states(values: Sequence[str]) -> set[str] | None:
    """The ``--state=`` values as a set (empty: no filter); None for ``--state=help``."""
    wanted = {v.strip() for group in values for v in group.split(",") if v.strip()}
    return None if "help" in wanted else wanted


def filter_states(statuses: list[UnitStatus], wanted: set[str], all_: bool) -> list[UnitStatus]:
    if wanted:
        return [s for s in statuses if s.active_state in wanted or s.sub_state in wanted]
    if all_:
        return statuses
    return [s for s in statuses if s.active_state != "inactive"]
