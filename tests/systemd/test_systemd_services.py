"""systemd services armed by systemd itself, proved on a real systemd 252 as PID 1.

``shared/tools/systemd-ref/systemd-ref.sh`` boots Debian's systemd in throw-away namespaces
(own cgroup2 subtree, bpffs, network namespace with 198.51.100.1 and .2 on ``lo``). The
project's package is copied to a fresh directory under /var/tmp (visible inside) and
``python3 -m ipacctd`` runs there, inside the namespaces, as an operator would run it on a
systemd host.

Each test service runs ``sender.py``, whose first act is one UDP datagram to the denied
address 198.51.100.1 and one to the allowed 198.51.100.2, recording for each whether
``sendto`` passed or failed with EPERM; a receiver service (outside the tested cgroups)
logs every datagram that arrives. The tests compare three independent records: what each
start of the service sent, what arrived, and ipacctd's counters.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sdref

DENIED, ALLOWED = "198.51.100.1", "198.51.100.2"
PORT = 9999
PAYLOAD = 64
IP_BYTES = 20 + 8 + PAYLOAD  # what a cgroup_skb program counts for one datagram (skb->len)
NS_PATH = "PATH=/usr/sbin:/usr/bin:/sbin:/bin"
DEADLINE = 30.0

SENDER = f"""
import errno, os, signal, socket, sys, time
svc, mode, logdir = sys.argv[1], sys.argv[2], sys.argv[3]
inv = os.environ.get("INVOCATION_ID", "none")[:16]

def send_all(tag):
    for dst in ({DENIED!r}, {ALLOWED!r}):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            s.sendto(f"{{svc}} {{inv}} {{tag}} {{dst}}".encode().ljust({PAYLOAD}, b"."),
                     (dst, {PORT}))
            res = "ok"
        except OSError as e:
            res = "eperm" if e.errno == errno.EPERM else f"err{{e.errno}}"
        s.close()
        with open(os.path.join(logdir, "sent.log"), "a") as f:
            f.write(f"{{svc}} {{inv}} {{tag}} {{dst}} {{res}}\\n")

send_all("start")
signal.signal(signal.SIGUSR1, lambda *_: send_all("usr1"))
if mode == "crash" and not os.path.exists(os.path.join(logdir, svc + ".hold")):
    sys.exit(1)
for _ in range(3600):
    time.sleep(1)
"""

RECEIVER = f"""
import os, select, socket, sys
logdir = sys.argv[1]
socks = []
for addr in ({DENIED!r}, {ALLOWED!r}):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((addr, {PORT}))
    socks.append(s)
open(os.path.join(logdir, "receiver.ready"), "w").close()
with open(os.path.join(logdir, "recv.log"), "a") as log:
    while True:
        for s in select.select(socks, [], [])[0]:
            data = s.recv(4096)
            log.write(data.rstrip(b".").decode() + "\\n")
            log.flush()
