"""Recovery: put a unit's recorded state back in force after a crash or a change behind
ipacctd's back.

The kernel is the database, and things happen to it behind ipacctd's back: a service or
container restart removes the unit's cgroup and makes a new one at the same path (the
unit's links then hold its programs on nothing), a pin is deleted by hand (a link pin with
no other reference detaches its link at once), the whole pin directory goes, a reboot
empties bpffs while systemd's drop-in stays, an ipacctd process is killed in the middle of
a change. Each is noticed by asking the kernel (:meth:`Manager.enforcement`, the
generation map), never the metadata alone, and repaired from the metadata by
:func:`reconcile` in named steps, in this order, with the store lock held (at daemon start
and reload, when the daemon finds a policy not in force, and before every change of the
unit):

1. :func:`complete_removal` — the metadata says ``removing``: a removal was cut off;
   finish it (the unit goes).
2. :func:`settle_unenforced` — a unit that runs without BPF has no kernel state to
   compare with: a change cut off midway only left its rollback in the metadata; drop it.
3. :func:`rebuild_datapath` — the counters pin (and so the pin directory) is lost: build
   the unit's datapath again on its live cgroup. Its counters start from zero: nothing
   holds the old ones any more. With no live cgroup there is nothing to build on; the
   unit stays reported as "pins lost".
4. :func:`restore_links` — the programs do not run on the cgroup now at the path
   (re-created cgroup, lost link pin, detached link): re-bind (see
   :meth:`UnitDatapath.rebind`: programs taken from the surviving links or built again
   from the metadata, the counters map kept, never a second copy of a program).
5. :func:`complete_policy_change` — the policy generation (see
   :mod:`ipacctd.manager.generation`): a change cut off midway is completed (the recorded
   policy applied again) or, when that fails, rolled back to the recorded previous
   policy, as a change of its own (intent, swap, kernel generation, done).
6. for a unit systemd arms (see :mod:`ipacctd.manager.systemd`):
   :func:`repin_stopped_service` (pins lost while the service has no cgroup: pin the
   programs again so that its next start finds them), :func:`restore_dropin` (the
   drop-in is missing or edited: write it again, daemon-reload), and
   :func:`sync_service_cgroup` (the running service holds the previous policy's
   programs, or none of ours: swap or attach them, as systemd would have).

Every step asks the kernel first and does nothing when all is well, so :func:`reconcile`
is idempotent and cheap on a sound unit; it returns whether anything was done. Each step
records what it changed before the next one looks (one metadata write per fact:
:func:`drop_rollback`, :func:`record_cgroup`).

While a step cannot succeed (e.g. a user filter program is no longer pinned), the unit
stays reported as not enforced, with the cause, by every view; ``stop`` and ``reset``
work on it all the same.
"""

from __future__ import annotations

import os
import time

from ipacctd import cgroup
from ipacctd.bpf import bpffs
from ipacctd.datapath.unit import COUNTERS, UnitDatapath, cgroup_id
from ipacctd.errors import Error, NotFound
from ipacctd.manager import generation, systemd
from ipacctd.manager.logs import LazyLogger
from ipacctd.manager.unit import Unit, UnitStatus, spec_for
from ipacctd.record import replace

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing
if TYPE_CHECKING:
    from ipacctd.manager.engine import Manager

log = LazyLogger("ipacctd.recovery")


def reconcile(manager: Manager, name: str, unit: Unit | None = None) -> bool:
    """Repair one unit in the steps above (lock held); True when something was done.

    ``unit``: its metadata when the caller has just read it (read here otherwise).
    """
    done = _reconcile_policy(manager, name, unit)
    return _reconcile_systemd(manager, name) or done


def due(status: UnitStatus) -> bool:
    """Whether :func:`reconcile` may have something to do for a unit whose status (its
    metadata, enforcement and kernel generation, read together) is ``status``: False only
    when every step above would find nothing to do. The daemon's start reads every unit's
    status anyway and repairs only these (at 10,000 units reconciling all of them cost as
    much again as the statuses); a unit changed since its status was read is checked again
    by the daemon's polls (its identity or metadata changed)."""
    u = status.unit
    if status.broken is not None or u.removing or u.rollback is not None:
        return True  # steps 1, 2, 5's last step (and what a broken unit makes them say)
    if u.systemd_service is not None:
        return u.enforced  # step 6 asks systemd's drop-in and the service's cgroup itself
    if not u.enforced:
        return False  # step 2 only drops a rollback
    enf = status.enforcement
    if enf.live:  # steps 3 to 5: not in force (pins lost, links, generation) or a new cgroup
        return not enf.enforced or u.cgroup_id != enf.cgroup_id
    return status.kernel_generation != u.generation  # step 5 on a cgroup that is gone


