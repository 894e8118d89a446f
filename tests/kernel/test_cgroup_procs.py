"""cgroup.procs_recursive on real cgroups: processes in descendants are found; an
unpopulated tree (told by ``cgroup.events`` alone) has none; a missing cgroup has none."""

from __future__ import annotations

import contextlib
import os
import subprocess
import uuid

import pytest

from ipacctd import cgroup

pytestmark = pytest.mark.kernel


def test_procs_recursive_and_populated() -> None:
    root = cgroup.fs_path(f"/ipacctd-test-procs-{uuid.uuid4().hex[:8]}")
    leaf = os.path.join(root, "a", "b")
    cgroup.create(leaf)
    proc = subprocess.Popen(["sleep", "60"])
    try:
        assert cgroup.populated(root) is False
        assert cgroup.procs_recursive(root) == []
        with open(os.path.join(leaf, "cgroup.procs"), "w") as f:
            f.write(str(proc.pid))
        assert cgroup.populated(root) is True
        assert cgroup.procs_recursive(root) == [proc.pid]
        assert cgroup.procs_recursive(leaf) == [proc.pid]
        assert cgroup.procs_recursive(os.path.join(root, "a")) == [proc.pid]
        proc.kill()
        proc.wait(10)
        assert cgroup.populated(root) is False
        assert cgroup.procs_recursive(root) == []
        missing = os.path.join(root, "nonexistent")
        assert cgroup.populated(missing) is None
        assert cgroup.procs_recursive(missing) == []
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(10)
        cgroup.remove(root, timeout=10)
    assert not os.path.exists(root)
