"""The CLI's last resort for running out of memory: one line, exit status 1, no traceback."""

from __future__ import annotations

import pytest

from ipacctd.cli import main as cli_main
from ipacctd.cli import query


def _no_memory(*_args: object, **_kwargs: object) -> int:
    raise MemoryError


def test_memory_error_outside_the_engine_is_one_clear_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # a read (the engine maps its own changes to OutOfMemory, an Error, with nothing applied)
    monkeypatch.setattr(query, "dispatch", _no_memory)
    assert cli_main.main(["status"]) == cli_main.EXIT_FAILURE == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("ipacctd: out of memory (") and "memory limit" in err, err
