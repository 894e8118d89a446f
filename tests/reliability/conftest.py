"""Fixtures of the reliability suite: isolated installations, a private bus and daemon.

The installation (``e2e_helpers.Installation``) and the daemon environment
(``tests/daemon/conftest.py``: ``DaemonEnv``) are the other suites' own, reused by import.
``IPACCTD_SOAK=1`` turns every count up to the long (soak) version; with
``IPACCTD_SOAK_REPORT=<file>`` each test appends its figures there as JSON lines
(``bench/soak.py`` reads them).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(TESTS, "e2e"))

from e2e_helpers import Installation  # noqa: E402


def _daemon_conftest():
    name = "ipacctd_tests_daemon_conftest"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            name, os.path.join(TESTS, "daemon", "conftest.py")
        )
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return sys.modules[name]


@pytest.fixture
def inst(tmp_path: Path) -> Iterator[Installation]:
    """An isolated ipacctd installation, torn down completely afterwards."""
    installation = Installation(tmp_path)
    try:
        yield installation
    finally:
        installation.close()


@pytest.fixture
def denv(tmp_path: Path) -> Iterator:
    """A private bus + isolated installation; the daemon is started by the test."""
    e = _daemon_conftest().DaemonEnv(tmp_path)
    try:
        yield e
    finally:
        e.close()
