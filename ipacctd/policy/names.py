"""Unit names, validated like systemd's (restricted to the ``.service``/``.scope`` types)."""

from __future__ import annotations

import os
from collections.abc import Iterable

from ipacctd.errors import InvalidInput

#: Prefix of the directory a unit's datapath is built in before it is renamed into place
#: (``~tmp-PIN-PID``; ``~`` appears in no pin name). The engine sweeps those of dead PIDs.
TMP_PIN_PREFIX = "~tmp-"

#: Longest escaped form (:func:`pin_name`) accepted. A name is stored as a file or directory
#: name in four places, each at most NAME_MAX = 255 bytes: the cgroup (the name), the
#: metadata file (name + ``.json``), its temporary file (``.NAME.PID.tmp``) and the pin
#: directory, built as ``~tmp-PIN-PID`` and renamed to PIN. With a PID of up to 7 digits
#: (pid_max <= 4194304) the longest of these is 13 bytes over PIN, and PIN is never
#: shorter than the name: PIN <= 242 bytes covers them all.
MAX_PIN_NAME_LENGTH = 255 - len(TMP_PIN_PREFIX) - len("-4194304")

#: Longest unit name accepted, suffix included: the suffix's dot escapes to two bytes, so
#: no longer name can fit :data:`MAX_PIN_NAME_LENGTH` (names with more ``.``/``_`` must be
#: shorter still; the validator says so).
MAX_NAME_LENGTH = MAX_PIN_NAME_LENGTH - 1


def tmp_pin_name(pin: str, pid: int) -> str:
    """The temporary name process ``pid`` builds pin directory ``pin`` under."""
    return f"{TMP_PIN_PREFIX}{pin}-{pid}"


def tmp_pin_pid(entry: str) -> int | None:
    """The PID that builds under temporary pin name ``entry`` (None: not such a name)."""
    if not entry.startswith(TMP_PIN_PREFIX):
        return None
    try:
        return int(entry.rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return None


def pin_name(unit: str) -> str:
    """The bpffs directory name of a unit (bpffs refuses names with a dot).

    ``_`` becomes ``__`` and ``.`` becomes ``_d``: reversible, so names never collide.
    """
    return unit.replace("_", "__").replace(".", "_d")


def unpin_name(pin: str) -> str | None:
    """The unit name of a bpffs directory name (inverse of :func:`pin_name`; None when
    ``pin`` is no such name).

    Split at each ``__`` from the left (the pairs a left-to-right reading of the escapes
    takes): within a piece every ``_`` must start ``_d``. String methods rather than a loop
    over characters: the daemon reads every pin directory's name on each sync (10,000 at
    10,000 units)."""
    pieces = pin.split("__")
    for piece in pieces:
        if "_" in piece.replace("_d", ""):
            return None
    return "_".join(piece.replace("_d", ".") for piece in pieces)


#: Unit types ipacctd manages.
SUFFIXES = (".service", ".scope")

#: Other systemd unit types: a name ending in one of these is rejected, not mangled.
OTHER_SUFFIXES = (
    ".socket",
    ".target",
    ".device",
    ".mount",
    ".automount",
    ".swap",
    ".timer",
    ".path",
    ".slice",
)

#: The characters a unit name may hold (a set, not a regular expression: compiling one is
#: ~0.2 ms of every command's start-up).
_ALLOWED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789:_.\\@-")


def validate_unit_name(name: str) -> str:
    """Validate a unit name and return it, with ``.service`` appended if it has no suffix.

    Rules: characters ``A-Z a-z 0-9 : _ . \\ @ -`` only, not starting with ``.`` or ``-``,
    at most :data:`MAX_NAME_LENGTH` characters with the suffix and at most
    :data:`MAX_PIN_NAME_LENGTH` bytes escaped (every place it is stored fits NAME_MAX),
    type ``.service`` or ``.scope`` (another systemd type is an error; any other ending
    counts as part of the name, so ``org.example.web`` becomes ``org.example.web.service``),
    at most one ``@`` with a non-empty prefix and instance (templates cannot be run).

    Raises:
        InvalidInput: naming the name and the rule it breaks.
    """
    if not isinstance(name, str):
        raise InvalidInput(f"invalid unit name {name!r}: not a string")

    def bad(rule: str) -> InvalidInput:
        return InvalidInput(f"invalid unit name {name!r}: {rule}")

    if not name:
        raise bad("must not be empty")
    if "\0" in name:
        raise bad("must not contain NUL")
    if "/" in name:
        raise bad("must not contain '/'")
    if name in (".", ".."):
        raise bad("must not be '.' or '..'")
    if not _ALLOWED.issuperset(name):
        odd = next(c for c in name if c not in _ALLOWED)
        raise bad(f"character {odd!r} is not allowed (only A-Z a-z 0-9 : _ . \\ @ -)")
    if name[0] in ".-":
        raise bad(f"must not start with {name[0]!r}")
    if name.endswith(OTHER_SUFFIXES):
        raise bad("unit type is not supported (only " + " and ".join(SUFFIXES) + ")")
    full = name if name.endswith(SUFFIXES) else name + ".service"
    prefix = full.rsplit(".", 1)[0]
    if not prefix:
        raise bad("the name before the suffix is empty")
    if len(full) > MAX_NAME_LENGTH:
        raise bad(f"longer than {MAX_NAME_LENGTH} characters")
    escaped = len(pin_name(full))
    if escaped > MAX_PIN_NAME_LENGTH:
        raise bad(
            f"too long: stored as a {escaped}-byte file name ('_' and '.' count twice), "
            f"at most {MAX_PIN_NAME_LENGTH}"
        )
    if "@" in prefix:
        head, _, instance = prefix.partition("@")
        if "@" in instance:
            raise bad("must contain at most one '@'")
        if not head:
            raise bad("must not start with '@'")
        if not instance:
            raise bad("is a template (nothing between '@' and the suffix)")
    return full


def transient_name(existing: Iterable[str]) -> str:
    """Return the first free name ``run-u<N>.service`` (N = 1, 2, ...) not in ``existing``."""
    taken = set(existing)
    # Among len(taken) + 1 candidates at least one is free.
    for n in range(1, len(taken) + 2):
        candidate = f"run-u{n}.service"
        if candidate not in taken:
            return candidate
    raise AssertionError("unreachable: pigeonhole")  # pragma: no cover


#: The characters that make a word a glob (fnmatch's): a ``ControlGroup=`` value of a unit
#: file, a unit name on a command line (``list-units 'web*'``).
GLOB_CHARS = "*?["


def is_glob(pattern: str) -> bool:
    """Whether a pattern (or one component of a ``ControlGroup=`` path) is a glob."""
    # GLOB_CHARS written out: a generator over them costs ~2.5 µs a call, and the daemon's
    # binder asks for each of thousands of cgroups a glob matches.
    return "*" in pattern or "?" in pattern or "[" in pattern


def candidate_paths(directory: str | os.PathLike[str], name: str) -> list[str]:
    """The files of ``directory`` that would define unit ``name`` (see
    :func:`ipacctd.policy.unitfile.unit_name_for_path`), in the order
    :func:`~ipacctd.policy.unitfile.load_unit_dir` reads them. Here, not in the unit-file
    parser, so that a start with no unit file (the usual ``ipacctd run``) looks for one
    without importing the parser."""
    full = validate_unit_name(name)
    bases = {full, full + ".unit"}
    if full.endswith(".service"):
        bases.add(full[: -len(".service")] + ".unit")
    return [os.path.join(os.fspath(directory), b) for b in sorted(bases)]
