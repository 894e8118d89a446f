"""cgroup.mount_point and bpffs.ensure_mounted read /proc/self/mountinfo once per process for
a mount they found (on a container host it lists every container's mounts), and again
whenever they found none."""

from __future__ import annotations

import pytest

from ipacctd import cgroup
from ipacctd.bpf import bpffs
from ipacctd.errors import NotSupported


@pytest.fixture
def table(monkeypatch):
    """A stand-in mount table; counts its reads; the caches start empty."""
    monkeypatch.setattr(cgroup, "_FOUND", {})
    monkeypatch.setattr(bpffs, "_SEEN", set())
    state = {"reads": 0, "mounts": {"cgroup2": ["/sys/fs/cgroup/unified"], "bpf": ["/x/bpf"]}}

    def mounts(fstype: str) -> list[str]:
        state["reads"] += 1
        return list(state["mounts"].get(fstype, []))

    monkeypatch.setattr(cgroup, "mounts", mounts)
    monkeypatch.setattr(bpffs, "mounts", mounts)
    monkeypatch.delenv(cgroup.ENV_MOUNT, raising=False)
    return state


def test_a_found_cgroup2_mount_is_read_once(table) -> None:
    assert [cgroup.mount_point() for _ in range(5)] == ["/sys/fs/cgroup/unified"] * 5
    assert table["reads"] == 1
    assert cgroup.fs_path("/a.service") == "/sys/fs/cgroup/unified/a.service"
    assert table["reads"] == 1


def test_no_cgroup2_is_asked_again_and_found_once_mounted(table) -> None:
    table["mounts"]["cgroup2"] = []
    for _ in range(2):
        with pytest.raises(NotSupported):
            cgroup.mount_point()
    assert table["reads"] == 2  # not kept
    table["mounts"]["cgroup2"] = ["/sys/fs/cgroup"]
    assert cgroup.mount_point() == "/sys/fs/cgroup"


def test_the_override_is_checked_once_and_kept_apart(table, monkeypatch) -> None:
    monkeypatch.setenv(cgroup.ENV_MOUNT, "/elsewhere")
    with pytest.raises(NotSupported):  # not a cgroup2 mount
        cgroup.mount_point()
    table["mounts"]["cgroup2"].append("/elsewhere")
    assert cgroup.mount_point() == "/elsewhere" and cgroup.mount_point() == "/elsewhere"
    reads = table["reads"]
    monkeypatch.delenv(cgroup.ENV_MOUNT)
    assert cgroup.mount_point() == "/sys/fs/cgroup/unified"  # the lookup's own answer
    assert table["reads"] == reads + 1


def test_a_seen_bpffs_is_read_once_a_missing_one_looked_for_before_mounting(
    table, monkeypatch
) -> None:
    monkeypatch.setattr(bpffs.os.path, "realpath", lambda p: p)
    assert bpffs.ensure_mounted("/x/bpf") == "/x/bpf"
    assert bpffs.ensure_mounted("/x/bpf") == "/x/bpf"
    assert table["reads"] == 1
    # Not mounted: each call looks again, then tries to mount (here: refused, not as root).
    tried = []
    monkeypatch.setattr(bpffs.os, "makedirs", lambda *a, **k: tried.append(a[0]))

    class Refused:
        returncode, stderr = 32, "mount: permission denied"

    import subprocess

    monkeypatch.setattr(subprocess, "run", lambda *a, **k: Refused())
    for _ in range(2):
        with pytest.raises(Exception):  # noqa: B017 - PermissionDenied or NotSupported
            bpffs.ensure_mounted("/y/bpf")
    assert table["reads"] == 3 and tried == ["/y/bpf", "/y/bpf"]
    table["mounts"]["bpf"].append("/y/bpf")  # mounted meanwhile by someone else
    assert bpffs.ensure_mounted("/y/bpf") == "/y/bpf" and tried == ["/y/bpf", "/y/bpf"]
