"""ipacctd's D-Bus API speaks systemd's: same names, same signatures, same meaning.

The reference is systemd 252 itself: ``data/systemd-252-introspect.xml`` holds, verbatim, the
members ipacctd shares, as ``busctl introspect`` printed them on a real systemd 252 (booted
by ``systemd-ref.sh``). The tests check ipacctd's introspection against it member by member,
call each shared method with systemd's signature from ``busctl``, and run a client written
for systemd's API — a dbus-fast proxy built from that XML (``systemd_client.py``) — against
ipacctd, changing only the names it is pointed at, and the same client against systemd 252
itself (systemd-ref), to prove it is a systemd client. Traffic goes to documentation
addresses on a private namespace's ``lo``: exact counts.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from daemon_support import ALLOWED, DENIED, DaemonEnv, addr_list
from dbus_fast import DBusError, MessageType, Variant
from e2e_helpers import PY, UDP4
from systemd_client import COUNTERS, IPACCTD, SD, SYSTEMD_XML, SystemdClient

from ipacctd.daemon.contract import (
    BUS_NAME,
    JOB_IFACE,
    MANAGER_IFACE,
    PROPS_IFACE,
    ROOT,
    UNIT_IFACE,
    unit_path,
)

pytestmark = pytest.mark.kernel

EMITS = "org.freedesktop.DBus.Property.EmitsChangedSignal"
DROPS = ("IPIngressDroppedBytes", "IPEgressDroppedBytes", "IPEgressDroppedPackets")
HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def members(xml: str, iface: str) -> dict[tuple[str, str], tuple]:
    """(kind, name) → (arg types and directions, EmitsChangedSignal) of an interface."""
    tree = ET.fromstring(xml.split("\n", 1)[1] if xml.startswith("<!DOCTYPE") else xml)
    out = {}
    for i in tree.iter("interface"):
        if i.get("name") != iface:
            continue
        for m in i:
            args = tuple((a.get("type"), a.get("direction") or "out") for a in m.iter("arg"))
            if m.tag == "property":
                args = (m.get("type"), m.get("access"))
            emits = next(
                (a.get("value") for a in m.iter("annotation") if a.get("name") == EMITS), None
            )
            out[(m.tag, m.get("name"))] = (args, emits)
    return out


def sigterm_proof(ns: Any, fs: str) -> subprocess.Popen:
    """A process in cgroup ``fs`` that ignores SIGTERM: a stop of its unit takes until the
    SIGKILL, so its stop job is there to be looked at."""
    code = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('ready', flush=True); time.sleep(120)"
    )
    proc = ns.popen([PY, "-c", code], cgroup_fs=fs, stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
    return proc


# -- the contract, member by member --------------------------------------------------------


def test_shared_members_have_systemd_252_signatures(daemon: DaemonEnv) -> None:
    """Every member of systemd's excerpt exists on ipacctd's object with the same argument
    types and directions; counters are EmitsChangedSignal=false as in systemd."""
    c, inst = daemon.client, daemon.inst
    reference = SYSTEMD_XML.read_text()
    name = "sig.service"
    c.manager("StartTransientUnit", "ssa(sv)a(sa(sv))", name, "fail", [], [])
    ns = inst.netns([ALLOWED])
    proc = sigterm_proof(ns, os.path.join(inst.root_fs, name))
    (job,) = c.ok(unit_path(name), UNIT_IFACE, "Stop", "s", ["replace"])
    try:
        (job_xml,) = c.ok(job, "org.freedesktop.DBus.Introspectable", "Introspect")
    finally:
        assert proc.wait(timeout=30) is not None
    (root_xml,) = c.ok(ROOT, "org.freedesktop.DBus.Introspectable", "Introspect")
    (unit_xml,) = c.ok(unit_path(name), "org.freedesktop.DBus.Introspectable", "Introspect")
    served = {
        f"{SD}.Manager": members(root_xml, MANAGER_IFACE),
        f"{SD}.Unit": members(unit_xml, UNIT_IFACE),
        f"{SD}.Service": members(unit_xml, UNIT_IFACE),
        f"{SD}.Job": members(job_xml, JOB_IFACE),
    }
    checked = 0
    for iface, ours in served.items():
        for key, (args, _emits) in members(reference, iface).items():
            assert key in ours, f"{iface} {key} missing"
            assert ours[key][0] == args, (iface, key, ours[key][0], args)
            checked += 1
    assert checked == 44
    # systemd sends no PropertiesChanged for counters, nor does ipacctd. (It does announce
    # its policy properties, which systemd does not: more than systemd, never less.)
    for counter in COUNTERS:
        assert members(reference, f"{SD}.Service")[("property", counter)][1] == "false"
        assert served[f"{SD}.Service"][("property", counter)][1] == "false", counter


def test_busctl_with_systemd_signatures(daemon: DaemonEnv) -> None:
    """Each shared method called the way one calls systemd's with busctl."""
    inst = daemon.inst
    name, path = "bc.service", unit_path("bc.service")

    def busctl(*argv: str, ok: bool = True) -> str:
        r = daemon.tool(["busctl", f"--address={daemon.address}", *argv])
        assert (r.returncode == 0) == ok, (argv, r.stdout, r.stderr)
        return (r.stdout if ok else r.stderr).strip()

    def call(member: str, *args: str, ok: bool = True, at: str = ROOT, iface: str = MANAGER_IFACE):
        return busctl("call", BUS_NAME, at, iface, member, *args, ok=ok)

    out = call(
        "StartTransientUnit",
        "ssa(sv)a(sa(sv))",
        name,
        "fail",
        "2",
        "IPAccounting", "b", "true",
        "IPAddressDeny", "a(iayu)", "1", "2", "4", "198", "51", "100", "1", "32",
        "0",
    )  # fmt: skip
    assert re.fullmatch(r'o "/org/ipacctd1/job/\d+"', out), out
    fs = os.path.join(inst.root_fs, name)
    assert os.path.isfile(os.path.join(fs, "cgroup.procs"))
    ns = inst.netns([ALLOWED, DENIED])
    agent = inst.start_in_cgroup(ns, fs)
    assert agent.send(DENIED, 10) == "err 1"
    assert agent.send(ALLOWED, 100) == "ok 100"

    rows = call("ListUnits")
    assert rows.startswith("a(ssssssouso) 1 "), rows
    assert f'"{name}"' in rows and f'"{path}" 0 "" "/"' in rows, rows
    assert call("ListUnitsByNames", "as", "1", name).startswith("a(ssssssouso) 1 ")
    assert call("ListUnitsByNames", "as", "1", "nope.service") == "a(ssssssouso) 0"
    daemon.client.wait(  # the daemon sees the process in the cgroup at its next state poll
        lambda: call("ListUnitsFiltered", "as", "1", "active").startswith("a(ssssssouso) 1 "),
        10,
        "the unit active",
    )
    assert call("ListUnitsFiltered", "as", "1", "failed") == "a(ssssssouso) 0"
    assert call("GetUnit", "s", name) == f'o "{path}"'
    assert call("GetUnit", "s", "bc") == f'o "{path}"'  # as systemctl, "bc" is bc.service
    assert "nope.service" in call("GetUnit", "s", "nope.service", ok=False)
    assert call("ListJobs") == "a(usssoo) 0"
    assert call("Subscribe") == "" and call("Unsubscribe") == ""
    sent = 100 + UDP4
    daemon.client.wait(
        lambda: busctl("get-property", BUS_NAME, path, UNIT_IFACE, "IPEgressBytes") == f"t {sent}",
        5,
        "IPEgressBytes",
    )
    get = busctl("call", BUS_NAME, path, PROPS_IFACE, "Get", "ss", UNIT_IFACE, "IPEgressPackets")
    assert get == "v t 1", get
    assert busctl("get-property", BUS_NAME, path, UNIT_IFACE, "ActiveState") == 's "active"'
    assert busctl("get-property", BUS_NAME, path, UNIT_IFACE, "Job") == '(uo) 0 "/"'
    call("SetUnitProperties", "sba(sv)", name, "true", "1", "IPAddressDeny", "a(iayu)", "0")
    assert agent.send(DENIED, 10) == "ok 10"

    # Job modes as systemd 252 checks them (its text for a bad one: "Job mode bogus invalid").
    assert "Job mode bogus invalid" in call(
        "Stop", "s", "bogus", at=path, iface=UNIT_IFACE, ok=False
    )
    assert "isolate" in call("StopUnit", "ss", name, "isolate", ok=False)
    out = call("Stop", "s", "replace", at=path, iface=UNIT_IFACE)
    assert re.fullmatch(r'o "/org/ipacctd1/job/\d+"', out), out
    assert agent.wait(timeout=15) is not None
    daemon.client.wait(
        lambda: busctl("get-property", BUS_NAME, path, UNIT_IFACE, "ActiveState") == 's "inactive"',
        10,
        "inactive",
    )
    out = call("StopUnit", "ss", name, "replace")  # stopping a stopped unit: a job, done
    assert re.fullmatch(r'o "/org/ipacctd1/job/\d+"', out), out
    call("ResetFailedUnit", "s", name)
    assert name in call("GetUnit", "s", name, ok=False)
    assert not os.path.exists(fs) and inst.pin_dirs() == []

    # Auxiliary units: refused with a clear error, and nothing is made.
    err = call(
        "StartTransientUnit", "ssa(sv)a(sa(sv))", "aux.service", "fail", "0",
        "1", "aux.socket", "0", ok=False,
    )  # fmt: skip
    assert "auxiliary units are not supported" in err, err
    assert call("ListUnits") == "a(ssssssouso) 0"
    assert not os.path.exists(os.path.join(inst.root_fs, "aux.service"))


