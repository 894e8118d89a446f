"""``ipacctd run``: a command in a new unit, firewall and counters in force before it starts."""

from __future__ import annotations

# signal.py's C core: the same functions and numbers, without the enums signal.py
# builds at import (~0.5 ms of every run); names of signals come from signal.py where shown.
import _signal as signal
import contextlib
import os
import sys
import time

from ipacctd import cgroup
from ipacctd.cli.engine import manager_for
from ipacctd.cli.spawn import spawn
from ipacctd.errors import Error, InvalidInput, NotFound, NotSupported
from ipacctd.manager import owner
from ipacctd.manager.engine import CLEAN_EXIT, Manager, parse_assignments

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing
if TYPE_CHECKING:
    import argparse  # the namespace of the command line (or runline's, alike)

FORWARDED = (signal.SIGTERM, signal.SIGHUP)
# Keys typed at the terminal reach the command directly (same process group); we ignore them.
IGNORED = (signal.SIGINT, signal.SIGQUIT)


def dispatch(args: argparse.Namespace) -> int:
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise InvalidInput("no command given: ipacctd run [-p NAME=VALUE]... -- CMD [ARGS...]")
    pairs = parse_assignments(args.property)
    mgr = manager_for(args)
    stay_in_service(mgr.config.cgroup_root)
    # The name is ours from now until our record of the command's exit (see manager.owner).
    unit = mgr.start_transient(pairs, name=args.unit, description=args.description,
                               command=command, allow_unenforced=args.allow_unenforced,
                               owned_by=owner.me())
    if not args.quiet:
        print(f"Running as unit: {unit.name}", file=sys.stderr)
    if not unit.enforced:
        print(f"ipacctd: warning: unit {unit.name} is not counting or filtering: "
              f"{unit.not_enforced_reason}", file=sys.stderr)
    return run_in_unit(mgr, unit.name, mgr.cgroup_fs(unit), command, args.wait,
                       owned_by=unit.owner)


def stay_in_service(root: str) -> None:
    """``ipacctd run`` inside a systemd service keeps its command in that service's cgroup
    tree, so that ``systemctl stop``/``kill`` and the service's accounting still reach it:
    the unit's cgroup is a child of the service's cgroup. systemd allows that only in a
    delegated cgroup (``Delegate=yes``, which makes the service cgroup the cgroup root, see
    :func:`ipacctd.cgroup.default_root`); anywhere else the command would leave the
    service, so the run is refused, saying what the service needs."""
    if not cgroup.systemd_booted():
        return
    service = cgroup.service_cgroup(cgroup.own_cgroup())
    if service is None or root == service or root.startswith(service.rstrip("/") + "/"):
        return
    raise NotSupported(
        f"ipacctd run inside {os.path.basename(service)} would take the command out of the "
        f"service's cgroup ({service}) into {root}, beyond the reach of systemctl stop/kill: "
        f"give the service Delegate=yes, so that the command runs in a child cgroup of "
        f"{service}")


