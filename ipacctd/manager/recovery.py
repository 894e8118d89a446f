"""Self-repair: put a unit's recorded policy back in force on the cgroup now at its path.

The kernel is the database, and things happen to it behind ipacctd's back: a service or
container restart removes the unit's cgroup and makes a new one at the same path (the
unit's links then hold its programs on nothing), a pin is deleted by hand (a link pin with
no other reference detaches its link at once), the whole pin directory goes. Each is
noticed by asking the kernel (:meth:`Manager.enforcement`), never the metadata, and
repaired from the metadata in named steps, in this order, with the store lock held:

1. :func:`rebuild_datapath` — the counters pin (and so the pin directory) is lost: build
   the unit's datapath again on its live cgroup. Its counters start from zero: nothing
   holds the old ones any more.
2. :func:`restore_links` — the programs do not run on the cgroup now at the path
   (re-created cgroup, lost link pin, detached link): re-bind (see
   :meth:`UnitDatapath.rebind`: programs taken from the surviving links or built again
   from the metadata, the counters map kept, never a second copy of a program).
3. the policy generation (:mod:`ipacctd.manager.generation`, in the engine's
   ``_reconcile``): a policy change cut off midway is completed or rolled back.

While a step cannot succeed (e.g. a user filter program is no longer pinned), the unit
stays reported as not enforced, with the cause, by every view; ``stop`` and ``reset``
work on it all the same.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import replace
from typing import TYPE_CHECKING

from ipacctd import cgroup
from ipacctd.bpf import bpffs
from ipacctd.datapath.unit import COUNTERS, UnitDatapath, cgroup_id
from ipacctd.errors import Error
from ipacctd.manager import generation
from ipacctd.manager.unit import Unit, spec_for

if TYPE_CHECKING:
    from ipacctd.manager.engine import Manager

log = logging.getLogger("ipacctd.recovery")


def live_cgroup_id(manager: Manager, unit: Unit) -> int | None:
    """Id of the cgroup now at the unit's path (None: there is none)."""
    fs = manager.cgroup_fs(unit)
    return cgroup_id(fs) if cgroup.exists(fs) else None


def rebuild_datapath(manager: Manager, unit: Unit) -> Unit | None:
    """Step 1: the unit's counters pin is gone while its cgroup lives; build its datapath
    again (lock held). Returns the unit as now recorded, or None when nothing was done."""
    pin_dir = manager.store.pin_dir(unit.name)
    if not unit.enforced or os.path.exists(os.path.join(pin_dir, COUNTERS)):
        return None
    fs = manager.cgroup_fs(unit)
    if not cgroup.exists(fs):
        return None  # nothing to enforce on; status says "pins lost"
    log.error(
        "unit %s: its pins are lost; building its datapath again on %s (its counters "
        "start from zero)",
        unit.name,
        unit.cgroup,
    )
    bpffs.remove_tree(pin_dir)
    # A unit systemd arms gets its pinned programs back (its drop-in names them); step 2
    # then attaches them to the running cgroup as systemd would.
    target = None if unit.systemd_service is not None else fs
    with UnitDatapath.create(pin_dir, target, spec_for(unit.properties)):
        pass
    generation.write(pin_dir, unit.generation)
    return record_cgroup(manager, unit, cgroup_id(fs), rollback_done=True)


def restore_links(manager: Manager, unit: Unit) -> Unit | None:
    """Step 2: the unit's programs do not run on the cgroup now at its path; re-bind them
    (lock held). Returns the unit as now recorded, or None when nothing was needed."""
    if not unit.enforced:
        return None
    enf = manager.enforcement(unit.name, unit)
    if not enf.live:
        return None
    if enf.enforced or enf.policy_cut_off:
        if unit.cgroup_id != enf.cgroup_id:  # metadata older than cgroup ids
            return record_cgroup(manager, unit, enf.cgroup_id)
        return None
    log.warning(
        "unit %s: policy not in force on its cgroup %s (%s); re-binding",
        unit.name,
        unit.cgroup,
        enf.problem,
    )
    try:
        return manager._rebind(unit)
    except Error as exc:
        # What could be re-made is in place (ipacctd's own links come first); the unit
        # stays reported as not enforced, and a change of its policy may still fix it.
        log.error("unit %s: cannot re-bind its programs to %s: %s", unit.name, unit.cgroup, exc)
        return None


def record_cgroup(
    manager: Manager, unit: Unit, cid: int | None, rollback_done: bool = False
) -> Unit:
    """Record the cgroup the unit's links are now on (lock held).

    An attached unit whose cgroup was made again runs again: as systemd shows a
    restarted service, its start time is the new cgroup's, and its exit record goes.
    """
    new = replace(unit, cgroup_id=cid)
    if rollback_done:
        new = replace(new, rollback=None)
    recreated = unit.cgroup_id is not None and unit.cgroup_id != cid
    if not unit.transient and (recreated or unit.exited_at is not None):
        new = replace(new, started_at=time.time(), exited_at=None, exit_status=None)
    if new != unit:
        # Not fsynced: losing this record in a host crash is harmless (the next check
        # sees the links on the live cgroup and records its id again).
        manager.store.write(new.name, new.to_json(), durable=False)
    return new
