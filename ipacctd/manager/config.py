"""Where ipacctd keeps its state: bpffs pins, metadata, cgroups, unit files.

Every ipacctd process — the CLI and the daemon alike — takes its paths from the same
places, in this order: the defaults, the ``[paths]`` section of the configuration file
(``/etc/ipacctd/ipacctd.conf``, or ``$IPACCTD_CONFIG``), the ``IPACCTD_*`` environment
variables, then command-line options. So a ``cgroup_root`` set in the file holds for the
CLI when the daemon is down, too.

``cgroup_root`` left unset (or ``"auto"``) follows the host: under systemd the subtree
systemd delegated (``Delegate=yes``) to the service ipacctd runs in, or to
``ipacctd.service``; without systemd ``/ipacctd`` (see :func:`ipacctd.cgroup.default_root`).

Overrides from the environment name directories that root will write to and delete
from; for root they are honoured only when nobody else can change them (owned by root,
not writable by group or others — up the tree, sticky directories such as ``/tmp``
excepted), so that a hostile ``IPACCTD_STATE_DIR`` cannot make root act on planted files.
"""

from __future__ import annotations

import os
import stat

from ipacctd.errors import InvalidInput, PermissionDenied
from ipacctd.record import Record, replace

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing
if TYPE_CHECKING:
    from typing import Any

DEFAULT_STATE_DIR = "/run/ipacctd"
DEFAULT_BPF_DIR = "/sys/fs/bpf/ipacctd"
DEFAULT_CGROUP_ROOT = "/ipacctd"
DEFAULT_UNIT_DIR = "/etc/ipacctd/units"
DEFAULT_FILE = "/etc/ipacctd/ipacctd.conf"
ENV_FILE = "IPACCTD_CONFIG"
AUTO = "auto"

ENV = {
    "state_dir": "IPACCTD_STATE_DIR",
    "bpf_dir": "IPACCTD_BPF_DIR",
    "cgroup_root": "IPACCTD_CGROUP_ROOT",
    "unit_dir": "IPACCTD_UNIT_DIR",
}
SECTIONS = ("daemon", "paths")


class Config(Record):
    """Paths of one ipacctd installation (immutable).

    ``cgroup_root`` is a cgroup path relative to the cgroup2 mount under which ipacctd
    creates the cgroups of its own units (``/ipacctd/run-u1.service``).
    """

    _fields = ("state_dir", "bpf_dir", "cgroup_root", "unit_dir")
    __slots__ = _fields
    state_dir: str
    bpf_dir: str
    cgroup_root: str
    unit_dir: str

    def __init__(
        self,
        state_dir: str = DEFAULT_STATE_DIR,
        bpf_dir: str = DEFAULT_BPF_DIR,
        cgroup_root: str = DEFAULT_CGROUP_ROOT,
        unit_dir: str = DEFAULT_UNIT_DIR,
    ) -> None:
        set_ = object.__setattr__
        set_(self, "state_dir", state_dir)
        set_(self, "bpf_dir", bpf_dir)
        set_(self, "cgroup_root", cgroup_root)
        set_(self, "unit_dir", unit_dir)

    @classmethod
    def from_env(cls, **overrides: str | None) -> Config:
        """Defaults, the configuration file's ``[paths]``, environment variables, then
        explicit (non-None) overrides; ``cgroup_root`` resolved for this host."""
        return cls.load(file_paths(read_file()), **overrides)

    @classmethod
    def load(cls, from_file: dict[str, str], **overrides: str | None) -> Config:
        """Like :meth:`from_env` with the file's ``[paths]`` already read."""
        env = {k: os.environ[v] for k, v in ENV.items() if os.environ.get(v)}
        if os.geteuid() == 0:
            for key, value in env.items():
                if key != "cgroup_root":  # a cgroup path, checked below on the cgroupfs
                    check_trusted(value, ENV[key])
        given = {k: v for k, v in overrides.items() if v is not None}
        merged = {**from_file, **env, **given}
        root = merged.get("cgroup_root", AUTO)
        if root == AUTO:
            from ipacctd.cgroup import default_root

            merged["cgroup_root"] = default_root()
        elif "cgroup_root" in env and os.geteuid() == 0:
            from ipacctd import cgroup
            from ipacctd.errors import NotSupported

            try:
                fs = cgroup.fs_path(root)
            except NotSupported:
                fs = None  # no cgroup v2 here: the engine says so when it needs one
            if fs is not None:
                check_trusted(fs, ENV["cgroup_root"])
        return replace(cls(), **merged)

    @property
    def units_dir(self) -> str:
        """Directory of the per-unit metadata files."""
        return os.path.join(self.state_dir, "units")

    @property
    def lock_path(self) -> str:
        return os.path.join(self.state_dir, "lock")

    @property
    def daemon_lock_path(self) -> str:
        """Held (flock) by the one daemon serving this installation, for its whole life."""
        return os.path.join(self.state_dir, "daemon.lock")

    @property
    def runtime_file(self) -> str:
        """The serving daemon's PID, start time and endpoints (written by the lock holder)."""
        return os.path.join(self.state_dir, "daemon.json")

    @property
    def pins_dir(self) -> str:
        """bpffs directory holding one pin directory per unit."""
        return os.path.join(self.bpf_dir, "units")