def test_a_systemd_client_works_unchanged(daemon: DaemonEnv) -> None:
    """A dbus-fast client built from systemd 252's XML: starts a unit, lists units with
    their IP accounting, follows a stop job, resets the unit — against ipacctd's names."""
    inst, c = daemon.inst, daemon.client
    client = SystemdClient(c.bus, IPACCTD)
    name = "sdc.service"
    job, result = c.run(
        client.start(
            name,
            [
                ["Description", Variant("s", "written for systemd")],
                ["IPAccounting", Variant("b", True)],
                ["IPAddressDeny", addr_list(DENIED)],
            ],
        )
    )
    assert job.startswith(ROOT + "/job/") and result == "done"
    ns = inst.netns([ALLOWED, DENIED])
    agent = inst.start_in_cgroup(ns, os.path.join(inst.root_fs, name))
    for _ in range(2):
        assert agent.send(ALLOWED, 200) == "ok 200"
    assert agent.send(DENIED, 10) == "err 1"
    sent = 2 * (200 + UDP4)

    seen = c.wait(
        lambda: (
            (a := c.run(client.accounting()))[name]["IPEgressBytes"] == sent
            and a[name]["active"] == "active"
            and a
        ),
        5,
        "the client to see the traffic",
    )
    unit = seen[name]
    assert unit["load"] == "loaded" and unit["active"] == "active" and unit["job"] == 0
    assert unit["accounting"] is True
    assert unit["deny"] == [(2, bytes([198, 51, 100, 1]), 32)]
    assert unit["IPEgressPackets"] == 2
    assert unit["IPIngressBytes"] == sent and unit["IPIngressPackets"] == 2
    assert unit["cgroup"] == f"{inst.cgroup_root}/{name}"
    path = c.run(client.manager.call_get_unit(name))
    assert path == unit["path"] == unit_path(name)
    assert c.run(client.unit(path).get_description()) == "written for systemd"

    # A stop job, followed as systemctl does: the job object while it runs, then JobRemoved.
    proc = sigterm_proof(ns, os.path.join(inst.root_fs, name))
    job = c.run(client.unit(path).call_stop("replace"))
    jobs = c.run(client.manager.call_list_jobs())
    try:
        job_obj = client.job(job)
        job_id = c.run(job_obj.get_id())
        assert c.run(job_obj.get_job_type()) == "stop"
        assert c.run(job_obj.get_state()) == "running"
        assert list(c.run(job_obj.get_unit())) == [name, path]
        assert c.run(client.manager.call_get_job(job_id)) == job
        assert [list(j) for j in jobs] == [[job_id, name, "stop", "running", job, path]]
        assert c.run(client.accounting())[name]["job"] == job_id
        assert list(c.run(client.unit(path).get_job())) == [job_id, job]
    finally:
        assert proc.wait(timeout=30) is not None
    assert c.run(client.wait_job(job)) == (name, "done")
    assert agent.wait(timeout=10) is not None
    with pytest.raises(DBusError) as gone:  # the job object went with the job
        c.run(client.job(job).get_state())
    assert gone.value.type == "org.ipacctd1.Error.NoSuchJob"
    c.wait(lambda: c.run(client.unit(path).get_active_state()) == "inactive", 10, "inactive")

    c.run(client.manager.call_reset_failed_unit(name))
    with pytest.raises(DBusError) as err:
        c.run(client.manager.call_get_unit(name))
    assert err.value.type == "org.ipacctd1.Error.NoSuchUnit"
    assert name not in c.run(client.accounting())