"""

#: A systemctl whose daemon-reload fails, as it does when PID 1 does not answer in time.
FAILING_SYSTEMCTL = """#!/bin/sh
[ "$1" = daemon-reload ] && { echo "simulated: connection timed out" >&2; exit 1; }
exec systemctl "$@"
"""


class SystemdRef(sdref.Ref):
    """The namespaced systemd and this module's files inside it."""

    logdir = "/run/ipsd"

    def sh(
        self,
        *cmd: str,
        check: bool = True,
        input: str | None = None,
        env: dict[str, str] | None = None,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess:
        """Run a command inside the namespaces."""
        extra = [f"{k}={v}" for k, v in (env or {}).items()]
        res = self.run(["env", "-i", NS_PATH, *extra, *cmd], input=input, timeout=timeout)
        if check and res.returncode != 0:
            raise AssertionError(f"{cmd} failed ({res.returncode}): {res.stderr}{res.stdout}")
        return res

    def ipacctd(
        self, *args: str, check: bool = True, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess:
        return self.sh(
            "python3",
            "-m",
            "ipacctd",
            *args,
            check=check,
            env={"PYTHONPATH": self.root, **(env or {})},
        )

    def ipacctd_py(
        self, code: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess:
        """Python code with the project's package importable, inside the namespaces."""
        return self.sh("python3", "-c", code, env={"PYTHONPATH": self.root, **(env or {})})

    def write(self, path: str, text: str) -> None:
        self.sh("sh", "-c", f'mkdir -p "$(dirname {path})" && cat > {path}', input=text)

    def read(self, path: str) -> str:
        return self.sh("sh", "-c", f"cat {path} 2>/dev/null || true").stdout

    def exists(self, path: str) -> bool:
        return self.sh("test", "-e", path, check=False).returncode == 0

    def systemctl(self, *args: str) -> None:
        self.sh("systemctl", *args)

    # -- the records --------------------------------------------------------------------------

    def sent(self, svc: str) -> list[tuple[str, str, str, str]]:
        """(invocation, tag, destination, result) of every send of ``svc``, in order."""
        out = []
        for line in self.read(f"{self.logdir}/sent.log").splitlines():
            f = line.split()
            if len(f) == 5 and f[0] == svc:
                out.append((f[1], f[2], f[3], f[4]))
        return out

    def received(self, svc: str) -> list[tuple[str, str, str]]:
        """(invocation, tag, destination) of every datagram of ``svc`` that arrived."""
        out = []
        for line in self.read(f"{self.logdir}/recv.log").splitlines():
            f = line.split()
            if len(f) == 4 and f[0] == svc:
                out.append((f[1], f[2], f[3]))
        return out

    def wait_sent(self, svc: str, count: int) -> list[tuple[str, str, str, str]]:
        deadline = time.monotonic() + DEADLINE
        while True:
            sent = self.sent(svc)
            if len(sent) >= count:
                return sent
            if time.monotonic() > deadline:
                raise AssertionError(f"{svc}: {len(sent)} sends recorded, waited for {count}")
            time.sleep(0.05)

    def wait_received(self, svc: str, want: set) -> None:
        """Let every datagram that passed arrive (loopback: at once, bounded anyway)."""
        deadline = time.monotonic() + DEADLINE
        while not want <= set(self.received(svc)) and time.monotonic() < deadline:
            time.sleep(0.05)

    def counters(self, unit: str) -> dict[str, str]:
        props = (
            "IPEgressPackets",
            "IPEgressBytes",
            "IPEgressDroppedPackets",
            "IPEgressDroppedBytes",
            "IPIngressPackets",
            "IPFirewallEnforced",
        )
        out = self.ipacctd("show", unit, *(a for p in props for a in ("-p", p))).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def service(self, svc: str, mode: str, extra: str = "") -> None:
        self.write(
            f"/run/systemd/system/{svc}.service",
            f"""[Unit]
StartLimitIntervalSec=0
[Service]
Type=simple
ExecStart=/usr/bin/python3 -S {self.root}/sender.py {svc} {mode} {self.logdir}
{extra}""",
        )
        self.systemctl("daemon-reload")


@pytest.fixture(scope="module")
def sd() -> Iterator[SystemdRef]:
    script = sdref.script()
    with sdref.locked(), sdref.scratch("ipacctd-sdtest") as root:
        if os.path.exists("/tmp/sdref.pid"):
            pytest.fail("systemd-ref is up already (/tmp/sdref.pid) although we hold its lock")
        shutil.copytree(
            sdref.REPO / "ipacctd", f"{root}/ipacctd", ignore=shutil.ignore_patterns("__pycache__")
        )
        Path(root, "sender.py").write_text(SENDER)
        Path(root, "receiver.py").write_text(RECEIVER)
        # Written before the namespaces exist: they see /var/tmp through an overlay of /.
        Path(root, "systemctl-fails-reload").write_text(FAILING_SYSTEMCTL)
        os.chmod(f"{root}/systemctl-fails-reload", 0o755)
        os.chmod(root, 0o755)
        with sdref.running(script):
            s = SystemdRef(script, root)
            s.sh("mkdir", "-p", s.logdir)
            s.write(
                "/run/systemd/system/ipsd-recv.service",
                f"""[Service]
ExecStart=/usr/bin/python3 -S {root}/receiver.py {s.logdir}
""",
            )
            s.systemctl("daemon-reload")
            s.systemctl("start", "ipsd-recv.service")
            deadline = time.monotonic() + DEADLINE
            while not s.exists(f"{s.logdir}/receiver.ready"):
                assert time.monotonic() < deadline, "the receiver did not start"
                time.sleep(0.1)
            yield s


def _after(records: list, mark: int) -> list:
    return records[mark:]


def _check_exact(sd: SystemdRef, svc: str, unit: str, sent_since_attach: list) -> None:
    """Every send that passed arrived, none that failed did, and the unit's counters are
    exactly the passed and the dropped sends (each datagram counted once)."""
    ok = [(i, t, d) for i, t, d, r in sent_since_attach if r == "ok"]
    dropped = [(i, t, d) for i, t, d, r in sent_since_attach if r == "eperm"]
    assert len(ok) + len(dropped) == len(sent_since_attach), sent_since_attach
    sd.wait_received(svc, set(ok))
    got = set(sd.received(svc))
    assert set(ok) <= got, f"allowed datagrams lost: {set(ok) - got}"
    assert not set(dropped) & got, f"denied datagrams arrived: {set(dropped) & got}"
    c = sd.counters(unit)
    assert int(c["IPEgressPackets"]) == len(ok), (c, len(ok))
    assert int(c["IPEgressBytes"]) == len(ok) * IP_BYTES, c
    assert int(c["IPEgressDroppedPackets"]) == len(dropped), (c, len(dropped))
    assert int(c["IPEgressDroppedBytes"]) == len(dropped) * IP_BYTES, c
    assert int(c["IPIngressPackets"]) == 0, c


def _attach(sd: SystemdRef, svc: str, deny: str) -> int:
    """Start the service, bind it with ``ipacctd attach``; returns how many sends were made
    before (unarmed: they are not the unit's)."""
    sd.systemctl("start", f"{svc}.service")
    before = len(sd.wait_sent(svc, 2))
    res = sd.ipacctd("attach", f"/system.slice/{svc}.service", "-p", f"IPAddressDeny={deny}")
    assert f"{svc}.service" in res.stdout + res.stderr
    dropin = sd.read(f"/run/systemd/system/{svc}.service.d/50-ipacctd.conf")
    assert "IPEgressFilterPath=" in dropin and "prog_egress" in dropin, dropin
    # Traffic of the cgroup that ran before the attach: the daemon-reload made systemd
    # attach the programs there; they must run exactly once (counted below).
    sd.systemctl("kill", "-s", "USR1", "--kill-who=main", f"{svc}.service")
    sd.wait_sent(svc, before + 2)
    return before


def test_restarts_and_daemon_reloads_are_armed_by_systemd(sd: SystemdRef) -> None:
    svc, unit = "ipsd-a", "ipsd-a.service"
    sd.service(svc, "hold")
    mark = _attach(sd, svc, DENIED)
    assert sd.counters(unit)["IPFirewallEnforced"] == "yes"
    expected = mark + 2
    for i in range(20):
        sd.systemctl("restart", f"{svc}.service")
        expected += 2
        sd.wait_sent(svc, expected)
        if i % 4 == 1:
            # daemon-reload on the running service, then traffic from the running cgroup:
            # systemd re-attaches the pinned programs there; each must still run once.
            sd.systemctl("daemon-reload")
            sd.systemctl("kill", "-s", "USR1", "--kill-who=main", f"{svc}.service")
            expected += 2
            sd.wait_sent(svc, expected)
        if i % 4 == 3:
            sd.systemctl("daemon-reload")  # then restarted: the next start reads the pins
    since = _after(sd.sent(svc), mark)
    starts = {i for i, t, _, _ in since if t == "start"}
    assert len(starts) == 20
    assert all(r == ("eperm" if d == DENIED else "ok") for _, _, d, r in since), since
    _check_exact(sd, svc, unit, since)
    assert sd.counters(unit)["IPFirewallEnforced"] == "yes"
    dropin = f"/run/systemd/system/{svc}.service.d/50-ipacctd.conf"
    assert sd.ipacctd("show", unit, "-p", "SystemdDropIn", "--value").stdout.strip() == dropin
    status = sd.ipacctd("status", unit).stdout
    assert f"      Armed: by systemd at every start of {unit} ({dropin})" in status, status
    assert "(enforced)" in status, status
    progs = json.loads(sd.ipacctd("inspect", unit, "--json").stdout)["programs"]
    assert sorted((p["link"], p["name"]) for p in progs) == [
        ("prog_egress", "ipacctd_egress"),
        ("prog_ingress", "ipacctd_ingress"),
    ], progs
    sd.systemctl("stop", f"{svc}.service")
    sd.ipacctd("detach", unit)


def test_crash_loop_is_armed_at_every_start(sd: SystemdRef) -> None:
    svc, unit = "ipsd-crash", "ipsd-crash.service"
    hold = f"{sd.logdir}/{svc}.hold"
    sd.sh("touch", hold)  # the first start waits, so that there is a cgroup to attach to
    sd.service(svc, "crash", "Restart=always\nRestartSec=100ms\n")
    mark = _attach(sd, svc, DENIED)
    sd.sh("rm", hold)
    sd.systemctl("kill", "-s", "KILL", "--kill-who=main", f"{svc}.service")  # crash: restart
    sent = sd.wait_sent(svc, mark + 2 * 12)  # twelve starts, each one crashing (exit 1)
    sd.sh("touch", hold)  # a later start holds: the loop ends
    deadline = time.monotonic() + DEADLINE
    while (
        sd.sh("systemctl", "is-active", f"{svc}.service", check=False).stdout.strip() != "active"
        or len(sd.sent(svc)) % 2
    ):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    time.sleep(0.5)  # the holding start has sent (it sends before it looks at the file)
    since = _after(sd.sent(svc), mark)
    assert len({i for i, t, _, _ in since if t == "start"}) >= 12, sent
    assert all(r == ("eperm" if d == DENIED else "ok") for _, _, d, r in since), since
    _check_exact(sd, svc, unit, since)
    restarts = sd.sh("systemctl", "show", "-p", "NRestarts", "--value", f"{svc}.service")
    assert int(restarts.stdout) >= 12
    # A stopped service's policy changes too: its next start reads the new pins.
    sd.systemctl("stop", f"{svc}.service")
    sd.ipacctd("set-property", unit, "IPAddressDeny=", f"IPAddressDeny={ALLOWED}")
    n = len(sd.sent(svc))
    sd.systemctl("start", f"{svc}.service")  # holds: the hold file is there
    tail = sd.wait_sent(svc, n + 2)[n:]
    assert [(d, r) for _, _, d, r in tail] == [(DENIED, "ok"), (ALLOWED, "eperm")], tail
    sd.systemctl("stop", f"{svc}.service")
    sd.ipacctd("detach", unit)


def test_set_property_swaps_while_restarting_then_detach_disarms(sd: SystemdRef) -> None:
    svc, unit = "ipsd-swap", "ipsd-swap.service"
    sd.service(svc, "hold")
    mark = _attach(sd, svc, DENIED)
    errors: list[BaseException] = []

    def restarts() -> None:
        try:
            for _ in range(8):
                sd.systemctl("restart", f"{svc}.service")
                time.sleep(0.05)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    t = threading.Thread(target=restarts)
    t.start()
    time.sleep(0.2)
    sd.ipacctd("set-property", unit, "IPAddressDeny=", f"IPAddressDeny={ALLOWED}")
    t.join(timeout=120)
    assert not errors and not t.is_alive(), errors
    time.sleep(0.5)
    after_swap = len(sd.sent(svc))
    after_swap += after_swap % 2  # a start's second send may still be on its way
    for k in range(1, 6):  # every start now reads the new pins
        sd.systemctl("restart", f"{svc}.service")
        sd.wait_sent(svc, after_swap + 2 * k)
    sd.systemctl("kill", "-s", "USR1", "--kill-who=main", f"{svc}.service")
    sd.wait_sent(svc, after_swap + 12)
    since = _after(sd.sent(svc), mark)
    by_start: dict[tuple[str, str], set[str]] = {}
    for inv, tag, dst, res in since:
        if res == "ok":
            by_start.setdefault((inv, tag), set()).add(dst)
    # During the swap a start ran the old policy or the new one (or both halves dropped,
    # when the swap fell between its two sends): never both destinations passed.
    assert all(len(v) < 2 for v in by_start.values()), by_start
    tail = sd.sent(svc)[after_swap:]
    assert len(tail) == 12
    assert all(r == ("eperm" if d == ALLOWED else "ok") for _, _, d, r in tail), tail
    _check_exact(sd, svc, unit, since)
    assert sd.counters(unit)["IPFirewallEnforced"] == "yes"

    # detach: the drop-in goes, systemd detaches the programs from the running cgroup,
    # and the next start runs without them.
    sd.ipacctd("detach", unit)
    assert not sd.exists(f"/run/systemd/system/{svc}.service.d/50-ipacctd.conf")
    assert unit not in sd.ipacctd("list-units", "--all").stdout
    n = len(sd.sent(svc))
    sd.systemctl("kill", "-s", "USR1", "--kill-who=main", f"{svc}.service")
    sd.systemctl("restart", f"{svc}.service")
    tail = sd.wait_sent(svc, n + 4)[n:]
    assert [r for *_, r in tail] == ["ok"] * 4, tail
    sd.systemctl("stop", f"{svc}.service")


BINDER = (
    "from ipacctd.manager.engine import Manager\n"
    "from ipacctd.daemon.binder import Binder\n"
    "b = Binder(Manager()); b.load()\n"
    "for line in b.reconcile(): print(line)\n"
)


def _write_unit_file(sd: SystemdRef, svc: str, unit: str, units: str) -> None:
    """``units``/``unit``: a unit file denying DENIED to the cgroup of ``svc``."""
    sd.write(
        f"{units}/{unit}",
        f"""[Match]
ControlGroup=/system.slice/{svc}.service
[Service]
IPAddressDeny={DENIED}
""",
    )


def _bind_unit_file(sd: SystemdRef, svc: str, unit: str, units: str) -> str:
    """The unit file written and bound by the daemon's binder; the drop-in's path."""
    env = {"IPACCTD_UNIT_DIR": units}
    _write_unit_file(sd, svc, unit, units)
    # The daemon's binder, once (as at daemon start or reload); then no daemon at all.
    out = sd.ipacctd_py(BINDER, env=env).stdout
    assert f"bound {unit} to /system.slice/{svc}.service" in out, out
    dropin = f"/run/systemd/system/{svc}.service.d/50-ipacctd.conf"
    assert sd.exists(dropin)
    return dropin


def test_unit_file_binding_is_armed_and_survives_restarts_without_the_daemon(
    sd: SystemdRef,
) -> None:
    svc, unit = "ipsd-file", "ipsd-file.service"
    units = f"{sd.logdir}/units"
    env = {"IPACCTD_UNIT_DIR": units}
    sd.service(svc, "hold")
    sd.systemctl("start", f"{svc}.service")
    mark = len(sd.wait_sent(svc, 2))
    dropin = _bind_unit_file(sd, svc, unit, units)
    expected = mark
    for _ in range(5):
        sd.systemctl("restart", f"{svc}.service")
        expected += 2
        sd.wait_sent(svc, expected)
    # The binder sees the cgroup vanish and come back: the unit stays (armed by systemd),
    # it is neither detached nor are its programs attached a second time (counted below).
    sd.systemctl("stop", f"{svc}.service")
    assert (
        f"{unit}: cgroup /system.slice/{svc}.service vanished"
        in sd.ipacctd_py(BINDER, env=env).stdout
    )
    sd.systemctl("start", f"{svc}.service")
    expected += 2
    sd.wait_sent(svc, expected)
    # Armed by systemd before any ipacctd process looked at the new cgroup:
    assert sd.counters(unit)["IPFirewallEnforced"] == "yes"
    out = sd.ipacctd_py(BINDER, env=env).stdout  # records the new cgroup; attaches nothing
    assert f"re-bound {unit} to the cgroup now at /system.slice/{svc}.service" in out, out
    since = _after(sd.sent(svc), mark)
    assert len(since) == 12
    assert all(r == ("eperm" if d == DENIED else "ok") for _, _, d, r in since), since
    _check_exact(sd, svc, unit, since)
    assert sd.counters(unit)["IPFirewallEnforced"] == "yes"
    # The file goes: the binder detaches the unit, and the drop-in goes with it.
    sd.sh("rm", f"{units}/{unit}")
    assert f"detached {unit} (unit file removed)" in sd.ipacctd_py(BINDER, env=env).stdout
    assert not sd.exists(dropin)
    sd.systemctl("stop", f"{svc}.service")


RECONCILE = "from ipacctd.manager.engine import Manager\nprint(' '.join(Manager().reconcile()))\n"


def test_a_lost_dropin_is_reported_and_reconcile_arms_again(sd: SystemdRef) -> None:
    svc, unit = "ipsd-heal", "ipsd-heal.service"
    sd.service(svc, "hold")
    mark = _attach(sd, svc, DENIED)
    dropin = f"/run/systemd/system/{svc}.service.d/50-ipacctd.conf"
    text = sd.read(dropin)
    # Lost behind ipacctd's back (or a crash between the pins and the drop-in): systemd
    # detaches the programs at the reload, and every view says so.
    sd.sh("rm", dropin)
    sd.systemctl("daemon-reload")
    c = sd.ipacctd("show", unit, "-p", "IPFirewallEnforced", "-p", "IPFirewallProblem").stdout
    assert "IPFirewallEnforced=no" in c and "IPFirewallProblem=programs missing" in c, c
    assert sd.ipacctd_py(RECONCILE).stdout.split() == [unit]
    assert sd.read(dropin) == text
    assert sd.counters(unit)["IPFirewallEnforced"] == "yes"
    n = len(sd.sent(svc))
    sd.systemctl("kill", "-s", "USR1", "--kill-who=main", f"{svc}.service")
    sd.systemctl("restart", f"{svc}.service")
    sd.wait_sent(svc, n + 4)
    since = _after(sd.sent(svc), mark)
    assert all(r == ("eperm" if d == DENIED else "ok") for _, _, d, r in since), since
    _check_exact(sd, svc, unit, since)
    sd.systemctl("stop", f"{svc}.service")
    sd.ipacctd("detach", unit)


def test_attach_fails_closed_when_systemd_cannot_be_told(sd: SystemdRef) -> None:
    svc, unit = "ipsd-fail", "ipsd-fail.service"
    sd.service(svc, "hold")
    sd.systemctl("start", f"{svc}.service")
    sd.wait_sent(svc, 2)
    wrapper = f"{sd.root}/systemctl-fails-reload"
    dropin_dir = f"/run/systemd/system/{svc}.service.d"

    def nothing_applied() -> None:
        assert not sd.exists(f"{dropin_dir}/50-ipacctd.conf")
        assert unit not in sd.ipacctd("list-units", "--all").stdout
        pins = sd.sh("sh", "-c", "ls /sys/fs/bpf/ipacctd/units 2>/dev/null || true").stdout
        assert "ipsd-fail" not in pins, pins
        n = len(sd.sent(svc))
        sd.systemctl("kill", "-s", "USR1", "--kill-who=main", f"{svc}.service")
        assert [r for *_, r in sd.wait_sent(svc, n + 2)[n:]] == ["ok", "ok"]

    res = sd.ipacctd(
        "attach",
        f"/system.slice/{svc}.service",
        "-p",
        f"IPAddressDeny={DENIED}",
        check=False,
        env={"IPACCTD_SYSTEMCTL": wrapper},
    )
    assert res.returncode != 0
    assert "daemon-reload failed: simulated: connection timed out" in res.stderr, res.stderr
    nothing_applied()

    sd.write(dropin_dir, "")  # a file where the drop-in directory belongs: cannot write
    res = sd.ipacctd(
        "attach", f"/system.slice/{svc}.service", "-p", f"IPAddressDeny={DENIED}", check=False
    )
    assert res.returncode != 0
    assert "cannot write the systemd drop-in" in res.stderr, res.stderr
    sd.sh("rm", "-f", dropin_dir)
    nothing_applied()
    with contextlib.suppress(AssertionError):
        sd.systemctl("stop", f"{svc}.service")


# -- a service bound while it is stopped: its FIRST start is armed too ---------------------

STARTS = 10


def _start_stop(sd: SystemdRef, svc: str, times: int) -> None:
    """Start the service and stop it again ``times`` times; each start sends first thing."""
    for _ in range(times):
        n = len(sd.sent(svc))
        sd.systemctl("start", f"{svc}.service")
        sd.wait_sent(svc, n + 2)
        sd.systemctl("stop", f"{svc}.service")


def _check_every_start_armed(sd: SystemdRef, svc: str, unit: str, starts: int) -> None:
    """Every send of every start (the first one included) obeyed the policy, and the
    counters are exact: bound before the service ever ran, no send is outside the unit."""
    sent = sd.sent(svc)
    assert len({i for i, t, _, _ in sent if t == "start"}) == starts, sent
    assert len(sent) == 2 * starts, sent
    assert all(r == ("eperm" if d == DENIED else "ok") for _, _, d, r in sent), sent
    _check_exact(sd, svc, unit, sent)


def _check_armed_and_stopped(sd: SystemdRef, unit: str) -> None:
    res = sd.ipacctd("status", unit, check=False)
    status = res.stdout
    assert res.returncode == 3, (res.returncode, res.stderr)  # inactive, as systemctl says
    assert "Active: inactive (dead)" in status, status
    dropin = f"/run/systemd/system/{unit}.d/50-ipacctd.conf"
    assert f"      Armed: by systemd at every start of {unit} ({dropin})" in status, status
    armed = f"(armed: in force from the first instruction of the next start of {unit}"
    assert armed in status, status
    assert "active (running)" not in status and "NOT" not in status, status
    show = sd.ipacctd("show", unit, "-p", "IPFirewallEnforced", "-p", "IPFirewallProblem")
    assert "IPFirewallEnforced=no" in show.stdout, show.stdout  # no cgroup: nothing in force
    assert f"{unit} is not running; systemd arms its next start" in show.stdout, show.stdout


def test_a_stopped_service_attached_is_armed_from_its_first_start(sd: SystemdRef) -> None:
    svc, unit = "ipsd-first", "ipsd-first.service"
    sd.service(svc, "hold")
    load = sd.sh("systemctl", "show", "-p", "LoadState,ActiveState", f"{svc}.service").stdout
    assert "LoadState=loaded" in load and "ActiveState=inactive" in load, load
    assert not sd.exists(f"/sys/fs/cgroup/system.slice/{svc}.service")
    sd.ipacctd("attach", f"/system.slice/{svc}.service", "-p", f"IPAddressDeny={DENIED}")
    dropin = sd.read(f"/run/systemd/system/{svc}.service.d/50-ipacctd.conf")
    assert "IPEgressFilterPath=" in dropin and "prog_egress" in dropin, dropin
    _check_armed_and_stopped(sd, unit)
    # The first start, no daemon anywhere: running, and enforced by systemd's attachment.
    sd.systemctl("start", f"{svc}.service")
    sd.wait_sent(svc, 2)
    status = sd.ipacctd("status", unit).stdout
    assert "Active: active (running)" in status and "(enforced)" in status, status
    assert sd.counters(unit)["IPFirewallEnforced"] == "yes"
    sd.systemctl("stop", f"{svc}.service")
    # Binding it again would disarm it in between: refused, nothing changes.
    res = sd.ipacctd("attach", f"/system.slice/{svc}.service", check=False)
    assert res.returncode != 0 and f"bound to {unit} already" in res.stderr, res.stderr
    assert sd.read(f"/run/systemd/system/{svc}.service.d/50-ipacctd.conf") == dropin
    # The drop-in lost while the service is stopped: its next start would run unarmed,
    # and every view says so; reconcile (daemon poll, reload) arms it again.
    sd.sh("rm", f"/run/systemd/system/{svc}.service.d/50-ipacctd.conf")
    sd.systemctl("daemon-reload")
    res = sd.ipacctd("status", unit, check=False)
    assert "(NOT ARMED: the systemd drop-in" in res.stdout, res.stdout
    show = sd.ipacctd("show", unit, "-p", "IPFirewallProblem", "--value").stdout
    assert show.startswith("not armed:") and "runs without the firewall" in show, show
    assert sd.ipacctd_py(RECONCILE).stdout.split() == [unit]
    assert sd.read(f"/run/systemd/system/{svc}.service.d/50-ipacctd.conf") == dropin
    _start_stop(sd, svc, STARTS - 1)
    _check_every_start_armed(sd, svc, unit, STARTS)
    _check_armed_and_stopped(sd, unit)
    sd.ipacctd("detach", unit)
    assert not sd.exists(f"/run/systemd/system/{svc}.service.d/50-ipacctd.conf")


def test_a_unit_file_for_a_stopped_service_arms_its_first_start(sd: SystemdRef) -> None:
    svc, unit = "ipsd-firstfile", "ipsd-firstfile.service"
    units = f"{sd.logdir}/units-first"
    env = {"IPACCTD_UNIT_DIR": units}
    sd.service(svc, "hold")
    dropin = _bind_unit_file(sd, svc, unit, units)
    _check_armed_and_stopped(sd, unit)
    assert sd.ipacctd_py(BINDER, env=env).stdout.strip() == ""  # bound: nothing to do
    _start_stop(sd, svc, STARTS // 2 - 1)
    # The binder sees the service run (it records the cgroup, attaching nothing: counted
    # below) and stop: the unit stays, armed for the starts that follow.
    n = len(sd.sent(svc))
    sd.systemctl("start", f"{svc}.service")
    sd.wait_sent(svc, n + 2)
    out = sd.ipacctd_py(BINDER, env=env).stdout
    assert f"re-bound {unit} to the cgroup now at /system.slice/{svc}.service" in out, out
    sd.systemctl("stop", f"{svc}.service")
    out = sd.ipacctd_py(BINDER, env=env).stdout
    assert f"{unit}: cgroup /system.slice/{svc}.service vanished" in out, out
    _start_stop(sd, svc, STARTS - STARTS // 2)
    _check_every_start_armed(sd, svc, unit, STARTS)
    _check_armed_and_stopped(sd, unit)
    # The file goes: the binder detaches the unit, and the drop-in goes with it.
    sd.sh("rm", f"{units}/{unit}")
    assert f"detached {unit} (unit file removed)" in sd.ipacctd_py(BINDER, env=env).stdout
    assert not sd.exists(dropin)


def test_a_path_naming_no_loaded_service_does_not_exist(sd: SystemdRef) -> None:
    sd.service("ipsd-other", "hold")  # loaded, but in system.slice
    for path in ("/system.slice/ipsd-nosuch.service", "/user.slice/ipsd-other.service"):
        res = sd.ipacctd("attach", path, "-p", f"IPAddressDeny={DENIED}", check=False)
        assert res.returncode != 0
        assert f"cgroup {path} does not exist" in res.stderr, res.stderr
        assert path.rsplit("/", 1)[1] not in sd.ipacctd("list-units", "--all").stdout
        assert not sd.exists(f"/run/systemd/system/{path.rsplit('/', 1)[1]}.d")


def _wait_for(what: str, check) -> None:
    deadline = time.monotonic() + DEADLINE
    while not check():
        assert time.monotonic() < deadline, f"waited {DEADLINE}s for {what}"
        time.sleep(0.1)


def test_the_daemon_arms_a_stopped_service_and_keeps_it_past_retention(sd: SystemdRef) -> None:
    svc, unit = "ipsd-firstd", "ipsd-firstd.service"
    units = f"{sd.logdir}/units-firstd"
    dropin = f"/run/systemd/system/{svc}.service.d/50-ipacctd.conf"
    sd.service(svc, "hold")
    _write_unit_file(sd, svc, unit, units)
    # The daemon, with retention 0: an inactive unit it may forget goes at its next poll.
    sd.sh(
        "systemd-run",
        "--unit=ipsd-daemon.service",
        f"--setenv=PYTHONPATH={sd.root}",
        f"--setenv=IPACCTD_UNIT_DIR={units}",
        sys.executable,  # the daemon's dependencies are this interpreter's (/ is shared)
        "-m",
        "ipacctd",
        "daemon",
        "--no-bus",
        "--listen=",
        "--retention=0",
        "--poll-interval=0.2",
    )
    try:
        _wait_for("the daemon to arm the stopped service", lambda: sd.exists(dropin))
        _check_armed_and_stopped(sd, unit)
        _start_stop(sd, svc, STARTS // 2)
        time.sleep(2)  # ten polls past retention: an armed unit is never forgotten
        assert sd.exists(dropin)
        _check_armed_and_stopped(sd, unit)
        _start_stop(sd, svc, STARTS - STARTS // 2)
        _check_every_start_armed(sd, svc, unit, STARTS)
        # The file goes and the daemon reloads (SIGHUP, as `ipacctd reload` without D-Bus):
        # it detaches the unit and the drop-in goes with it.
        sd.sh("rm", f"{units}/{unit}")
        sd.systemctl("kill", "-s", "HUP", "ipsd-daemon.service")
        _wait_for("the daemon to disarm the service", lambda: not sd.exists(dropin))
    finally:
        sd.sh("systemctl", "stop", "ipsd-daemon.service", check=False)
        log = sd.sh("journalctl", "-u", "ipsd-daemon.service", "--no-pager", check=False)
        print(log.stdout[-3000:])