def config_file() -> str:
    """The configuration file every ipacctd process reads."""
    return os.environ.get(ENV_FILE) or DEFAULT_FILE


def read_file(path: str | None = None) -> dict[str, dict[str, Any]]:
    """The configuration file as {section: {key: value}}; {} when the default file is
    missing. Unknown sections and ``[paths]`` keys are refused with the file's name."""
    explicit = path is not None or bool(os.environ.get(ENV_FILE))
    file = path or config_file()
    try:
        with open(file, "rb") as f:
            if os.geteuid() == 0 and file != DEFAULT_FILE:
                check_trusted(file, "the configuration file")
            # Imported here: most hosts have no configuration file, and tomllib (with the
            # datetime module it loads) is a noticeable part of a CLI command's start-up.
            import tomllib

            try:
                data = tomllib.load(f)
            except tomllib.TOMLDecodeError as exc:
                raise InvalidInput(f"{file}: {exc}") from None
    except FileNotFoundError:
        if explicit:
            raise InvalidInput(f"config file {file} does not exist") from None
        return {}
    except PermissionError:
        if explicit:
            raise PermissionDenied(f"cannot read config file {file}") from None
        return {}  # a file only root may read: the defaults (and the daemon) for others
    unknown = set(data) - set(SECTIONS)
    if unknown:
        raise InvalidInput(f"{file}: unknown section(s) {', '.join(sorted(unknown))}")
    paths = data.get("paths", {})
    bad = set(paths) - set(Config._fields)
    if bad:
        raise InvalidInput(f"{file}: unknown key(s) in [paths]: {', '.join(sorted(bad))}")
    if any(not isinstance(v, str) or not v for v in paths.values()):
        raise InvalidInput(f"{file}: the values in [paths] must be non-empty strings")
    return {k: dict(v) for k, v in data.items()}


def file_paths(data: dict[str, dict[str, Any]]) -> dict[str, str]:
    return dict(data.get("paths", {}))


def check_trusted(path: str, what: str) -> None:
    """Refuse a path another user could change: the path (or, when it does not exist yet,
    its nearest existing ancestor) must be owned by root and not group/world-writable,
    and so must every directory above it — a sticky directory such as /tmp excepted,
    where others cannot rename or remove root's entries."""
    p = os.path.abspath(path)
    first = True
    while True:
        try:
            st = os.stat(p)
        except FileNotFoundError:
            p = os.path.dirname(p)
            continue
        except OSError as exc:
            raise InvalidInput(f"{what}: cannot check {p}: {exc.strerror}") from None
        writable = st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
        if st.st_uid != 0:
            raise InvalidInput(
                f"{what}: {p} is owned by uid {st.st_uid}, not root: refusing "
                f"to use {path} (another user could plant files there)"
            )
        if writable and (first or not st.st_mode & stat.S_ISVTX):
            raise InvalidInput(
                f"{what}: {p} is writable by group or others (mode "
                f"{stat.S_IMODE(st.st_mode):o}): refusing to use {path}"
            )
        first = False
        if p == "/":
            return
        p = os.path.dirname(p)
