"""The CLI and the daemon as a host has them: the daemon found by its bus name and proven to
be root's, reads for every user through it, one daemon per state directory, no trust in
files a dead daemon or another user left behind (issues 10.4, 10.9, 11.4, 11.5).

"The system bus" of these tests is a private ``dbus-daemon`` whose address the CLI gets as
``DBUS_SYSTEM_BUS_ADDRESS`` (set by :class:`daemon_support.DaemonEnv`); its policy lets
every user own every name, as a permissive (or broken) bus policy would.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon_support import DaemonEnv
from e2e_helpers import REPO, Installation, line_matching
from support import PrivateBus, free_port, stop_process, wait_for

from ipacctd.errors import NotFound

pytestmark = pytest.mark.kernel

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
ALLOWED = "203.0.113.1"
DENIED = "198.51.100.1"
CHANGES = [
    ("set-property", "web.service", "IPAddressDeny="),
    ("stop", "web.service"),
    ("reset", "web.service"),
    ("detach", "web.service"),
    ("run", "--unit", "nobodys", "--", "true"),
    ("reload",),
]


class MethodLog:
    """Every org.ipacctd1 method call crossing a bus, as seen by ``dbus-monitor``."""

    def __init__(self, address: str, path: Path) -> None:
        self.path = path
        self.out = open(path, "w")  # noqa: SIM115 — closed in close()
        rule = "type='method_call',interface='org.ipacctd1.Manager'"
        probe = "type='method_call',path='/ipacctd/probe'"
        self.proc = subprocess.Popen(
            ["dbus-monitor", "--address", address, rule, probe],
            stdout=self.out,
            stderr=subprocess.STDOUT,
        )
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}

        def ready() -> bool:  # a call of our own shows up once the monitor listens
            subprocess.run(
                [
                    "busctl",
                    f"--address={address}",
                    "call",
                    "org.freedesktop.DBus",
                    "/ipacctd/probe",
                    "org.freedesktop.DBus.Peer",
                    "Ping",
                ],
                capture_output=True,
                timeout=10,
                check=False,
                env=env,
            )
            return "/ipacctd/probe" in path.read_text()

        wait_for(ready, 10, "dbus-monitor to listen", step=0.1)

    def members(self) -> list[str]:
        text = self.path.read_text()
        return [
            line.split("member=", 1)[1].split()[0]
            for line in text.splitlines()
            if "interface=org.ipacctd1.Manager" in line and "member=" in line
        ]

    def bodies(self, member: str) -> list[str]:
        """The bodies of the calls of ``member``, as dbus-monitor prints them (the indented
        lines under each call's line)."""
        out: list[str] = []
        header = False
        for line in self.path.read_text().splitlines():
            if not line.startswith(" "):
                header = "interface=org.ipacctd1.Manager" in line and f"member={member}" in line
                if header:
                    out.append("")
            elif header:
                out[-1] += line.strip() + "\n"
        return out

    def close(self) -> None:
        stop_process(self.proc)
        self.out.close()


@pytest.fixture(scope="module")
def nobody_path(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A PYTHONPATH with which uid 65534 runs ipacctd and imports dbus-fast. Where the
    interpreter's own site-packages are out of that user's reach (an interpreter under a
    private /root), a readable copy of dbus-fast comes along."""
    probe = subprocess.run(
        [*NOBODY, sys.executable, "-c", "import dbus_fast"],
        cwd="/",
        capture_output=True,
        check=False,
        timeout=30,
    )
    if probe.returncode == 0:
        yield REPO
        return
    import dbus_fast

    site = tempfile.mkdtemp(prefix="ipacctd-nobody-site-")
    try:
        shutil.copytree(os.path.dirname(dbus_fast.__file__), os.path.join(site, "dbus_fast"))
        for dirpath, _, files in os.walk(site):
            os.chmod(dirpath, 0o755)
            for f in files:
                os.chmod(os.path.join(dirpath, f), 0o644)
        yield f"{REPO}:{site}"
    finally:
        shutil.rmtree(site, ignore_errors=True)


def as_nobody(inst: Installation, path: str, *argv: str) -> subprocess.CompletedProcess:
    return inst.cli(*argv, prefix=NOBODY, env={"PYTHONPATH": path})


def test_every_user_reads_through_the_daemon_and_changes_nothing(
    env: DaemonEnv, nobody_path: str
) -> None:
    inst = env.inst
    ns = inst.netns([ALLOWED, DENIED])
    agent = inst.start_unit(ns, "web", f"IPAddressDeny={DENIED}")
    assert agent.send(ALLOWED, 100) == "ok 100"
    assert agent.send(DENIED, 10) == "err 1"

    # No daemon: a user is refused, told what is missing and the two ways to get it.
    res = as_nobody(inst, nobody_path, "status", "web.service")
    assert res.returncode == 77, (res.returncode, res.stderr)
    assert "Permission denied" in res.stderr and "run it as root" in res.stderr.lower()
    assert "no ipacctd daemon owns org.ipacctd1" in res.stderr, res.stderr
    assert "systemctl start ipacctd" in res.stderr, res.stderr

    env.start()
    for verb in (("show", "web.service"), ("list-units", "--all")):
        root = inst.ok(*verb)
        user = as_nobody(inst, nobody_path, *verb)
        assert user.returncode == 0, (verb, user.stderr)
        assert user.stdout == root.stdout, verb  # the engine's own view, through D-Bus
    status = as_nobody(inst, nobody_path, "status", "web.service")
    assert status.returncode == 0, status.stderr
    for needle in (
        "● web.service",
        f"IPAddressDeny={DENIED}/32 (enforced)",
        f"Denied: {DENIED} (egress, 1 packet)",
        "Dropped: 0B in (0 packets)",
        line_matching(inst.ok("status", "web.service").stdout, r" +Main PID: \d+ \(\S+\)"),
    ):
        assert needle in status.stdout, (needle, status.stdout)
    ins = as_nobody(inst, nobody_path, "inspect", "--json", "web.service")
    assert ins.returncode == 0, ins.stderr
    mine = json.loads(ins.stdout)
    theirs = json.loads(inst.ok("inspect", "--json", "web.service").stdout)
    assert [p["tag"] for p in mine["programs"]] == [p["tag"] for p in theirs["programs"]]
    assert len(mine["links"]) == 2 and all(link["attached"] for link in mine["links"])
    top = as_nobody(inst, nobody_path, "top", "--once", "-d", "0.1")
    assert top.returncode == 0 and "web.service" in top.stdout, (top.stdout, top.stderr)

    before = inst.ok("show", "web.service").stdout
    units_before = inst.unit_names()
    for argv in CHANGES:
        res = as_nobody(inst, nobody_path, *argv)
        assert res.returncode == 77, (argv, res.returncode, res.stderr)
        assert "uid 65534 may not change units" in res.stderr, (argv, res.stderr)
    assert inst.ok("show", "web.service").stdout == before
    assert inst.unit_names() == units_before
    assert agent.send(DENIED, 10) == "err 1"  # the firewall is still in force
    assert agent.send(ALLOWED, 10) == "ok 10"


def test_a_users_glob_asks_the_daemon_for_names_then_the_matches(
    env: DaemonEnv, nobody_path: str, tmp_path: Path
) -> None:
    """A user's glob is matched against the names ListUnits gives; only the matches are
    described (DescribeUnits of every unit, 12.6 MB of JSON at 10,000 units, only to learn
    the names, was what it cost before). The output is root's, as read directly."""
    inst = env.inst
    for name in ("web", "db"):
        inst.ok("run", "--unit", name, "-p", f"IPAddressDeny={DENIED}", "--", "true")
    env.start()
    log = MethodLog(env.address, tmp_path / "calls.log")
    try:
        user = as_nobody(inst, nobody_path, "list-units", "--all", "w*")
        assert user.returncode == 0, user.stderr
        wait_for(lambda: "DescribeUnits" in log.members(), 10, "the monitor to see the call")
    finally:
        log.close()
    assert user.stdout == inst.ok("list-units", "--all", "w*").stdout
    assert "web.service" in user.stdout and "db.service" not in user.stdout, user.stdout
    assert "ListUnits" in log.members(), log.members()
    described = log.bodies("DescribeUnits")
    assert described and all('string "web.service"' in b for b in described), described
    assert not any("db.service" in b for b in described), described


def test_a_users_list_of_all_units_asks_a_page_at_a_time(
    env: DaemonEnv, nobody_path: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``list-units --all`` and ``status`` of all units, as a user: the names from ListUnits,
    then DescribeUnits of at most DESCRIBE_PAGE names a call (one call of every unit held
    the daemon's loop 1.1 s at 10,000 units); what is printed is root's, as read directly,
    and a unit reset between two pages is left out, not an error."""
    from ipacctd.cli.remote import DESCRIBE_PAGE

    inst = env.inst
    count = DESCRIBE_PAGE + 20
    mgr = inst.manager()
    for i in range(count):
        mgr.start_transient(name=f"pg{i:03d}")
    env.start()
    log = MethodLog(env.address, tmp_path / "calls.log")
    try:
        user = as_nobody(inst, nobody_path, "list-units", "--all")
        assert user.returncode == 0, user.stderr
        wait_for(lambda: len(log.bodies("DescribeUnits")) >= 2, 10, "the monitor to see both")
    finally:
        log.close()
    assert user.stdout == inst.ok("list-units", "--all").stdout
    assert f"{count} units listed." in user.stdout, user.stdout[-300:]
    pages = log.bodies("DescribeUnits")
    asked = [b.count('string "pg') for b in pages]
    assert asked == [DESCRIBE_PAGE, 20], asked
    assert "ListUnits" in log.members()

    # Between ListUnits and a page, a unit goes: the rest are still shown (in-process, the
    # daemon's reads forced as a user's are, a reset slipped in before the last page).
    from ipacctd.cli import remote

    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", env.address)
    gone = f"pg{count - 1:03d}.service"
    link = remote.connect(inst.config())
    assert link is not None, remote.why_no_daemon
    try:
        dm = remote.DaemonManager(inst.config(), link, remote_reads=True)
        real = dm.describe

        def describe(names):
            if gone in names and len(names) > 1:
                inst.ok("reset", gone)
            return real(names)

        dm.describe = describe  # type: ignore[method-assign]
        names = [st.name for st in dm.statuses()]
        assert len(names) == count - 1 and gone not in names, len(names)
        with pytest.raises(NotFound):
            dm.statuses([gone])  # asked for by name: not found is an error, as before
    finally:
        link.close()


def test_cli_talks_only_to_the_daemon_on_the_system_bus(env: DaemonEnv, tmp_path: Path) -> None:
    """Daemon S on "the system bus" serves installation X; daemon P on a private bus serves
    installation Y. Root's CLI goes to S for X and to nobody for Y (P's runtime file
    names P's bus, as the old discovery read it)."""
    env.start()  # S
    other_tmp = tmp_path / "other"
    other_tmp.mkdir()
    with DaemonEnv(other_tmp) as p_env:
        p_env.start()  # P, on its own private bus
        y = p_env.inst
        y_env = {"DBUS_SYSTEM_BUS_ADDRESS": env.address}  # the host's CLI: S's bus
        s_log = MethodLog(env.address, tmp_path / "s.log")
        p_log = MethodLog(p_env.address, tmp_path / "p.log")
        try:
            env.inst.ok("run", "--unit", "to-s", "--", "true")
            res = y.cli("run", "--unit", "to-nobody", "--", "true", env=y_env)
            assert res.returncode == 0, res.stderr
            y.ok("stop", "to-nobody.service", env=y_env)
            y.ok("reset", "to-nobody.service", env=y_env)
            wait_for(lambda: "StartTransientUnit" in s_log.members(), 10, "S to see the run")
        finally:
            s_log.close()
            p_log.close()
        assert s_log.members().count("StartTransientUnit") == 1, s_log.members()
        assert p_log.members() == [], p_log.path.read_text()
        env.inst.ok("reset", "to-s.service")


IMPOSTOR = textwrap.dedent(
    """
    import asyncio, sys
    from dbus_fast import Message, MessageType
    from dbus_fast.aio import MessageBus

    async def main():
        bus = await MessageBus(bus_address=sys.argv[1]).connect()
        log = open(sys.argv[2], "a", buffering=1)
        def handler(msg):
            if msg.message_type == MessageType.METHOD_CALL and msg.interface != \\
                    "org.freedesktop.DBus.Peer":
                log.write(f"{msg.interface} {msg.member}\\n")
                sig = "o" if msg.member in ("StartTransientUnit", "AttachUnit") else ""
                body = ["/org/ipacctd1/unit/x"] if sig else []
                return Message.new_method_return(msg, sig, body)
        bus.add_message_handler(handler)
        await bus.request_name("org.ipacctd1")
        print("owned", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())
    """
)


def test_impostor_owning_the_bus_name_gets_nothing_of_roots(
    env: DaemonEnv, tmp_path: Path, nobody_path: str
) -> None:
    inst = env.inst
    inst.ok("run", "--unit", "web", "-p", f"IPAddressDeny={DENIED}", "--", "true")
    home = Path(tempfile.mkdtemp(prefix="ipacctd-impostor-"))  # reachable by uid 65534
    os.chmod(home, 0o755)
    calls = home / "calls"
    calls.touch()
    os.chmod(calls, 0o666)
    script = home / "ipacctd-impostor.py"  # "ipacctd" in its command line, as a daemon's
    script.write_text(IMPOSTOR)
    os.chmod(script, 0o644)
    proc = subprocess.Popen(
        [*NOBODY, sys.executable, str(script), env.address, str(calls)],
        stdout=subprocess.PIPE,
        text=True,
        cwd="/",
        env={"PYTHONPATH": nobody_path, "PATH": "/usr/bin:/bin"},
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "owned"
        # What a daemon killed with SIGKILL might have left, naming the impostor.
        os.makedirs(inst.state_dir, exist_ok=True)
        with open(os.path.join(inst.state_dir, "daemon.json"), "w") as f:
            json.dump({"pid": proc.pid, "bus": env.address, "starttime": 1}, f)
        before = inst.ok("show", "web.service").stdout
        for argv in [
            ("set-property", "web.service", f"IPAddressAllow={DENIED}"),
            ("stop", "web.service"),
            ("run", "--unit", "web2", "--", "true"),
            ("reload",),
        ]:
            res = inst.cli(*argv)
            assert res.returncode == 77, (argv, res.returncode, res.stdout, res.stderr)
            assert "owned by uid 65534" in res.stderr and "not root" in res.stderr, res.stderr
        res = as_nobody(inst, nobody_path, "status", "web.service")  # nor a user's reads
        assert res.returncode == 77 and "owned by uid 65534" in res.stderr, res.stderr
        assert calls.read_text() == ""
        assert inst.ok("show", "web.service").stdout == before
        assert "web2.service" not in inst.unit_names()
    finally:
        proc.kill()
        proc.wait(timeout=10)
        shutil.rmtree(home, ignore_errors=True)


def test_reload_never_signals_a_process_that_reused_the_daemons_pid(env: DaemonEnv) -> None:
    """kill -9 of the daemon, its PID reused by an ``ipacctd run``: reload leaves it alone."""
    inst = env.inst
    env.start()
    info = json.loads(Path(inst.state_dir, "daemon.json").read_text())
    assert info["pid"] == env.proc.pid
    inst.ok("reload")  # the live daemon (proven on the bus) reloads
    env.kill9()
    run = subprocess.Popen(
        inst.argv("run", "--unit", "victim", "--", "sleep", "60"),
        env={**inst.env, "IPACCTD_NO_DAEMON": "1"},
        cwd=REPO,
    )
    try:
        wait_for(lambda: inst.cli("status", "victim.service").returncode == 0, 20, "victim")
        # The stale file, now naming the run (as after PID reuse), with the dead daemon's
        # start time.
        stale = {**info, "pid": run.pid}
        Path(inst.state_dir, "daemon.json").write_text(json.dumps(stale))
        res = inst.cli("reload")
        assert res.returncode == 4, (res.returncode, res.stderr)
        assert "no ipacctd daemon is running" in res.stderr and "left alone" in res.stderr
        assert run.poll() is None
        inst.ok("stop", "victim.service")
        # Ended by stop's SIGTERM (143), not by a forwarded SIGHUP (129).
        assert run.wait(timeout=20) == 143
    finally:
        if run.poll() is None:
            run.kill()
            run.wait(timeout=10)
        inst.cli("reset", "victim.service")


def _second_daemon(env: dict[str, str], listen: str, *args: str) -> subprocess.CompletedProcess:
    """Another ``ipacctd daemon`` on a private bus of its own: how it ended."""
    with PrivateBus() as other_bus:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "ipacctd",
                "daemon",
                "--bus",
                other_bus.address,
                "--listen",
                listen,
                *args,
            ],
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )


def _unit_metadata(inst: Installation) -> dict[str, bytes]:
    units = Path(inst.state_dir, "units")
    return {n: (units / n).read_bytes() for n in os.listdir(units)}


def test_second_daemon_on_the_same_state_dir_is_refused_before_touching_anything(
    env: DaemonEnv, tmp_path: Path
) -> None:
    inst = env.inst
    env.start()
    inst.ok("run", "--unit", "done", "--", "true")
    runtime = Path(inst.state_dir, "daemon.json").read_bytes()
    meta_before = _unit_metadata(inst)
    res = _second_daemon(
        inst.env, f"127.0.0.1:{free_port()}", "--retention", "0", "--poll-interval", "0.05"
    )
    assert res.returncode != 0
    assert f"another ipacctd daemon (pid {env.proc.pid}) serves {inst.state_dir}" in res.stderr
    assert "Traceback" not in res.stderr, res.stderr
    assert Path(inst.state_dir, "daemon.json").read_bytes() == runtime
    after = _unit_metadata(inst)
    assert after == meta_before  # retention 0 would have collected "done" at once
    assert env.client.has_owner()
    # Nor on the same pins with another state directory (its GC would remove our units).
    res = _second_daemon(
        {**inst.env, "IPACCTD_STATE_DIR": str(tmp_path / "other-state")}, "", "--retention", "0"
    )
    assert res.returncode != 0
    assert f"uses the pin directory {inst.bpf_dir}" in res.stderr, res.stderr
    assert os.path.isdir(os.path.join(inst.bpf_dir, "units", "done_dservice"))
    inst.ok("reset", "done.service")


def test_runtime_file_never_written_through_a_planted_symlink(
    env: DaemonEnv, tmp_path: Path
) -> None:
    inst = env.inst
    target = tmp_path / "precious"
    target.write_text("keep me\n")
    os.makedirs(inst.state_dir, exist_ok=True)
    for name in ("daemon.json.tmp", "daemon.json"):
        os.symlink(target, os.path.join(inst.state_dir, name))
    env.start()
    assert target.read_text() == "keep me\n"
    assert not os.path.islink(os.path.join(inst.state_dir, "daemon.json"))
    env.stop()
    assert target.read_text() == "keep me\n"


def test_root_refuses_directories_another_user_controls(env: DaemonEnv, tmp_path: Path) -> None:
    inst = env.inst
    hostile = tmp_path / "hostile"
    hostile.mkdir()
    os.chown(hostile, 65534, 65534)
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        # Planted metadata naming a cgroup with a live process in it.
        victim = inst.make_cgroup(f"{inst.cgroup_root}/planted.service")
        with open(os.path.join(victim, "cgroup.procs"), "w") as f:
            f.write(str(sleeper.pid))
        os.makedirs(hostile / "units")
        (hostile / "units" / "planted.service.json").write_text(
            json.dumps({"name": "planted.service", "cgroup": f"{inst.cgroup_root}/planted.service"})
        )
        for argv in (("stop", "planted.service"), ("list-units",)):
            res = inst.cli(*argv, env={"IPACCTD_STATE_DIR": str(hostile)})
            assert res.returncode == 2, (argv, res.returncode, res.stderr)
            assert "IPACCTD_STATE_DIR" in res.stderr and "owned by uid 65534" in res.stderr
        assert sleeper.poll() is None
        writable = tmp_path / "writable"
        writable.mkdir()
        os.chmod(writable, 0o777)
        res = inst.cli("list-units", env={"IPACCTD_STATE_DIR": str(writable / "state")})
        assert res.returncode == 2 and "writable by group or others" in res.stderr, res.stderr
    finally:
        sleeper.kill()
        sleeper.wait(timeout=10)


def test_no_bus_daemon_serves_metrics_and_unit_files_alone(env: DaemonEnv) -> None:
    inst = env.inst
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ipacctd",
            "daemon",
            "--no-bus",
            "--listen",
            f"127.0.0.1:{port}",
            "--poll-interval",
            "0.2",
        ],
        env=inst.env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        env.port = port
        inst.ok("run", "--unit", "counted", "--", "true")  # direct: no daemon on the bus

        def listed() -> bool:
            try:
                return 'unit="counted.service"' in env.scrape_text(timeout=2)
            except OSError:
                return False

        wait_for(listed, 20, "counted.service in /metrics")
        assert not env.client.has_owner()
        # A unit file, bound on reload (SIGHUP to the proven PID of the runtime file).
        cg = inst.make_cgroup(f"/ipacctd-test-{inst.id}-ext")
        Path(inst.unit_dir, "ext.unit").write_text(
            f"[Match]\nControlGroup=/ipacctd-test-{inst.id}-ext\n[Service]\nIPAddressDeny={DENIED}\n"
        )
        inst.ok("reload")
        wait_for(lambda: "ext.service" in inst.unit_names(), 20, "ext.service bound")
        assert os.path.isdir(cg)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
    assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
    inst.ok("detach", "ext.service")
    inst.ok("reset", "counted.service")


#: A system bus as Debian's system.conf has it (method calls denied unless a policy allows
#: them), with the shipped contrib/dbus/org.ipacctd1.conf included.
SYSTEM_LIKE_BUS = """<!DOCTYPE busconfig PUBLIC
 "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>custom</type>
  <listen>unix:tmpdir={{dir}}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Introspectable"/>
  </policy>
  <include>{policy}</include>
</busconfig>
""".format(policy=os.path.join(REPO, "contrib", "dbus", "org.ipacctd1.conf"))


def test_shipped_bus_policy_lets_every_user_read_with_the_cli(
    tmp_path: Path, nobody_path: str
) -> None:
    with DaemonEnv(tmp_path, SYSTEM_LIKE_BUS) as env:
        env.start()
        inst = env.inst
        inst.ok("run", "--unit", "pol", "-p", f"IPAddressDeny={DENIED}", "--", "true")
        for argv in (
            ("status", "pol.service"),
            ("show", "pol.service"),
            ("list-units", "--all"),
            ("inspect", "pol.service"),
            ("top", "--once", "-d", "0.1"),
        ):
            res = as_nobody(inst, nobody_path, *argv)
            assert res.returncode in (0, 3), (argv, res.returncode, res.stderr)  # 3: inactive
            assert "pol.service" in res.stdout, (argv, res.stdout)
        for argv in (("reset", "pol.service"), ("run", "--", "true"), ("reload",)):
            res = as_nobody(inst, nobody_path, *argv)
            assert res.returncode == 77, (argv, res.returncode, res.stderr)
        assert inst.unit_names() == ["pol.service"]
        inst.ok("reset", "pol.service")
