"""``/metrics`` during traffic, and a daemon killed with SIGKILL and started again."""

from __future__ import annotations

import pytest
from daemon_support import DaemonEnv, unit_path
from e2e_helpers import UDP4

pytestmark = pytest.mark.kernel

ALLOWED = "203.0.113.1"
DENIED = "198.51.100.1"
BYTES = "ipacctd_unit_ip_bytes_total"
PACKETS = "ipacctd_unit_ip_packets_total"
DROPPED = "ipacctd_unit_ip_dropped_packets_total"


def series(scrape: dict, name: str, **labels: str) -> float | None:
    return scrape.get((name, frozenset(labels.items())))


def unit_series(scrape: dict, unit: str) -> list:
    return [key for key in scrape if ("unit", unit) in key[1]]


def test_metrics_follow_traffic_and_reset(daemon: DaemonEnv) -> None:
    inst = daemon.inst
    ns = inst.netns([ALLOWED, DENIED])
    agent = inst.start_unit(ns, "web", f"IPAddressDeny={DENIED}")
    unit = "web.service"
    for i in range(1, 6):  # scrape between datagrams: read from the maps at scrape time
        assert agent.send(ALLOWED, 64 * i) == f"ok {64 * i}"
        sent = sum(64 * k + UDP4 for k in range(1, i + 1))
        m = daemon.scrape()
        assert series(m, BYTES, unit=unit, direction="egress") == sent, i
        assert series(m, BYTES, unit=unit, direction="ingress") == sent, i
        assert series(m, PACKETS, unit=unit, direction="egress") == i
    assert agent.send(DENIED, 10) == "err 1"
    m = daemon.scrape()
    assert series(m, DROPPED, unit=unit, direction="egress") == 1
    assert series(m, "ipacctd_unit_state", unit=unit, state="active") == 1
    assert series(m, "ipacctd_unit_state", unit=unit, state="inactive") == 0
    assert series(m, "ipacctd_unit_state", unit=unit, state="failed") == 0
    assert series(m, "ipacctd_unit_firewall_enforced", unit=unit) == 1
    assert series(m, "ipacctd_unit_policy_prefixes", unit=unit, list="deny") == 1
    assert series(m, "ipacctd_units", state="active") == 1

    agent.proc.stdin.write(b"exit\n")
    agent.proc.stdin.flush()
    assert agent.wait(timeout=10) == 0  # `ipacctd run` ends with its command
    inst.ok("reset", unit)
    daemon.client.wait(
        lambda: not unit_series(daemon.scrape(), unit), 5, "the reset unit's series to vanish"
    )
    assert series(daemon.scrape(), "ipacctd_units", state="active") == 0


def test_sigkill_and_restart_lose_nothing(daemon: DaemonEnv) -> None:
    inst, c = daemon.inst, daemon.client
    ns = inst.netns([ALLOWED, DENIED])
    agent = inst.start_unit(ns, "web", f"IPAddressDeny={DENIED}")
    for _ in range(2):
        assert agent.send(ALLOWED, 100) == "ok 100"
    c.wait(
        lambda: c.props("web.service")["IPEgressBytes"] == 2 * (100 + UDP4),
        5,
        "counters before the kill",
    )
    inst.ok("run", "--unit", "early", "--", "true")
    c.wait(lambda: "early.service" in c.units(), 5, "early.service listed")
    units_before = set(c.units())

    daemon.kill9()
    assert not c.has_owner()
    # While the daemon is down: traffic is still counted and filtered, and the CLI works.
    for _ in range(3):
        assert agent.send(ALLOWED, 100) == "ok 100"
    assert agent.send(DENIED, 10) == "err 1"
    inst.ok("run", "--unit", "late", "-p", "IPAccounting=no", "--", "true")

    daemon.start(nofile_soft=256)  # as from a shell: the daemon lifts the soft fd limit
    with open(f"/proc/{daemon.proc.pid}/limits") as f:
        soft, hard = next(ln for ln in f if ln.startswith("Max open files")).split()[3:5]
    assert soft == hard, (soft, hard)
    units = c.units()
    assert set(units) == units_before | {"late.service"}
    assert units["web.service"][3:5] == ("active", "running")
    assert units["late.service"][3:5] == ("inactive", "dead")
    props = c.props("web.service")
    assert props["IPEgressBytes"] == 5 * (100 + UDP4)
    assert props["IPEgressPackets"] == 5
    assert props["IPIngressBytes"] == 5 * (100 + UDP4)
    assert props["IPEgressDroppedPackets"] == 1
    late = c.props("late.service")
    assert late["IPAccounting"] is False
    assert late["IPEgressBytes"] == (1 << 64) - 1  # systemd's "unknown" when not counting
    assert c.manager("GetUnit", "s", "early.service") == [unit_path("early.service")]
    m = daemon.scrape()
    assert series(m, BYTES, unit="web.service", direction="egress") == 5 * (100 + UDP4)
    # ... and the restarted daemon keeps following the live counters.
    assert agent.send(ALLOWED, 100) == "ok 100"
    c.wait(
        lambda: c.props("web.service")["IPEgressBytes"] == 6 * (100 + UDP4),
        5,
        "counters after the restart",
    )