# -- signals and errors -----------------------------------------------------------------------


def test_counters_make_no_properties_changed(daemon: DaemonEnv) -> None:
    """Traffic changes counters at every poll: no PropertiesChanged (systemd sends none for
    counters), and CountersChanged at most once per poll, for all the units that changed."""
    inst = daemon.inst
    ns = inst.netns([ALLOWED])
    agents = [inst.start_unit(ns, f"busy{i}", port=7100 + i) for i in range(3)]
    listener = daemon.new_client()
    listener.add_match(f"type='signal',sender='{BUS_NAME}',interface='{PROPS_IFACE}'")
    listener.add_match(f"type='signal',sender='{BUS_NAME}',member='CountersChanged'")
    listener.pump(0.5)  # the starts' own changes, then quiet
    listener.signals.clear()

    poll = 0.2  # DaemonEnv's --poll-interval
    began = time.monotonic()
    for _ in range(15):  # bounded: three units busy for about 15 polls
        for a in agents:
            assert a.send(ALLOWED, 50) == "ok 50"
        listener.pump(0.2)
    listener.pump(0.5)
    elapsed = time.monotonic() - began
    changed = [
        m
        for m in listener.signals
        if m.member == "PropertiesChanged" and set(m.body[1]) & {*COUNTERS, *DROPS}
    ]
    counters = [m for m in listener.signals if m.member == "CountersChanged"]
    assert changed == [], [(m.path, sorted(m.body[1])) for m in changed]
    # Polls are at least ``poll`` apart, so a slow machine makes fewer of them, not more;
    # a signal per unit and poll would be three times this bound.
    assert 1 <= len(counters) <= elapsed / poll + 1, (len(counters), elapsed)
    last = {n: v for m in counters for n, v in m.body[0]}
    assert sorted(last) == ["busy0.service", "busy1.service", "busy2.service"]
    assert all(v[2] == 15 for v in last.values()), last  # egress packets: all 15 seen

    # State changes are still announced — without the counters.
    daemon.client.manager("StopUnit", "ss", "busy0.service", "replace")
    msg = listener.wait(
        lambda: next(
            (m for m in listener.signals if m.member == "PropertiesChanged"
             and m.path == unit_path("busy0.service")
             and m.body[1].get("ActiveState", Variant("s", "")).value == "inactive"),
            None,
        ),
        10,
        "PropertiesChanged with ActiveState=inactive",
    )  # fmt: skip
    assert not set(msg.body[1]) & {*COUNTERS, *DROPS}, sorted(msg.body[1])


