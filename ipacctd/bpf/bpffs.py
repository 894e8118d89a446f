"""The BPF filesystem: find or mount it, make pin directories, remove pins."""

from __future__ import annotations

import errno
import os

from ipacctd.errors import NotSupported, PermissionDenied

DEFAULT_MOUNT = "/sys/fs/bpf"


def mounts(fstype: str) -> list[str]:
    """Mount points of ``fstype`` from /proc/self/mountinfo, in mount order."""
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            if right.split(" ", 1)[0] == fstype:
                found.append(_unescape(left.split(" ")[4]))
    return found


def _unescape(path: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as octal \040 etc.
    if "\\" not in path:
        return path
    return path.encode().decode("unicode_escape").encode("latin-1").decode()


# Mount points this process has seen a bpffs at (see ipacctd.cgroup's _FOUND: each check is
# a read of /proc/self/mountinfo). Only a mount seen is kept: one missing is looked for again
# before mounting, so that a bpffs mounted meanwhile by someone else is never hidden under
# a second one.
_SEEN: set[str] = set()


def ensure_mounted(mount_point: str = DEFAULT_MOUNT) -> str:
    """Make sure a bpffs is mounted at ``mount_point``; mount one when it is missing."""
    if mount_point in _SEEN:
        return mount_point
    if os.path.realpath(mount_point) in mounts("bpf"):
        _SEEN.add(mount_point)
        return mount_point
    try:
        os.makedirs(mount_point, mode=0o700, exist_ok=True)
    except PermissionError as exc:
        raise PermissionDenied(f"cannot create {mount_point}: run as root") from exc
    import subprocess  # rarely needed: keep it off the CLI's import path

    res = subprocess.run(["mount", "-t", "bpf", "-o", "mode=700", "bpf", mount_point],
                         capture_output=True, text=True, check=False)
    if res.returncode != 0:
        msg = res.stderr.strip() or f"exit status {res.returncode}"
        if os.geteuid() != 0:
            raise PermissionDenied(f"cannot mount bpffs at {mount_point}: run as root")
        raise NotSupported(f"cannot mount bpffs at {mount_point}: {msg}")
    return mount_point


def make_dir(path: str) -> None:
    """Create a pin directory (and parents) readable by root only."""
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
    except PermissionError as exc:
        raise PermissionDenied(f"cannot create {path}: run as root") from exc


def unpin(path: str) -> bool:
    """Remove a pin; False when it was not there."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


def remove_tree(path: str) -> None:
    """Remove a pin directory and every pin in it (bounded by what is there)."""
    try:
        entries = list(os.scandir(path))
    except FileNotFoundError:
        return
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            remove_tree(entry.path)
        else:
            unpin(entry.path)
    try:
        os.rmdir(path)
    except OSError as exc:
        if exc.errno not in (errno.ENOENT, errno.ENOTEMPTY):
            raise
