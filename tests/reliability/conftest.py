"""Fixtures of the reliability suite: isolated installations, a private bus and daemon.

The installation (``inst``: ``e2e_helpers.Installation``, from ``tests/conftest.py``) and
the daemon environment (``denv``: ``daemon_support.DaemonEnv``, as tests/daemon uses) are
the other suites' own. ``IPACCTD_SOAK=1`` turns every count up to the long (soak) version;
with ``IPACCTD_SOAK_REPORT=<file>`` each test appends its figures there as JSON lines
(``bench/soak.py`` reads them).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon_support import DaemonEnv


@pytest.fixture
def denv(tmp_path: Path) -> Iterator[DaemonEnv]:
    """A private bus + isolated installation; the daemon is started by the test."""
    with DaemonEnv(tmp_path) as e:
        yield e
