"""``ipacctd``: the systemctl/systemd-run-like command line.

Each group of verbs lives in its own module (``run``, ``query``, ``change``); this one
parses arguments, builds the engine and turns ipacctd errors into one-line messages and
exit codes.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from ipacctd import __version__

EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 4  # like systemctl for unknown units
EXIT_PERMISSION = 77  # EX_NOPERM
EXIT_UNSUPPORTED = 69  # EX_UNAVAILABLE


def build_parser(verb: str | None = None) -> argparse.ArgumentParser:
    """The argument parser of every verb; with ``verb``, only that verb's sub-parser (the
    rest of the command line parses the same, and ``run`` starts sooner)."""
    p = argparse.ArgumentParser(
        prog="ipacctd",
        description="Per-service IP accounting and IP address firewall on cgroup eBPF.")
    p.add_argument("--version", action="version", version=f"ipacctd {__version__}")
    p.add_argument("--state-dir", help="metadata directory (default /run/ipacctd)")
    p.add_argument("--bpf-dir", help="bpffs pin directory (default /sys/fs/bpf/ipacctd)")
    p.add_argument("--cgroup-root", help="cgroup of ipacctd's own units (default /ipacctd)")
    p.add_argument("--unit-dir", help="unit file directory (default /etc/ipacctd/units)")
    sub = p.add_subparsers(dest="verb", metavar="COMMAND")
    sub.required = True
    for name, add in _VERBS.items():
        if verb is None or name == verb:
            add(sub)
    return p


def _add_run(sub: argparse._SubParsersAction) -> None:
    r = sub.add_parser("run", help="run a command in a new unit with accounting and firewall")
    r.add_argument("--unit", "-u", help="unit name (default run-u<N>.service)")
    r.add_argument("-p", "--property", action="append", default=[], metavar="NAME=VALUE",
                   help="set a property (repeatable), e.g. IPAddressDeny=1.1.1.1")
    r.add_argument("--description", help="unit description")
    r.add_argument("--wait", action="store_true",
                   help="print a summary with the traffic when the command ends")
    r.add_argument("--quiet", "-q", action="store_true", help="no 'Running as unit' line")
    r.add_argument("--allow-unenforced", action="store_true",
                   help="start even when the firewall cannot be enforced here")
    r.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD [ARGS...]")


def _add_status(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("status", help="show units like systemctl status")
    s.add_argument("units", nargs="*", metavar="UNIT")
    s.add_argument("--json", action="store_true", help="print JSON")


def _add_list_units(sub: argparse._SubParsersAction) -> None:
    ls = sub.add_parser("list-units", help="list units with their traffic")
    ls.add_argument("--all", "-a", action="store_true", help="include inactive units")
    ls.add_argument("--json", action="store_true", help="print JSON")


def _add_show(sub: argparse._SubParsersAction) -> None:
    sh = sub.add_parser("show", help="show properties as KEY=VALUE like systemctl show")
    sh.add_argument("units", nargs="+", metavar="UNIT")
    sh.add_argument("-p", "--property", action="append", default=[], metavar="NAME",
                    help="only these properties (repeatable, or comma-separated)")
    sh.add_argument("--value", action="store_true", help="print values only")
    sh.add_argument("--json", action="store_true", help="print JSON")


def _add_set_property(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser("set-property", help="change properties of a unit, live and atomically")
    sp.add_argument("unit", metavar="UNIT")
    sp.add_argument("assignments", nargs="+", metavar="NAME=VALUE")


def _add_stop(sub: argparse._SubParsersAction) -> None:
    st = sub.add_parser("stop", help="terminate the processes of units")
    st.add_argument("units", nargs="+", metavar="UNIT")


def _add_reset(sub: argparse._SubParsersAction) -> None:
    rs = sub.add_parser("reset", help="forget inactive units and their counters")
    rs.add_argument("units", nargs="+", metavar="UNIT")


def _add_attach(sub: argparse._SubParsersAction) -> None:
    at = sub.add_parser("attach", help="bind a policy to an existing cgroup")
    at.add_argument("cgroup", metavar="CGROUP",
                    help="cgroup path relative to the cgroup2 mount, e.g. "
                         "/system.slice/nginx.service")
    at.add_argument("--unit", "-u", help="unit name (default: the cgroup's last component)")
    at.add_argument("-p", "--property", action="append", default=[], metavar="NAME=VALUE")
    at.add_argument("--allow-unenforced", action="store_true",
                    help="attach even when the firewall cannot be enforced here")


def _add_detach(sub: argparse._SubParsersAction) -> None:
    dt = sub.add_parser("detach", help="remove a policy from a cgroup, leaving the cgroup")
    dt.add_argument("units", nargs="+", metavar="UNIT")


def _add_daemon(sub: argparse._SubParsersAction) -> None:
    d = sub.add_parser("daemon", help="serve D-Bus and Prometheus, follow unit files")
    d.add_argument("--config", help="config file (default /etc/ipacctd/ipacctd.conf)")
    d.add_argument("--bus", help="'system', 'session' or a D-Bus address ('' = none)")
    d.add_argument("--no-bus", action="store_true",
                   help="no D-Bus: serve /metrics and the unit files alone")
    d.add_argument("--listen", help="HOST:PORT of /metrics ('' turns it off)")
    d.add_argument("--poll-interval", type=float, help="seconds between counter polls")
    d.add_argument("--retention", type=float,
                   help="seconds an inactive unit stays before it is removed")


def _add_reload(sub: argparse._SubParsersAction) -> None:
    sub.add_parser("reload", help="make the daemon re-read the unit files")


def _add_inspect(sub: argparse._SubParsersAction) -> None:
    ins = sub.add_parser("inspect", help="a unit's programs, maps and links (like bpftool)")
    ins.add_argument("units", nargs="+", metavar="UNIT")
    ins.add_argument("--instructions", "-i", action="store_true",
                     help="also print the programs' (xlated) instructions")
    ins.add_argument("--json", action="store_true", help="print JSON")


def _add_top(sub: argparse._SubParsersAction) -> None:
    tp = sub.add_parser("top", help="live view of units by traffic rate and program cost")
    tp.add_argument("-d", "--delay", type=float, default=1.0, help="refresh interval (s)")
    tp.add_argument("-n", "--iterations", type=int, help="print N snapshots, then exit")
    tp.add_argument("--once", action="store_true", help="print one snapshot and exit")
    tp.add_argument("--no-stats", action="store_true",
                    help="do not switch on BPF run-time statistics")


def _add_completion(sub: argparse._SubParsersAction) -> None:
    from ipacctd.cli.completion import add_parser

    add_parser(sub)


def _add_oci_hook(sub: argparse._SubParsersAction) -> None:
    oh = sub.add_parser(
        "oci-hook", help="(run by the container runtime as an OCI prestart hook) bind a "
        "container's unit file policy before the container runs; see contrib/oci/")
    oh.add_argument("--verbose", "-v", action="store_true",
                    help="say on stderr which unit was bound")


#: Sub-parser builders in help order.
_VERBS: dict[str, Callable[[argparse._SubParsersAction], None]] = {
    "run": _add_run,
    "status": _add_status,
    "list-units": _add_list_units,
    "show": _add_show,
    "set-property": _add_set_property,
    "stop": _add_stop,
    "reset": _add_reset,
    "attach": _add_attach,
    "detach": _add_detach,
    "daemon": _add_daemon,
    "reload": _add_reload,
    "inspect": _add_inspect,
    "top": _add_top,
    "completion": _add_completion,
    "oci-hook": _add_oci_hook,
}
#: Global options that take a value (in a separate word unless written ``--opt=value``).
_VALUED = ("--state-dir", "--bpf-dir", "--cgroup-root", "--unit-dir")


def _verb_of(argv: Sequence[str]) -> str | None:
    """The verb of a command line when it is a known one and plainly placed (after the
    global options, none abbreviated); None means: build the whole parser."""
    words = iter(argv)
    for word in words:
        if word in _VALUED:
            next(words, None)
        elif word.split("=", 1)[0] in _VALUED:
            continue
        elif word in _VERBS:
            return word
        else:  # -h, --version, an abbreviation, a typo: the full parser handles it
            return None
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    from ipacctd.errors import Error, InvalidInput, NotFound, NotSupported, PermissionDenied
    from ipacctd.journal import error_line

    if argv is None:
        argv = sys.argv[1:]
    args = build_parser(_verb_of(argv)).parse_args(argv)
    try:
        if args.verb == "run":
            from ipacctd.cli import run as mod
        elif args.verb == "inspect":
            from ipacctd.cli import inspect as mod  # type: ignore[no-redef]
        elif args.verb == "top":
            from ipacctd.cli import top as mod  # type: ignore[no-redef]
        elif args.verb == "completion":
            from ipacctd.cli import completion as mod  # type: ignore[no-redef]
        elif args.verb == "oci-hook":
            from ipacctd.cli import ocihook as mod  # type: ignore[no-redef]
        elif args.verb in ("daemon", "reload"):
            from ipacctd.cli import daemon as mod  # type: ignore[no-redef]
        elif args.verb in ("status", "list-units", "show"):
            from ipacctd.cli import query as mod  # type: ignore[no-redef]
        else:
            from ipacctd.cli import change as mod  # type: ignore[no-redef]
        return mod.dispatch(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    except Error as exc:
        # an error in the journal too
        print(error_line(f"ipacctd: {exc}{_missing(args.verb, exc)}"), file=sys.stderr)
        codes = ((InvalidInput, EXIT_USAGE), (NotFound, EXIT_NOT_FOUND),
                 (PermissionDenied, EXIT_PERMISSION), (NotSupported, EXIT_UNSUPPORTED))
        return next((code for cls, code in codes if isinstance(exc, cls)), EXIT_FAILURE)
    except MemoryError:
        # Outside the engine's changes (which undo what they started and raise OutOfMemory,
        # an Error): a read, the parser. Still one line, not a traceback.
        from ipacctd.errors import OutOfMemory

        print(error_line(f"ipacctd: out of memory ({OutOfMemory.HINT})"), file=sys.stderr)
        return EXIT_FAILURE
    except OSError as exc:
        # A safety net: an unmapped system error is still one line, not a traceback.
        where = f": {exc.filename}" if exc.filename else ""
        print(error_line(f"ipacctd: {exc.strerror or exc}{where}"), file=sys.stderr)
        return EXIT_PERMISSION if isinstance(exc, PermissionError) else EXIT_FAILURE


READ_VERBS = frozenset({"status", "list-units", "show", "inspect", "top"})


def _missing(verb: str, exc: Exception) -> str:
    """For a user refused a read: what is missing, and the two ways to get it."""
    import os

    from ipacctd.errors import PermissionDenied

    if not isinstance(exc, PermissionDenied) or os.geteuid() == 0 or verb not in READ_VERBS:
        return ""
    from ipacctd.cli import remote

    why = remote.why_no_daemon or "the ipacctd daemon is not reachable"
    return (f". '{verb}' reads root's state directly, or — for any user — through "
            f"the ipacctd daemon's D-Bus API ({remote.BUS_NAME} on the system bus), and {why}."
            " Run it as root, or start the daemon (systemctl start ipacctd).")
