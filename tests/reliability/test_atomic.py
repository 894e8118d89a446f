"""Atomic policy: many policy changes on a unit under continuous traffic.

A sender inside the unit hits two destinations in a tight bounded loop; receivers outside
the unit count arrivals. To the address denied throughout, nothing passes; the address
that moves from deny to allow once (in the middle of the changes) flips its verdict
exactly once: EPERM, then success, never EPERM again. Counters equal what sendto accepted.
"""

from __future__ import annotations

import os
import random
import time

import pytest
from e2e_helpers import Installation
from rel import Flow, count, prog_ids, report
from support import wait_for

pytestmark = pytest.mark.kernel

D, F, A = "198.51.100.2", "203.0.113.7", "198.51.100.1"  # denied, flipped, allowed


def test_policy_changes_under_traffic(inst: Installation) -> None:

    changes = count(200, 1000)
    mgr = inst.manager()
    ns = inst.netns([D, F, A])
    flow = Flow(ns, inst.tmp, 7400, "at")
    flow.start_receiver([D, F, A])
    unit = mgr.start_transient([("IPAddressDeny", f"{D} {F}")], name="atomic.service")
    fs = mgr.cgroup_fs(unit)
    sender = ns.popen(flow.sender_argv([D, F, A], max_seconds=600), cgroup_fs=fs)
    wait_for(flow.sender_ready, 20, "the sender")
    rng = random.Random(2)
    # Noise prefixes from 192.0.2.0/24 and 2001:db8:1::/48: never our destinations.
    noise4 = [f"192.0.2.{i}/32" for i in range(256)]
    noise6 = [f"2001:db8:1::{i:x}/128" for i in range(256)]
    flip_at = changes // 2
    seen_ids = set()
    t0 = time.monotonic()
    for i in range(changes):
        extra = " ".join(
            rng.sample(noise4, rng.randint(0, 20)) + rng.sample(noise6, rng.randint(0, 5))
        )
        deny = f"{D} {extra}" if i >= flip_at else f"{D} {F} {extra}"
        allow = " ".join(rng.sample(noise4, rng.randint(0, 3)))
        pairs = [
            ("IPAddressDeny", ""),
            ("IPAddressDeny", deny),
            ("IPAddressAllow", ""),
            ("IPAddressAllow", allow),
            ("IPAccounting", "yes"),
        ]
        if i % 7 == 3:
            pairs.append(("IPAddressDenyMode", "enforce"))
        mgr.set_properties("atomic.service", pairs)
        seen_ids.add(prog_ids(inst.bpf_dir, "atomic.service"))
        if i == flip_at - 1:
            time.sleep(0.2)  # plenty of sends before the flip ...
    time.sleep(0.2)  # ... and after it
    elapsed = time.monotonic() - t0
    recv = flow.stop([sender])
    sent = flow.sender_result()
    d, f = sent["dests"][D], sent["dests"][F]
    st = mgr.status("atomic.service")
    c = st.counters
    assert st.policy_in_force
    assert recv[D] == 0 and d["ok"] == 0 and d["eperm"] > 0
    assert f["flips"] == ["eperm", "ok"], f["flips"]
    assert f["eperm"] > 0 and f["ok"] > 0
    assert all(r["other"] == 0 for r in sent["dests"].values())
    ok_bytes = sum(r["ok_bytes"] for r in sent["dests"].values())
    eperm = sum(r["eperm"] for r in sent["dests"].values())
    assert c is not None and c.egress_bytes == ok_bytes and c.egress_dropped_packets == eperm
    assert len(seen_ids) >= changes * 0.9  # the programs really were replaced each time
    mgr.stop("atomic.service")
    mgr.reset("atomic.service")
    assert not os.listdir(os.path.join(inst.bpf_dir, "units"))
    report(
        "atomic_policy",
        runs=changes,
        packets_sent=sum(r["ok"] + r["eperm"] for r in sent["dests"].values()),
        packets_leaked=recv[D],
        verdict_flips=len(f["flips"]) - 1,
        bytes_lost=abs(c.egress_bytes - ok_bytes),
        changes_per_second=round(changes / elapsed, 1),
    )
