"""Unit files bound to live cgroups: exact paths and globs, followed as cgroups come and go.

A file naming one exact ``ControlGroup=`` gives a unit of the file's name. A glob (e.g.
``/system.slice/docker-*.scope``) gives one unit per matching cgroup, named
``<file stem>@<cgroup name>.service``. When a matching cgroup appears it is bound; when
it vanishes its unit turns inactive (its counters stay readable until the retention
time); when the file goes or stops matching, the unit is detached.
"""

from __future__ import annotations

import contextlib
import fnmatch
import glob
import logging
import os
from dataclasses import dataclass

from ipacctd import cgroup
from ipacctd.errors import Corrupt, Error, InvalidInput, NotFound
from ipacctd.manager.engine import Manager
from ipacctd.policy.names import validate_unit_name
from ipacctd.policy.unitfile import UnitFile, load_unit_dir

log = logging.getLogger("ipacctd.binder")

GLOB_CHARS = "*?["


@dataclass(frozen=True)
class Binding:
    """One cgroup a unit file binds, and the unit name it gets."""

    name: str
    cgroup: str
    file: UnitFile


def _is_glob(pattern: str) -> bool:
    return any(c in pattern for c in GLOB_CHARS)


def static_prefix(pattern: str) -> tuple[str, int]:
    """The longest glob-free leading path of a pattern and the depth left below it."""
    parts = [p for p in pattern.split("/") if p]
    fixed: list[str] = []
    for part in parts:
        if _is_glob(part):
            break
        fixed.append(part)
    return "/" + "/".join(fixed), len(parts) - len(fixed)


class Binder:
    """Keeps units bound to the cgroups their files name."""

    def __init__(self, manager: Manager) -> None:
        self.manager = manager
        self.files: list[UnitFile] = []
        self.errors: list[InvalidInput] = []

    def load(self) -> list[InvalidInput]:
        """(Re)read the unit directory; bad files are reported and skipped."""
        files, errors = load_unit_dir(self.manager.config.unit_dir)
        self.files = [f for f in files if f.cgroups]
        self.errors = errors
        for err in errors:
            log.error("skipping unit file: %s", err)
        return errors

    def bindings(self) -> dict[str, Binding]:
        """Every (unit name → cgroup) the files ask for, among cgroups that exist now."""
        mount = cgroup.mount_point()
        out: dict[str, Binding] = {}
        for f in self.files:
            for pattern in f.cgroups:
                if not _is_glob(pattern):
                    if cgroup.exists(cgroup.fs_path(pattern, mount)):
                        name = f.name if len(f.cgroups) == 1 else self._name(f, pattern)
                        out.setdefault(name, Binding(name, pattern, f))
                    continue
                for fs in sorted(glob.glob(os.path.join(mount, pattern.lstrip("/")))):
                    if not cgroup.exists(fs):
                        continue
                    rel = cgroup.relative(fs, mount)
                    if not fnmatch.fnmatchcase(rel, pattern):
                        continue
                    name = self._name(f, rel)
                    out.setdefault(name, Binding(name, rel, f))
        return out

    @staticmethod
    def _name(f: UnitFile, rel: str) -> str:
        stem = f.name.rsplit(".", 1)[0]
        base = os.path.basename(rel).replace("@", "-")
        return validate_unit_name(f"{stem}@{base}")

    def watch_dirs(self) -> list[str]:
        """Filesystem directories whose subdirectory changes may change the bindings."""
        mount = cgroup.mount_point()
        dirs: set[str] = set()
        for f in self.files:
            for pattern in f.cgroups:
                if _is_glob(pattern):
                    prefix, depth = static_prefix(pattern)
                    top = cgroup.fs_path(prefix, mount)
                    dirs.add(top)
                    if depth > 1:  # patterns like /*/docker-*.scope: watch levels below
                        for dirpath, _, _ in _walk(top, depth - 1):
                            dirs.add(dirpath)
                else:
                    dirs.add(os.path.dirname(cgroup.fs_path(pattern, mount)))
        return sorted(dirs)

    def reconcile(self) -> list[str]:
        """Bind new matches, let go of vanished ones, follow edited files; returns log lines."""
        want = self.bindings()
        sources = {f.path for f in self.files}
        done: list[str] = []
        bound: dict[str, object] = {}
        for name in self.manager.names():
            with contextlib.suppress(NotFound, Corrupt):  # a broken unit: status reports it
                unit = self.manager.unit(name)
                if not unit.transient and unit.source is not None:
                    bound[name] = unit
        for name, unit in bound.items():
            b = want.get(name)
            try:
                if b is None:
                    if unit.source not in sources:  # the file is gone: let go now
                        self.manager.detach(name)
                        done.append(f"detached {name} (unit file removed)")
                    elif unit.exited_at is None:  # the cgroup vanished: inactive, kept
                        self.manager.record_exit(name, 0)
                        done.append(f"{name}: cgroup {unit.cgroup} vanished")
                elif unit.exited_at is not None:
                    self.manager.detach(name)  # it came back: bind afresh below
                    bound_again = self._bind(b)
                    done.append(bound_again)
                elif unit.properties != b.file.properties():
                    self.manager.replace_properties(name, b.file.properties())
                    done.append(f"updated {name} from {b.file.path}")
            except Error as exc:
                log.error("unit %s: %s", name, exc)
        for name, b in want.items():
            if name in bound:
                continue
            try:
                done.append(self._bind(b))
            except Error as exc:
                log.error("cannot bind %s to %s: %s", name, b.cgroup, exc)
        for line in done:
            log.info("%s", line)
        return done

    def _bind(self, b: Binding) -> str:
        self.manager.attach(b.cgroup, name=b.name, base=b.file.properties(), source=b.file.path)
        return f"bound {b.name} to {b.cgroup}"


def _walk(top: str, depth: int):
    base = top.rstrip("/").count("/")
    for dirpath, dirnames, filenames in os.walk(top):
        if dirpath.count("/") - base >= depth:
            dirnames[:] = []
        yield dirpath, dirnames, filenames
