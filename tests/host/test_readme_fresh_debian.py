"""README command 1, verbatim, on a brand-new Debian 12 root: it installs ipacctd and starts
the main job — an interactive ``/bin/sh`` behind ``IPAddressDeny=1.1.1.1`` — on a terminal,
where a scripted user checks the firewall for real.

This test drives ``shared/tools/fresh-debian/fresh-debian.sh readme 1`` from the host (that
tool needs the host: mmdebstrap's tarball, git, mount namespaces), so it cannot run inside the
fresh root that runs the rest of the suite; ``tests/conftest.py`` collects ``tests/host/``
only with ``IPACCTD_HOST_TESTS=1``, which ``.ci/run`` sets for a second pytest run on the
host after the fresh-root run of the suite.

Isolation: the README command uses ipacctd's defaults (``/ipacctd`` cgroups, pins under
``/sys/fs/bpf/ipacctd``), which on this machine belong to the host. So the tool runs in a
cgroup namespace rooted at a cgroup this test made and in a mount namespace with a bpffs of
its own: what the fresh root calls ``/ipacctd`` is ``/ipacctd-test-readme1-<id>/ipacctd``
here, and its pins vanish with the namespace (which also detaches the programs). Traffic: the
shell makes a network namespace (``ip netns add``) with 1.1.1.1 and 198.51.100.2 on its
``lo`` and sends only there, from inside the unit.
"""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import subprocess
import time
import uuid

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# What the user types into the main job's shell, one line at a time, and what each line must
# print (the terminal echoes the line itself, so every pattern matches only command output).
SEND = "python3 -c 'import socket, sys; socket.socket(2, 2).sendto(b\"x\", (sys.argv[1], 9))'"
DIALOGUE = [
    (
        "ip netns add readme1 && ip -n readme1 link set lo up && "
        "ip -n readme1 addr add 1.1.1.1/32 dev lo && "
        "ip -n readme1 addr add 198.51.100.2/32 dev lo; echo netns=$?",
        rb"netns=0",
    ),
    # Every step below runs only in that namespace: `ip netns exec` fails if it is missing.
    (f"ip netns exec readme1 {SEND} 1.1.1.1; echo denied=$?", rb"denied=1"),
    (f"ip netns exec readme1 {SEND} 198.51.100.2; echo allowed=$?", rb"allowed=0"),
    (
        "echo dropped=$(ipacctd show run-u1.service -p IPEgressDroppedPackets --value)",
        rb"dropped=1\b",
    ),
    ("ipacctd status run-u1.service; echo status=$?", rb"status=0"),
    # Debian's own python3 has not the daemon's dependencies: a clear message, no traceback.
    ("PYTHONPATH=/srv/project python3 -m ipacctd daemon; echo nodeps=$?", rb"nodeps=\d+"),
    ("ip netns del readme1; echo cleaned=$?", rb"cleaned=0"),
]


def _fresh_debian() -> str:
    path = os.environ.get("IPACCTD_FRESH_DEBIAN") or os.path.join(
        os.path.dirname(REPO), "shared", "tools", "fresh-debian", "fresh-debian.sh"
    )
    if not os.access(path, os.X_OK):
        pytest.fail(f"fresh-debian.sh not found at {path} (set IPACCTD_FRESH_DEBIAN)")
    return path


def _cgroup2_mount() -> str:
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[fields.index("-") + 1] == "cgroup2":
                return fields[4]
    pytest.fail("no cgroup2 mount")


def _read_until(fd: int, pattern: bytes, timeout: float, log: bytearray) -> bool:
    """Read the terminal into ``log`` until ``pattern`` appears in what was read since the
    call began; False at the deadline or when the terminal closes."""
    start = len(log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if re.search(pattern, bytes(log[start:])):
            return True
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # EIO: the terminal's last writer has gone
                break
            if not chunk:
                break
            log += chunk
    return bool(re.search(pattern, bytes(log[start:])))


def _remove_cgroup_tree(path: str) -> None:
    for _ in range(50):  # bounded: kill what is left, then remove bottom-up
        for dirpath, _dirs, _files in os.walk(path):
            try:
                with open(os.path.join(dirpath, "cgroup.procs")) as f:
                    pids = [int(p) for p in f.read().split()]
            except OSError:
                continue
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        try:
            for dirpath, _dirs, _files in os.walk(path, topdown=False):
                os.rmdir(dirpath)
            return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"cannot remove {path}")


