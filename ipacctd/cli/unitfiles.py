"""Unit files: ``cat``, ``list-unit-files`` and ``edit``, as systemctl's.

* ``cat UNIT...`` prints each unit's file under a ``# /path`` line, then the other files
  that apply to its cgroup (glob files merging into it, as systemd prints drop-ins after
  the unit file), a blank line between units. A unit without a file (``ipacctd run``, or
  ``attach`` on the command line) is printed as the unit file that would make it, under a
  comment that says so, as systemctl prints a transient unit's generated file.
* ``list-unit-files [PATTERN...]`` lists the files of the unit directory with what they
  match and whether a unit uses them (``bound``), no unit does yet (``unbound``) or they do
  not load (``invalid``), and the units that have no file (``transient``/``attached``).
* ``edit UNIT`` opens a copy of the unit's file in ``$SYSTEMD_EDITOR``, ``$EDITOR`` or
  ``$VISUAL`` (then ``editor``, ``nano``, ``vim``, ``vi``, as systemctl), validates the
  result as the daemon would load it, and only then renames it over the file (atomic: the
  daemon never reads half a file) and makes the daemon reload. An invalid edit changes
  nothing: the error is printed and, on a terminal, the editor offered again.
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import os
import shutil
import subprocess
import sys
import tempfile

from ipacctd.cli import terminal
from ipacctd.cli.engine import manager_for
from ipacctd.cli.format import plural, table
from ipacctd.cli.selection import expand
from ipacctd.errors import InvalidInput, NotFound
from ipacctd.manager.store import canonical
from ipacctd.manager.unit import Unit, escape_command
from ipacctd.policy.properties import Properties
from ipacctd.policy.unitfile import (
    MAX_UNIT_FILE_BYTES,
    UNIT_FILE_SUFFIXES,
    UnitFile,
    load_unit_file,
    merge_order,
    parse_unit_file,
)

EDITORS = ("editor", "nano", "vim", "vi")
MAX_EDIT_ROUNDS = 20  # "edit again?" answered yes this often is a loop, not a person


def dispatch(args: argparse.Namespace) -> int:
    if args.verb == "edit":
        return edit(args)
    mgr = manager_for(args, write=False)
    if args.verb == "cat":
        return cat(mgr, args)
    return list_unit_files(mgr, args)


# -- reading the unit directory -------------------------------------------------------------


def _dir_files(unit_dir: str) -> list[tuple[str, UnitFile | None, str]]:
    """Every unit file of the directory in name order: (path, the file or None, error)."""
    try:
        entries = sorted(os.listdir(unit_dir))
    except FileNotFoundError:
        return []
    out: list[tuple[str, UnitFile | None, str]] = []
    for entry in entries:
        if entry.startswith(".") or not entry.endswith(UNIT_FILE_SUFFIXES):
            continue
        path = os.path.join(unit_dir, entry)
        try:
            out.append((path, load_unit_file(path, unit_dir), ""))
        except InvalidInput as exc:
            out.append((path, None, str(exc)))
    return out


def files_of(mgr, name: str, unit: Unit | None) -> list[str]:
    """The files that make ``name``: its own first, then the others whose ``[Match]``
    covers its cgroup, in the order their assignments merge."""
    own = unit.source if unit is not None and unit.source else None
    if own is None:
        found = mgr.unit_file(name)
        own = found.path if found is not None else None
    if own is None or unit is None:
        return [own] if own else []
    matching = [
        (f, p)
        for path, f, _ in _dir_files(mgr.config.unit_dir)
        if f is not None and path != own and (p := f.matches(unit.cgroup))
    ]
    others = list(merge_order(matching)[0]) if matching else []
    return [own, *(f.path for f in others)]


def _unit_and_files(mgr, name: str) -> tuple[Unit | None, list[str]]:
    """The unit (None: no such unit, perhaps only a file) and its files."""
    try:
        unit: Unit | None = mgr.unit(name)
    except NotFound:
        unit = None
    return unit, files_of(mgr, name, unit)


def _read(path: str) -> str:
    with open(path, "rb") as f:
        return f.read(MAX_UNIT_FILE_BYTES).decode("utf-8", errors="replace")


def as_unit_file(unit: Unit) -> str:
    """A unit without a file, written as the file that would make it (valid unit-file
    syntax: ``ipacctd edit --force`` starts from it). Values at their defaults are left
    out, except ``IPAccounting=``."""
    p = unit.properties.to_show()
    defaults = Properties().to_show()
    how = "ipacctd run" if unit.transient else "ipacctd attach"
    lines = [
        f"# {unit.name}: made by {how}, no unit file on disk; its properties:",
        "[Unit]",
        f"Description={terminal.cescape(unit.description)}",
        "",
    ]
    if not unit.transient:
        lines += ["[Match]", f"ControlGroup={unit.cgroup}", ""]
    lines.append("[Service]")
    lines += [
        f"{k}={v}"
        for k, v in p.items()
        if k != "Description" and (k == "IPAccounting" or v != defaults[k])
    ]
    if unit.command:
        lines.append(f"# command: {escape_command(unit.command)}")
    return "\n".join(lines)


# -- cat ------------------------------------------------------------------------------------


def cat(mgr, args: argparse.Namespace) -> int:
    rc = 0
    blocks = []
    for word in args.units:
        try:
            names = expand(mgr, [word])
        except NotFound:
            names = [canonical(word)]
        for name in names:
            unit, paths = _unit_and_files(mgr, name)
            if paths:
                blocks.append("\n\n".join(f"# {p}\n{_read(p).rstrip()}" for p in paths))
            elif unit is not None:
                blocks.append(as_unit_file(unit))
            else:
                print(f"No files found for {name}.", file=sys.stderr)
                rc = 1
    with terminal.pager(not args.no_pager):
        if blocks:
            print("\n\n".join(blocks))
    return rc


# -- list-unit-files ------------------------------------------------------------------------


def list_unit_files(mgr, args: argparse.Namespace) -> int:
    units = []
    for name in mgr.names():
        with contextlib.suppress(Exception):  # a broken unit has no file to list
            units.append(mgr.unit(name))
    used = {u.source for u in units if u.source}
    rows: list[list[str]] = []
    for path, f, error in _dir_files(mgr.config.unit_dir):
        state = "invalid" if f is None else "bound" if path in used else "unbound"
        match = " ".join(f.cgroups) if f is not None else error.removeprefix(f"{path}: ")
        rows.append([os.path.basename(path), state, match or "-", f.name if f is not None else ""])
    for u in units:
        if not u.source:
            rows.append([u.name, "transient" if u.transient else "attached", u.cgroup, u.name])
    if args.patterns:
        rows = [
            r
            for r in rows
            if any(
                fnmatch.fnmatchcase(r[0], p) or fnmatch.fnmatchcase(r[3], p) for p in args.patterns
            )
        ]
    colors = terminal.colors_enabled()
    styles = [["", terminal.HIGHLIGHT_RED if r[1] == "invalid" else "", ""] for r in rows]
    text = table(
        ["UNIT FILE", "STATE", "MATCH"],
        [r[:3] for r in rows],
        width=None if args.full else terminal.columns(),
        styles=styles,
        legend=not args.no_legend,
        colors=colors,
    )
    if not args.no_legend:
        text = f"{text}\n\n{plural(len(rows), 'unit file')} listed."
    with terminal.pager(not args.no_pager):
        if text:
            print(text)
    # systemctl list-unit-files fails when its patterns match nothing
    return 1 if args.patterns and not rows else 0


# -- edit -----------------------------------------------------------------------------------


def editor_command() -> list[str]:
    """The user's editor as systemctl picks it; a value may carry options (``code -w``)."""
    for var in ("SYSTEMD_EDITOR", "EDITOR", "VISUAL"):
        value = os.environ.get(var, "").strip()
        if value:
            return ["sh", "-c", f'{value} "$@"', value]
    for name in EDITORS:
        if shutil.which(name):
            return [name]
    raise InvalidInput("Cannot edit files: no editor found (set $EDITOR or $VISUAL)")


