"""The global options and ``run``'s options, in one table each; and ``run``'s command line
read without argparse when it is plain.

Why a second reader: ``ipacctd run`` is the verb that scripts call in loops, and its
start-up is what issue 13 measures against ``systemd-run``. argparse costs a run ~3-5 ms
of its ~40 ms in-process (Debian's python3, bench/cli_phases.py: importing argparse and
gettext, building the verb's parser, parsing), for a command line that is nearly always
``run [-q] [-p NAME=VALUE]... [--unit NAME] -- CMD...``. So :func:`parse_run` reads exactly
those forms and gives what argparse would give — the same attributes, the same values — and
gives up (None) on everything else: help, an abbreviation, bundled short options, a value
that looks like an option, a missing command, an unknown word. argparse then parses the
line as before and says what is wrong as before. ``tests/unit/test_runline.py`` holds the
two readers to that: on every command line of a generated corpus, either this one gives
up or both give the same namespace.

The parser (:mod:`ipacctd.cli.parser`) builds its global and ``run`` options from the tables
here, so an option added to a table is known to both readers.
"""

from __future__ import annotations

from types import SimpleNamespace

from ipacctd.record import Record

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (see ipacctd.record)
if TYPE_CHECKING:
    from collections.abc import Sequence

VALUE, APPEND, FLAG = "value", "append", "flag"


class Option(Record):
    """One option: its spellings (as argparse is given them), where its value goes, how it
    takes one, and its help."""

    _fields = ("flags", "dest", "kind", "help", "metavar")
    __slots__ = _fields
    flags: tuple[str, ...]
    dest: str
    kind: str  # VALUE (the last one counts), APPEND (each one added) or FLAG (no value)
    help: str
    metavar: str | None

    def __init__(self, flags: tuple[str, ...], dest: str, kind: str, help: str,
                 metavar: str | None = None) -> None:
        set_ = object.__setattr__
        set_(self, "flags", flags)
        set_(self, "dest", dest)
        set_(self, "kind", kind)
        set_(self, "help", help)
        set_(self, "metavar", metavar)


#: The options before the verb; each takes a value.
GLOBAL_OPTIONS = (
    Option(("--state-dir",), "state_dir", VALUE, "metadata directory (default /run/ipacctd)"),
    Option(("--bpf-dir",), "bpf_dir", VALUE, "bpffs pin directory (default /sys/fs/bpf/ipacctd)"),
    Option(("--cgroup-root",), "cgroup_root", VALUE,
           "cgroup of ipacctd's own units (default /ipacctd)"),
    Option(("--unit-dir",), "unit_dir", VALUE, "unit file directory (default /etc/ipacctd/units)"),
)

#: ``run``'s options; its command (``command``) is everything from the first word that is
#: not an option (``--`` included, as argparse's REMAINDER keeps it).
RUN_OPTIONS = (
    Option(("--unit", "-u"), "unit", VALUE, "unit name (default run-u<N>.service)"),
    Option(("-p", "--property"), "property", APPEND,
           "set a property (repeatable), e.g. IPAddressDeny=1.1.1.1", "NAME=VALUE"),
    Option(("--description",), "description", VALUE, "unit description"),
    Option(("--wait",), "wait", FLAG, "print a summary with the traffic when the command ends"),
    Option(("--quiet", "-q"), "quiet", FLAG, "no 'Running as unit' line"),
    Option(("--allow-unenforced",), "allow_unenforced", FLAG,
           "start even when the firewall cannot be enforced here"),
)

_GLOBALS = {flag: o for o in GLOBAL_OPTIONS for flag in o.flags}
_RUN = {flag: o for o in RUN_OPTIONS for flag in o.flags}


def parse_run(argv: Sequence[str]) -> SimpleNamespace | None:
    """``run``'s command line as argparse's namespace would hold it, or None when it is not
    one of the plain forms (then argparse must read it)."""
    values: dict[str, object] = {o.dest: None for o in GLOBAL_OPTIONS}
    i = _options(argv, 0, _GLOBALS, values)
    if i is None or i >= len(argv) or argv[i] != "run":
        return None
    values["verb"] = "run"
    for o in RUN_OPTIONS:
        values[o.dest] = [] if o.kind == APPEND else False if o.kind == FLAG else None
    i = _options(argv, i + 1, _RUN, values)
    if i is None or i >= len(argv) or (argv[i] == "--" and i + 1 == len(argv)):
        return None  # no command: argparse's parse, then run's own message
    values["command"] = list(argv[i:])
    return SimpleNamespace(**values)


def _options(argv: Sequence[str], i: int, table: dict[str, Option],
             values: dict[str, object]) -> int | None:
    """Read the options in ``table`` from ``argv[i]`` on; the index of the first word that is
    not an option (``--`` or ``-`` included), or None for a word only argparse may read."""
    while i < len(argv):
        word = argv[i]
        if word == "-" or word == "--" or not word.startswith("-"):
            return i
        name, eq, attached = word.partition("=")
        option = table.get(name)
        if option is None or (eq and not name.startswith("--")):
            return None  # unknown, abbreviated, bundled, -h, or -p=...: argparse's to read
        if option.kind == FLAG:
            if eq:
                return None  # --wait=x: argparse's error
            values[option.dest] = True
            i += 1
            continue
        if eq:
            value, i = attached, i + 1
        elif i + 1 < len(argv) and not argv[i + 1].startswith("-"):
            value, i = argv[i + 1], i + 2
        else:
            return None  # no value, or one that looks like an option: argparse decides
        if option.kind == APPEND:
            values[option.dest].append(value)  # type: ignore[union-attr]
        else:
            values[option.dest] = value
    return i
