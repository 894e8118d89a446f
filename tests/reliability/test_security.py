"""Security: non-root callers cannot change units over D-Bus; /metrics listens on localhost
by default; state files and pins are root-only and written atomically; a long-lived engine
process keeps its fds and memory flat over many unit create/remove cycles."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time

import pytest
from e2e_helpers import PY, REPO, Installation
from rel import bpf_fds, count, fd_count, meta_bytes, prog_ids, report, rss_kb
from support import wait_for

pytestmark = pytest.mark.kernel

D = "198.51.100.2"
DENY_D = ["IPAddressDeny", "a(iayu)", "1", "2", "4", "198", "51", "100", "2", "32"]


def test_non_root_mutations_refused(denv) -> None:
    inst: Installation = denv.inst
    denv.start()
    c = denv.client
    from dbus_fast import Variant

    c.manager(
        "StartTransientUnit",
        "sa(sv)",
        "sec.service",
        [["IPAddressDeny", Variant("a(iayu)", [[2, bytes([198, 51, 100, 2]), 32]])]],
    )
    unit_path = c.manager("GetUnit", "s", "sec.service")[0]
    cg = inst.make_cgroup(f"{inst.cgroup_root}-other")
    m = ["/org/ipacctd1", "org.ipacctd1.Manager"]
    calls = [
        [*m, "StartTransientUnit", "sa(sv)", "evil.service", "1", *DENY_D],
        [*m, "AttachUnit", "ssa(sv)", cg[len(inst.mount) :], "evil", "0"],
        [
            *m,
            "SetUnitProperties",
            "sba(sv)",
            "sec.service",
            "true",
            "1",
            "IPAddressDeny",
            "a(iayu)",
            "0",
        ],
        [*m, "StopUnit", "ss", "sec.service", "replace"],
        [*m, "ResetUnit", "s", "sec.service"],
        [*m, "DetachUnit", "s", "sec.service"],
        [*m, "Reload"],
        [unit_path, "org.ipacctd1.Unit", "Stop"],
        [unit_path, "org.ipacctd1.Unit", "Reset"],
        [
            unit_path,
            "org.ipacctd1.Unit",
            "SetProperties",
            "ba(sv)",
            "true",
            "1",
            "IPAddressDeny",
            "a(iayu)",
            "0",
        ],
    ]
    meta = meta_bytes(inst.state_dir, "sec.service")
    progs = prog_ids(inst.bpf_dir, "sec.service")
    assert progs
    for call in calls:
        res = denv.tool(
            ["busctl", f"--address={denv.address}", "call", "org.ipacctd1", *call], as_nobody=True
        )
        assert res.returncode != 0, (call, res.stdout)
        assert "only root may" in res.stderr or "Access denied" in res.stderr, (call, res.stderr)
    # root may (the same call works), and nothing changed meanwhile
    assert meta_bytes(inst.state_dir, "sec.service") == meta
    assert prog_ids(inst.bpf_dir, "sec.service") == progs
    assert inst.unit_names() == ["sec.service"]
    res = denv.tool(["busctl", f"--address={denv.address}", "call", "org.ipacctd1", *calls[4]])
    assert res.returncode == 0, res.stderr
    report("security_dbus", inputs_tried=len(calls), inputs_refused=len(calls))


def _listeners(pid: int) -> list[tuple[str, int]]:
    """(local address hex, port) of the TCP sockets in LISTEN state that ``pid`` holds."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    out = []
    for table in ("tcp", "tcp6"):
        with open(f"/proc/{pid}/net/{table}") as f:
            for line in f.readlines()[1:]:
                w = line.split()
                if w[3] == "0A" and w[9] in inodes:
                    addr, port = w[1].split(":")
                    out.append((addr, int(port, 16)))
    return out


