"""Self-repair under traffic (issue 10.2): a unit's link pins, or its whole pin directory,
removed by hand while it floods an allowed and a denied address. A lost link pin detaches
the link at once; the daemon rebuilds it from the metadata within a poll, on the same
counters map. Asserted: every round ends enforced again, the sender's last verdict for the
denied address is EPERM, the denied datagrams that passed are exactly those the receiver
got (one window per egress loss at most), and every EPERM was counted as dropped.
"""

from __future__ import annotations

import os
import subprocess
import time

import pytest
from e2e_helpers import REPO, Installation
from rel import Flow, count, report
from support import wait_for

from ipacctd.bpf import bpffs
from ipacctd.manager.engine import Manager

pytestmark = pytest.mark.kernel

A, D = "198.51.100.1", "198.51.100.2"  # allowed, denied


def _run(inst: Installation, ns, name: str, argv: list[str]) -> subprocess.Popen:
    return ns.popen(
        inst.argv("run", "--unit", name, "-p", f"IPAddressDeny={D}", "--", *argv),
        env=inst.env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _flooding_unit(denv, port: int, tag: str) -> tuple[Flow, subprocess.Popen, Manager, str, str]:
    """The daemon running and unit ``<tag>-tx.service`` sending to A and D without pause:
    its flow, the ``run`` process, a manager, the unit's name and its pin directory."""
    inst: Installation = denv.inst
    denv.start()
    ns = inst.netns([A, D])
    flow = Flow(ns, inst.tmp, port, tag)
    flow.start_receiver([A, D])
    run = _run(inst, ns, f"{tag}-tx", flow.sender_argv([A, D], pause=0.0005))
    wait_for(flow.sender_ready, 20, "the sender")
    pin_dir = os.path.join(inst.bpf_dir, "units", f"{tag}-tx_dservice")
    return flow, run, inst.manager(), f"{tag}-tx.service", pin_dir


def _ok_segments(flips: list[str]) -> int:
    return sum(1 for v in flips if v == "ok")


def test_link_pin_loss_under_traffic_is_repaired(denv) -> None:
    n = count(6, 40)
    flow, run, mgr, name, pin_dir = _flooding_unit(denv, 7200, "pl")
    egress_losses = 0
    for i in range(n):
        victim = "link_egress" if i % 2 == 0 else "link_ingress"
        egress_losses += victim == "link_egress"
        bpffs.unpin(os.path.join(pin_dir, victim))
        wait_for(
            lambda v=victim: (
                os.path.exists(os.path.join(pin_dir, v)) and mgr.enforcement(name).enforced
            ),
            10,
            f"round {i}: {victim} rebuilt",
        )
        time.sleep(0.1)  # traffic on the repaired unit
    recv = flow.stop([run])
    sent = flow.sender_result()
    d = sent["dests"][D]
    assert all(r["other"] == 0 for r in sent["dests"].values()), sent
    assert d["flips"][-1] == "eperm", d["flips"]  # enforced at the end
    assert _ok_segments(d["flips"]) <= egress_losses, d["flips"]
    assert recv[D] <= d["ok"]  # what passed is what the sender saw accepted
    c = mgr.counters(name)
    assert c is not None
    assert c.egress_dropped_packets == d["eperm"]  # the same map throughout: every refusal
    report(
        "pin_loss",
        rounds=n,
        packets_sent=d["ok"] + d["eperm"],
        packets_leaked=recv[D],
        leak_windows=_ok_segments(d["flips"]),
    )


def test_pin_directory_loss_under_traffic_is_rebuilt(denv) -> None:
    n = count(3, 20)
    flow, run, mgr, name, pin_dir = _flooding_unit(denv, 7201, "pd")
    for i in range(n):
        bpffs.remove_tree(pin_dir)
        wait_for(lambda: mgr.enforcement(name).enforced, 10, f"round {i}: rebuilt")
        time.sleep(0.1)
    c = denv.client
    c.wait(lambda: c.props(name)["IPFirewallEnforced"] is True, 10, "D-Bus says enforced")
    recv = flow.stop([run])
    sent = flow.sender_result()
    d = sent["dests"][D]
    assert d["flips"][-1] == "eperm", d["flips"]
    assert _ok_segments(d["flips"]) <= n, d["flips"]
    assert recv[D] <= d["ok"]
    counters = mgr.counters(name)
    assert counters is not None and counters.egress_dropped_packets > 0  # a new map counts
    report(
        "pin_dir_loss",
        rounds=n,
        packets_sent=d["ok"] + d["eperm"],
        packets_leaked=recv[D],
        leak_windows=_ok_segments(d["flips"]),
    )
