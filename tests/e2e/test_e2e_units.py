"""A long-running unit: status/show/list-units views, live set-property, stop and reset."""

from __future__ import annotations

import json
import os
import re

from e2e_helpers import UDP4, Installation, line_matching, one_line_error
from support import wait_for

ADDRS = ["198.51.100.1", "198.51.100.2"]
DENIED, ALLOWED = ADDRS
BYTES = r"\d+(\.\d)?[BKMGTPE]?"


def test_status_show_list_units_of_a_running_unit(inst: Installation) -> None:
    ns = inst.netns(ADDRS)
    web = inst.start_unit(ns, "web", f"IPAddressDeny={DENIED}")
    assert web.send(DENIED, 100) == "err 1"  # EPERM
    assert web.send(ALLOWED, 100) == f"ok {100}"
    assert web.send(ALLOWED, 200) == f"ok {200}"
    passed = (100 + UDP4) + (200 + UDP4)  # each allowed datagram goes out and comes back

    st = inst.ok("status", "web.service").stdout
    # The denied-addresses line names the address the unit tried to reach.
    denied_lines = [ln for ln in st.splitlines() if ln.startswith("     Denied: ")]
    assert denied_lines == [f"     Denied: {DENIED} (egress, 1 packet)"], st
    lines = [ln for ln in st.splitlines() if ln not in denied_lines]
    assert lines[0] == f"● web.service - {inst.argv()[0]} {inst.tmp}/agent.py 7000", st
    assert lines[1] == "     Loaded: loaded (transient)"
    assert re.fullmatch(
        r"     Active: active \(running\) since \w{3} \d{4}-\d\d-\d\d "
        r"\d\d:\d\d:\d\d \S+; \d+s ago",
        lines[2],
    ), st
    with open(f"/proc/{web.pid}/comm") as f:  # "python3", or "python" in a venv
        comm = f.read().strip()
    assert lines[3] == f"   Main PID: {web.pid} ({comm})"
    assert lines[4] == f"         IP: {passed}B in, {passed}B out"
    assert re.fullmatch(rf"\s+IP: {BYTES} in, {BYTES} out", lines[4])
    assert lines[5] == f"    Dropped: 0B in (0 packets), {100 + UDP4}B out (1 packet)"
    assert lines[6] == f"   Firewall: IPAddressDeny={DENIED}/32 (enforced)"
    assert lines[7] == f"     CGroup: /ipacctd-test-{inst.id}/web.service"
    assert lines[8] == f"             └─{web.pid} {inst.argv()[0]} {inst.tmp}/agent.py 7000"
    assert len(lines) == 9, st

    props = inst.show("web.service")
    expected = {
        "Id": "web.service",
        "ActiveState": "active",
        "SubState": "running",
        "Transient": "yes",
        "MainPID": str(web.pid),
        "ControlGroup": f"/ipacctd-test-{inst.id}/web.service",
        "IPAccounting": "yes",
        "IPAddressAllow": "",
        "IPAddressDeny": f"{DENIED}/32",
        "IPIngressBytes": str(passed),
        "IPIngressPackets": "2",
        "IPEgressBytes": str(passed),
        "IPEgressPackets": "2",
        "IPIngressDroppedBytes": "0",
        "IPIngressDroppedPackets": "0",
        "IPEgressDroppedBytes": str(100 + UDP4),
        "IPEgressDroppedPackets": "1",
        "IPFirewallEnforced": "yes",
    }
    assert {k: props.get(k) for k in expected} == expected
    assert inst.ok("show", "-p", "IPEgressBytes", "--value", "web.service").stdout == f"{passed}\n"
    assert (
        inst.ok("show", "-p", "IPIngressPackets,IPEgressBytes", "web.service").stdout
        == f"IPIngressPackets=2\nIPEgressBytes={passed}\n"
    )

    table = inst.ok("list-units").stdout
    row = line_matching(table, r"  web\.service\s.*")  # systemctl's blank dot column first
    assert row.split() == [
        "web.service",
        "active",
        "running",
        f"{passed}B",
        f"{passed}B",
        f"{100 + UDP4}B",
        inst.argv()[0],
        f"{inst.tmp}/agent.py",
        "7000",
    ]
    assert table.splitlines()[0].split()[:6] == ["UNIT", "ACTIVE", "SUB", "IP", "IN", "IP"]
    assert table.rstrip().endswith("1 unit listed.")

    counters = {
        "ingress_bytes": passed,
        "ingress_packets": 2,
        "egress_bytes": passed,
        "egress_packets": 2,
        "egress_dropped_bytes": 100 + UDP4,
        "egress_dropped_packets": 1,
        "ingress_dropped_packets": 0,
    }
    (js,) = json.loads(inst.ok("status", "--json", "web.service").stdout)
    assert js["name"] == "web.service" and js["active_state"] == "active"
    assert js["main_pid"] == web.pid and js["pids"] == [web.pid]
    assert js["enforced"] is True
    assert {k: js["counters"][k] for k in counters} == counters
    (ls,) = json.loads(inst.ok("list-units", "--json").stdout)
    assert {k: ls["counters"][k] for k in counters} == counters
    shown = json.loads(inst.ok("show", "--json", "web.service").stdout)
    assert shown["IPEgressBytes"] == str(passed) and shown["IPAddressDeny"] == f"{DENIED}/32"

    # The views read the kernel: more traffic shows up at once.
    assert web.send(ALLOWED, 50) == "ok 50"
    assert inst.show("web.service")["IPEgressBytes"] == str(passed + 50 + UDP4)

    web.proc.stdin.close()  # the agent ends at end of input
    assert web.wait() == 0
    assert inst.show("web.service")["ActiveState"] == "inactive"
    inst.ok("reset", "web.service")
    inst.assert_empty()


