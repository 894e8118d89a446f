"""cgroup v2: find the mount, create and remove cgroups, move and list processes.

Paths handed around inside ipacctd are either absolute filesystem paths (``fs_path``)
or cgroup paths relative to the cgroup2 mount, written like systemd writes
``ControlGroup=`` (``/system.slice/nginx.service``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import time

from ipacctd.bpf.bpffs import mounts
from ipacctd.errors import Busy, InvalidInput, NotFound, NotSupported, PermissionDenied

ENV_MOUNT = "IPACCTD_CGROUP2_MOUNT"


# What mount_point() found, by the override it was asked with: a command asks several
# times (the engine, the paths of its units) and each answer is a read of
# /proc/self/mountinfo, which on a container host lists every container's mounts — 1,000
# lines take ~0.5 ms to parse here, more for the kernel to write. Only a mount found is
# kept: a host without cgroup v2 is asked again.
_FOUND: dict[str | None, str] = {}


def mount_point() -> str:
    """Where cgroup v2 is mounted (``/sys/fs/cgroup`` or a hybrid layout's ``.../unified``).

    ``$IPACCTD_CGROUP2_MOUNT`` overrides the lookup (used to simulate hosts without v2).
    """
    override = os.environ.get(ENV_MOUNT) or None
    found = _FOUND.get(override)
    if found is not None:
        return found
    if override:
        if override not in mounts("cgroup2"):
            raise NotSupported(f"{override} is not a cgroup2 mount (from ${ENV_MOUNT}): "
                               "cgroup v2 is needed for BPF cgroup firewalls")
        _FOUND[override] = override
        return override
    points = mounts("cgroup2")
    if not points:
        raise NotSupported("no cgroup2 filesystem is mounted: ipacctd needs cgroup v2 "
                           "(mount -t cgroup2 none /sys/fs/cgroup, or boot with "
                           "systemd.unified_cgroup_hierarchy=1)")
    _FOUND[None] = points[0]
    return points[0]


def validate_path(path: str) -> str:
    """Normalise a cgroup path relative to the mount; refuse anything that could escape it."""
    if "\0" in path:
        raise InvalidInput("cgroup path contains a NUL byte")
    try:
        path.encode()
    except UnicodeEncodeError:  # undecodable bytes from argv (surrogate escapes)
        raise InvalidInput(f"cgroup path {path!r} is not valid UTF-8") from None
    if not path.startswith("/"):
        raise InvalidInput(f"cgroup path {path!r} must be absolute (start with /), relative to "
                           "the cgroup2 mount")
    parts = [p for p in path.split("/") if p]
    if any(p in (".", "..") for p in parts):
        raise InvalidInput(f"cgroup path {path!r} must not contain '.' or '..'")
    if len(path.encode()) > 4000:
        raise InvalidInput("cgroup path is too long")
    return "/" + "/".join(parts)


def fs_path(cgroup: str, mount: str | None = None) -> str:
    """Filesystem path of a cgroup given relative to the mount."""
    rel = validate_path(cgroup)
    return os.path.join(mount or mount_point(), rel.lstrip("/")).rstrip("/") or "/"


def relative(path: str, mount: str | None = None) -> str:
    """The cgroup path of an absolute filesystem path under the mount."""
    m = (mount or mount_point()).rstrip("/")
    real = os.path.realpath(path)
    if real != m and not real.startswith(m + "/"):
        raise InvalidInput(f"{path} is not inside the cgroup2 mount {m}")
    return real[len(m):] or "/"


def create(fs: str) -> None:
    """Create a cgroup directory (and missing parents)."""
    try:
        os.makedirs(fs, exist_ok=True)
    except PermissionError as exc:
        raise PermissionDenied(f"cannot create cgroup {fs}: run as root") from exc
    except FileNotFoundError as exc:
        raise NotFound(f"cannot create cgroup {fs}: {exc.strerror}") from exc


def exists(fs: str) -> bool:
    """True when ``fs`` is a live cgroup directory."""
    return os.path.isfile(os.path.join(fs, "cgroup.procs"))


def procs(fs: str) -> list[int]:
    """PIDs in a cgroup (not its children)."""
    try:
        with open(os.path.join(fs, "cgroup.procs")) as f:
            return [int(x) for x in f.read().split()]
    except FileNotFoundError:
        return []
    except OSError as exc:
        if exc.errno == errno.ENODEV:  # removed between open and read: gone, no processes
            return []
        raise


def populated(fs: str) -> bool | None:
    """Whether any process runs in the cgroup or its descendants (the kernel's
    ``populated`` in ``cgroup.events``); None when that cannot be read (no such cgroup)."""
    try:
        fd = os.open(os.path.join(fs, "cgroup.events"), os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return b"populated 1" in os.read(fd, 512)
    except OSError:
        return None
    finally:
        os.close(fd)


def procs_recursive(fs: str) -> list[int]:
    """PIDs in a cgroup and all of its descendants.

    An unpopulated cgroup (most units' at rest) is told by one read of ``cgroup.events``,
    not a walk of its directory tree (a quarter of a status at 10,000 units)."""
    if populated(fs) is False:
        return []
    pids: list[int] = []
    for dirpath, _, filenames in os.walk(fs):
        if "cgroup.procs" in filenames:
            pids += procs(dirpath)
    return pids


def kill_all(fs: str, sig: int) -> list[int]:
    """Send ``sig`` to every process in a cgroup tree; return the PIDs signalled."""
    kill_file = os.path.join(fs, "cgroup.kill")
    import signal

    pids = procs_recursive(fs)
    if sig == signal.SIGKILL and os.path.exists(kill_file):
        with open(kill_file, "w") as f:
            f.write("1")
        return pids
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
    return pids


def remove(fs: str, timeout: float = 5.0) -> None:
    """Remove a cgroup and its empty children; waits briefly for exiting processes."""
    if not os.path.isdir(fs):
        return
    deadline = time.monotonic() + timeout
    while True:
        try:
            for dirpath, _, _ in sorted(os.walk(fs), key=lambda t: -len(t[0])):
                os.rmdir(dirpath)
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                if exc.errno == errno.EBUSY:
                    raise Busy(f"cgroup {fs} still has processes") from exc
                raise
            time.sleep(0.01)


# -- systemd delegation ---------------------------------------------------------------------
#
# systemd owns the cgroup tree on its hosts ("Control Group APIs and Delegation"): a
# service may create cgroups only inside its own cgroup, and only when systemd delegated
# it (Delegate=yes). systemd marks a delegated cgroup with the xattr trusted.delegate=1
# (user.delegate=1 for user managers); where xattrs are unavailable the unit's Delegate=
# property answers. The delegating service's own processes must then live in a leaf
# (cgroup v2 forbids processes beside child cgroups once controllers are enabled), so the
# daemon moves itself to ``<service>/daemon``.

SYSTEMD_RUNTIME = "/run/systemd/system"  # exists exactly when systemd is PID 1 (sd_booted)
SERVICE = "ipacctd.service"
SERVICE_CGROUP = "/system.slice/ipacctd.service"  # where systemd puts the shipped unit
DAEMON_LEAF = "daemon"


def systemd_booted() -> bool:
    """True when systemd is the init system (its runtime directory exists)."""
    return os.path.isdir(SYSTEMD_RUNTIME)


def own_cgroup(pid: int | str = "self") -> str:
    """The cgroup v2 path of a process (``0::`` line of /proc/PID/cgroup)."""
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            for line in f:
                if line.startswith("0::"):
                    return line[3:].strip() or "/"
    except OSError:
        pass
    return "/"


def service_cgroup(path: str) -> str | None:
    """The systemd service cgroup a cgroup path lies in (``/system.slice/x.service`` for
    ``/system.slice/x.service/daemon``), or None outside any service (a scope — a login
    session, a terminal — is not one)."""
    parts = [p for p in path.split("/") if p]
    for i in range(len(parts) - 1, -1, -1):
        if parts[i].endswith(".scope"):
            return None
        if parts[i].endswith(".service"):
            return "/" + "/".join(parts[: i + 1])
    return None


def is_delegated(rel: str) -> bool:
    """Whether systemd delegated the cgroup ``rel`` (xattr, else the unit's Delegate=)."""
    try:
        fs = fs_path(rel)
    except (NotSupported, InvalidInput):
        return False
    for attr in ("trusted.delegate", "user.delegate"):
        try:
            if os.getxattr(fs, attr).strip(b"\0").strip() == b"1":
                return True
        except OSError:
            continue
    unit = os.path.basename(rel)
    if not unit.endswith(".service"):
        return False
    import subprocess

    try:
        out = subprocess.run(["systemctl", "show", "-p", "Delegate,ControlGroup", "--", unit],
                             capture_output=True, text=True, timeout=10, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    props = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    return props.get("Delegate") == "yes" and props.get("ControlGroup") == rel


def default_root() -> str:
    """Where ipacctd makes its units' cgroups when ``cgroup_root`` is not configured.

    Without systemd: ``/ipacctd``. Under systemd: the delegated service cgroup this
    process runs in (the daemon in ``ipacctd.service``; ``ipacctd run`` in another
    service with ``Delegate=yes``, so that its command stays in that service's tree), else
    ``ipacctd.service``'s delegated cgroup when that service runs, else ``/ipacctd``.
    """
    from ipacctd.manager.config import DEFAULT_CGROUP_ROOT

    if not systemd_booted():
        return DEFAULT_CGROUP_ROOT
    own = service_cgroup(own_cgroup())
    if own is not None and is_delegated(own):
        return own
    try:
        if exists(fs_path(SERVICE_CGROUP)) and is_delegated(SERVICE_CGROUP):
            return SERVICE_CGROUP
    except (NotSupported, InvalidInput):
        pass
    return DEFAULT_CGROUP_ROOT


def move_self_to_leaf(service: str) -> str:
    """Move this process into ``<service>/daemon`` (created if needed); its path."""
    leaf = f"{service.rstrip('/')}/{DAEMON_LEAF}"
    fs = fs_path(leaf)
    create(fs)
    with open(os.path.join(fs, "cgroup.procs"), "w") as f:
        f.write(str(os.getpid()))
    return leaf