def _reconcile_policy(manager: Manager, name: str, unit: Unit | None) -> bool:
    """Steps 1 to 5."""
    if unit is None:
        try:
            unit = manager.unit(name)
        except NotFound:
            return False
    if unit.removing:
        return complete_removal(manager, unit)
    if not unit.enforced:
        return settle_unenforced(manager, unit)
    if rebuild_datapath(manager, unit) is not None:
        return True
    if not os.path.exists(os.path.join(manager.store.pin_dir(unit.name), COUNTERS)):
        return False  # no live cgroup to build on; status says "pins lost"
    relinked = restore_links(manager, unit)
    return complete_policy_change(manager, relinked or unit) or relinked is not None


def _reconcile_systemd(manager: Manager, name: str) -> bool:
    """Step 6, on the metadata as steps 1 to 5 left it."""
    try:
        unit = manager.unit(name)
    except NotFound:
        return False
    if unit.systemd_service is None or not unit.enforced or unit.removing:
        return False
    done = repin_stopped_service(manager, unit)
    done = restore_dropin(manager, unit) or done
    return sync_service_cgroup(manager, unit) or done


def complete_removal(manager: Manager, unit: Unit) -> bool:
    """Step 1: a removal was cut off (the metadata says ``removing``); finish it."""
    log.warning("unit %s: completing an interrupted removal", unit.name)
    manager._remove(unit)
    return True


def settle_unenforced(manager: Manager, unit: Unit) -> bool:
    """Step 2: a unit without BPF has nothing in the kernel to complete; a change cut off
    midway left only its rollback in the metadata."""
    return drop_rollback(manager, unit)


def live_cgroup_id(manager: Manager, unit: Unit) -> int | None:
    """Id of the cgroup now at the unit's path (None: there is none)."""
    fs = manager.cgroup_fs(unit)
    return cgroup_id(fs) if cgroup.exists(fs) else None


def rebuild_datapath(manager: Manager, unit: Unit) -> Unit | None:
    """Step 3: the unit's counters pin is gone while its cgroup lives; build its datapath
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
    # A unit systemd arms gets its pinned programs back (its drop-in names them); step 6
    # then attaches them to the running cgroup as systemd would.
    target = None if unit.systemd_service is not None else fs
    with UnitDatapath.create(pin_dir, target, spec_for(unit.properties)):
        pass
    generation.write(pin_dir, unit.generation)
    return record_cgroup(manager, unit, cgroup_id(fs), rollback_done=True)


def restore_links(manager: Manager, unit: Unit) -> Unit | None:
    """Step 4: the unit's programs do not run on the cgroup now at its path; re-bind them
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


def complete_policy_change(manager: Manager, unit: Unit) -> bool:
    """Step 5: make the kernel enforce the recorded policy generation (lock held).

    The states a change cut off by a crash leaves (see :mod:`ipacctd.manager.generation`):
    the kernel enforces the recorded generation and only the metadata's rollback is left
    (the change's last step was cut); the unit's links are severed (no cgroup at its path:
    nothing enforces anything, so the records are settled); or the kernel enforces an
    older generation, and the recorded policy is applied again — or, when it cannot be,
    the recorded rollback policy (:func:`roll_back`). True when something was done.
    """
    pin_dir = manager.store.pin_dir(unit.name)
    kgen = generation.read(pin_dir)
    if kgen == unit.generation:
        return drop_rollback(manager, unit)
    fs = cgroup.fs_path(unit.cgroup)
    if not cgroup.exists(fs):
        generation.write(pin_dir, unit.generation)
        drop_rollback(manager, unit)
        return True
    log.warning(
        "unit %s: kernel enforces policy generation %s, recorded %s; re-applying",
        unit.name,
        kgen,
        unit.generation,
    )
    try:
        _enforce(manager, unit, fs)
    except Error as exc:
        if unit.rollback is None:
            raise
        log.error(
            "unit %s: cannot apply the recorded policy (%s); returning to the previous one",
            unit.name,
            exc,
        )
        roll_back(manager, unit, fs)
        return True
    drop_rollback(manager, unit)
    return True