def test_errors_are_plain_and_the_cli_adds_its_advice(daemon: DaemonEnv) -> None:
    """A D-Bus error says what is wrong, not which ipacctd command to type; the CLI, mapping
    the error back, prints its advice."""
    inst, c = daemon.inst, daemon.client
    inst.ok("run", "--unit", "taken", "--", "true")
    reply = c.call(
        ROOT,
        MANAGER_IFACE,
        "StartTransientUnit",
        "ssa(sv)a(sa(sv))",
        ["taken.service", "fail", [], []],
    )
    assert reply.message_type == MessageType.ERROR, reply.body
    assert reply.error_name == "org.ipacctd1.Error.UnitExists"
    message = reply.body[0]
    assert message.startswith("unit taken.service exists already"), message
    assert "ipacctd" not in message and "--unit" not in message, message
    assert "reset it first" in reply.body[1]  # the hint, apart, for ipacctd's CLI

    res = inst.cli("run", "--unit", "taken", "--", "true")
    assert res.returncode != 0
    assert "exists already" in res.stderr and "reset it first ('ipacctd reset" in res.stderr, (
        res.stderr
    )
    for member, sig, body in (
        ("ResetFailedUnit", "s", ["nope.service"]),
        ("StopUnit", "ss", ["nope.service", "replace"]),
        ("GetUnit", "s", ["nope.service"]),
    ):
        reply = c.call(ROOT, MANAGER_IFACE, member, sig, body)
        assert reply.error_name == "org.ipacctd1.Error.NoSuchUnit", (member, reply.body)
        assert reply.body[0] == "unit nope.service not found", (member, reply.body)
    res = inst.cli("stop", "nope.service")
    assert res.returncode != 0 and "not found" in res.stderr, res.stderr


