"""Real podman + runc for the container tests, isolated from the host's podman.

* :class:`Podman`: a podman whose configuration, storage, run and tmp directories, events
  log and hooks directory all live in one temporary directory (``CONTAINERS_CONF`` and
  ``CONTAINERS_STORAGE_CONF`` point there; the vfs driver needs no overlay mounts), with
  ``localhost/ipacctd-bb`` imported from a busybox rootfs (no registry). Containers run with
  ``--runtime runc --cgroup-manager cgroupfs`` (crun refuses this machine's hybrid cgroup
  layout) and lowered rlimits (no CAP_SYS_RESOURCE here), in a network namespace the test
  made (``--network ns:/proc/<holder>/ns/net``). Closing it removes every container, the
  image and the directory, also after a failure.
* :class:`TftpReceiver`: a process in the test's namespace that answers TFTP read requests
  on UDP port 69 of each test address with an error packet and counts what arrived where.
  busybox's ``tftp`` (this busybox's ``nc`` has no ``-u``) sends one datagram and exits on
  the answer, so a container's command sends at once and its traffic is known exactly.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from e2e_helpers import REPO, Installation
from netns import NetNS
from support import LineReader

IMAGE = "localhost/ipacctd-bb"
RUN_FLAGS = ("--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096")
#: The shipped hooks.d file; the tests install it with this tree's ipacctd and paths.
HOOK_JSON = Path(REPO) / "contrib" / "oci" / "ipacctd-hook.json"
#: Where podman with cgroupfs puts containers (relative to the cgroup2 mount).
PARENT = "/libpod_parent"

DENIED = "198.51.100.9"
ALLOWED = "198.51.100.2"
TFTP_PORT = 69
TFTP_ERROR = b"\x00\x05\x00\x01nofile\x00"  # the receiver's answer to every request
UDP4 = 28  # IPv4 + UDP header bytes


def send_both(*extra: str) -> list[str]:
    """A container command that sends one datagram to the denied address, then one to the
    allowed address, as its first instructions; ``extra`` shell words follow."""
    script = (
        f"tftp -g -r f -l /dev/null {DENIED}; tftp -g -r f -l /dev/null {ALLOWED}; "
        + " ".join(extra or ("exit 0",))
    )
    return ["sh", "-c", script]


class Podman:
    """A podman of our own (see the module docstring)."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="ipd-pm-", dir="/var/tmp")
        d = Path(self.dir)
        self.hooks_dir = d / "hooks"
        self.hooks_dir.mkdir()
        (d / "containers.conf").write_text(
            "[engine]\n"
            f'tmp_dir = "{d}/tmp"\n'
            f'volume_path = "{d}/volumes"\n'
            'events_logger = "file"\n'
            f'events_logfile_path = "{d}/events.log"\n'
            'cgroup_manager = "cgroupfs"\n'
            'runtime = "runc"\n'
            f'hooks_dir = ["{self.hooks_dir}"]\n'
        )
        (d / "storage.conf").write_text(
            f'[storage]\ndriver = "vfs"\nrunroot = "{d}/runroot"\ngraphroot = "{d}/root"\n'
        )
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("CONTAINERS_")}
        self.env.update(
            CONTAINERS_CONF=str(d / "containers.conf"),
            CONTAINERS_STORAGE_CONF=str(d / "storage.conf"),
        )
        try:
            self._import_image()
        except BaseException:
            self.close()
            raise

    def _import_image(self) -> None:
        rootfs = Path(self.dir) / "rootfs"
        (rootfs / "bin").mkdir(parents=True)
        for sub in ("etc", "proc", "sys", "dev", "tmp"):
            (rootfs / sub).mkdir()
        busybox = shutil.which("busybox") or "/bin/busybox"
        shutil.copy2(busybox, rootfs / "bin" / "busybox")
        applets = subprocess.run(
            [busybox, "--list"], capture_output=True, text=True, check=True
        ).stdout.split()
        for applet in applets:
            if applet != "busybox":
                os.symlink("busybox", rootfs / "bin" / applet)
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        try:
            self("import", "-", IMAGE, stdin=tar.stdout)
        finally:
            assert tar.stdout is not None
            tar.stdout.close()
            tar.wait(timeout=30)
        shutil.rmtree(rootfs)

    # -- running podman ------------------------------------------------------------------

    def __call__(
        self, *args: str, timeout: float = 60, check: bool = True, **kw
    ) -> subprocess.CompletedProcess:
        """``podman ARGS`` to completion; insists on exit 0 unless ``check=False``."""
        kw.setdefault("capture_output", "stdin" not in kw)
        if "stdin" in kw:
            kw.setdefault("stdout", subprocess.PIPE)
            kw.setdefault("stderr", subprocess.PIPE)
        res = subprocess.run(
            ["podman", *args], env=self.env, text=True, timeout=timeout, check=False, **kw
        )
        if check:
            assert res.returncode == 0, (args, res.returncode, res.stdout, res.stderr)
        return res

    def popen(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen(
            ["podman", *args],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def run_args(self, ns: NetNS, *extra: str) -> list[str]:
        """``podman run`` options for a container in ``ns`` (append image and command)."""
        return ["run", "--network", f"ns:/proc/{ns.pid}/ns/net", *RUN_FLAGS, *extra]

    def container_id(self, name: str) -> str:
        return self("inspect", "--format", "{{.Id}}", name).stdout.strip()

    # -- the hook ------------------------------------------------------------------------

    def install_hook(self, inst: Installation | None) -> None:
        """Install the shipped hooks.d file, running this tree's ``python -m ipacctd
        oci-hook`` on ``inst``'s paths (the runtime gives a hook no environment but the
        file's own ``env``); None removes it."""
        path = self.hooks_dir / "ipacctd-hook.json"
        if inst is None:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            return
        spec = json.loads(HOOK_JSON.read_text())
        env = [f"{k}={v}" for k, v in sorted(inst.env.items()) if k.startswith("IPACCTD_")]
        spec["hook"]["path"] = sys.executable
        # argv[0] a full path, not "python3": Python finds its home from argv[0].
        spec["hook"]["args"] = [sys.executable, "-m", "ipacctd", "oci-hook"]
        spec["hook"]["env"] = [f"PYTHONPATH={REPO}", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", *env]
        path.write_text(json.dumps(spec))

    # -- cleaning up ---------------------------------------------------------------------

    def remove_containers(self) -> None:
        """Remove every container; again while any is left (a crash loop between states)."""
        for _ in range(10):
            self("rm", "--all", "--force", "--time", "0", check=False, timeout=120)
            if not self("ps", "--all", "--quiet", check=False).stdout.strip():
                return
            time.sleep(0.2)
        raise AssertionError(f"containers left: {self('ps', '--all', check=False).stdout}")

    def close(self) -> None:
        """Remove every container and image, then the whole directory."""
        with contextlib.suppress(Exception):
            self.remove_containers()
        with contextlib.suppress(Exception):
            self("rmi", "--all", "--force", check=False, timeout=60)
        # Anything podman left mounted under our directory (a crash mid-run): unmount it.
        with open("/proc/self/mountinfo") as f:
            mounts = [line.split()[4] for line in f]
        for mnt in sorted((m for m in mounts if m.startswith(self.dir + "/")), reverse=True):
            subprocess.run(["umount", "-l", mnt], check=False, capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)
        assert not os.path.exists(self.dir), f"{self.dir} left behind"


#: Answers every TFTP request with an error packet; ``counts`` prints the sizes received
#: per local address as JSON.
RECEIVER = r"""
import json, select, socket, sys
socks = {}
for addr in sys.argv[2:]:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((addr, int(sys.argv[1])))
    socks[s.fileno()] = (s, addr)
got = {addr: [] for _, addr in socks.values()}
print("ready", flush=True)
fds = list(socks) + [0]
while True:
    ready, _, _ = select.select(fds, [], [])
    for fd in ready:
        if fd == 0:
            cmd = sys.stdin.readline().strip()
            if cmd in ("", "exit"):
                sys.exit(0)
            print(json.dumps(got), flush=True)
            continue
        s, addr = socks[fd]
        data, peer = s.recvfrom(65536)
        got[addr].append(len(data))
        s.sendto(REPLY, peer)
""".replace("REPLY", repr(TFTP_ERROR))


class TftpReceiver:
    """:data:`RECEIVER` in a namespace, on ``addresses``."""

    def __init__(self, ns: NetNS, addresses: Sequence[str] = (DENIED, ALLOWED)) -> None:
        self.proc = ns.popen(
            [sys.executable, "-c", RECEIVER, str(TFTP_PORT), *addresses],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        self.out = LineReader(self.proc.stdout)
        assert self.out.readline(timeout=15) == "ready"

    def sizes(self) -> dict[str, list[int]]:
        """Sizes of the datagrams received so far, per address."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"counts\n")
        self.proc.stdin.flush()
        return json.loads(self.out.readline(timeout=10))

    def count(self, addr: str) -> int:
        return len(self.sizes()[addr])


def remove_v1_cgroups(rel: str) -> None:
    """rmdir ``rel`` in every cgroup v1 hierarchy: podman with cgroupfs makes a
    ``--cgroup-parent`` in all of them on this hybrid layout, and leaves it there."""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            fstype = fields[fields.index("-") + 1]
            if fstype == "cgroup":
                path = os.path.join(fields[4], rel.lstrip("/"))
                for dirpath, _, _ in sorted(os.walk(path), key=lambda t: -len(t[0])):
                    with contextlib.suppress(OSError):
                        os.rmdir(dirpath)
