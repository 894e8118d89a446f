"""``ipacctd oci-hook``: bind a container's policy before its first instruction runs.

Installed as an OCI ``prestart`` (or ``createRuntime``) hook — ``contrib/oci/`` holds the
hooks.d file that podman and CRI-O read — the runtime runs it after it has made the
container's cgroup and put the container's init process in it, and before that process
executes the container's command (runc: ``runc create`` runs these hooks while the init
process waits for ``runc start``). The hook reads the OCI state (``id``, ``pid``,
``bundle``, ``annotations``) on stdin, finds the process's cgroup v2 path in
``/proc/PID/cgroup``, and binds the unit file whose ``[Match] ControlGroup=`` (exact or
glob) matches it, through the engine, without the daemon:

* a new container gets a new unit named after it (``podman-web-5522d0d1ae87.service``, see
  :mod:`ipacctd.containers`), counters from zero;
* a container started again (``podman restart``, ``--restart=always``) has its unit's
  programs re-attached to its new cgroup (:meth:`Manager.rebind`), counters carried on,
  and the unit file's current policy applied.

Fail closed: when a unit file matches (or a unit file cannot be read, so that nobody can
tell whether it would match) and the policy cannot be put in force, the hook exits 1 with
one line on stderr, and the runtime refuses to start the container. A container that no
unit file matches is let through at once, with nothing done.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ipacctd.errors import AlreadyExists, Error, InvalidInput, NotFound

MAX_STATE = 1 << 20  # the OCI state is a few KiB; refuse absurd input rather than hang on it


class HookRefused(Error):
    """The container must not start: its policy cannot be put in force."""


def dispatch(args: argparse.Namespace) -> int:
    from ipacctd.manager.config import Config
    from ipacctd.policy.unitfile import load_unit_dir

    config = Config.from_env(
        state_dir=args.state_dir,
        bpf_dir=args.bpf_dir,
        cgroup_root=args.cgroup_root,
        unit_dir=args.unit_dir,
    )
    raw = sys.stdin.buffer.read(MAX_STATE + 1)
    files, errors = load_unit_dir(config.unit_dir)
    files = [f for f in files if f.cgroups]
    if not files and not errors:
        return 0  # no unit file binds any cgroup: nothing can match
    state = _parse_state(raw)
    what = f"container {str(state.get('id', '?'))[:12]}"
    try:
        if state.get("status") == "stopped":
            return 0  # a poststop call: the daemon notices the end (nothing to enforce)
        pid = state.get("pid")
        if not isinstance(pid, int) or pid <= 0:
            raise HookRefused(
                "the OCI state has no process id (install the hook as a "
                "prestart or createRuntime hook)"
            )
        from ipacctd import containers

        try:
            rel = containers.process_cgroup(pid)
        except (OSError, LookupError) as exc:
            raise HookRefused(f"cannot read the cgroup of process {pid}: {exc}") from None
        what += f" (cgroup {rel})"
        matches = [(f, p) for f in files if (p := f.matches(rel)) is not None]
        if errors:
            # A file that cannot be read might have matched: refuse rather than guess.
            raise HookRefused(f"cannot tell which policy applies: {errors[0]}")
        if not matches:
            return 0
        if len(matches) > 1:
            raise HookRefused(
                "several unit files match it: "
                + ", ".join(f.path for f, _ in matches)
                + " (make their ControlGroup= patterns disjoint)"
            )
        ((unitfile, pattern),) = matches
        info = containers.from_state(state, rel)
        name = bind(config, unitfile, pattern, rel, info, pid)
    except HookRefused as exc:
        print(f"ipacctd oci-hook: {what}: refusing to start it: {exc}", file=sys.stderr)
        return 1
    except Error as exc:
        print(
            f"ipacctd oci-hook: {what}: refusing to start it: its policy cannot be put "
            f"in force: {exc}",
            file=sys.stderr,
        )
        return 1
    if args.verbose:
        print(f"ipacctd oci-hook: {what}: bound unit {name}", file=sys.stderr)
    return 0


def _parse_state(raw: bytes) -> dict[str, Any]:
    if len(raw) > MAX_STATE:
        raise InvalidInput(f"the OCI state on stdin is larger than {MAX_STATE} bytes")
    try:
        state = json.loads(raw)
    except ValueError as exc:
        raise InvalidInput(
            f"the OCI state on stdin is not JSON ({exc}); run as an OCI hook, "
            "which gives the container's state on stdin"
        ) from None
    if not isinstance(state, dict):
        raise InvalidInput("the OCI state on stdin is not a JSON object")
    return state


def bind(config, unitfile, pattern: str, rel: str, info, pid: int) -> str:
    """Put ``unitfile``'s policy in force on cgroup ``rel``; returns the unit's name."""
    from ipacctd.manager.engine import Manager

    mgr = Manager(config)
    name = unitfile.unit_name_for(pattern, rel, info)
    # The daemon may bind (or let go of) the same cgroup at the same moment: look again.
    for _ in range(3):
        existing = _unit_on(mgr, name, rel)
        try:
            if existing is None:
                mgr.attach(
                    rel, name=name, base=unitfile.properties(), source=unitfile.path, container=info
                )
            else:
                name = existing
                mgr.rebind(name)
                if mgr.unit(name).properties != unitfile.properties():
                    mgr.replace_properties(name, unitfile.properties())
            break
        except (AlreadyExists, NotFound):
            continue
    mgr.record_start(name, pid)  # a new run: its main PID, and no longer exited
    _check_enforced(mgr, name)
    return name


def _unit_on(mgr, name: str, rel: str) -> str | None:
    """The unit already bound to ``rel``: ``name`` itself, or one the daemon made."""
    if mgr.store.exists(name):
        unit = mgr.unit(name)
        if unit.cgroup != rel:
            raise HookRefused(f"unit {name} exists already for another cgroup ({unit.cgroup})")
        return name
    for other in mgr.names():
        try:
            if mgr.unit(other).cgroup == rel:
                return other
        except NotFound:
            continue
    return None


def _check_enforced(mgr, name: str) -> None:
    """Refuse unless the kernel says the policy runs on the cgroup now at the unit's path."""
    unit = mgr.unit(name)
    enf = mgr.enforcement(name, unit)
    if enf.enforced:
        return
    if not unit.enforced:
        # Only a unit without a firewall gets here unenforced (the engine refuses the
        # others): the container may run, uncounted, and says so.
        print(
            f"ipacctd oci-hook: warning: unit {name} is not counting: {unit.not_enforced_reason}",
            file=sys.stderr,
        )
        return
    raise HookRefused(f"unit {name}'s policy is not in force after binding: {enf.problem}")