def test_old_names_still_work(daemon: DaemonEnv) -> None:
    """ipacctd 0.x's names, kept one release: StartTransientUnit(sa(sv)) returning the unit,
    ResetUnit, Unit.Stop() without a mode, Unit.Reset."""
    c = daemon.client
    (path,) = c.manager("StartTransientUnit", "sa(sv)", "old.service", [])
    assert path == unit_path("old.service")
    assert c.ok(path, UNIT_IFACE, "Stop") == []
    c.manager("ResetUnit", "s", "old.service")
    assert "old.service" not in c.units()
    (path,) = c.manager("StartTransientUnit", "sa(sv)", "old2.service", [])
    c.ok(path, UNIT_IFACE, "Stop")
    c.ok(path, UNIT_IFACE, "Reset")
    assert "old2.service" not in c.units()
    # Not in the introspection: new code finds systemd's names only.
    (xml,) = c.ok(ROOT, "org.freedesktop.DBus.Introspectable", "Introspect")
    assert 'name="ResetUnit"' not in xml and 'name="ResetFailedUnit"' in xml


def test_shipped_policy_lets_everyone_make_systemds_reads(tmp_path: Path) -> None:
    """Under a system-like bus with contrib/dbus/org.ipacctd1.conf, uid 65534 may make the
    read-only calls systemd lets everyone make, and the bus refuses it every change."""
    from test_host_daemon import SYSTEM_LIKE_BUS

    with DaemonEnv(tmp_path, SYSTEM_LIKE_BUS) as env:
        env.start()
        env.inst.ok("run", "--unit", "pol", "--", "true")
        path = unit_path("pol.service")
        # the daemon learns of the exit from the cgroup's events, a moment after run returns
        env.client.wait(
            lambda: env.client.units().get("pol.service", ("",) * 4)[3] == "inactive",
            10,
            "pol.service inactive in the daemon's view",
        )

        def nobody(member: str, *args: str) -> Any:
            return env.tool(
                ["busctl", f"--address={env.address}", "call", BUS_NAME, ROOT, MANAGER_IFACE,
                 member, *args],
                as_nobody=True,
            )  # fmt: skip

        for member, args, out in (
            ("ListUnits", (), '"pol.service"'),
            ("ListUnitsFiltered", ("as", "1", "inactive"), '"pol.service"'),
            ("ListUnitsByNames", ("as", "1", "pol.service"), '"pol.service"'),
            ("GetUnit", ("s", "pol.service"), f'o "{path}"'),
            ("ListJobs", (), "a(usssoo) 0"),
            ("Subscribe", (), ""),
            ("Unsubscribe", (), ""),
        ):
            r = nobody(member, *args)
            assert r.returncode == 0 and out in r.stdout, (member, r.stdout, r.stderr)
        r = nobody("GetJob", "u", "1")  # no such job: the daemon's error, not the bus's
        assert r.returncode != 0 and "job 1 does not exist" in r.stderr, r.stderr
        for member, args in (
            ("StartTransientUnit", ("ssa(sv)a(sa(sv))", "evil.service", "fail", "0", "0")),
            ("StopUnit", ("ss", "pol.service", "replace")),
            ("ResetFailedUnit", ("s", "pol.service")),
        ):
            r = nobody(member, *args)
            assert r.returncode != 0 and "Access denied" in r.stderr, (member, r.stderr)
        assert env.inst.unit_names() == ["pol.service"]
        env.inst.ok("reset", "pol.service")