def roll_back(manager: Manager, unit: Unit, fs: str) -> Unit:
    """Return a unit whose recorded policy cannot be applied to its rollback policy, as a
    change of its own (the four steps of :meth:`Manager._commit_properties`: intent, swap,
    kernel generation, done), so that a crash part-way is completed by the next
    :func:`reconcile`. Returns the unit as now recorded."""
    assert unit.rollback is not None
    back = replace(unit, properties=unit.rollback, generation=unit.generation + 1, rollback=None)
    manager.store.write(unit.name, replace(back, rollback=unit.rollback).to_json())
    _enforce(manager, back, fs)
    manager.store.write(unit.name, back.to_json())
    return back


def _enforce(manager: Manager, unit: Unit, fs: str) -> None:
    """Swap the unit's recorded policy in on ``fs``, then record its generation in the
    kernel — only once its programs are in place: "equal" always means "enforced"."""
    pin_dir = manager.store.pin_dir(unit.name)
    with UnitDatapath.open(pin_dir) as dp:
        dp.apply(spec_for(unit.properties), fs)
    generation.write(pin_dir, unit.generation)


def drop_rollback(manager: Manager, unit: Unit) -> bool:
    """The last step of a policy change: the metadata no longer needs the policy to return
    to. True when it had one (and it was dropped)."""
    if unit.rollback is None:
        return False
    manager.store.write(unit.name, replace(unit, rollback=None).to_json())
    return True


def repin_stopped_service(manager: Manager, unit: Unit) -> bool:
    """Step 6a: a unit systemd arms whose pins are lost (a reboot empties bpffs) while its
    service has no cgroup: pin its programs again — a fresh counters map, as
    :func:`rebuild_datapath` does for a live cgroup — so that the drop-in names programs
    that exist before the service's next start."""
    pin_dir = manager.store.pin_dir(unit.name)
    fs = cgroup.fs_path(unit.cgroup)
    if os.path.exists(os.path.join(pin_dir, COUNTERS)) or cgroup.exists(fs):
        return False
    log.error(
        "unit %s: its pins are lost while %s is stopped; pinning its programs "
        "again (its counters start from zero)",
        unit.name,
        unit.systemd_service,
    )
    bpffs.remove_tree(pin_dir)
    with UnitDatapath.create(pin_dir, None, spec_for(unit.properties)):
        pass
    generation.write(pin_dir, unit.generation)
    return True


def restore_dropin(manager: Manager, unit: Unit) -> bool:
    """Step 6b: the unit's systemd drop-in is missing or changed: write it again (and
    daemon-reload, so that the service's next start attaches the pinned programs)."""
    assert unit.systemd_service is not None
    text = manager._dropin(unit)
    if systemd.read(unit.systemd_service) == text:
        return False
    log.error(
        "unit %s: the systemd drop-in %s is missing or changed; writing it again",
        unit.name,
        systemd.dropin_path(unit.systemd_service),
    )
    systemd.arm(unit.systemd_service, text)
    return True


def sync_service_cgroup(manager: Manager, unit: Unit) -> bool:
    """Step 6c: the cgroup of the running service runs the unit's pinned programs.

    A start that read the pins just before a policy swap renamed them runs the previous
    programs: swapped now. Programs missing there (systemd failed to attach them) are
    attached (BPF_PROG_ATTACH, as systemd would: never twice).
    """
    fs = cgroup.fs_path(unit.cgroup)
    if not cgroup.exists(fs):
        return False
    try:
        dp = UnitDatapath.open(manager.store.pin_dir(unit.name))
    except NotFound:
        return False
    done = False
    with dp:
        if dp.replace_stale(fs):
            log.warning(
                "unit %s: %s started with the previous policy's programs (a start "
                "during a policy change); swapped for the current ones",
                unit.name,
                unit.systemd_service,
            )
            done = True
        if not dp.attached_to(fs) and cgroup.exists(fs):
            log.error(
                "unit %s: systemd did not attach its programs to %s; attaching them",
                unit.name,
                unit.cgroup,
            )
            dp.attach_pinned(fs)
            done = True
    return done
