"""One name, one unit (issue 10 item 1): two ``ipacctd run --unit SAME`` at once.

A asks for ``IPAddressDeny=.9`` and sends to .9; B asks for the same name with no policy.
They start 0-9 ms apart, through the daemon and without it. Whatever the timing: exactly
one start wins, the other is refused with a clear message, and no datagram to .9 leaves
A's command (before the fix, B's start removed A's unit as "inactive" while A was about to
start its command, and A ran unfirewalled). Also: ``run`` on an existing inactive name is
refused (systemd-run refuses a loaded unit) instead of wiping its counters.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import time

import pytest
from e2e_helpers import PY, REPO, Installation
from rel import count, report
from support import free_port, wait_for

pytestmark = pytest.mark.kernel

DENIED = "198.51.100.9"
TRIES = 20

#: Sends TRIES datagrams to DENIED:$1 (bash's /dev/udp: a shell starts in a millisecond,
#: an interpreter in tens) and writes how many sendto accepted and how many it refused.
SEND = (
    f"ok=0; no=0; for i in $(seq {TRIES}); do "
    f"if {{ printf x >/dev/udp/{DENIED}/$1; }} 2>/dev/null; then ok=$((ok+1)); "
    "else no=$((no+1)); fi; "
    'done; echo "{\\"ok\\": $ok, \\"refused\\": $no}" > "$2"'
)


#: Counts the datagrams that reach DENIED:port until the stop file appears.
RECV = r"""
import json, os, socket, sys, time
port, stop, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[4], port))
s.settimeout(0.1)
open(out + ".ready", "w").close()
n = 0
deadline = time.monotonic() + 900
while time.monotonic() < deadline and not os.path.exists(stop):
    try:
        s.recv(100)
        n += 1
    except TimeoutError:
        pass
with open(out, "w") as f:
    json.dump(n, f)
