"""Helpers shared by the test suites and the benchmarks (standard library only).

* :func:`wait_for`: the one bounded poll loop;
* :func:`free_port`: a free TCP port on 127.0.0.1;
* :func:`stop_process`: end a child we started, by its PID (SIGTERM, then SIGKILL);
* :class:`LineReader`: lines from a pipe, each awaited with a deadline;
* :class:`PrivateBus`: a ``dbus-daemon`` of our own that every local user can reach;
* :func:`shared_dir`: the ``shared/`` directory beside the checkout (reference logs, tools);
* :func:`missing`: a missing prerequisite, a skip, or a failure under CI (:data:`UNDER_CI`).

``tests/`` is on the import path (``pythonpath`` in pyproject.toml's pytest section);
``bench/`` scripts add it themselves.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

#: The project's checkout (tests/ is one level below it).
REPO = Path(__file__).resolve().parents[1]

#: Under CI no test may skip: a missing prerequisite is a failure (``CI=true``, which every
#: CI system sets, or ``IPACCTD_REQUIRE_KERNEL=1``).
UNDER_CI = os.environ.get("IPACCTD_REQUIRE_KERNEL") == "1" or os.environ.get("CI", "").lower() in (
    "1",
    "true",
    "yes",
)


def missing(reason: str) -> NoReturn:
    """A test's prerequisite is not there: skip it, or fail it under CI."""
    import pytest  # the tests' alone: the benchmarks never call this

    if UNDER_CI:
        pytest.fail(f"cannot run under CI, where every test must run: {reason}")
    pytest.skip(reason)


def shared_dir() -> Path | None:
    """``shared/`` (the systemd reference log, systemd-ref, fresh-debian) beside the checkout,
    as CI and a plain clone lay it out; from a git worktree (which may live anywhere), the
    one beside the main checkout, found by git. None when there is none."""
    beside = REPO.parent / "shared"
    if beside.is_dir():
        return beside
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--git-common-dir"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):  # no git, or not a git checkout
        return None
    # The main checkout's .git directory: its parent is the main checkout.
    main = (REPO / out).resolve().parent
    candidate = main.parent / "shared"
    return candidate if candidate.is_dir() else None


def wait_for(
    predicate: Callable[[], Any],
    timeout: float,
    what: str,
    step: float | Callable[[], None] | None = None,
) -> Any:
    """Call ``predicate`` until it returns a true value (bounded); return that value.

    Between calls, sleep ``step`` seconds (0.02 when None), or call ``step`` when it is a
    function (for instance to run an event loop so that signals keep arriving).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        if callable(step):
            step()
        else:
            time.sleep(0.02 if step is None else step)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process(
    proc: subprocess.Popen, timeout: float = 5, kill_timeout: float | None = None
) -> None:
    """End a process we started, by its PID: SIGTERM, then SIGKILL if it lingers."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout if kill_timeout is None else kill_timeout)


class LineReader:
    """Lines from a pipe, each awaited with a deadline (no test can hang on a read)."""

    def __init__(self, stream) -> None:
        self.fd = stream.fileno()
        self.buf = b""

    def readline(self, timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no line within {timeout}s (have {self.buf!r})")
            ready, _, _ = select.select([self.fd], [], [], left)
            if ready:
                chunk = os.read(self.fd, 4096)
                if not chunk:
                    raise AssertionError(f"end of output (have {self.buf!r})")
                self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line.decode()


#: ``<type>custom</type>``, a socket in a world-accessible temporary directory, ``EXTERNAL``
#: auth and a policy that lets every user connect, own, send and receive — so that refusing
#: a non-root caller is the ipacctd daemon's own doing.
BUS_CONF = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>custom</type>
  <listen>unix:tmpdir={dir}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*" eavesdrop="true"/>
    <allow receive_sender="*"/>
  </policy>
</busconfig>
"""


class PrivateBus:
    """A ``dbus-daemon`` of our own, reachable by every local user; ended by its PID."""

    def __init__(self, config: str = BUS_CONF) -> None:
        """``config``: the bus configuration, ``{dir}`` standing for the socket directory
        (default: everyone may do everything)."""
        # Not under pytest's tmp_path: that is 0700, and a uid-65534 client must reach the
        # socket. mkdtemp gives a fresh, unguessable directory that we open up.
        self.dir = tempfile.mkdtemp(prefix="ipacctd-bus-")
        os.chmod(self.dir, 0o755)
        conf = os.path.join(self.dir, "bus.conf")
        with open(conf, "w") as f:
            f.write(config.format(dir=self.dir))
        self.proc = subprocess.Popen(
            ["dbus-daemon", f"--config-file={conf}", "--nofork", "--print-address=1"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.proc.stdout is not None
        self.address = self.proc.stdout.readline().strip()  # bounded: it prints or dies
        if not self.address:
            self.close()
            raise RuntimeError("dbus-daemon printed no address")

    def close(self) -> None:
        stop_process(self.proc)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> PrivateBus:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def temp_store(tmp_path: Path):
    """A :class:`~ipacctd.manager.store.Store` of an installation under ``tmp_path`` (its
    directories made; no kernel object is touched)."""
    from ipacctd.manager.config import Config
    from ipacctd.manager.store import Store

    store = Store(
        Config(
            state_dir=str(tmp_path / "state"),
            bpf_dir=str(tmp_path / "bpf"),
            cgroup_root="/ipacctd-unit-test",
            unit_dir=str(tmp_path / "units"),
        )
    )
    store.ensure_dirs()
    return store
