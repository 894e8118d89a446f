"""``attach``/``detach``: a policy on a cgroup ipacctd did not create."""

from __future__ import annotations

import os

from e2e_helpers import UDP4, Installation, one_line_error

from ipacctd import cgroup


def test_attach_enforces_on_a_foreign_cgroup_and_detach_leaves_it(inst: Installation) -> None:
    rel = f"/ipacctd-test-{inst.id}-ext/app"
    fs = inst.make_cgroup(rel)
    ns = inst.netns(["198.51.100.1", "198.51.100.2"])
    app = inst.start_in_cgroup(ns, fs)
    assert cgroup.procs(fs) == [app.pid]
    assert app.send("198.51.100.1", 100) == "ok 100"  # no policy yet

    res = inst.ok("attach", rel, "-p", "IPAddressDeny=198.51.100.1")
    assert res.stderr.splitlines() == [f"Attached unit: app.service ({rel})"]
    assert app.send("198.51.100.1", 100) == "err 1"
    assert app.send("198.51.100.2", 100) == "ok 100"

    st = inst.ok("status", "app.service").stdout
    lines = st.splitlines()
    assert lines[0] == "● app.service - app.service", st
    assert lines[1] == "     Loaded: loaded (attached to existing cgroup)"
    assert lines[2].startswith("     Active: active (running) since ")
    assert f"         IP: {100 + UDP4}B in, {100 + UDP4}B out" in lines  # from attach on
    assert f"    Dropped: 0B in (0 packets), {100 + UDP4}B out (1 packet)" in lines
    assert "   Firewall: IPAddressDeny=198.51.100.1/32 (enforced)" in lines
    assert f"     CGroup: {rel}" in lines
    assert lines[-1].startswith(f"             └─{app.pid} ")
    props = inst.show("app.service")
    assert props["Transient"] == "no"
    assert props["ControlGroup"] == rel
    assert props["ActiveState"] == "active"
    assert props["IPFirewallEnforced"] == "yes"
    assert props["IPEgressBytes"] == str(100 + UDP4)

    # A second binding of the same cgroup, or a second unit of that name, is refused.
    one_line_error(inst.cli("attach", rel, "--unit", "other"), "app.service")
    one_line_error(inst.cli("attach", rel), "exists already")
    # An attached unit is detached, not reset by run's verbs.
    assert inst.cli("run", "--unit", "app", "--", "true", ns=ns).returncode != 0

    inst.ok("detach", "app.service")
    assert app.send("198.51.100.1", 100) == "ok 100"  # the programs are gone
    assert os.path.isdir(fs) and cgroup.procs(fs) == [app.pid]  # the cgroup is not ours
    res = inst.cli("status", "app.service")
    one_line_error(res, "not found")
    assert res.returncode == 4
    inst.assert_empty()