def _target(mgr, name: str, force: bool) -> tuple[str, str]:
    """The file to edit and the text to start from."""
    unit, paths = _unit_and_files(mgr, name)
    if paths:
        return paths[0], _read(paths[0])
    if not force:
        if unit is not None:
            how = "made by ipacctd run" if unit.transient else "attached from the command line"
            raise InvalidInput(
                f"Cannot edit {name}: it has no unit file ({how}); change it live with "
                f"'ipacctd set-property {name} ...', or run 'ipacctd edit --force {name}' to "
                "write a unit file for it"
            )
        raise NotFound(
            f"No files found for {name}. Run 'ipacctd edit --force {name}' to "
            "create a new unit file."
        )
    stem = name[: -len(".service")] if name.endswith(".service") else name
    path = os.path.join(mgr.config.unit_dir, f"{stem}.unit")
    if unit is not None:
        return path, as_unit_file(unit) + "\n"
    return path, (
        "[Unit]\nDescription=\n\n# [Match]\n# ControlGroup=/system.slice/"
        f"{name}\n\n[Service]\nIPAccounting=yes\n# IPAddressDeny=\n"
    )


def _again() -> bool:
    """Ask on the terminal whether to edit again (no terminal: no)."""
    try:
        # unbuffered bytes: a terminal cannot seek, which text mode "r+" would need
        with open("/dev/tty", "rb+", buffering=0) as tty:
            tty.write(b"Edit again? [Y/n] ")
            answer = tty.readline(100).decode(errors="replace").strip().lower()
    except OSError:
        return False
    return answer in ("", "y", "yes")


