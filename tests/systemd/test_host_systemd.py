"""ipacctd installed as the README says on a real systemd 252 host (issue 11.3, 11.4, 11.5).

``shared/tools/systemd-ref/systemd-ref.sh`` boots Debian's systemd as PID 1 in throw-away
namespaces (its own cgroup2 subtree, bpffs, D-Bus, journald, a network namespace with only
``lo``). This module copies the tree to a fresh directory under /var/tmp (visible inside),
runs ``contrib/install.sh`` there — with the daemon's dependencies from a wheel directory
downloaded beforehand, as the namespace has no network — then ``systemctl enable --now
ipacctd``, and checks what an administrator would:

* every cgroup ipacctd makes lies in the subtree systemd delegated to ``ipacctd.service``,
  the daemon itself in the leaf ``ipacctd.service/daemon`` (``systemd-cgls``);
* ``systemctl stop ipacctd`` kills no unit process;
* ``ipacctd run`` as a service's ``ExecStart=`` keeps the command in that service's tree (a
  child cgroup of a service with ``Delegate=yes``; refused without it), so ``systemctl kill
  -s KILL`` leaves no process behind and the next start works;
* the journal shows a failed binding at priority err; ``systemd-analyze verify`` is clean
  and ``systemd-analyze security`` better than the 7.3 before the hardening (3.5), with
  the daemon still working.

The systemd-ref instance is a machine-wide singleton: the module holds ``/tmp/sdref.lock``
from ``up`` to ``down`` (``down`` also when a test fails).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
import sdref

NS_ENV = [
    "env",
    "-i",
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG=C.UTF-8",
    "SYSTEMD_PAGER=",
    "SYSTEMD_COLORS=0",
]
SERVICE = "/system.slice/ipacctd.service"
SECURITY_BEFORE = 7.3  # systemd-analyze security ipacctd before the hardening lines
SECURITY_LIMIT = 4.0  # 3.5 with them (units/ipacctd.service)
DENIED = "198.51.100.1"
MARK = "/run/ipacctd-host-test.mark"

pytestmark = pytest.mark.kernel


def _install_requirements() -> list[str]:
    """What contrib/install.sh installs, from pyproject.toml (one list, not a copy): the build
    backend, the dependencies and the daemon's extra."""
    import tomllib

    with open(os.path.join(sdref.REPO, "pyproject.toml"), "rb") as f:
        meta = tomllib.load(f)
    return [*meta["build-system"]["requires"], *meta["project"]["dependencies"],
            *meta["project"]["optional-dependencies"]["daemon"]]


class Host(sdref.Ref):
    """The namespaced systemd host: run shell commands inside it."""

    def sh(self, cmd: str, check: bool = True, timeout: float = 180) -> subprocess.CompletedProcess:
        res = self.run([*NS_ENV, "bash", "-c", cmd], timeout=timeout)
        if check:
            assert res.returncode == 0, (cmd, res.returncode, res.stdout, res.stderr)
        return res

    def out(self, cmd: str) -> str:
        return self.sh(cmd).stdout

    def wait(self, cmd: str, what: str, timeout: float = 30) -> str:
        """Run ``cmd`` until it succeeds (bounded); its output."""
        deadline = time.monotonic() + timeout
        while True:
            res = self.sh(cmd, check=False)
            if res.returncode == 0:
                return res.stdout
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}: {res.stdout}{res.stderr}")
            time.sleep(0.3)

    def cgroup_of(self, pid: int) -> str:
        return self.out(f"sed -n 's/^0:://p' /proc/{pid}/cgroup").strip()

    def main_pid(self, unit: str) -> int:
        return int(self.out(f"systemctl show -p MainPID --value {unit}").strip())


@pytest.fixture(scope="module")
def host() -> Iterator[Host]:
    script = sdref.script("nsenter")
    with sdref.scratch("ipacctd-host") as root:
        os.makedirs(f"{root}/wheels")
        shutil.copytree(sdref.REPO, f"{root}/src", symlinks=True, ignore=sdref.COPY_IGNORE)
        # The namespace has no network: the daemon's dependencies come from here.
        dl = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "-q",
                "--disable-pip-version-check",
                "-d",
                f"{root}/wheels",
                *_install_requirements(),
            ],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert dl.returncode == 0, dl.stderr
        with sdref.locked(), sdref.running(script):
            yield Host(script, root)


