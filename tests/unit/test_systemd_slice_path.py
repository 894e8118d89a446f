"""Where systemd makes a slice's cgroup (how a stopped service's path is recognised)."""

from __future__ import annotations

import pytest

from ipacctd.manager.systemd import slice_path


@pytest.mark.parametrize(
    ("name", "path"),
    [
        ("-.slice", ""),
        ("system.slice", "/system.slice"),
        ("user-1000.slice", "/user.slice/user-1000.slice"),
        ("a-b-c.slice", "/a.slice/a-b.slice/a-b-c.slice"),
    ],
)
def test_slice_path_nests_every_dash_prefix(name: str, path: str) -> None:
    assert slice_path(name) == path
