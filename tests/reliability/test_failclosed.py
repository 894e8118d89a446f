"""Fail-closed: where cgroup BPF is unavailable or not permitted, a unit with a firewall
refuses to start with a clear error unless ``--allow-unenforced``; an accounting-only unit
starts but reports that it is not counting; ``status`` says whether the policy is enforced.

Simulated three ways: a kernel feature switched off (``IPACCTD_DISABLE_BPF=1``), all
capabilities dropped (root uid, empty bounding set: ``setpriv``), and a cgroup2 mount
that is not one (``IPACCTD_CGROUP2_MOUNT``).
"""

from __future__ import annotations

import json

import pytest
from e2e_helpers import Installation, one_line_error

pytestmark = pytest.mark.kernel

D = "198.51.100.2"
NO_CAPS = ["setpriv", "--inh-caps=-all", "--bounding-set=-all", "--"]


@pytest.mark.parametrize("how", ["disable-bpf", "no-capabilities"])
def test_unenforceable_firewall_refused(inst: Installation, how: str) -> None:
    env = {"IPACCTD_DISABLE_BPF": "1"} if how == "disable-bpf" else {}
    prefix = NO_CAPS if how == "no-capabilities" else []
    if prefix:
        # Without CAP_DAC_OVERRIDE even uid 0 cannot mkdir in the (0555) cgroup2 root: that
        # refusal is clear too, but make the installation's root first to reach the BPF step.
        res = inst.cli(
            "run", "--unit", "fw", "-p", f"IPAddressDeny={D}", "--", "true", prefix=prefix
        )
        one_line_error(res, "cannot create cgroup", "run as root")
        inst.ok("run", "--unit", "prep", "--", "true")
        inst.ok("reset", "prep.service")
    res = inst.cli(
        "run", "--unit", "fw", "-p", f"IPAddressDeny={D}", "--", "true", env=env, prefix=prefix
    )
    one_line_error(res, "cannot enforce the firewall", "--allow-unenforced")
    assert res.returncode == 69
    assert inst.unit_names() == [] and inst.pin_dirs() == [] and inst.unit_cgroups() == []
    # with the override: it runs, says so, and status keeps saying so
    res = inst.cli(
        "run",
        "--unit",
        "fw",
        "--allow-unenforced",
        "-p",
        f"IPAddressDeny={D}",
        "--",
        "true",
        env=env,
        prefix=prefix,
    )
    assert res.returncode == 0, res.stderr
    assert "is not counting or filtering" in res.stderr
    # accounting only: starts without the override, and reports that it is not counting
    res = inst.cli("run", "--unit", "acct", "--", "true", env=env, prefix=prefix)
    assert res.returncode == 0, res.stderr
    assert "is not counting or filtering" in res.stderr
    for unit in ("fw.service", "acct.service"):
        text = inst.cli("status", unit).stdout
        assert "NOT ENFORCED" in text, text
        assert "IP:" not in text  # no counters pretending to be zero
        st = json.loads(inst.cli("status", "--json", unit).stdout)[0]
        assert st["enforced"] is False and st["policy_in_force"] is False
        assert st["counters"] is None
        show = inst.show(unit)
        assert show["IPEgressBytes"] == "[no data]", show
    assert inst.pin_dirs() == []  # nothing half-built left in bpffs
    # the same host with BPF: enforced, and status says so
    inst.ok("run", "--unit", "ok", "-p", f"IPAddressDeny={D}", "--", "true")
    text = inst.cli("status", "ok.service").stdout
    assert "(enforced)" in text or "cgroup gone" in text, text
    for unit in ("fw.service", "acct.service", "ok.service"):
        inst.ok("reset", unit)


def test_no_cgroup2_refused(inst: Installation, tmp_path) -> None:
    """Without a cgroup2 mount nothing can be placed in a unit: every run is refused with
    one clear line, and nothing is left behind."""
    env = {"IPACCTD_CGROUP2_MOUNT": str(tmp_path)}
    for argv in (
        ["run", "-p", f"IPAddressDeny={D}", "--", "true"],
        ["run", "--", "true"],
        ["run", "--allow-unenforced", "--", "true"],
    ):
        res = inst.cli(*argv, env=env)
        one_line_error(res, "not a cgroup2 mount", "cgroup v2 is needed")
        assert res.returncode == 69
    assert inst.unit_names() == [] and inst.pin_dirs() == [] and inst.unit_cgroups() == []