@pytest.fixture(scope="module")
def installed(host: Host) -> Host:
    """Installed by the README's route and enabled: ``contrib/install.sh``, then
    ``systemctl enable --now ipacctd``."""
    res = host.sh(
        f"cd {host.root}/src && PIP_NO_INDEX=1 PIP_FIND_LINKS={host.root}/wheels "
        "contrib/install.sh",
        timeout=600,
    )
    assert "done: ipacctd" in res.stdout, res.stdout
    # dbus-daemon notices the new policy file by itself, but not before it answers the
    # name request of a daemon started in the same second: reload it, as a package would.
    host.sh(f"systemctl reload dbus && touch {MARK}")  # cgroups made from here on: ipacctd's
    host.sh("systemctl enable --now ipacctd")
    assert host.out("systemctl is-active ipacctd").strip() == "active"
    return host


def _units(host: Host) -> list[dict]:
    return json.loads(host.out("ipacctd list-units --all --json"))


def test_every_ipacctd_cgroup_lies_in_its_delegated_subtree(installed: Host) -> None:
    h = installed
    daemon = h.main_pid("ipacctd")
    assert h.cgroup_of(daemon) == f"{SERVICE}/daemon"  # the no-internal-process rule
    # run from a root shell, attach to a service, a unit file matching another service
    h.sh("nohup ipacctd run --unit web -- sleep 600 >/dev/null 2>&1 &")
    h.sh("systemd-run --unit target sleep 600")
    h.out(f"ipacctd attach /system.slice/target.service -p IPAddressDeny={DENIED}")
    h.sh(
        "printf '[Match]\\nControlGroup=/system.slice/matched.service\\n[Service]\\n"
        f"IPAddressDeny={DENIED}\\n' > /etc/ipacctd/units/matched.unit && ipacctd reload"
    )
    h.sh("systemd-run --unit matched sleep 600")
    h.wait("ipacctd status matched.service", "the unit file bound to matched.service")
    h.wait("ipacctd status web.service", "web.service")
    units = {u["name"]: u for u in _units(h)}
    assert units["web.service"]["cgroup"] == f"{SERVICE}/web.service"
    assert units["target.service"]["cgroup"] == "/system.slice/target.service"
    assert units["matched.service"]["cgroup"] == "/system.slice/matched.service"
    for u in units.values():
        assert u["enforced"], u
    (web_pid,) = units["web.service"]["pids"]
    assert h.cgroup_of(web_pid) == f"{SERVICE}/web.service"
    # Nothing at the root of the hierarchy; ipacctd made no cgroup outside its subtree.
    assert h.sh("test -e /sys/fs/cgroup/ipacctd", check=False).returncode != 0
    made = h.out(
        f"cd /sys/fs/cgroup && find . -mindepth 1 -type d -name '*.service' -newer {MARK} | sort"
    ).split()
    outside = [
        d
        for d in made
        if not d.startswith(f".{SERVICE}/")
        and d
        not in (
            "./system.slice/ipacctd.service",
            "./system.slice/target.service",
            "./system.slice/matched.service",
        )
    ]
    assert outside == [], made
    tree = h.out("systemd-cgls --no-pager -u ipacctd.service")
    print(f"\nsystemd-cgls -u ipacctd.service:\n{tree}")
    assert re.search(r"web\.service.*\n.*sleep 600", tree), tree
    assert re.search(r"daemon.*\n.*ipacctd daemon", tree), tree
    # The CLI's view of the cgroup root is the daemon's, also while it is down.
    root = h.out(
        "busctl get-property org.ipacctd1 /org/ipacctd1 org.ipacctd1.Manager ControlGroupRoot"
    )
    assert root.strip() == f's "{SERVICE}"'


def test_stopping_the_daemon_kills_no_unit_process(installed: Host) -> None:
    h = installed
    h.wait("ipacctd status web.service", "web.service")
    (web_pid,) = next(u for u in _units(h) if u["name"] == "web.service")["pids"]
    h.sh("systemctl stop ipacctd")
    assert h.sh(f"kill -0 {web_pid}", check=False).returncode == 0
    assert h.cgroup_of(web_pid) == f"{SERVICE}/web.service"
    # the daemon is down: the CLI (root) reads directly, with the same cgroup root
    status = h.out("ipacctd status web.service")
    assert f"CGroup: {SERVICE}/web.service" in status, status
    h.sh("nohup ipacctd run --unit web2 -- sleep 600 >/dev/null 2>&1 &")
    h.wait("ipacctd status web2.service", "web2.service (daemon down)")
    (w2,) = next(u for u in _units(h) if u["name"] == "web2.service")["pids"]
    assert h.cgroup_of(w2) == f"{SERVICE}/web2.service"
    h.sh("systemctl start ipacctd")
    assert h.out("systemctl is-active ipacctd").strip() == "active"
    assert h.sh(f"kill -0 {web_pid}", check=False).returncode == 0
    h.sh("ipacctd stop web2.service && ipacctd reset web2.service")


