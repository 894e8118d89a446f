"""Helpers of the end-to-end tests: an isolated ipacctd installation driven through its CLI.

Every ``ipacctd`` call is a real subprocess (``python -m ipacctd``) with the installation's
paths in its environment. Commands that send packets run inside a private network
namespace (:class:`netns.NetNS`) that the test made; the addresses they talk to live on
that namespace's ``lo``.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path

from netns import NetNS
from support import LineReader, wait_for

REPO = str(Path(__file__).resolve().parents[1])
PY = sys.executable

#: A unit's program that sends one UDP datagram per command read on stdin and reports the
#: outcome on stdout: ``send ADDR SIZE`` → ``ok <bytes received back>`` or ``err <errno>``.
#: It listens on the same port on every address, so an allowed datagram is also received
#: (ingress counted); it ends on ``exit`` or end of input.
AGENT = r"""
import os, select, socket, sys

port = int(sys.argv[1])
rx = {}
for fam, wildcard in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
    s = socket.socket(fam, socket.SOCK_DGRAM)
    if fam == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind((wildcard, port))
    rx[fam] = s
print("ready", os.getpid(), flush=True)
for line in sys.stdin:
    cmd = line.split()
    if not cmd:
        continue
    if cmd[0] == "exit":
        break
    addr, size = cmd[1], int(cmd[2])
    fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
    tx = socket.socket(fam, socket.SOCK_DGRAM)
    try:
        tx.sendto(b"x" * size, (addr, port))
    except OSError as e:
        print("err", e.errno, flush=True)
        continue
    finally:
        tx.close()
    ready, _, _ = select.select([rx[fam]], [], [], 2.0)
    print("ok", len(rx[fam].recv(65536)) if ready else -1, flush=True)
"""

UDP4 = 20 + 8  # IPv4 + UDP header bytes added to a datagram's payload
UDP6 = 40 + 8
ECHO = 84  # an IPv4 ping of 56 data bytes, request or reply


class Agent:
    """A running :data:`AGENT` (as a unit's main process or in a cgroup of the test's)."""

    def __init__(self, proc: subprocess.Popen, stderr_path: str | None = None) -> None:
        self.proc = proc
        self.stderr_path = stderr_path
        self.out = LineReader(proc.stdout)
        words = self.out.readline(timeout=15).split()
        assert words[:1] == ["ready"], words
        self.pid = int(words[1])

    def send(self, addr: str, size: int) -> str:
        """Send one datagram from inside; ``"ok N"`` (N bytes came back) or ``"err ERRNO"``."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"send {addr} {size}\n".encode())
        self.proc.stdin.flush()
        return self.out.readline()

    def stderr(self) -> str:
        if not self.stderr_path:
            return ""
        return Path(self.stderr_path).read_text()

    def wait(self, timeout: float = 10.0) -> int:
        return self.proc.wait(timeout=timeout)


