"""Throw-away network namespaces for kernel tests.

A namespace is held by a small holder process started with ``unshare --net``; it has
only ``lo``, brought up with the test addresses the test asks for. Other processes join
it with ``nsenter`` and may be placed in a cgroup before they run. When the holder and
every joined process exit, the kernel removes the namespace: nothing is left behind,
also when a test fails.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence

HOLDER = r"""
import subprocess, sys
for cmd in [["ip", "link", "set", "lo", "up"]] + [
        ["ip", "addr", "add", a, "dev", "lo"] for a in sys.argv[1:]]:
    subprocess.run(cmd, check=True)
print("ready", flush=True)
sys.stdin.read()
"""


def _with_prefix(addr: str) -> str:
    if "/" in addr:
        return addr
    return addr + ("/128" if ":" in addr else "/32")


class NetNS:
    """A private network namespace with ``addresses`` on its loopback."""

    def __init__(self, addresses: Sequence[str] = ()) -> None:
        args = [_with_prefix(a) for a in addresses]
        self.holder = subprocess.Popen(
            ["unshare", "--net", "--", sys.executable, "-c", HOLDER, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        line = self.holder.stdout.readline() if self.holder.stdout else ""
        if line.strip() != "ready":
            self.close()
            raise RuntimeError("could not set up a network namespace (unshare/ip failed)")
        self.pid = self.holder.pid
        self.children: list[subprocess.Popen] = []

    def _argv(self, argv: Sequence[str]) -> list[str]:
        return ["nsenter", f"--net=/proc/{self.pid}/ns/net", "--", *argv]

    def popen(self, argv: Sequence[str], cgroup_fs: str | None = None, **kw) -> subprocess.Popen:
        """Start a process in the namespace, inside ``cgroup_fs`` when given."""

        def enter() -> None:
            if cgroup_fs:
                with open(os.path.join(cgroup_fs, "cgroup.procs"), "w") as f:
                    f.write(str(os.getpid()))

        proc = subprocess.Popen(self._argv(argv), preexec_fn=enter, **kw)
        self.children.append(proc)
        return proc

    def python(
        self, code: str, cgroup_fs: str | None = None, timeout: float = 30, args: Sequence[str] = ()
    ) -> subprocess.CompletedProcess:
        """Run Python ``code`` in the namespace; returns the finished process (text output)."""
        proc = self.popen(
            [sys.executable, "-c", code, *args],
            cgroup_fs,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            raise
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    def run(
        self, argv: Sequence[str], cgroup_fs: str | None = None, timeout: float = 30, **kw
    ) -> subprocess.CompletedProcess:
        """Run a command in the namespace to completion."""
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)

        def enter() -> None:
            if cgroup_fs:
                with open(os.path.join(cgroup_fs, "cgroup.procs"), "w") as f:
                    f.write(str(os.getpid()))

        return subprocess.run(
            self._argv(argv), preexec_fn=enter, timeout=timeout, check=False, **kw
        )

    def close(self) -> None:
        """End every process started here (by PID) and the holder; the namespace goes."""
        for proc in getattr(self, "children", []):
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
        if self.holder.poll() is None:
            if self.holder.stdin:
                self.holder.stdin.close()
            try:
                self.holder.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.holder.kill()
                self.holder.wait(timeout=5)

    def __enter__(self) -> NetNS:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
