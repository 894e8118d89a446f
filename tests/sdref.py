"""The systemd-ref plumbing of the systemd suites, in one place.

``shared/tools/systemd-ref/systemd-ref.sh`` boots Debian's systemd as PID 1 in throw-away
namespaces. It is a machine-wide singleton (fixed /tmp/sdref.pid and cgroup ``sdref``): a
session holds ``/tmp/sdref.lock`` from ``up`` to ``down`` and brings it ``down`` also when a
test fails. The namespaces see /var/tmp through an overlay of /, so the files a suite needs
inside are copied to a fresh directory there before ``up``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import shared_dir

REPO = Path(__file__).resolve().parents[1]
_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
REQUIRE = os.environ.get("IPACCTD_REQUIRE_KERNEL") == "1" or _CI
LOCK = "/tmp/sdref.lock"
#: What a copy of the repository into the namespaces leaves out.
COPY_IGNORE = shutil.ignore_patterns(".git", "__pycache__", "*.egg-info", "build", ".pytest_cache")


def missing(reason: str) -> None:
    """A missing prerequisite: a skip, a failure under CI (where no test may skip)."""
    if REQUIRE:
        pytest.fail(f"systemd-ref tests cannot run under CI: {reason}")
    pytest.skip(reason)


def _script() -> str | None:
    shared = shared_dir()
    path = shared / "tools" / "systemd-ref" / "systemd-ref.sh" if shared else None
    return str(path) if path is not None and path.exists() else None


def script(*tools: str) -> str:
    """The path of ``systemd-ref.sh`` once every prerequisite is there (root, the script,
    Debian's systemd and the host ``tools``); otherwise :func:`missing`."""
    if os.geteuid() != 0:
        missing("needs root")
    path = _script()
    if path is None:
        missing("shared/tools/systemd-ref/systemd-ref.sh not found beside the repository")
    if not os.path.exists("/lib/systemd/systemd"):
        missing("systemd is not installed (apt-get install systemd)")
    for tool in tools:
        if not shutil.which(tool):
            missing(f"{tool} is needed")
    assert path is not None
    return path


@contextlib.contextmanager
def scratch(prefix: str) -> Iterator[str]:
    """A fresh directory under /var/tmp (visible inside the namespaces), removed after."""
    root = f"/var/tmp/{prefix}-{uuid.uuid4().hex[:10]}"
    try:
        os.makedirs(root)
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def locked(timeout: float = 1800) -> Iterator[None]:
    """Hold ``/tmp/sdref.lock`` (bounded wait: another session may hold it for minutes)."""
    fd = os.open(LOCK, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"{LOCK} held by another user for {timeout}s") from None
                time.sleep(1)
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def running(path: str, timeout: float = 300) -> Iterator[None]:
    """systemd-ref ``up`` for the block, ``down`` after it (also when it fails). Take
    :func:`locked` around it."""
    up = subprocess.run([path, "up"], capture_output=True, text=True, timeout=timeout)
    try:
        assert up.returncode == 0, f"systemd-ref up failed: {up.stderr}{up.stdout}"
        yield
    finally:
        subprocess.run([path, "down"], capture_output=True, timeout=timeout)


class Ref:
    """Commands inside the namespaced systemd; ``root`` is a :func:`scratch` directory (the
    same path inside and outside)."""

    def __init__(self, script: str, root: str) -> None:
        self.script = script
        self.root = root

    def run(
        self, argv: list[str], input: str | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess:
        """``argv`` inside the namespaces (``systemd-ref.sh sh``), never raising on failure."""
        return subprocess.run(
            [self.script, "sh", *argv],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