def test_metrics_binds_localhost_by_default(denv, tmp_path) -> None:
    from ipacctd.daemon.config import DEFAULT_PORT, DaemonConfig

    assert DaemonConfig().listen_address == ("127.0.0.1", DEFAULT_PORT)
    empty = tmp_path / "empty.conf"
    empty.write_text("[daemon]\n")
    assert DaemonConfig.load(str(empty)).listen_address == ("127.0.0.1", DEFAULT_PORT)
    assert DaemonConfig.load(str(empty), listen=":9999").listen_address == ("127.0.0.1", 9999)
    # The real daemon with no listen setting at all, in a network namespace of its own
    # (so the default port cannot clash with anything): it listens on 127.0.0.1 only.
    if "path=" not in denv.address:
        pytest.skip("the private bus is an abstract socket: not reachable from another netns")
    ns = denv.inst.netns([])
    cfg = tmp_path / "d.conf"
    cfg.write_text(f'[daemon]\nbus = "{denv.address}"\npoll_interval = 0.2\n')
    proc = ns.popen(
        [PY, "-m", "ipacctd", "daemon", "--config", str(cfg)],
        env=denv.inst.env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        found = wait_for(lambda: _listeners(proc.pid), 20, "the daemon's /metrics socket")
        assert found == [("0100007F", DEFAULT_PORT)], found
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _mode(path: str) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_state_files_and_pins_root_only(inst: Installation) -> None:
    run = subprocess.Popen(
        inst.argv("run", "--unit", "m1", "-p", f"IPAddressDeny={D}", "--", "sleep", "60"),
        env=inst.env,
        cwd=REPO,
    )
    wait_for(lambda: inst.cli("status", "m1.service").returncode == 0, 20, "the unit")
    inst.ok("set-property", "m1.service", "IPAddressAllow=198.51.100.9")
    units = os.path.join(inst.state_dir, "units")
    assert _mode(units) == 0o700
    assert _mode(os.path.join(inst.state_dir, "lock")) == 0o600
    names = os.listdir(units)
    assert names == ["m1.service.json"], names  # no temporary file left behind
    assert _mode(os.path.join(units, names[0])) == 0o600
    assert all(os.lstat(os.path.join(units, n)).st_uid == 0 for n in names)
    pins = os.path.join(inst.bpf_dir, "units")
    for d in (inst.bpf_dir, pins, *(os.path.join(pins, p) for p in os.listdir(pins))):
        assert _mode(d) == 0o700, d
    for p in os.listdir(pins):
        for f in os.listdir(os.path.join(pins, p)):
            assert _mode(os.path.join(pins, p, f)) == 0o600, f
    inst.ok("stop", "m1.service")
    run.wait(timeout=20)
    # an inactive unit's policy cannot change: one clear line, nothing changed
    meta = meta_bytes(inst.state_dir, "m1.service")
    res = inst.cli("set-property", "m1.service", "IPAddressAllow=198.51.100.8")
    assert res.returncode == 2 and "is inactive" in res.stderr, res.stderr
    assert meta_bytes(inst.state_dir, "m1.service") == meta
    inst.ok("reset", "m1.service")


ENGINE_CYCLES = r"""
import json, os, sys, gc
from ipacctd.manager.engine import Manager
n = int(sys.argv[1])
mgr = Manager()
def fds(): return len(os.listdir("/proc/self/fd"))
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"): return int(line.split()[1])
marks = {}
for i in range(n):
    u = mgr.start_transient([("IPAddressDeny", "198.51.100.2 2001:db8::2")], name=f"fd{i % 7}")
    mgr.set_properties(u.name, [("IPAddressAllow", "198.51.100.3")])
    mgr.status(u.name)
    mgr.counters(u.name)
    mgr.reset(u.name)
    if i + 1 in (n // 5, n):
        gc.collect()
        marks[i + 1] = {"fds": fds(), "rss": rss()}
print(json.dumps(marks))
"""


def test_engine_fds_and_memory_flat(inst: Installation) -> None:
    n = count(200, 1000)
    res = subprocess.run(
        [PY, "-c", ENGINE_CYCLES, str(n)],
        env=inst.env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    import json

    marks = {int(k): v for k, v in json.loads(res.stdout).items()}
    warm, end = marks[n // 5], marks[n]
    assert end["fds"] == warm["fds"], marks
    assert end["rss"] - warm["rss"] < 2048, marks  # KiB
    assert inst.unit_names() == [] and inst.pin_dirs() == []
    report(
        "leaks_engine",
        runs=n,
        fd_growth=end["fds"] - warm["fds"],
        rss_growth_kib=end["rss"] - warm["rss"],
    )


def test_daemon_fds_and_memory_flat(denv) -> None:
    from dbus_fast import Variant

    n = count(200, 1000)
    inst: Installation = denv.inst
    denv.start()
    c = denv.client
    pid = denv.proc.pid
    deny = [["IPAddressDeny", Variant("a(iayu)", [[2, bytes([198, 51, 100, 2]), 32]])]]
    marks = {}
    for i in range(n):
        name = f"dfd{i % 5}.service"
        c.manager("StartTransientUnit", "sa(sv)", name, deny)
        c.manager(
            "SetUnitProperties",
            "sba(sv)",
            name,
            True,
            [["IPAddressAllow", Variant("a(iayu)", [[2, bytes([198, 51, 100, 3]), 32]])]],
        )
        c.props(name)
        if i % 10 == 0:
            denv.scrape_text()
        c.manager("ResetUnit", "s", name)
        if i + 1 in (n // 5, n):
            wait_for(lambda: not c.units(), 10, "the registry to forget the units")
            time.sleep(0.5)  # a poll cycle or two
            marks[i + 1] = {"fds": fd_count(pid), "rss": rss_kb(pid), "bpf": bpf_fds(pid)}
    warm, end = marks[n // 5], marks[n]
    assert end["fds"] == warm["fds"] and end["bpf"] == warm["bpf"], marks
    # with no unit left, no map or link fd stays open; the one program is the metrics'
    # run-time-stats probe (``ipacctd_probe``, held for the daemon's life)
    assert not [k for k in end["bpf"] if "map" in k or "link" in k], marks
    assert end["bpf"].count("anon_inode:bpf-prog") <= 1, marks
    assert end["rss"] - warm["rss"] < 3072, marks
    assert inst.unit_names() == [] and inst.pin_dirs() == []
    report(
        "leaks_daemon",
        runs=n,
        fd_growth=end["fds"] - warm["fds"],
        rss_growth_kib=end["rss"] - warm["rss"],
        bpf_fds_left=len(end["bpf"]),
    )


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__]))