def test_run_inside_a_service_stays_in_its_tree(installed: Host) -> None:
    h = installed
    h.sh(
        # A name is the run's until reset (faults, issue 10): the service clears its unit
        # before each start, as an operator would.
        "printf '[Service]\\nDelegate=yes\\n"
        "ExecStartPre=-/usr/local/bin/ipacctd reset job.service\\n"
        "ExecStart=/usr/local/bin/ipacctd run --unit job "
        "-- sleep 600\\n' > /etc/systemd/system/wrapped.service && "
        "printf '[Service]\\nExecStart=/usr/local/bin/ipacctd run --unit plainjob "
        "-- sleep 600\\n' > /etc/systemd/system/plain.service && systemctl daemon-reload"
    )
    for round_ in range(2):  # the next start after a kill works
        h.sh("systemctl start wrapped")
        h.wait("ipacctd status job.service", f"job.service (round {round_})")
        (job,) = next(u for u in _units(h) if u["name"] == "job.service")["pids"]
        assert h.cgroup_of(job) == "/system.slice/wrapped.service/job.service"
        procs = h.out("systemd-cgls --no-pager -u wrapped.service")
        assert "sleep 600" in procs and "ipacctd run" in procs, procs
        h.sh("systemctl kill -s KILL wrapped")
        h.wait(
            'test "$(systemctl show -p ActiveState --value wrapped)" != active', "wrapped to stop"
        )
        assert h.sh(f"kill -0 {job}", check=False).returncode != 0
        left = h.sh(
            "cat $(find /sys/fs/cgroup/system.slice/wrapped.service -name cgroup.procs)"
            " 2>/dev/null",
            check=False,
        ).stdout.split()
        assert left == [], left
    h.sh("systemctl reset-failed wrapped", check=False)
    # Without Delegate=yes the command would leave the service: refused, said why.
    res = h.sh("systemctl start plain", check=False)
    h.wait('test "$(systemctl show -p ActiveState --value plain)" = failed', "plain to fail")
    log = h.out("journalctl --no-pager -u plain")
    assert "give the service Delegate=yes" in log, (res.stderr, log)
    assert "plainjob.service" not in {u["name"] for u in _units(h)}


def test_journal_shows_a_failed_binding_as_an_error(installed: Host) -> None:
    h = installed
    h.sh(
        "printf '[Match]\\nControlGroup=/system.slice/broken.service\\n[Service]\\n"
        "IPAddressDeny=not-an-address\\n' > /etc/ipacctd/units/broken.unit && ipacctd reload"
    )
    log = h.wait(
        "journalctl --no-pager -u ipacctd -p err | grep broken.unit",
        "the failed binding in the journal at priority err",
    )
    assert "not-an-address" in log, log
    h.sh("rm /etc/ipacctd/units/broken.unit && ipacctd reload")


def test_unit_verifies_and_is_no_less_hardened(installed: Host) -> None:
    h = installed
    res = h.sh("systemd-analyze verify /etc/systemd/system/ipacctd.service", check=False)
    assert res.returncode == 0 and "ipacctd" not in res.stdout + res.stderr, res
    sec = h.out("systemd-analyze security --no-pager ipacctd")
    level = float(re.search(r"Overall exposure level for ipacctd\.service: ([\d.]+)", sec)[1])
    print(f"\nsystemd-analyze security ipacctd: {level}")
    assert level <= SECURITY_LIMIT < SECURITY_BEFORE, sec
    # hardened and still working: a unit with a firewall through the daemon
    h.out(f"ipacctd run --unit hard -p IPAddressDeny={DENIED} -- true")
    show = h.out("ipacctd show hard.service -p IPFirewallEnforced -p ControlGroup")
    assert f"ControlGroup={SERVICE}/hard.service" in show and "IPFirewallEnforced=" in show
    h.out("ipacctd set-property web.service IPAddressDeny=198.51.100.2")  # through the daemon
    status = h.out("ipacctd status web.service")
    assert "IPAddressDeny=198.51.100.2/32 (enforced)" in status, status
