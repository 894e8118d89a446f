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

Several matching files merge as in the daemon's binder (:func:`merge_order`: glob files
first, then exact paths, each by file name, as systemd's drop-ins).

Fail closed: when a unit file matches (or a unit file cannot be read, so that nobody can
tell whether it would match) and the policy cannot be put in force, the hook exits 1 with
one line on stderr, and the runtime refuses to start the container. A container that no
unit file matches is let through at once, with nothing done.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from ipacctd.errors import AlreadyExists, Corrupt, Error, InvalidInput, NotFound
from ipacctd.manager.config import Config
from ipacctd.policy.unitfile import load_unit_dir, merge_order, merged_properties

if TYPE_CHECKING:
    from ipacctd.containers import ContainerInfo
    from ipacctd.policy.unitfile import UnitFile

MAX_STATE = 1 << 20  # the OCI state is a few KiB; refuse absurd input rather than hang on it


class HookRefused(Error):
    """The container must not start: its policy cannot be put in force."""


def dispatch(args: argparse.Namespace) -> int:
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
        # Several files: merged in the daemon's binder's order (as systemd's drop-ins).
        files, (last, pattern) = merge_order(matches)
        info = containers.from_state(state, rel)
        name = bind(config, files, last.unit_name_for(pattern, rel, info), rel, info, pid)
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


def bind(
    config: Config,
    files: tuple[UnitFile, ...],
    name: str,
    rel: str,
    info: ContainerInfo,
    pid: int,
) -> str:
    """Put the merged policy of ``files`` in force on cgroup ``rel`` as unit ``name`` (or
    the unit already bound there); returns the unit's name."""
    from ipacctd.manager.engine import Manager

    mgr = Manager(config)
    props = merged_properties(files)
    source = files[-1].path
    # The daemon may bind (or let go of) the same cgroup at the same moment: look again.
    for _ in range(3):
        existing = _unit_on(mgr, name, rel)
        try:
            if existing is None:
                mgr.attach(rel, name=name, base=props, source=source, container=info)
            else:
                name = existing
                mgr.rebind(name)
                if mgr.unit(name).properties != props:
                    mgr.replace_properties(name, props)
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
        except (NotFound, Corrupt):  # a broken unit: its cgroup is unknown
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