def run_in_unit(mgr: Manager, name: str, cgroup_fs: str, command: list[str], wait: bool,
                owned_by: tuple[int, int] | None = None) -> int:
    """Start ``command`` inside the unit's cgroup, wait for it, record the result.

    ``owned_by``: the owner recorded in the unit at its creation; the records and the
    cleanup touch the unit only while it is still that one.
    """
    child: list[int] = []  # the PID, once started
    pending: list[int] = []  # signals that arrived before the child existed

    def forward(signum: int, _frame: object) -> None:
        if child:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child[0], signum)
        else:
            pending.append(signum)

    old = {s: signal.signal(s, forward) for s in FORWARDED}  # exec resets these in the child
    started = time.monotonic()
    try:
        try:
            child.append(spawn(command, cgroup_fs))
        except (FileNotFoundError, PermissionError) as exc:
            # 127/126 like a shell (and env, timeout, nohup); the unit records the same.
            status = 127 if isinstance(exc, FileNotFoundError) else 126
            print(f"ipacctd: cannot run {command[0]}: {exc.strerror}", file=sys.stderr)
            _finish(mgr, name, status, owned_by)
            return status
        except BaseException:
            # Not started (no file descriptors, no memory, ...): the unit must not stay
            # reserved by a run that is going away.
            with contextlib.suppress(Exception):
                _finish(mgr, name, 1, owned_by)
            raise
        # Keys typed at the terminal reach the command directly (same process group).
        old.update({s: signal.signal(s, signal.SIG_IGN) for s in IGNORED})
        for signum in pending:
            forward(signum, None)
        try:
            mgr.record_start(name, child[0], owned_by)
        except (Error, OSError) as exc:  # e.g. a full state dir: the command runs anyway
            print(f"ipacctd: warning: cannot record the start of unit {name}: {exc}",
                  file=sys.stderr)
        _, wstatus = os.waitpid(child[0], 0)
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
    returncode = os.waitstatus_to_exitcode(wstatus)  # -N: killed by signal N
    runtime = time.monotonic() - started
    _finish(mgr, name, returncode, owned_by)
    if wait:
        print_summary(mgr, name, returncode, runtime)
    return returncode if returncode >= 0 else 128 - returncode


def _finish(mgr: Manager, name: str, status: int, owned_by: tuple[int, int] | None) -> None:
    """Record the exit and remove the cgroup; the cgroup goes even when the record cannot
    be written (a full state directory), so no empty cgroup is left behind."""
    try:
        mgr.record_exit(name, status, owned_by)
    except NotFound:
        return  # not our unit any more: nothing of it is ours to clean up
    except (Error, OSError) as exc:
        print(f"ipacctd: warning: cannot record the exit of unit {name}: {exc}",
              file=sys.stderr)
    try:
        mgr.release_cgroup(name, owned_by=owned_by)
    except NotFound:
        pass


def print_summary(mgr: Manager, name: str, returncode: int, runtime: float) -> None:
    """systemd-run --wait's closing lines, plus the dropped traffic."""
    # Imported here: only --wait prints sizes (cli.format pulls in the terminal helpers).
    from ipacctd.cli.format import format_bytes, plural

    err = sys.stderr
    if returncode == 0:
        print("Finished with result: success", file=err)
        print("Main processes terminated with: code=exited/status=0", file=err)
    elif returncode > 0:
        print("Finished with result: exit-code", file=err)
        print(f"Main processes terminated with: code=exited/status={returncode}", file=err)
    else:
        import signal as signals  # the names (only here: --wait, after a signal)

        sig = signals.Signals(-returncode).name[3:]
        # SIGHUP/SIGINT/SIGTERM/SIGPIPE end a service cleanly, as in systemd.
        result = "success" if returncode in CLEAN_EXIT else "signal"
        print(f"Finished with result: {result}", file=err)
        print(f"Main processes terminated with: code=killed/status={sig}", file=err)
    print(f"Service runtime: {_runtime(runtime)}", file=err)
    c = mgr.counters(name)
    unit = mgr.unit(name)
    if c is None:
        print("IP traffic: [not counted]", file=err)
        return
    if unit.properties.ip_accounting:
        print(f"IP traffic received: {format_bytes(c.ingress_bytes)}", file=err)
        print(f"IP traffic sent: {format_bytes(c.egress_bytes)}", file=err)
    if unit.properties.ip_address_deny or c.ingress_dropped_packets or c.egress_dropped_packets:
        print(f"IP traffic dropped: {format_bytes(c.ingress_dropped_bytes)} received "
              f"({plural(c.ingress_dropped_packets, 'packet')}), "
              f"{format_bytes(c.egress_dropped_bytes)} sent "
              f"({plural(c.egress_dropped_packets, 'packet')})", file=err)
    if c.ingress_audit_packets or c.egress_audit_packets:
        print(f"IP traffic that the deny list would drop (audit): "
              f"{format_bytes(c.ingress_audit_bytes)} received, "
              f"{format_bytes(c.egress_audit_bytes)} sent", file=err)


def _runtime(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.3f}s"
    from ipacctd.cli.format import format_timespan

    return format_timespan(seconds)

