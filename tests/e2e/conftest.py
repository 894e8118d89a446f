"""Fixtures of the end-to-end tests: one isolated ipacctd installation per test.

The installation's state, pins, cgroup root and unit directory are its own
(``IPACCTD_STATE_DIR=<tmp>/state``, ``IPACCTD_BPF_DIR=/sys/fs/bpf/ipacctd-test-<id>``,
``IPACCTD_CGROUP_ROOT=/ipacctd-test-<id>``, ``IPACCTD_UNIT_DIR=<tmp>/units``). Teardown
ends the processes the test started (by PID, through their namespaces), kills what is left
in the cgroup root, resets every unit and removes the cgroup root and the bpffs directory,
also when the test failed.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from e2e_helpers import Installation


@pytest.fixture
def inst(tmp_path: Path) -> Iterator[Installation]:
    """An isolated ipacctd installation, torn down completely afterwards."""
    installation = Installation(tmp_path)
    try:
        yield installation
    finally:
        installation.close()