def edit(args: argparse.Namespace) -> int:
    mgr = manager_for(args, write=False)
    try:
        name = mgr.resolve(args.unit)
    except NotFound:
        name = canonical(args.unit)
    path, original = _target(mgr, name, args.force)
    editor = editor_command()
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    # The copy lives beside the file (the rename is then atomic) under a hidden name that
    # the daemon's loader skips.
    fd, tmp = tempfile.mkstemp(prefix=f".#{os.path.basename(path)}.", dir=directory)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(original)
        os.chmod(tmp, 0o644)
        for _ in range(MAX_EDIT_ROUNDS):
            res = subprocess.run([*editor, tmp], check=False)
            if res.returncode != 0:
                print(
                    f"ipacctd: the editor failed (exit status {res.returncode}); "
                    f"{path} is unchanged",
                    file=sys.stderr,
                )
                return 1
            text = _read(tmp)
            try:
                parse_unit_file(text, path)
                break
            except InvalidInput as exc:
                print(f"ipacctd: {exc}", file=sys.stderr)
                what = "is unchanged" if os.path.exists(path) else "was not created"
                print(f"ipacctd: {path} {what}", file=sys.stderr)
                if not _again():
                    return 1
        else:
            return 1
        if text == original and os.path.exists(path):
            print(f"{path} unchanged.", file=sys.stderr)
            return 0
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    print(f"Saved {path}.", file=sys.stderr)
    return _reload(args)


def _reload(args: argparse.Namespace) -> int:
    """``ipacctd reload`` after a saved edit; without a daemon, say when the file applies."""
    from ipacctd.cli import daemon

    try:
        return daemon.dispatch(args)
    except NotFound:
        print(
            "ipacctd: no ipacctd daemon is running: the file applies when it starts, "
            f"or at the next 'ipacctd run --unit {canonical(args.unit)}'",
            file=sys.stderr,
        )
        return 0
