"""Crashes: kill -9 of the daemon, and of a CLI in the middle of ``run`` and ``set-property``,
under continuous traffic. Enforcement never stops, counters equal what was sent, a
restart rebuilds every unit, and an interrupted change is completed (or rolled back).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time

import pytest
from e2e_helpers import PY, REPO, Installation
from rel import Flow, cgroup_id, count, links_on, report
from support import wait_for

pytestmark = pytest.mark.kernel

A, D, B = "198.51.100.1", "198.51.100.2", "203.0.113.1"  # allowed, denied, flipped


def _status(inst: Installation, unit: str) -> dict:
    res = inst.cli("status", "--json", unit)
    assert res.returncode in (0, 3), res.stderr
    assert "Traceback" not in res.stderr
    return json.loads(res.stdout)[0]


def _check_exact(flow: Flow, inst: Installation, unit: str, recv: dict, sent: dict) -> dict:
    """No packet to D arrived; the unit's egress counters equal what sendto accepted."""
    c = inst.manager().counters(unit)
    assert c is not None
    ok_bytes = sum(r["ok_bytes"] for r in sent["dests"].values())
    ok_pkts = sum(r["ok"] for r in sent["dests"].values())
    eperm = sum(r["eperm"] for r in sent["dests"].values())
    assert all(r["other"] == 0 for r in sent["dests"].values()), sent
    assert recv[D] == 0, f"{recv[D]} packets to the denied {D} passed"
    assert sent["dests"][D]["ok"] == 0 and sent["dests"][D]["eperm"] > 0
    assert c.egress_bytes == ok_bytes, (c.egress_bytes, ok_bytes)
    assert c.egress_packets == ok_pkts
    assert c.egress_dropped_packets == eperm
    return {
        "packets_sent": ok_pkts + eperm,
        "packets_leaked": recv[D],
        "bytes_lost": abs(c.egress_bytes - ok_bytes),
    }


def _run_unit(inst, ns, name: str, deny: str, argv: list[str], stderr=subprocess.DEVNULL):
    """``ipacctd run --unit NAME -p IPAddressDeny=DENY -- ARGV`` in ``ns``, not waited for."""
    return ns.popen(
        inst.argv("run", "--unit", name, "-p", f"IPAddressDeny={deny}", "--", *argv),
        env=inst.env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=stderr,
    )