"""

REFUSED = ("exists already", "is activating", "is active", "is deactivating")


def _race(inst: Installation, env: dict[str, str], rounds: int, tag: str) -> dict:
    ns = inst.netns([DENIED])
    port_a, port_b = free_port(), free_port()
    stop = inst.tmp / f"{tag}.stop"
    recv_out = inst.tmp / f"{tag}.recv.json"
    recv = ns.popen([PY, "-c", RECV, str(port_a), str(stop), str(recv_out), DENIED])
    wait_for(lambda: os.path.exists(f"{recv_out}.ready"), 15, "the receiver")
    rng = random.Random(1234)
    mgr = inst.manager()
    wins = {"A": 0, "B": 0}
    refused = 0
    denied_sent = 0
    a_eperm = 0
    parallel = 10  # rounds in flight at once (each its own name): the race is per name
    try:
        for base in range(0, rounds, parallel):
            batch = []
            for r in range(base, min(base + parallel, rounds)):
                name = f"{tag}-r{r}"
                out_a, out_b = inst.tmp / f"{name}.a.json", inst.tmp / f"{name}.b.json"
                a_argv = inst.argv(
                    "run",
                    "--quiet",
                    "--unit",
                    name,
                    "-p",
                    f"IPAddressDeny={DENIED}",
                    "--",
                    "bash",
                    "-c",
                    SEND,
                    "send",
                    str(port_a),
                    str(out_a),
                )
                b_argv = inst.argv(
                    "run",
                    "--quiet",
                    "--unit",
                    name,
                    "--",
                    "bash",
                    "-c",
                    SEND,
                    "send",
                    str(port_b),
                    str(out_b),
                )
                first, second = (a_argv, b_argv) if rng.random() < 0.5 else (b_argv, a_argv)
                kw = dict(env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                p1 = ns.popen(first, **kw)
                time.sleep(rng.uniform(0, 0.009))
                p2 = ns.popen(second, **kw)
                pa, pb = (p1, p2) if first is a_argv else (p2, p1)
                batch.append((name, pa, pb, out_a, out_b))
            for name, pa, pb, out_a, out_b in batch:
                err_a = pa.communicate(timeout=60)[1].decode()
                err_b = pb.communicate(timeout=60)[1].decode()
                assert "Traceback" not in err_a + err_b, (err_a, err_b)
                ran_a, ran_b = out_a.exists(), out_b.exists()
                assert ran_a != ran_b, (name, pa.returncode, err_a, pb.returncode, err_b)
                winner, loser, err = ("A", pb, err_b) if ran_a else ("B", pa, err_a)
                wins[winner] += 1
                assert loser.returncode != 0, (name, err)
                assert any(m in err for m in REFUSED), (name, err)
                refused += 1
                if ran_a:
                    res = json.loads(out_a.read_text())
                    denied_sent += res["ok"]
                    a_eperm += res["refused"]
                    assert res == {"ok": 0, "refused": TRIES}, (name, res)
                    assert pa.returncode == 0, (name, err_a)
                else:
                    assert pb.returncode == 0, (name, err_b)
                mgr.reset(name)  # in-process: a CLI per round would double the time
    finally:
        stop.touch()
        recv.wait(timeout=30)
    received = json.loads(recv_out.read_text())
    assert received == 0, f"{received} datagrams to the denied {DENIED} arrived"
    assert wins["A"] + wins["B"] == rounds and refused == rounds
    return {
        "rounds": rounds,
        "wins_a": wins["A"],
        "wins_b": wins["B"],
        "refused": refused,
        "denied_sent": denied_sent,
        "denied_received": received,
        "eperm": a_eperm,
        # the soak table's columns
        "runs": 2 * rounds,
        "packets_sent": denied_sent + a_eperm,
        "packets_leaked": denied_sent + received,
    }


def test_same_name_race_without_daemon(inst: Installation) -> None:
    env = inst.environ({"IPACCTD_NO_DAEMON": "1"})
    figures = _race(inst, env, count(100, 500), "nd")
    report("same_name_race_without_daemon", **figures)
    assert inst.unit_names() == []


def test_same_name_race_through_daemon(denv) -> None:
    denv.start()
    inst: Installation = denv.inst
    figures = _race(inst, inst.env, count(100, 500), "dd")
    report("same_name_race_through_daemon", **figures)
    log = denv.log()
    assert "Traceback" not in log, log[-3000:]


def test_run_refuses_an_existing_inactive_name(inst: Installation) -> None:
    """systemd-run refuses a loaded unit: an inactive unit's counters are not wiped."""
    inst.ok("run", "--unit", "kept", "--", "true")
    before = inst.manager().store.read("kept")
    res = inst.cli("run", "--unit", "kept", "--", "true")
    assert res.returncode != 0
    assert "exists already" in res.stderr and "reset it first" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
    assert inst.manager().store.read("kept") == before  # nothing changed, nothing wiped
    inst.ok("reset", "kept")
    inst.ok("run", "--unit", "kept", "--", "true")


def test_reserved_name_survives_reset_and_stop(inst: Installation) -> None:
    """A unit created but whose command has not started yet is "activating": no reset,
    stop or run of another process takes its name or its programs away."""
    from ipacctd.errors import Busy
    from ipacctd.manager import owner

    mgr = inst.manager()
    unit = mgr.start_transient(
        [("IPAddressDeny", DENIED)], name="resv", command=["x"], owned_by=owner.me()
    )
    assert mgr.status("resv").active_state == "activating"
    res = inst.cli("reset", "resv", env={"IPACCTD_NO_DAEMON": "1"})
    assert res.returncode != 0 and "is activating" in res.stderr, res.stderr
    res = inst.cli("stop", "resv", env={"IPACCTD_NO_DAEMON": "1"})
    assert res.returncode == 0, res.stderr
    assert mgr.status("resv").active_state == "activating"  # still ours to start
    with pytest.raises(Busy):
        mgr.reset("resv")
    res = inst.cli("run", "--unit", "resv", "--", "true", env={"IPACCTD_NO_DAEMON": "1"})
    assert res.returncode != 0 and "is activating" in res.stderr, res.stderr
    st = mgr.status("resv")
    assert st.attached and st.policy_in_force  # its programs stayed on its cgroup
    mgr.record_exit("resv", 1, unit.owner)
    mgr.release_cgroup("resv", owned_by=unit.owner)
    assert mgr.status("resv").active_state == "failed"
    mgr.reset("resv")
    assert inst.unit_names() == []
