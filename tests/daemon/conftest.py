"""Fixtures of the daemon tests: a private D-Bus, an isolated installation, a live daemon.

Every test gets a :class:`daemon_support.DaemonEnv` (its own ``dbus-daemon``, an isolated
ipacctd installation and the daemon as a subprocess, started on demand). Teardown ends the
daemon, then the processes, units, cgroups and pins of the installation, then the bus
daemon — also when the test failed.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon_support import DaemonEnv


@pytest.fixture
def env(tmp_path: Path) -> Iterator[DaemonEnv]:
    """Bus + installation, daemon not started yet (tests that prepare files first)."""
    with DaemonEnv(tmp_path) as e:
        yield e


@pytest.fixture
def daemon(env: DaemonEnv) -> DaemonEnv:
    """Bus + installation + a running daemon."""
    env.start()
    return env