def test_daemon_kill9_under_traffic(denv) -> None:
    """kill -9 the daemon N times (sometimes in the middle of a set-property it serves)."""
    n = count(5, 20)
    inst: Installation = denv.inst
    denv.start()
    ns = inst.netns([A, D, B])
    flow = Flow(ns, inst.tmp, 7100, "dk")
    flow.start_receiver([A, D, B])
    err = open(inst.tmp / "dk.run.err", "wb")  # noqa: SIM115 — closed below
    run = _run_unit(
        inst, ns, "dk-tx", f"{D} {B}", flow.sender_argv([A, D, B], pause=0.0005), stderr=err
    )
    idle = [
        ns.popen(
            inst.argv(
                "run", "--unit", f"dk-idle{i}", "-p", f"IPAddressDeny={D}", "--", "sleep", "600"
            ),
            env=inst.env,
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for i in range(2)
    ]
    wait_for(flow.sender_ready, 20, "the sender")
    names = {"dk-tx.service", "dk-idle0.service", "dk-idle1.service"}
    wait_for(lambda: names <= set(denv.client.units()), 10, "the units")
    rng = random.Random(6)
    interrupted = 0
    for i in range(n):
        before = denv.client.props("dk-tx.service")["IPEgressBytes"]
        cli = None
        if i % 2 == 0:  # kill the daemon while it serves a policy change
            value = f"IPAddressAllow={B}" if i % 4 == 0 else "IPAddressAllow="
            cli = subprocess.Popen(
                inst.argv("set-property", "dk-tx.service", value),
                env=inst.env,
                cwd=REPO,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            time.sleep(rng.uniform(0.15, 0.45))  # CLI start-up is ~0.2-0.3 s
        denv.kill9()
        if cli is not None:
            _, cerr = cli.communicate(timeout=30)
            interrupted += cli.returncode != 0
            assert b"Traceback" not in cerr, cerr
        time.sleep(0.2)  # traffic goes on with no daemon
        denv.start()
        units = denv.client.units()
        assert names <= set(units), units
        for name in names:
            props = denv.client.props(name)
            assert props["IPFirewallEnforced"], name
            st = _status(inst, name)
            assert st["policy_in_force"], st
        after = denv.client.props("dk-tx.service")["IPEgressBytes"]
        assert after > before  # counting went on through the crash
    assert all(p.poll() is None for p in idle)  # their units kept running through it all
    recv = flow.stop([run])
    err.close()
    sent = flow.sender_result()
    figures = _check_exact(flow, inst, "dk-tx.service", recv, sent)
    report("crash_daemon", runs=n, **figures, interrupted_calls=interrupted)


def test_kill9_cli_mid_set_property(inst: Installation) -> None:
    """kill -9 a direct CLI at a random moment of set-property; the next mutation completes
    the change (or it never started); the denied address never passes."""
    n = count(5, 20)
    ns = inst.netns([A, D, B])
    flow = Flow(ns, inst.tmp, 7200, "sp")
    flow.start_receiver([A, D, B])
    run = _run_unit(inst, ns, "sp-tx", f"{D} {B}", flow.sender_argv([A, D, B], pause=0.0005))
    wait_for(flow.sender_ready, 20, "the sender")
    mgr = inst.manager()
    rng = random.Random(7)
    # How long a policy change takes (a Description= change alone swaps no programs and
    # takes a fraction of it: the kills below would all land early).
    t0 = time.monotonic()
    inst.ok("set-property", "sp-tx.service", f"IPAddressAllow={B}", "Description=probe")
    typical = time.monotonic() - t0
    inst.ok("set-property", "sp-tx.service", "IPAddressAllow=")
    pending = 0
    for i in range(n):
        value = f"IPAddressAllow={B}" if i % 2 == 0 else "IPAddressAllow="
        cli = subprocess.Popen(
            inst.argv("set-property", "sp-tx.service", value, f"Description=c{i}"),
            env=inst.env,
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(rng.uniform(0.5, 1.0) * typical)
        os.kill(cli.pid, signal.SIGKILL)
        cli.wait(timeout=10)
        st = _status(inst, "sp-tx.service")  # readable, no traceback, tells the truth
        if not st["policy_in_force"]:
            pending += 1
            assert st["kernel_policy_generation"] != st["policy_generation"]
        mgr.reconcile("sp-tx.service")
        st = _status(inst, "sp-tx.service")
        assert st["policy_in_force"], st
    recv = flow.stop([run])
    sent = flow.sender_result()
    figures = _check_exact(flow, inst, "sp-tx.service", recv, sent)
    report("crash_cli_set_property", runs=n, **figures, interrupted_pending=pending)


#: The CLI with a crash injected: patches one function to SIGKILL the process, then runs
#: ``ipacctd ARGS``. argv: POINT ARGS...
CRASHING_CLI = r"""
import os, signal, sys
point = sys.argv[1]
def die(*a, **k):
    os.kill(os.getpid(), signal.SIGKILL)
if point == "intent":        # metadata says new policy; the kernel has the old
    from ipacctd.datapath.unit import UnitDatapath
    UnitDatapath.apply = die
elif point == "applied":     # programs swapped; the kernel generation not yet written
    from ipacctd.manager import generation
    generation.write = die
elif point == "recorded":    # kernel generation written; the metadata still has the rollback
    from ipacctd.manager import generation
    real = generation.write
    def write(*a, **k):
        real(*a, **k)
        die()
    generation.write = write
elif point == "create-tmp":  # datapath built in its temporary pin directory, not renamed
    real_rename = os.rename
    def rename(src, dst, *a, **k):
        if "~tmp-" in str(src):
            die()
        return real_rename(src, dst, *a, **k)
    os.rename = rename
elif point == "create-gen":  # pins complete; no generation yet
    from ipacctd.manager import generation
    generation.write = die
elif point == "create-cgroup":  # the unit's cgroup made, nothing else yet
    from ipacctd import cgroup
    real_create = cgroup.create
    def create(fs):
        real_create(fs)
        die()
    cgroup.create = create
from ipacctd.cli.main import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize("point", ["intent", "applied", "recorded"])
def test_crash_points_of_a_policy_change(inst: Installation, point: str) -> None:
    """A change killed at each step: status says whether the recorded policy is in force,
    the kernel verdict is the old or the new one (never a gap), and the next CLI
    mutation completes the change."""
    ns = inst.netns([A, D, B])
    agent = inst.start_unit(ns, "cp", f"IPAddressDeny={D} {B}")
    assert agent.send(B, 10).startswith("err 1")
    res = subprocess.run(
        [PY, "-c", CRASHING_CLI, point, "set-property", "cp.service", f"IPAddressAllow={B}"],
        env=inst.env,
        cwd=REPO,
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert res.returncode == -signal.SIGKILL, res.stderr
    st = _status(inst, "cp.service")
    assert st["properties"]["IPAddressAllow"] == f"{B}/32"  # the intent is what status shows
    assert st["policy_in_force"] == (point == "recorded")
    text = inst.cli("status", "cp.service").stdout
    if point != "recorded":
        assert "NOT IN FORCE YET" in text, text
    verdict = agent.send(B, 10)
    assert verdict.startswith("err 1" if point == "intent" else "ok"), verdict
    assert agent.send(D, 10).startswith("err 1")
    inst.ok("set-property", "cp.service", "Description=next")  # completes the change first
    st = _status(inst, "cp.service")
    assert st["policy_in_force"] and st["properties"]["Description"] == "next"
    assert agent.send(B, 10).startswith("ok")
    assert agent.send(D, 10).startswith("err 1")


@pytest.mark.parametrize("point", ["create-cgroup", "create-tmp", "create-gen"])
def test_crash_points_of_run(inst: Installation, point: str) -> None:
    """``run`` killed while it builds the unit: right after making its cgroup, or while it
    builds the datapath. Status reports the unit, reset removes it with its cgroup and every
    pin and link (also those left in the temporary directory)."""
    res = subprocess.run(
        [
            PY,
            "-c",
            CRASHING_CLI,
            point,
            "run",
            "--unit",
            "cr",
            "-p",
            f"IPAddressDeny={D}",
            "--",
            "true",
        ],
        env=inst.env,
        cwd=REPO,
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert res.returncode == -signal.SIGKILL, res.stderr
    fs = os.path.join(inst.root_fs, "cr.service")
    cg = cgroup_id(fs)
    if point == "create-cgroup":
        assert inst.pin_dirs() == [] and not links_on({cg})  # killed before any BPF object
    if point == "create-tmp":
        assert any(e.startswith("~tmp-") for e in inst.pin_dirs())
        assert links_on({cg}), "the half-built datapath is attached (fail closed)"
    st = _status(inst, "cr.service")
    assert not st["policy_in_force"]
    text = inst.cli("status", "cr.service")
    assert "NOT" in text.stdout and "Traceback" not in text.stderr
    inst.ok("reset", "cr.service")
    assert inst.unit_names() == [] and inst.pin_dirs() == [] and inst.unit_cgroups() == []
    assert not links_on({cg})


def test_kill9_run_midway(inst: Installation) -> None:
    """kill -9 ``ipacctd run`` at random moments of its start: a command that started is
    filtered; status reports every unit sensibly; reset removes everything."""
    n = count(5, 20)
    ns = inst.netns([A, D])
    flow = Flow(ns, inst.tmp, 7300, "kr")
    flow.start_receiver([A, D])
    rng = random.Random(8)
    cgroups: set[int] = set()
    started = 0
    sent_total = 0
    for i in range(n):
        name = f"kr{i}.service"
        proc = _run_unit(inst, ns, name, D, flow.sender_argv([D, A], idx=i, max_rounds=300))
        time.sleep(rng.uniform(0.0, 0.6))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        fs = os.path.join(inst.root_fs, name)
        if os.path.isdir(fs):
            cgroups.add(cgroup_id(fs))
            from ipacctd import cgroup

            wait_for(lambda fs=fs: not cgroup.procs_recursive(fs), 30, "the orphaned command")
        if flow.sender_result_path(i).exists():
            started += 1
            sent = flow.sender_result(i)
            assert sent["dests"][D]["ok"] == 0, sent
            sent_total += sum(r["ok"] + r["eperm"] for r in sent["dests"].values())
        res = inst.cli("status", name)
        assert res.returncode in (0, 3, 4) and "Traceback" not in res.stderr, res.stderr
        if res.returncode != 4:
            inst.ok("reset", name)
    recv = flow.stop()
    assert recv[D] == 0
    assert inst.unit_names() == [] and inst.pin_dirs() == [] and inst.unit_cgroups() == []
    assert not links_on(cgroups)
    report(
        "crash_cli_run",
        runs=n,
        packets_sent=sent_total,
        packets_leaked=recv[D],
        commands_started=started,
    )
