"""``ipacctd``'s argument parser (argparse): every verb's options, usage and help.

:mod:`ipacctd.cli.main` asks for it only when :func:`ipacctd.cli.runline.parse_run` does not
read the command line itself (every verb but a plain ``run``); ``ipacctd completion`` and the
man pages are generated from :func:`build_parser`. The global options and ``run``'s come from
the tables in :mod:`ipacctd.cli.runline`.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from ipacctd import __version__
from ipacctd.cli.runline import APPEND, FLAG, GLOBAL_OPTIONS, RUN_OPTIONS, Option


class VerbParser(argparse.ArgumentParser):
    """A parser that reads a verb's words as systemctl does: unit names and options in any
    order (``show web -p ActiveState --value db``), and a mistake reported with the verb's
    own usage line, not the top-level one.

    argparse's intermixed parsing cannot parse a sub-command or a ``REMAINDER`` (``run``'s
    command line), so the top-level parser and ``run`` parse as usual. A bare ``--json`` is
    ``--json=pretty`` (systemctl's ``--json=`` takes its mode after ``=``; the bare form was
    ipacctd's before), so that ``--json UNIT`` never takes the unit for a mode.
    """

    _inside = False  # parse_known_intermixed_args calls parse_known_args twice itself

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        kwargs.setdefault("formatter_class", _HelpFormatter)  # sub-parsers are VerbParsers too
        super().__init__(*args, **kwargs)

    def _intermixed(self) -> bool:
        return not any(a.nargs in (argparse.PARSER, argparse.REMAINDER)
                       for a in self._get_positional_actions())

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        if self._inside or not self._intermixed():
            return super().parse_known_args(args, namespace)
        json_opt = self._option_string_actions.get("--json")
        if args is not None and json_opt is not None and json_opt.nargs != 0:
            args = list(args)
            end = args.index("--") if "--" in args else len(args)
            args[:end] = ["--json=pretty" if a == "--json" else a for a in args[:end]]
        self._inside = True
        try:
            ns, extras = self.parse_known_intermixed_args(args, namespace)
        finally:
            self._inside = False
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return ns, extras


class _HelpFormatter(argparse.HelpFormatter):
    """argparse's help formatter, given the width argparse would find itself — without
    importing :mod:`shutil` (and with it bz2, lzma, fnmatch: milliseconds of every command's
    start-up) for it, as argparse does: it makes a formatter for every option it adds."""

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: int | None = None) -> None:
        if width is None:
            width = _terminal_columns() - 2  # as argparse
        super().__init__(prog, indent_increment, max_help_position, width)


#: Where gettext takes the message languages from, in its order (the first one set counts).
_LANGUAGE_VARIABLES = ("LANGUAGE", "LC_ALL", "LC_MESSAGES", "LANG")


def _untranslated() -> None:
    """Spare argparse its message catalogue lookups when there is no catalogue to find.

    argparse passes each of its texts through gettext as it builds a parser (every option's
    help, every usage word), and gettext looks for the catalogue again each time (and
    imports :mod:`locale` the first time): ~2 ms of every command. Under the C locale —
    the first language C or POSIX, or C.UTF-8 with no catalogue of that name — gettext
    stops at "C" and returns every text unchanged, so argparse is given that identity
    itself. Under any other language nothing changes.
    """
    import gettext  # argparse imported it

    value = next((v for v in map(os.environ.get, _LANGUAGE_VARIABLES) if v), "C")
    first = value.split(":")[0]
    if first not in ("C", "POSIX"):
        if first not in ("C.UTF-8", "C.utf8"):
            return
        domain = gettext.textdomain()  # as gettext.gettext looks it up: C.UTF-8, then C
        catalogue = os.path.join(
            gettext.bindtextdomain(domain), "C.UTF-8", "LC_MESSAGES", f"{domain}.mo")
        if os.path.exists(catalogue):
            return
    argparse._ = _same  # type: ignore[attr-defined]
    argparse.ngettext = _singular_or_plural  # type: ignore[attr-defined]


def _same(message: str) -> str:
    return message


def _singular_or_plural(singular: str, plural: str, n: int) -> str:
    return singular if n == 1 else plural  # gettext.ngettext without a catalogue


def _terminal_columns() -> int:
    """``shutil.get_terminal_size().columns``, found the same way: ``$COLUMNS``, else the
    width of the terminal on stdout, else 80."""
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns or 80


class _ValueOf(argparse.Action):
    """``-P NAME``: systemctl's short form of ``--value --property=NAME``."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        namespace.property = [*(getattr(namespace, "property", None) or []), values]
        namespace.value = True


def _output_options(p: argparse.ArgumentParser, json: bool = True, legend: bool = False,
                    full: bool = False) -> None:
    """systemctl's output options, where systemctl has them for the verb."""
    p.add_argument("--no-pager", action="store_true", help="do not pipe output into a pager")
    if legend:
        p.add_argument("--no-legend", action="store_true",
                       help="no column headers and footer")
    if full:
        p.add_argument("-l", "--full", action="store_true",
                       help="do not cut columns to the terminal width")
    if json:
        p.add_argument("--json", choices=("pretty", "short", "off"), metavar="MODE",
                       help="print JSON: pretty, short (one line) or off (text); "
                            "a bare --json is --json=pretty")


def build_parser(verb: str | None = None) -> argparse.ArgumentParser:
    """The argument parser of every verb; with ``verb``, only that verb's sub-parser (the
    rest of the command line parses the same, and ``run`` starts sooner)."""
    p = VerbParser(
        prog="ipacctd",
        description="Per-service IP accounting and IP address firewall on cgroup eBPF.")
    p.add_argument("--version", action="version", version=f"ipacctd {__version__}")
    _add_options(p, GLOBAL_OPTIONS)
    sub = p.add_subparsers(dest="verb", metavar="COMMAND")
    sub.required = True
    for name, add in _VERBS.items():
        if verb is None or name == verb:
            add(sub)
    return p


def _add_run(sub: argparse._SubParsersAction) -> None:
    r = sub.add_parser("run", help="run a command in a new unit with accounting and firewall")
    _add_options(r, RUN_OPTIONS)
    r.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD [ARGS...]")


def _add_options(p: argparse.ArgumentParser, table: Sequence[Option]) -> None:
    """The options of a table in :mod:`ipacctd.cli.runline` (what its own reader knows)."""
    for o in table:
        if o.kind == FLAG:
            p.add_argument(*o.flags, dest=o.dest, action="store_true", help=o.help)
        elif o.kind == APPEND:
            p.add_argument(*o.flags, dest=o.dest, action="append", default=[],
                           metavar=o.metavar, help=o.help)
        else:
            p.add_argument(*o.flags, dest=o.dest, metavar=o.metavar, help=o.help)


def _state_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--state", action="append", default=[], metavar="STATE",
                   help="only units in these states (active, failed, running, ...; "
                        "repeatable or comma-separated; 'help' lists them)")