class Installation:
    """One isolated ipacctd: its own state, pins, cgroup root and unit directory."""

    def __init__(self, tmp_path: Path) -> None:
        from ipacctd import cgroup

        self.id = uuid.uuid4().hex[:8]
        self.tmp = tmp_path
        self.state_dir = str(tmp_path / "state")
        self.unit_dir = str(tmp_path / "units")
        os.makedirs(self.unit_dir)
        self.bpf_dir = f"/sys/fs/bpf/ipacctd-test-{self.id}"
        self.cgroup_root = f"/ipacctd-test-{self.id}"
        self.mount = cgroup.mount_point()
        self.root_fs = os.path.join(self.mount, self.cgroup_root.lstrip("/"))
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("IPACCTD_")}
        self.env.update(
            IPACCTD_STATE_DIR=self.state_dir,
            IPACCTD_BPF_DIR=self.bpf_dir,
            IPACCTD_CGROUP_ROOT=self.cgroup_root,
            IPACCTD_UNIT_DIR=self.unit_dir,
            PYTHONPATH=REPO,
        )
        self.namespaces: list[NetNS] = []
        self.extra_cgroups: list[str] = []  # filesystem paths of cgroups the test made

    def config(self):
        """The installation's paths as the engine's :class:`~ipacctd.manager.config.Config`."""
        from ipacctd.manager.config import Config

        return Config(
            state_dir=self.state_dir,
            bpf_dir=self.bpf_dir,
            cgroup_root=self.cgroup_root,
            unit_dir=self.unit_dir,
        )

    def manager(self):
        """The engine (:class:`~ipacctd.manager.engine.Manager`) on this installation."""
        from ipacctd.manager.engine import Manager

        return Manager(self.config())

    # -- running the CLI ---------------------------------------------------------------

    def argv(self, *args: str) -> list[str]:
        return [PY, "-m", "ipacctd", *args]

    def environ(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        return {**self.env, **(extra or {})}

    def cli(
        self,
        *args: str,
        ns: NetNS | None = None,
        env: dict[str, str] | None = None,
        prefix: Sequence[str] = (),
        timeout: float = 30,
    ) -> subprocess.CompletedProcess:
        """Run ``ipacctd ARGS`` to completion (inside ``ns`` when given)."""
        argv = [*prefix, *self.argv(*args)]
        if ns is not None:
            return ns.run(argv, env=self.environ(env), cwd=REPO, timeout=timeout)
        return subprocess.run(
            argv,
            env=self.environ(env),
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def ok(self, *args: str, **kw) -> subprocess.CompletedProcess:
        """Run ``ipacctd ARGS`` and insist on exit status 0."""
        res = self.cli(*args, **kw)
        assert res.returncode == 0, (args, res.returncode, res.stdout, res.stderr)
        return res

    def show(self, unit: str) -> dict[str, str]:
        """``ipacctd show UNIT`` as a dict."""
        out = self.ok("show", unit).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if line)

    def netns(self, addresses: Sequence[str]) -> NetNS:
        ns = NetNS(addresses)
        self.namespaces.append(ns)
        return ns

    def start_unit(self, ns: NetNS, name: str, *props: str, port: int = 7000) -> Agent:
        """``ipacctd run --unit NAME -p ... -- python3 agent.py PORT`` in ``ns`` (not waited)."""
        agent = self.tmp / "agent.py"
        agent.write_text(AGENT)
        stderr_path = str(self.tmp / f"{name}.stderr")
        argv = self.argv(
            "run", "--unit", name, *(f"-p{p}" for p in props), "--", PY, str(agent), str(port)
        )
        with open(stderr_path, "wb") as err:
            proc = ns.popen(
                argv,
                env=self.env,
                cwd=REPO,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
            )
        unit = name if name.endswith(".service") else f"{name}.service"
        a = Agent(proc, stderr_path)
        # ipacctd records the main PID just after starting it; wait for that.
        wait_for(
            lambda: self.cli("show", "-p", "MainPID", "--value", unit).stdout.strip() == str(a.pid),
            5.0,
            f"MainPID of {unit}",
        )
        return a

    def start_in_cgroup(self, ns: NetNS, cgroup_fs: str, port: int = 7000) -> Agent:
        """The agent as a plain process in a cgroup the test made (no ipacctd involved)."""
        agent = self.tmp / "agent.py"
        agent.write_text(AGENT)
        proc = ns.popen(
            [PY, str(agent), str(port)],
            cgroup_fs=cgroup_fs,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        return Agent(proc)

    def make_cgroup(self, rel: str) -> str:
        """mkdir a cgroup (relative to the cgroup2 mount) outside ipacctd; removed at the end."""
        fs = os.path.join(self.mount, rel.lstrip("/"))
        top = fs
        while not os.path.exists(os.path.dirname(top)):
            top = os.path.dirname(top)
        os.makedirs(fs)
        self.extra_cgroups.insert(0, top)  # cgroup.remove takes the whole tree
        return fs

    # -- what is on disk -----------------------------------------------------------------

    def unit_names(self) -> list[str]:
        try:
            return sorted(
                e[:-5]
                for e in os.listdir(os.path.join(self.state_dir, "units"))
                if e.endswith(".json") and not e.startswith(".")
            )
        except FileNotFoundError:
            return []

    def pin_dirs(self) -> list[str]:
        try:
            return sorted(os.listdir(os.path.join(self.bpf_dir, "units")))
        except FileNotFoundError:
            return []

    def unit_cgroups(self) -> list[str]:
        try:
            return sorted(e.name for e in os.scandir(self.root_fs) if e.is_dir())
        except FileNotFoundError:
            return []

    def assert_empty(self) -> None:
        """No unit anywhere: metadata, pins, cgroups, and ``list-units --all`` agrees."""
        assert self.unit_names() == []
        assert self.pin_dirs() == []
        assert self.unit_cgroups() == []
        res = self.ok("list-units", "--all")
        assert res.stdout.splitlines()[1:] == ["0 units listed."], res.stdout  # header first

    # -- teardown ------------------------------------------------------------------------

    def close(self) -> None:
        """Remove everything, also after a failure: processes, units, cgroups, pins."""
        from ipacctd import cgroup
        from ipacctd.bpf import bpffs

        problems: list[str] = []
        for ns in self.namespaces:  # the ipacctd processes and agents the test started
            try:
                ns.close()
            except Exception as exc:
                problems.append(f"netns: {exc!r}")
        for fs in [self.root_fs, *self.extra_cgroups]:
            if not os.path.isdir(fs):
                continue
            try:
                cgroup.kill_all(fs, signal.SIGKILL)
                wait_for(
                    lambda fs=fs: not cgroup.procs_recursive(fs),
                    timeout=5,
                    what=f"processes in {fs} to end",
                )
            except Exception as exc:
                problems.append(f"kill {fs}: {exc!r}")
        mgr = self.manager()
        for name in self.unit_names():
            try:
                mgr.reset(name)
            except Exception as exc:
                problems.append(f"reset {name}: {exc!r}")
        for fs in [self.root_fs, *self.extra_cgroups]:
            try:
                cgroup.remove(fs, timeout=5)
            except Exception as exc:
                problems.append(f"rmdir {fs}: {exc!r}")
        with contextlib.suppress(Exception):
            bpffs.remove_tree(self.bpf_dir)
        if os.path.exists(self.bpf_dir):
            problems.append(f"{self.bpf_dir} left behind")
        assert not problems, problems

    def __enter__(self) -> Installation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def lines(text: str) -> list[str]:
    return text.splitlines()


def line_matching(text: str, pattern: str) -> str:
    """The one line of ``text`` that matches ``pattern`` (a regex, matched in full)."""
    found = [ln for ln in text.splitlines() if re.fullmatch(pattern, ln)]
    assert len(found) == 1, (pattern, text)
    return found[0]


def one_line_error(res: subprocess.CompletedProcess, *needles: str) -> str:
    """Assert a failure reported as exactly one ``ipacctd: ...`` line naming ``needles``."""
    assert res.returncode != 0, (res.returncode, res.stdout, res.stderr)
    err = res.stderr.strip("\n")
    assert "\n" not in err, err
    assert err.startswith("ipacctd: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, (needle, err)
    return err
