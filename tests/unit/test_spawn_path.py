"""ipacctd.cli.spawn._found searches the directories os.get_exec_path() gives (PATH, or
os.defpath when PATH is unset), without calling it (it imports warnings)."""

from __future__ import annotations

import os

import pytest

from ipacctd.cli import spawn


def _exe(directory, name: str) -> str:
    path = directory / name
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return str(path)


@pytest.mark.parametrize("layout", ["first", "second", "none", "not-executable", "a-directory"])
def test_found_is_the_first_executable_on_path(tmp_path, monkeypatch, layout) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    want = None
    if layout == "first":
        want = _exe(a, "cmd")
        _exe(b, "cmd")
    elif layout == "second":
        want = _exe(b, "cmd")
    elif layout == "not-executable":
        (a / "cmd").write_text("")
        want = _exe(b, "cmd")
    elif layout == "a-directory":
        (a / "cmd").mkdir()
        want = _exe(b, "cmd")
    monkeypatch.setenv("PATH", f"{tmp_path / 'missing'}:{a}:{b}")
    assert spawn._found("cmd") == want
    assert spawn._found(f"{a}/cmd") is None  # a path: the child execs it as given


def test_the_directories_are_os_get_exec_paths(tmp_path, monkeypatch) -> None:
    seen: list[str] = []
    real_stat = os.stat

    def stat(path, *args, **kwargs):
        seen.append(os.path.dirname(path))
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(spawn.os, "stat", stat)
    for value in (None, "", "/nonexistent-a::/nonexistent-b", "/nonexistent-c"):
        if value is None:
            monkeypatch.delenv("PATH", raising=False)
        else:
            monkeypatch.setenv("PATH", value)
        seen.clear()
        spawn._found("no-such-command-ipacctd")
        assert seen == [d for d in os.get_exec_path()], value