def _add_status(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("status", help="show units like systemctl status")
    s.add_argument("units", nargs="*", metavar="UNIT", help="unit names or glob patterns")
    _state_option(s)
    _output_options(s, full=True)


def _add_list_units(sub: argparse._SubParsersAction) -> None:
    ls = sub.add_parser("list-units", help="list units with their traffic")
    ls.add_argument("patterns", nargs="*", metavar="PATTERN",
                    help="only units whose names match these glob patterns")
    ls.add_argument("--all", "-a", action="store_true", help="include inactive units")
    _state_option(ls)
    _output_options(ls, legend=True, full=True)


def _add_show(sub: argparse._SubParsersAction) -> None:
    sh = sub.add_parser("show", help="show properties as KEY=VALUE like systemctl show")
    sh.add_argument("units", nargs="+", metavar="UNIT", help="unit names or glob patterns")
    sh.add_argument("-p", "--property", action="append", default=[], metavar="NAME",
                    help="only these properties (repeatable, or comma-separated)")
    sh.add_argument("--value", action="store_true", help="print values only")
    sh.add_argument("-P", action=_ValueOf, metavar="NAME", dest="property",
                    help="the value of this property alone (--value --property=NAME)")
    _state_option(sh)
    _output_options(sh)


def _add_is_state(sub: argparse._SubParsersAction, verb: str, state: str) -> None:
    st = sub.add_parser(verb, help=f"whether units are {state} (exit status 0 if any is), "
                                   "like systemctl " + verb)
    st.add_argument("units", nargs="+", metavar="UNIT", help="unit names or glob patterns")
    st.add_argument("--quiet", "-q", action="store_true", help="print nothing, only the exit "
                                                              "status")


def _add_is_active(sub: argparse._SubParsersAction) -> None:
    _add_is_state(sub, "is-active", "active")


def _add_is_failed(sub: argparse._SubParsersAction) -> None:
    _add_is_state(sub, "is-failed", "failed")


def _add_cat(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser("cat", help="print the unit files of units (a transient unit's "
                                   "properties in unit-file form)")
    c.add_argument("units", nargs="+", metavar="UNIT", help="unit names or glob patterns")
    _output_options(c, json=False)


def _add_list_unit_files(sub: argparse._SubParsersAction) -> None:
    lf = sub.add_parser("list-unit-files", help="list the unit files and the units they bind")
    lf.add_argument("patterns", nargs="*", metavar="PATTERN",
                    help="only files whose unit names match these glob patterns")
    _output_options(lf, legend=True, full=True)


def _add_edit(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser("edit", help="edit a unit file in $EDITOR; saved only when valid, "
                                    "then the daemon reloads")
    e.add_argument("unit", metavar="UNIT")
    e.add_argument("--force", action="store_true",
                   help="create the unit file when there is none")


def _add_kill(sub: argparse._SubParsersAction) -> None:
    k = sub.add_parser("kill", help="send a signal to the processes of units ipacctd started")
    k.add_argument("units", nargs="+", metavar="UNIT", help="unit names or glob patterns")
    k.add_argument("-s", "--signal", default="SIGTERM", metavar="SIGNAL",
                   help="signal name or number (default SIGTERM)")
    k.add_argument("--kill-whom", "--kill-who", default="all", metavar="WHOM",
                   help="'all' processes of the unit (default) or its 'main' process")


def _add_set_property(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser("set-property", help="change properties of a unit, live and atomically")
    sp.add_argument("unit", metavar="UNIT")
    sp.add_argument("assignments", nargs="+", metavar="NAME=VALUE")


def _add_stop(sub: argparse._SubParsersAction) -> None:
    st = sub.add_parser("stop", help="terminate the processes of units")
    st.add_argument("units", nargs="+", metavar="UNIT")


def _add_reset(sub: argparse._SubParsersAction) -> None:
    rs = sub.add_parser("reset", help="forget inactive units and their counters")
    rs.add_argument("units", nargs="+", metavar="UNIT",
                    help="unit names, or glob patterns (which skip the units still running)")


def _add_reset_failed(sub: argparse._SubParsersAction) -> None:
    rf = sub.add_parser(
        "reset-failed", help="forget failed units and their counters, like systemctl "
        "reset-failed (all failed units, or those named or matched)")
    rf.add_argument("units", nargs="*", metavar="UNIT")


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


def _add_daemon_reload(sub: argparse._SubParsersAction) -> None:
    sub.add_parser("daemon-reload", help="the same as reload (systemctl's name)")


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
    "is-active": _add_is_active,
    "is-failed": _add_is_failed,
    "cat": _add_cat,
    "list-unit-files": _add_list_unit_files,
    "edit": _add_edit,
    "set-property": _add_set_property,
    "stop": _add_stop,
    "kill": _add_kill,
    "reset": _add_reset,
    "reset-failed": _add_reset_failed,
    "attach": _add_attach,
    "detach": _add_detach,
    "daemon": _add_daemon,
    "reload": _add_reload,
    "daemon-reload": _add_daemon_reload,
    "inspect": _add_inspect,
    "top": _add_top,
    "completion": _add_completion,
    "oci-hook": _add_oci_hook,
}
#: Global options that take a value (in a separate word unless written ``--opt=value``).
_VALUED = tuple(flag for o in GLOBAL_OPTIONS for flag in o.flags)


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


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """The command line as argparse reads it (exits with its usage message on a mistake)."""
    _untranslated()
    return build_parser(_verb_of(argv)).parse_args(argv)
