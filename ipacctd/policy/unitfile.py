"""Per-unit policy files in systemd's INI syntax.

Example ``/etc/ipacctd/units/nginx.unit``::

    [Unit]
    Description=Web server

    [Match]
    ControlGroup=/system.slice/nginx.service

    [Service]
    IPAccounting=yes
    IPAddressDeny=any
    IPAddressAllow=localhost \\
                   10.0.0.0/8

Grammar (systemd's): ``[Section]`` headers; ``#`` and ``;`` comment lines; blank lines;
``Key=Value`` with whitespace around key and value stripped; a backslash at the end of a
line continues the line (the backslash becomes a space; comment lines inside a continuation
are skipped; a continuation still open at end of file is accepted); keys may repeat.
Sections and keys starting with ``X-`` are ignored, as systemd does.

Sections: ``[Unit]`` holds ``Description=``; ``[Match]`` holds ``ControlGroup=`` (the
cgroups the policy binds to); ``[Service]`` holds every other property of
:data:`~ipacctd.policy.properties.PROPERTIES`, so lines can be copied from a ``.service``
file. Repeated assignments follow the properties' semantics (address lists and paths
append, an empty value resets).
"""

from __future__ import annotations

import fnmatch
import functools
import os
import re
import stat
from collections.abc import Callable, Iterator

from ipacctd.errors import InvalidInput
from ipacctd.policy.addresses import collector_paused
from ipacctd.policy.names import SUFFIXES, is_glob, validate_unit_name
from ipacctd.policy.names import candidate_paths as candidate_paths  # its former home
from ipacctd.policy.properties import (
    PROPERTIES,
    Assignment,
    Properties,
    normalize_absolute_path,
)
from ipacctd.record import Record, replace

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing
if TYPE_CHECKING:
    from ipacctd.containers import ContainerInfo

#: File name endings :func:`load_unit_dir` picks up.
UNIT_FILE_SUFFIXES = (".unit", ".service", ".scope")

#: Largest unit file read: ~100k addresses; a bigger file is refused with a clear error.
MAX_UNIT_FILE_BYTES = 4 << 20
#: Longest error message about a unit file's content (and excerpt of a line in it).
MAX_MESSAGE = 300
MAX_EXCERPT = 60

_COMMENTS = "#;"

#: Keys accepted per section (besides ``X-`` keys, which are ignored).
SECTION_KEYS: dict[str, frozenset[str]] = {
    "Unit": frozenset({"Description"}),
    "Match": frozenset({"ControlGroup"}),
    "Service": frozenset(name for name in PROPERTIES if name != "Description"),
}


class UnitFile(Record):
    """A parsed policy file."""

    _fields = ("name", "path", "description", "cgroups", "assignments", "parsed")
    __slots__ = _fields
    _no_compare = _no_repr = ("parsed",)
    name: str
    """Unit name: the file stem plus ``.service`` unless it ends in ``.service``/``.scope``."""
    path: str
    description: str
    cgroups: tuple[str, ...]
    """cgroup path patterns relative to the cgroup2 mount (may contain ``*?[`` globs)."""
    assignments: tuple[tuple[str, str], ...]
    """Every property assignment (``Description=`` included) in file order."""
    parsed: Properties | None
    """:meth:`properties`, merged when the file was parsed (None: merged when asked)."""

    def __init__(
        self,
        name: str,
        path: str,
        description: str,
        cgroups: tuple[str, ...],
        assignments: tuple[tuple[str, str], ...],
        parsed: Properties | None = None,
    ) -> None:
        set_ = object.__setattr__
        set_(self, "name", name)
        set_(self, "path", path)
        set_(self, "description", description)
        set_(self, "cgroups", cgroups)
        set_(self, "assignments", assignments)
        set_(self, "parsed", parsed)

    def properties(self) -> Properties:
        """Return the default properties with :attr:`assignments` applied."""
        if self.parsed is not None:
            return self.parsed
        return Properties().apply(self.assignments)

    def has_glob(self) -> bool:
        """Whether any cgroup pattern contains glob characters."""
        return any(is_glob(pattern) for pattern in self.cgroups)

    def matches(self, rel: str) -> str | None:
        """The first ``ControlGroup=`` pattern matching cgroup path ``rel`` (None: none)."""
        return next((p for p in self.cgroups if cgroup_matches(p, rel)), None)

    def unit_name_for(self, pattern: str, rel: str,
                      container: ContainerInfo | None = None) -> str:
        """The unit that ``pattern`` of this file gives cgroup ``rel``: the file's own name
        for its one exact path; a container's name (``podman-web-5522d0d1ae87.service``)
        for a container's cgroup; else ``<file stem>@<cgroup name>.service``. The OCI hook
        and the daemon's binder both name units here, so they never bind one cgroup twice.
        """
        if not is_glob(pattern) and len(self.cgroups) == 1:
            return self.name
        if container is not None:
            return container.unit_name()
        stem = self.name.rsplit(".", 1)[0]
        base = os.path.basename(rel).replace("@", "-")
        return validate_unit_name(f"{stem}@{base}")