def test_the_client_is_a_systemd_client() -> None:
    """The client that works against ipacctd above, run against systemd 252 itself (in
    systemd-ref's namespaces, pointed at systemd's names): proof that it is written for
    systemd's API, not for ipacctd's. Its unit sends two allowed datagrams and one that
    IPAddressDeny= drops."""
    import json
    import shutil
    import sys

    import sdref

    script = sdref.script()
    with sdref.locked(), sdref.scratch("ipacctd-busclient") as root:
        shutil.copytree(REPO / "ipacctd", f"{root}/ipacctd", ignore=sdref.COPY_IGNORE)
        shutil.copy(HERE / "systemd_client.py", root)
        shutil.copytree(HERE / "data", f"{root}/data")
        with sdref.running(script):
            res = sdref.Ref(script, root).run(
                ["env", f"PYTHONPATH={root}", sys.executable, f"{root}/systemd_client.py",
                 "sdc.service", sys.executable],
            )  # fmt: skip
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["start_job"].startswith("/org/freedesktop/systemd1/job/")
    assert out["start_result"] == "done"
    unit = out["unit"]
    assert unit["load"] == "loaded" and unit["active"] == "active" and unit["accounting"]
    assert unit["IPEgressPackets"] == 2 and unit["IPEgressBytes"] == 2 * (200 + UDP4)
    assert unit["deny"] == [[2, [198, 51, 100, 1], 32]]
    assert out["get_unit"] == unit["path"] == "/org/freedesktop/systemd1/unit/sdc_2eservice"
    assert out["stop_removed"] == ["sdc.service", "done"]
    # systemd unloads a stopped transient unit (ipacctd keeps it, with its counters, until
    # reset): the client handles both.
    assert out["after_reset"] == "org.freedesktop.systemd1.NoSuchUnit"


def test_cli_stop_survives_the_daemon_dying_mid_job(daemon: DaemonEnv) -> None:
    """``ipacctd stop`` follows the daemon's stop job; when the daemon dies before the job
    ends (kill -9), the CLI notices it left the bus and finishes the stop itself."""
    inst, c = daemon.inst, daemon.client
    name = "hold.service"
    c.manager("StartTransientUnit", "ssa(sv)a(sa(sv))", name, "fail", [], [])
    ns = inst.netns([ALLOWED])
    proc = sigterm_proof(ns, os.path.join(inst.root_fs, name))
    # In the background: the daemon is to die while this CLI waits for its job.
    stop = subprocess.Popen(inst.argv("stop", name), env=inst.env, stderr=subprocess.PIPE)
    try:
        c.wait(lambda: c.manager("ListJobs")[0], 15, "the stop job")
        daemon.kill9()
        _, err = stop.communicate(timeout=45)  # the CLI waits up to 60 s for a live daemon
    finally:
        if stop.poll() is None:
            stop.kill()
            stop.wait()
    assert stop.returncode == 0, err.decode()
    assert proc.wait(timeout=10) is not None  # SIGKILLed by the CLI's own stop
    st = inst.ok("show", name, "-p", "ActiveState", "--value", env={"IPACCTD_NO_DAEMON": "1"})
    assert st.stdout.strip() == "inactive"