def test_set_property_flips_enforcement_and_counters_carry_on(inst: Installation) -> None:
    ns = inst.netns(ADDRS)
    web = inst.start_unit(ns, "web", "IPAddressDeny=198.51.100.1")

    def egress() -> int:
        return int(inst.ok("show", "-p", "IPEgressBytes", "--value", "web.service").stdout)

    allowed = 0
    assert web.send("198.51.100.1", 100) == "err 1"
    assert web.send("198.51.100.2", 100) == "ok 100"
    allowed += 100 + UDP4
    assert egress() == allowed

    res = inst.ok("set-property", "web.service", "IPAddressDeny=", "IPAddressDeny=198.51.100.2")
    assert res.stdout == "" and res.stderr == ""
    assert egress() == allowed  # the swap kept the counters
    assert inst.show("web.service")["IPAddressDeny"] == "198.51.100.2/32"
    assert (
        "Firewall: IPAddressDeny=198.51.100.2/32 (enforced)"
        in inst.ok("status", "web.service").stdout
    )

    assert web.send("198.51.100.1", 150) == "ok 150"  # now allowed
    allowed += 150 + UDP4
    assert egress() == allowed
    assert web.send("198.51.100.2", 100) == "err 1"  # now denied
    assert egress() == allowed

    # An invalid assignment names the bad word and changes nothing.
    before = inst.show("web.service")
    bad = inst.cli("set-property", "web.service", "IPAddressDeny=1.2.3.4 bogus")
    one_line_error(bad, "bogus")
    assert bad.returncode == 2
    assert inst.show("web.service") == before
    assert web.send("198.51.100.2", 100) == "err 1"
    assert web.send("198.51.100.1", 60) == "ok 60"
    allowed += 60 + UDP4

    # Unknown properties too, even beside a valid one.
    one_line_error(inst.cli("set-property", "web.service", "IPAddressDeny=", "Foo=1"), "Foo")
    assert web.send("198.51.100.2", 100) == "err 1"

    props = inst.show("web.service")
    assert props["IPEgressBytes"] == str(allowed)
    assert props["IPEgressPackets"] == "3"
    assert props["IPIngressBytes"] == str(allowed)  # every allowed datagram came back in
    assert props["IPEgressDroppedPackets"] == "4"  # one .1 before the flip, three .2 after
    assert props["IPEgressDroppedBytes"] == str(4 * (100 + UDP4))
    assert props["IPAddressDeny"] == "198.51.100.2/32"

    # IPAccounting=no hides the passed counters (as systemd's [no data]), keeps the firewall.
    inst.ok("set-property", "web.service", "IPAccounting=no")
    props = inst.show("web.service")
    assert props["IPEgressBytes"] == "[no data]" and props["IPAccounting"] == "no"
    assert web.send("198.51.100.2", 100) == "err 1"
    inst.ok("set-property", "web.service", "IPAccounting=yes")
    assert inst.show("web.service")["IPEgressBytes"] == str(allowed)

    inst.ok("stop", "web.service")
    web.wait()
    inst.ok("reset", "web.service")
    inst.assert_empty()


def test_stop_keeps_counters_and_reset_forgets(inst: Installation) -> None:
    ns = inst.netns(ADDRS)
    web = inst.start_unit(ns, "web", "IPAddressDeny=198.51.100.1")
    assert web.send("198.51.100.2", 100) == "ok 100"
    assert web.send("198.51.100.1", 100) == "err 1"

    # A running unit cannot be reset.
    one_line_error(inst.cli("reset", "web.service"), "active", "stop")
    assert inst.show("web.service")["ActiveState"] == "active"

    inst.ok("stop", "web.service")
    assert web.wait() == 128 + 15  # ipacctd run passes the SIGTERM death on
    assert not os.path.exists(f"/proc/{web.pid}")  # ended (and reaped by ipacctd run)
    cg = os.path.join(inst.root_fs, "web.service")
    wait_for(lambda: not os.path.exists(cg), 5.0, "the unit's cgroup to go")

    st = inst.cli("status", "web.service")
    assert st.returncode == 3, st
    lines = st.stdout.splitlines()
    assert lines[0].startswith("○ web.service - "), st.stdout
    assert re.fullmatch(r"     Active: inactive \(dead\) since .+ ago", lines[2]), st.stdout
    argv = f"{inst.argv()[0]} {inst.tmp}/agent.py 7000"
    assert f"    Process: {web.pid} ExecStart={argv} (code=killed, signal=TERM)" in lines, lines
    assert f"   Main PID: {web.pid} (code=killed, signal=TERM)" in lines, lines
    assert f"         IP: {100 + UDP4}B in, {100 + UDP4}B out" in lines
    assert f"    Dropped: 0B in (0 packets), {100 + UDP4}B out (1 packet)" in lines
    assert "   Firewall: IPAddressDeny=198.51.100.1/32 (cgroup gone; counters kept)" in lines
    props = inst.show("web.service")
    assert props["ActiveState"] == "inactive" and props["SubState"] == "dead"
    assert props["MainPID"] == "0"
    assert props["IPEgressBytes"] == str(100 + UDP4) and props["IPEgressPackets"] == "1"
    assert "web.service" not in inst.ok("list-units").stdout  # only active units
    assert "web.service" in inst.ok("list-units", "--all").stdout

    inst.ok("reset", "web.service")
    for verb in ("status", "show"):
        res = inst.cli(verb, "web.service")
        one_line_error(res, "web.service", "not found")
        assert res.returncode == 4
    inst.assert_empty()