def merge_order(
    matches: list[tuple[UnitFile, str]],
) -> tuple[tuple[UnitFile, ...], tuple[UnitFile, str]]:
    """Files matching one cgroup, as ``(file, matching pattern)`` pairs, in the order their
    assignments merge (as systemd's drop-ins): glob files first, then exact paths, each by
    file name; a file matching twice applies once. Returns the files in that order and
    the last pair, which names the unit (:meth:`UnitFile.unit_name_for`) and is its source.
    Used by the daemon's binder and the OCI hook alike."""
    ordered = sorted(
        matches,
        key=lambda m: (not is_glob(m[1]), os.path.basename(m[0].path),
                       m[0].path),
    )
    files: list[UnitFile] = []
    for f, _ in ordered:
        if all(g.path != f.path for g in files):
            files.append(f)
    return tuple(files), ordered[-1]


def merged_properties(files: tuple[UnitFile, ...] | list[UnitFile]) -> Properties:
    """The policy of overlapping files: every file's assignments, in merge order (one
    file's: its properties as merged when it was parsed, not parsed again)."""
    if len(files) == 1:
        return files[0].properties()
    return Properties().apply(a for f in files for a in f.assignments)


@functools.lru_cache(maxsize=1024)
def component_matcher(part: str) -> Callable[[str], bool]:
    """How one component of a ``ControlGroup=`` pattern matches a cgroup's name, as the
    shell's glob matches a file's: equal for a literal; for a glob, fnmatch's syntax,
    case-sensitive, the whole name (``*`` never crosses a ``/``), and a name starting with
    a dot only for a component that starts with one. The daemon's listing
    (:func:`ipacctd.daemon.binder.glob_cgroups`), its pass over the cgroups just made and
    the OCI hook all match here, so they agree on every cgroup."""
    if not is_glob(part):
        return part.__eq__
    match = re.compile(fnmatch.translate(part)).match
    if part.startswith("."):
        return lambda name: match(name) is not None
    return lambda name: name[:1] != "." and match(name) is not None


def cgroup_matches(pattern: str, rel: str) -> bool:
    """Whether a cgroup path matches a ``ControlGroup=`` value: equal, or a glob matched
    component by component (:func:`component_matcher`)."""
    if not is_glob(pattern):
        return pattern == rel
    want = [p for p in pattern.split("/") if p]
    have = [p for p in rel.split("/") if p]
    return len(want) == len(have) and all(
        component_matcher(w)(h) for w, h in zip(want, have, strict=True))


def cgroup_leads_to(pattern: str, rel: str) -> bool:
    """Whether cgroups below ``rel`` may match a ``ControlGroup=`` value: ``rel`` matches
    its leading components (and is not the whole of it)."""
    want = [p for p in pattern.split("/") if p]
    have = [p for p in rel.split("/") if p]
    return len(have) < len(want) and all(
        component_matcher(w)(h) for w, h in zip(want, have, strict=False))


def unit_name_for_path(path: str) -> str:
    """Derive the unit name from a policy file's path (``web.unit`` → ``web.service``).

    Raises:
        InvalidInput: if the derived name is not a valid unit name.
    """
    base = os.path.basename(path)
    stem = base if base.endswith(SUFFIXES) else os.path.splitext(base)[0]
    return validate_unit_name(stem)


def validate_cgroup_pattern(value: str) -> str:
    """Validate a ``ControlGroup=`` value and return it normalised.

    It must be absolute (relative to the cgroup2 mount), without ``..`` and NUL; glob
    characters ``*``, ``?`` and ``[`` are allowed. ``//`` and ``/./`` are collapsed and a
    trailing ``/`` is dropped.

    Raises:
        InvalidInput: naming the value.
    """
    return normalize_absolute_path(value, "ControlGroup=")


def _excerpt(text: str, limit: int = MAX_EXCERPT) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


def _logical_lines(text: str) -> Iterator[tuple[int, str]]:
    """Yield ``(first line number, joined line)`` with continuations resolved."""
    parts: list[str] | None = None  # of a continued line (joined once: no quadratic copies)
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        # As systemd: a comment line is skipped before continuations are looked at, so
        # it neither starts nor ends one (a trailing backslash in a comment is inert).
        if raw.lstrip()[:1] in tuple(_COMMENTS):
            continue
        if parts is None:
            start = number
            parts = []
        # An odd run of backslashes at the end continues the line (an even one is escaped
        # backslashes). Earlier parts end in a space, so only this line's end counts.
        if (len(raw) - len(raw.rstrip("\\"))) % 2:
            parts.append(raw[:-1] + " ")
            continue
        parts.append(raw)
        yield start, "".join(parts)
        parts = None
    if parts is not None:
        yield start, "".join(parts)


