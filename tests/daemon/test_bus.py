"""The daemon's D-Bus API, driven by real clients (dbus-fast, busctl, dbus-send, gdbus).

Units are made by the CLI or over D-Bus; their processes send UDP datagrams to test
addresses on the ``lo`` of a private network namespace, so every counter has an exact
expected value.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET

import pytest
from daemon_support import (
    ALLOWED,
    BUS_NAME,
    DENIED,
    MANAGER,
    PROPS,
    ROOT,
    UNIT,
    DaemonEnv,
    addr_list,
    entries,
    unit_path,
)
from dbus_fast import Variant
from e2e_helpers import UDP4

pytestmark = pytest.mark.kernel

INVALID_ARGS = "org.freedesktop.DBus.Error.InvalidArgs"
ACCESS_DENIED = "org.freedesktop.DBus.Error.AccessDenied"


def test_cli_unit_read_over_dbus_busctl_and_dbus_send(daemon: DaemonEnv) -> None:
    inst, c = daemon.inst, daemon.client
    ns = inst.netns([ALLOWED, DENIED])
    agent = inst.start_unit(ns, "web", f"IPAddressDeny={DENIED}")
    for _ in range(3):
        assert agent.send(ALLOWED, 100) == "ok 100"
    assert agent.send(DENIED, 50) == "err 1"
    sent = 3 * (100 + UDP4)
    name, path = "web.service", unit_path("web.service")

    props = c.wait(
        lambda: (p := c.props(name))["IPEgressBytes"] == sent and p, 5, "IPEgressBytes over D-Bus"
    )
    assert props["IPEgressPackets"] == 3
    assert props["IPIngressBytes"] == sent  # the agent receives its own datagrams
    assert props["IPIngressPackets"] == 3
    assert props["IPEgressDroppedPackets"] == 1
    assert props["IPEgressDroppedBytes"] == 50 + UDP4
    assert entries(props["IPAddressDeny"]) == [(2, bytes([198, 51, 100, 1]), 32)]
    assert props["IPAddressAllow"] == []
    assert props["IPAccounting"] is True
    assert props["Id"] == name
    assert props["ActiveState"] == "active" and props["SubState"] == "running"
    assert props["MainPID"] == agent.pid
    assert props["ControlGroup"] == f"{inst.cgroup_root}/{name}"
    assert props["Transient"] is True and props["IPFirewallEnforced"] is True

    assert c.units()[name] == (
        name,
        props["Description"],
        "loaded",
        "active",
        "running",
        "",
        path,
        0,
        "",
        "/",
    )
    assert c.manager("GetUnit", "s", name) == [path]
    (rows,) = c.manager("GetCounters")
    values = dict((n, v) for n, v in rows)[name]
    assert values[:4] == [3, sent, 3, sent]
    err, _ = c.manager_error("GetUnit", "s", "nope.service")
    assert err == "org.ipacctd1.Error.NoSuchUnit"

    # dbus-fast's introspection and proxy objects.
    node = c.run(c.bus.introspect(BUS_NAME, path))
    iface = next(i for i in node.interfaces if i.name == UNIT)
    types = {p.name: p.signature for p in iface.properties}
    for counter in ("IPIngressBytes", "IPIngressPackets", "IPEgressBytes", "IPEgressPackets"):
        assert types[counter] == "t"
    assert types["IPAddressDeny"] == types["IPAddressAllow"] == "a(iayu)"
    assert types["IPAccounting"] == "b"
    proxy = c.bus.get_proxy_object(BUS_NAME, path, node).get_interface(UNIT)
    assert c.run(proxy.get_ip_egress_bytes()) == sent
    # The raw XML, as busctl introspect would see it.
    (xml,) = c.ok(path, "org.freedesktop.DBus.Introspectable", "Introspect")
    tree = ET.fromstring(xml.split("\n", 1)[1])
    props_xml = {
        p.get("name"): p.get("type")
        for i in tree.iter("interface")
        if i.get("name") == UNIT
        for p in i.iter("property")
    }
    assert props_xml["IPAddressDeny"] == "a(iayu)" and props_xml["IPEgressBytes"] == "t"
    (root_xml,) = c.ok(ROOT, "org.freedesktop.DBus.Introspectable", "Introspect")
    assert 'node name="unit/web_2eservice"' in root_xml

    # busctl and dbus-send.
    r = daemon.tool(
        [
            "busctl",
            f"--address={daemon.address}",
            "get-property",
            BUS_NAME,
            path,
            UNIT,
            "IPIngressBytes",
        ]
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"t {sent}"
    r = daemon.tool(
        [
            "busctl",
            f"--address={daemon.address}",
            "get-property",
            BUS_NAME,
            path,
            UNIT,
            "IPAddressDeny",
        ]
    )
    assert r.stdout.strip() == "a(iayu) 1 2 4 198 51 100 1 32", r
    r = daemon.tool(
        [
            "dbus-send",
            f"--bus={daemon.address}",
            "--print-reply",
            f"--dest={BUS_NAME}",
            path,
            f"{PROPS}.Get",
            f"string:{UNIT}",
            "string:IPEgressBytes",
        ]
    )
    assert r.returncode == 0, r.stderr
    assert f"uint64 {sent}" in r.stdout, r.stdout
    r = daemon.tool(
        ["busctl", f"--address={daemon.address}", "call", BUS_NAME, ROOT, MANAGER, "ListUnits"]
    )
    assert r.returncode == 0 and f'"{name}"' in r.stdout, r


def test_mutations_over_dbus(daemon: DaemonEnv) -> None:
    inst, c = daemon.inst, daemon.client
    ns = inst.netns([ALLOWED, DENIED])
    name = "api.service"

    # StartTransientUnit: the cgroup exists with the firewall in force before any process.
    (job,) = c.manager(
        "StartTransientUnit",
        "ssa(sv)a(sa(sv))",
        name,
        "fail",
        [["IPAddressDeny", addr_list(DENIED)], ["IPAccounting", Variant("b", True)]],
        [],
    )
    assert job.startswith(ROOT + "/job/")
    fs = os.path.join(inst.root_fs, name)
    assert os.path.isfile(os.path.join(fs, "cgroup.procs"))
    assert name in c.units()
    agent = inst.start_in_cgroup(ns, fs)
    assert agent.send(DENIED, 10) == "err 1"
    assert agent.send(ALLOWED, 10) == "ok 10"

    # SetUnitProperties: an empty array resets the list, the next entry appends.
    c.manager(
        "SetUnitProperties",
        "sba(sv)",
        name,
        True,
        [["IPAddressDeny", Variant("a(iayu)", [])], ["IPAddressDeny", addr_list(ALLOWED)]],
    )
    assert entries(c.props(name)["IPAddressDeny"]) == [(2, bytes([203, 0, 113, 1]), 32)]
    assert agent.send(ALLOWED, 10) == "err 1"
    assert agent.send(DENIED, 10) == "ok 10"
    assert c.wait(
        lambda: c.props(name)["IPEgressBytes"] == 2 * (10 + UDP4),
        5,
        "counters carried over the policy change",
    )

    # Invalid properties: InvalidArgs, and nothing changes (not even half of a list).
    before = c.props(name)
    bad_lists = [
        [["IPAddressDeny", Variant("a(iayu)", [[2, b"\x01\x02\x03", 32]])]],
        [["IPAddressDeny", Variant("a(iayu)", [[2, bytes([198, 51, 100, 0]), 33]])]],
        [["IPAddressDeny", Variant("a(iayu)", [[7, bytes(4), 8]])]],
        [["NoSuchProperty", Variant("b", True)]],
        [["IPAccounting", Variant("s", "yes")]],
        [["IPAddressDeny", addr_list(DENIED)], ["IPAddressAllow", Variant("s", "x")]],
    ]
    for bad in bad_lists:
        err, text = c.manager_error("SetUnitProperties", "sba(sv)", name, True, bad)
        assert err == INVALID_ARGS, (bad, err, text)
        assert text
    err, _ = c.manager_error("SetUnitProperties", "sb", name, True)  # wrong signature
    assert err == INVALID_ARGS
    err, _ = c.manager_error(
        "StartTransientUnit",
        "ssa(sv)a(sa(sv))",
        "bad.service",
        "fail",
        [["IPAddressDeny", Variant("a(iayu)", [[2, b"\x01", 32]])]],
        [],
    )
    assert err == INVALID_ARGS
    after = c.props(name)
    for key in ("IPAddressDeny", "IPAddressAllow", "IPAccounting", "IPAddressDenyMode"):
        assert after[key] == before[key], key
    assert "bad.service" not in c.units()
    assert not os.path.exists(os.path.join(inst.root_fs, "bad.service"))
    assert agent.send(ALLOWED, 10) == "err 1"  # enforcement unchanged
    assert agent.send(DENIED, 10) == "ok 10"

    # StopUnit ends the processes; ResetFailedUnit forgets the unit, its cgroup and pins.
    c.manager("StopUnit", "ss", name, "replace")
    assert agent.wait(timeout=10) is not None
    c.wait(lambda: c.props(name)["ActiveState"] == "inactive", 5, "unit inactive")
    c.manager("ResetFailedUnit", "s", name)
    assert name not in c.units()
    err, _ = c.manager_error("GetUnit", "s", name)
    assert err == "org.ipacctd1.Error.NoSuchUnit"
    assert not os.path.exists(fs)
    assert inst.pin_dirs() == []

    # AttachUnit on a cgroup the test made; DetachUnit leaves the cgroup alone.
    ext = f"/ipacctd-test-{inst.id}-ext"
    inst.make_cgroup(ext)
    box_fs = inst.make_cgroup(f"{ext}/box")
    (path,) = c.manager(
        "AttachUnit", "ssa(sv)", f"{ext}/box", "box.service", [["IPAddressDeny", addr_list(DENIED)]]
    )
    assert path == unit_path("box.service")
    props = c.props("box.service")
    assert props["Transient"] is False and props["ControlGroup"] == f"{ext}/box"
    boxed = inst.start_in_cgroup(ns, box_fs, port=7001)
    assert boxed.send(DENIED, 10) == "err 1"
    assert boxed.send(ALLOWED, 10) == "ok 10"
    err, _ = c.manager_error("AttachUnit", "ssa(sv)", f"{ext}/box", "again.service", [])
    assert err == "org.ipacctd1.Error.UnitExists"
    err, _ = c.manager_error("AttachUnit", "ssa(sv)", f"{ext}/nope", "nope.service", [])
    assert err == "org.ipacctd1.Error.NoSuchUnit"
    c.manager("DetachUnit", "s", "box.service")
    assert "box.service" not in c.units()
    assert boxed.send(DENIED, 10) == "ok 10"
    assert os.path.isdir(box_fs)
    assert inst.pin_dirs() == []


def test_non_root_reads_but_may_not_change(daemon: DaemonEnv) -> None:
    c, addr = daemon.client, daemon.address
    name = "guarded.service"
    c.manager(
        "StartTransientUnit",
        "ssa(sv)a(sa(sv))",
        name,
        "fail",
        [["IPAddressDeny", addr_list(DENIED)]],
        [],
    )
    path = unit_path(name)
    units_before, props_before = c.units(), c.props(name)

    def nobody(*argv: str):
        return daemon.tool(argv, as_nobody=True)

    # Reads work for uid 65534.
    r = nobody("busctl", f"--address={addr}", "get-property", BUS_NAME, path, UNIT, "IPAddressDeny")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "a(iayu) 1 2 4 198 51 100 1 32"
    r = nobody("busctl", f"--address={addr}", "get-property", BUS_NAME, path, UNIT, "IPEgressBytes")
    assert r.returncode == 0 and r.stdout.strip() == "t 0", r
    r = nobody("busctl", f"--address={addr}", "call", BUS_NAME, ROOT, MANAGER, "ListUnits")
    assert r.returncode == 0 and f'"{name}"' in r.stdout, r
    r = daemon.gdbus_call("GetCounters", as_nobody=True)
    assert r.returncode == 0 and name in r.stdout, r

    # Every mutation is refused by the daemon with AccessDenied.
    gdbus = ["gdbus", "call", "--address", addr, "--dest", BUS_NAME, "--object-path"]
    refused = [
        [
            *gdbus,
            ROOT,
            "--method",
            f"{MANAGER}.SetUnitProperties",
            name,
            "true",
            "[('IPAddressDeny', <@a(iayu) []>)]",
        ],
        [
            *gdbus,
            ROOT,
            "--method",
            f"{MANAGER}.StartTransientUnit",
            "intruder.service",
            "fail",
            "[]",
            "[]",
        ],
        [*gdbus, ROOT, "--method", f"{MANAGER}.StopUnit", name, "replace"],
        [*gdbus, path, "--method", f"{UNIT}.Stop", "replace"],
        [*gdbus, path, "--method", f"{UNIT}.SetProperties", "true", "[('IPAccounting', <false>)]"],
    ]
    send = ["dbus-send", f"--bus={addr}", "--print-reply", f"--dest={BUS_NAME}"]
    refused += [
        [*send, ROOT, f"{MANAGER}.ResetUnit", f"string:{name}"],
        [*send, ROOT, f"{MANAGER}.ResetFailedUnit", f"string:{name}"],
        [*send, path, f"{UNIT}.ResetFailed"],
        [*send, ROOT, f"{MANAGER}.DetachUnit", f"string:{name}"],
        [*send, ROOT, f"{MANAGER}.Reload"],
        [*send, path, f"{UNIT}.Reset"],
        [*send, path, f"{UNIT}.Stop"],
    ]
    for argv in refused:
        r = nobody(*argv)
        assert r.returncode != 0, (argv, r.stdout)
        assert ACCESS_DENIED in r.stderr + r.stdout, (argv, r.stderr)
        assert "uid 65534" in r.stderr + r.stdout, (argv, r.stderr)
    r = nobody(
        "busctl",
        f"--address={addr}",
        "call",
        BUS_NAME,
        ROOT,
        MANAGER,
        "StartTransientUnit",
        "ssa(sv)a(sa(sv))",
        "intruder2.service",
        "fail",
        "0",
        "0",
    )
    assert r.returncode != 0 and "Access denied" in r.stderr, r  # busctl: EACCES

    # Nothing changed.
    assert c.units() == units_before
    after = c.props(name)
    for key in ("IPAddressDeny", "IPAccounting", "ActiveState"):
        assert after[key] == props_before[key], key
    assert os.path.isdir(os.path.join(daemon.inst.root_fs, name))
    assert daemon.inst.unit_cgroups() == [name]