def test_readme_command_1_on_a_fresh_debian(tmp_path) -> None:
    if os.geteuid() != 0:
        pytest.fail("needs root (fresh-debian.sh, cgroups, mounts)")
    tool = _fresh_debian()
    mount = _cgroup2_mount()
    test_id = uuid.uuid4().hex[:8]
    cgroup = os.path.join(mount, f"ipacctd-test-readme1-{test_id}")
    os.mkdir(cgroup)
    root = os.environ.get("FRESH_ROOT", "/var/tmp/fresh-debian-root") + "-readme1"
    # In the private mount namespace: a cgroup2 mount showing the new cgroup namespace's root
    # (the kernel refuses a second mount of the same hierarchy on the same mount point, so
    # the host's goes first: only in this namespace) and a bpffs of its own.
    inner = (
        f"umount -l {mount} && mount -t cgroup2 cgroup2 {mount} && "
        "{ ! mountpoint -q /sys/fs/bpf || umount -l /sys/fs/bpf; } && "
        f"mount -t bpf bpf /sys/fs/bpf && exec {tool} readme 1"
    )
    outer = (
        f"echo $$ > {cgroup}/cgroup.procs && exec unshare --mount --cgroup "
        f"--propagation private sh -c '{inner}'"
    )
    env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/root",
        "TERM": "dumb",
        "LANG": "C.UTF-8",
        "FRESH_ROOT": root,
        **{k: v for k, v in os.environ.items() if k in ("FRESH_CACHE", "CI")},
    }
    log = bytearray()
    pid, fd = pty.fork()
    if pid == 0:  # pragma: no cover - the child
        os.chdir(REPO)
        os.execve("/bin/sh", ["/bin/sh", "-c", outer], env)
    status = None
    try:
        # apt-get and pip on a new machine: minutes, not seconds.
        started = _read_until(fd, rb"Running as unit: run-u1\.service", 1200, log)
        assert started, "the main job did not start:\n" + log.decode(errors="replace")[-4000:]
        time.sleep(1)  # let the shell print its prompt before the first line arrives
        for line, expect in DIALOGUE:
            os.write(fd, line.encode() + b"\n")
            ok = _read_until(fd, expect, 120, log)
            assert ok, f"{line!r}: no {expect!r}:\n" + log.decode(errors="replace")[-4000:]
            _read_until(fd, rb"\n# $", 10, log)  # the next prompt: a transcript that reads well
        os.write(fd, b"exit 0\n")
        _read_until(fd, rb"# fresh-debian: exit status \d+", 300, log)
        _, wstatus = os.waitpid(pid, 0)
        status = os.waitstatus_to_exitcode(wstatus)
        pid = 0
    finally:
        if pid:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        os.close(fd)
        text = log.decode(errors="replace").replace("\r\n", "\n")
        (tmp_path / "transcript.log").write_text(text)
        if os.environ.get("IPACCTD_README1_TRANSCRIPT"):
            with open(os.environ["IPACCTD_README1_TRANSCRIPT"], "w") as f:
                f.write(text)
        _remove_cgroup_tree(cgroup)
        subprocess.run(["rm", "-rf", "--one-file-system", root], check=False)
    print(text[-6000:])
    assert status == 0, text[-4000:]
    assert "# fresh-debian: exit status 0" in text
    # The denied send failed in the kernel with EPERM, the allowed one went out.
    assert "PermissionError: [Errno 1] Operation not permitted" in text, text[-4000:]
    assert re.search(r"Firewall: IPAddressDeny=1\.1\.1\.1/32 \(enforced\)", text), text[-4000:]
    # `ipacctd daemon` with Debian's python3 alone: what to install, no traceback.
    tail = text[text.index("python3 -m ipacctd daemon") :]
    daemon_part = tail[: tail.index("nodeps=", tail.index("\n"))]
    assert "needs the Python package dbus-fast" in daemon_part, daemon_part
    assert "Traceback" not in daemon_part, daemon_part
    assert re.search(r"nodeps=69\b", tail), tail[:2000]