def parse_unit_file(
    text: str, path: str = "<string>", name: str | None = None, defer: bool = False
) -> UnitFile:
    """Parse a policy file.

    ``name`` defaults to the name derived from ``path`` (see :func:`unit_name_for_path`);
    for the default path ``<string>`` it is ``unnamed.service``.

    Each value is parsed once, on its line (so that an error names the line); the file's
    properties are then merged from the parsed values (:meth:`UnitFile.properties`). With
    ``defer``, address lists are only validated on their lines and parsed when first used.

    Raises:
        InvalidInput: with a message starting ``path:line: `` for assignments outside a
            section, lines without ``=``, unknown sections or keys and invalid values.
    """
    if name is None:
        name = "unnamed.service" if path == "<string>" else _name_or_error(path)
    else:
        name = validate_unit_name(name)
    if text.startswith("\ufeff"):
        text = text[1:]
    parser = _FileParser(defer)
    with collector_paused(len(text)):  # its lines' values may hold 100k+ networks
        for number, raw in _logical_lines(text):
            try:
                parser.line(raw.strip())
            except InvalidInput as e:
                raise _error(f"{path}:{number}: {e}") from None
    try:
        props = Properties().apply(parser.assignments)  # all at once: linear
    except InvalidInput as e:
        raise _error(f"{path}: {e}") from None
    return UnitFile(
        name=name,
        path=path,
        description=props.description,
        cgroups=tuple(parser.cgroups),
        assignments=tuple((key, value) for key, value in parser.assignments),
        parsed=props,
    )


def _error(message: str) -> InvalidInput:
    """An error about a unit file's content: at most a short excerpt of the file, never a
    whole line."""
    return InvalidInput(_excerpt(message, MAX_MESSAGE))


class _FileParser:
    """What :func:`parse_unit_file` has read so far: one logical line at a time."""

    def __init__(self, defer: bool = False) -> None:
        self.defer = defer
        self.section: str | None = None
        self.cgroups: dict[str, None] = {}  # ordered set: a long list costs no quadratic lookups
        self.assignments: list[Assignment] = []

    def line(self, line: str) -> None:
        """Take one stripped logical line; InvalidInput (without the position) if it is bad."""
        if not line or line[0] in _COMMENTS:
            return
        if line.startswith("["):
            self.section = _section(line)
            return
        if self.section is None:
            raise InvalidInput(f"assignment outside of a section: {_excerpt(line)!r}")
        key, value = _key_value(line)
        if self.section.startswith("X-") or key.startswith("X-"):
            return
        _check_key(self.section, key)
        if key != "ControlGroup":
            self.assignments.append(Assignment.parse(key, value, self.defer))  # errors: this line
        elif not value:
            self.cgroups.clear()
        else:
            self.cgroups.setdefault(validate_cgroup_pattern(value))


def _section(line: str) -> str:
    """The name of a ``[Section]`` header line (a known section, or an ``X-`` one)."""
    if not line.endswith("]") or len(line) < 3:
        raise InvalidInput(f"invalid section header {_excerpt(line)!r}")
    section = line[1:-1]
    if section not in SECTION_KEYS and not section.startswith("X-"):
        known = ", ".join(f"[{s}]" for s in SECTION_KEYS)
        raise InvalidInput(f"unknown section [{_excerpt(section)}]; known sections: {known}")
    return section


def _key_value(line: str) -> tuple[str, str]:
    """``Key=Value`` split, both stripped; the key must not be empty."""
    key, eq, value = line.partition("=")
    if not eq:
        raise InvalidInput(f"missing '=' in line {_excerpt(line)!r}")
    key, value = key.strip(), value.strip()
    if not key:
        raise InvalidInput(f"missing key name before '=' in line {_excerpt(line)!r}")
    return key, value


def _check_key(section: str, key: str) -> None:
    """Refuse a key that its section does not hold, naming the section it belongs in."""
    if key in SECTION_KEYS[section]:
        return
    where = next((f" (it belongs in [{s}])" for s, k in SECTION_KEYS.items() if key in k), "")
    known = ", ".join(sorted(SECTION_KEYS[section]))
    raise InvalidInput(
        f"unknown key {_excerpt(key)!r} in section [{section}]{where}; known keys: {known}"
    )


def _name_or_error(path: str) -> str:
    try:
        return unit_name_for_path(path)
    except InvalidInput as e:
        raise InvalidInput(f"{path}: {e}") from None


#: Parsed files by (path, device, inode, size, mtime): a file is parsed once, not on every
#: ``run`` (bounded: cleared when full).
_CACHE: dict[tuple[str, int, int, int, int], UnitFile] = {}
_CACHE_MAX = 4096


def load_unit_file(
    path: str | os.PathLike[str], directory: str | None = None, defer: bool = False
) -> UnitFile:
    """Read and parse one policy file (UTF-8), with limits (``defer``: see
    :func:`parse_unit_file`).

    Only regular files are read (a FIFO would block, a device never end), at most
    :data:`MAX_UNIT_FILE_BYTES`; with ``directory`` (the unit directory), a symlink that
    leads out of it is refused without reading its target: a message never quotes a file
    that is not a unit file. A file is parsed once per content (see ``_CACHE``).

    Raises:
        InvalidInput: for a file that cannot be read or decoded, or does not parse; the
            message starts with the path.
    """
    spath = os.fspath(path)
    target = spath
    try:
        if directory is not None and os.path.islink(spath):
            target = os.path.realpath(spath)
            home = os.path.realpath(directory)
            if os.path.dirname(target) != home:
                raise InvalidInput(
                    f"{spath}: a symlink that leads out of the unit directory "
                    f"{directory}; refused (not read)"
                )
        # O_NONBLOCK: opening a FIFO must not wait for a writer; O_NOFOLLOW: the path
        # checked above is the file opened.
        fd = os.open(target, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        raise InvalidInput(f"{spath}: cannot read: {e.strerror or e}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise InvalidInput(
            f"{spath}: not a regular file (a FIFO, device, socket or directory); refused (not read)"
        )
    with os.fdopen(fd, "rb") as f:
        if st.st_size > MAX_UNIT_FILE_BYTES:
            raise InvalidInput(
                f"{spath}: {st.st_size} bytes, more than the "
                f"{MAX_UNIT_FILE_BYTES} a unit file may have; refused"
            )
        key = (spath, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        cached = _CACHE.get(key)
        if cached is not None:
            return cached
        try:
            data = f.read(MAX_UNIT_FILE_BYTES + 1)
        except OSError as e:
            raise InvalidInput(f"{spath}: cannot read: {e.strerror or e}") from None
    if len(data) > MAX_UNIT_FILE_BYTES:  # grew while read
        raise InvalidInput(
            f"{spath}: more than the {MAX_UNIT_FILE_BYTES} bytes a unit file may have; refused"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InvalidInput(f"{spath}: not valid UTF-8 (byte {e.start})") from None
    unit = parse_unit_file(text, spath, defer=defer)
    if len(_CACHE) >= _CACHE_MAX:
        _CACHE.clear()
    # Kept without networks: a 200k-prefix list is 70 MB of them but 3 MB of text (a later
    # load merges its properties from the text again).
    _CACHE[key] = unit if defer else replace(unit, parsed=None)
    return unit


def load_unit_dir(
    directory: str | os.PathLike[str],
) -> tuple[list[UnitFile], list[InvalidInput]]:
    """Load every ``*.unit``, ``*.service`` and ``*.scope`` file of a directory.

    Files are read in name order; hidden files are skipped. A file that fails to load is
    reported in the error list and skipped; a second file deriving the same unit name as an
    earlier one is an error too. A missing directory yields two empty lists.

    One unit's files alone (what ``ipacctd run --unit NAME`` reads): :func:`candidate_paths`.

    Raises:
        InvalidInput: if ``directory`` exists but cannot be listed.
    """
    sdir = os.fspath(directory)
    try:
        entries = sorted(os.listdir(sdir))
    except FileNotFoundError:
        return [], []
    except OSError as e:
        raise InvalidInput(f"{sdir}: cannot list directory: {e.strerror or e}") from None
    units: list[UnitFile] = []
    errors: list[InvalidInput] = []
    seen: dict[str, str] = {}
    for entry in entries:
        if entry.startswith(".") or not entry.endswith(UNIT_FILE_SUFFIXES):
            continue
        path = os.path.join(sdir, entry)
        try:
            # Address lists validated, parsed when first needed: most files are read to
            # learn which cgroups they bind, or only to be checked.
            unit = load_unit_file(path, sdir, defer=True)
        except InvalidInput as e:
            errors.append(e)
            continue
        if unit.name in seen:
            errors.append(
                InvalidInput(f"{path}: unit {unit.name} is already defined by {seen[unit.name]}")
            )
            continue
        seen[unit.name] = path
        units.append(unit)
    return units, errors
