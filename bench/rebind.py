#!/usr/bin/env python3
"""Re-bind benchmark: the cost of re-attaching a unit to a cgroup made again at its path,
at 1 and 1,000 units, and the daemon's detection latency of a re-created cgroup.

For each size the script makes an isolated installation (state in a temporary directory,
pins under ``/sys/fs/bpf/ipacctd-bench-<id>``, an empty unit directory), makes one cgroup
per unit under ``/ipacctd-bench-<id>-ext`` and attaches a unit to each
(``Manager.attach`` with ``IPAddressDeny=198.51.100.1``: programs, links, counters map;
no process runs in them). Then, per repetition, for one unit in turn:

* ``rebind``: rmdir + mkdir of its cgroup (untimed), then ``Manager.rebind`` (lock,
  metadata read, programs taken from the severed links and attached to the new cgroup
  under temporary pins, renamed into place, cgroup id recorded) — wall time;
* ``noop``: ``Manager.rebind`` again (idempotent: the programs already run there, as
  after systemd attached them; the kernel is asked, nothing changes);
* ``check``: ``Manager.enforcement`` of one unit (the full check: its links, the cgroup's
  programs, the policy generation);
* ``daemon``: with ``python -m ipacctd daemon`` running (private ``dbus-daemon``, poll
  interval ``--poll-interval``), rmdir + mkdir of a unit's cgroup and the time until
  ``BPF_PROG_QUERY`` shows the unit's egress program on the new cgroup, polled every
  0.5 ms by this script (inotify on the cgroup's parent makes this independent of the
  poll interval); then the daemon's own CPU per poll cycle over a quiet window (the
  per-poll identity check of every unit is part of it).

Medians over the repetitions are printed (with p90 and min); everything made is removed at
the end (daemon and bus by PID, links, pins, cgroups, files), also after a failure or
Ctrl-C.

Run as root:  python3 bench/rebind.py [--units 1,1000] [--reps 30] [--poll-interval 1.0]
              [--window 10] [--out FILE]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # support.py: the test suites' helpers (stdlib only)

import logging  # noqa: E402

import isolated  # noqa: E402
from common import cpu_seconds, publish, start_daemon, wait_ready  # noqa: E402
from support import PrivateBus, free_port, stop_process  # noqa: E402

from ipacctd import cgroup  # noqa: E402
from ipacctd.bpf import bpffs  # noqa: E402
from ipacctd.bpf.links import open_cgroup, prog_query  # noqa: E402
from ipacctd.bpf.types import AttachType  # noqa: E402

DENY = ("IPAddressDeny", "198.51.100.1")


@dataclass
class Result:
    units: int
    create_s: float = 0.0
    rebind_ms: list[float] = field(default_factory=list)
    noop_ms: list[float] = field(default_factory=list)
    check_ms: list[float] = field(default_factory=list)
    detect_ms: list[float] = field(default_factory=list)
    poll_cpu_ms: float = 0.0
    notes: list[str] = field(default_factory=list)


class Installation(isolated.Installation):
    """An isolated installation with ``n`` attached units; removed completely by close."""

    def __init__(self) -> None:
        super().__init__(make_unit_dir=True)
        self.ext = f"/ipacctd-bench-{self.id}-ext"
        self.ext_fs = cgroup.fs_path(self.ext)
        self.extra_cgroups.append(self.ext_fs)
        self.names: list[str] = []

    def create(self, n: int) -> None:
        cgroup.create(self.ext_fs)
        for i in range(n):
            rel = f"{self.ext}/c{i:05d}"
            cgroup.create(cgroup.fs_path(rel))
            self.names.append(self.manager.attach(rel, [DENY], name=f"bench{i:05d}").name)
            if (i + 1) % 250 == 0:
                print(f"  {i + 1} units", file=sys.stderr, flush=True)

    def fs(self, name: str) -> str:
        return self.manager.cgroup_fs(self.manager.unit(name))


def recreate(fs: str) -> None:
    os.rmdir(fs)
    os.mkdir(fs)


def egress(fs: str) -> tuple[int, ...]:
    try:
        fd = open_cgroup(fs)
    except OSError:
        return ()
    try:
        return prog_query(fd, AttachType.CGROUP_INET_EGRESS).prog_ids
    finally:
        os.close(fd)


def timed_ms(fn) -> float:
    t = time.perf_counter()
    fn()
    return (time.perf_counter() - t) * 1000


def in_process(inst: Installation, res: Result, reps: int) -> None:
    mgr = inst.manager
    for i in range(reps):
        name = inst.names[i % len(inst.names)]
        fs = inst.fs(name)
        recreate(fs)
        res.rebind_ms.append(timed_ms(lambda n=name: mgr.rebind(n)))
        assert egress(fs), f"{name}: not attached after rebind"
        res.noop_ms.append(timed_ms(lambda n=name: mgr.rebind(n)))
        assert len(egress(fs)) == 1, f"{name}: a second copy attached"
        res.check_ms.append(timed_ms(lambda n=name: mgr.enforcement(n)))


def with_daemon(inst: Installation, res: Result, args: argparse.Namespace) -> None:
    bus = PrivateBus()
    daemon = None
    try:
        log_path = os.path.join(inst.tmp, "daemon.log")
        daemon = start_daemon(inst.env, log_path, bus.address, free_port(), args.poll_interval)
        wait_ready(daemon, bus.address, log_path, time.monotonic())
        time.sleep(max(2.0, 3 * args.poll_interval))  # settle
        for i in range(args.reps):
            name = inst.names[(i * 7) % len(inst.names)]
            fs = inst.fs(name)
            t = time.perf_counter()
            recreate(fs)
            limit = t + 30
            while not egress(fs):
                if time.perf_counter() > limit:
                    raise RuntimeError(f"{name}: not re-bound within 30 s")
                time.sleep(0.0005)
            res.detect_ms.append((time.perf_counter() - t) * 1000)
            time.sleep(0.05)
        cpu0, t0 = cpu_seconds(daemon.pid), time.monotonic()
        time.sleep(args.window)
        cpu, wall = cpu_seconds(daemon.pid) - cpu0, time.monotonic() - t0
        cycles = max(1.0, (wall - cpu) / args.poll_interval)
        res.poll_cpu_ms = cpu / cycles * 1000
    finally:
        if daemon is not None:
            stop_process(daemon)
        bus.close()


def stats(values: list[float]) -> str:
    if not values:
        return "-"
    v = sorted(values)
    p90 = v[min(len(v) - 1, round(0.9 * (len(v) - 1)))]
    return f"{statistics.median(v):8.2f} {p90:8.2f} {v[0]:8.2f}"


def report(results: list[Result], args: argparse.Namespace) -> str:
    head = (
        f"ipacctd re-bind benchmark — {time.strftime('%Y-%m-%d %H:%M:%S')}, kernel "
        f"{platform.release()}, {os.cpu_count()} CPUs, Python {platform.python_version()}\n"
        f"{args.reps} repetitions per case; each unit: an attached cgroup with "
        f"IPAddressDeny=198.51.100.1; daemon poll interval {args.poll_interval}s\n"
    )
    lines = [head, f"{'units':>6}  {'case':<34}  {'median ms':>8} {'p90':>8} {'min':>8}"]
    for r in results:
        for label, values in (
            ("rebind (Manager.rebind)", r.rebind_ms),
            ("rebind again, no-op (idempotent)", r.noop_ms),
            ("enforcement check of one unit", r.check_ms),
            ("daemon: mkdir -> programs attached", r.detect_ms),
        ):
            lines.append(f"{r.units:>6}  {label:<34}  {stats(values)}")
        lines.append(f"{r.units:>6}  {'daemon CPU per poll cycle':<34}  {r.poll_cpu_ms:8.2f}")
        lines.append(f"{r.units:>6}  {'creating the units (s)':<34}  {r.create_s:8.1f}")
        lines += [f"        note: {n}" for n in r.notes]
    lines.append("")
    lines.append(
        "rebind: wall time of one re-bind after rmdir+mkdir (lock, metadata, two links "
        "made and renamed into place, cgroup id recorded)."
    )
    lines.append(
        "daemon: rmdir+mkdir of a cgroup until BPF_PROG_QUERY shows the unit's egress "
        "program there (inotify on the parent; not a bound on the poll interval)."
    )
    lines.append(
        "The window between mkdir and re-bind is what systemd's own attachment "
        "(IPEgressFilterPath= drop-ins) or an armed parent closes: the daemon repairs, "
        "it is not the first line of defence."
    )
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--units", default="1,1000")
    p.add_argument("--reps", type=int, default=30)
    p.add_argument("--poll-interval", type=float, default=1.0)
    p.add_argument("--window", type=float, default=10.0)
    p.add_argument("--out")
    args = p.parse_args()
    if os.geteuid() != 0:
        print("run as root", file=sys.stderr)
        return 1
    bpffs.ensure_mounted()
    logging.disable(logging.WARNING)  # the engine logs each re-bind; the table says it all
    results = []
    for n in (int(x) for x in args.units.split(",")):
        inst = Installation()
        res = Result(n)
        try:
            print(f"{n} units: creating", file=sys.stderr, flush=True)
            t = time.monotonic()
            inst.create(n)
            res.create_s = time.monotonic() - t
            print(f"{n} units: in-process re-binds", file=sys.stderr, flush=True)
            in_process(inst, res, args.reps)
            print(f"{n} units: daemon", file=sys.stderr, flush=True)
            with_daemon(inst, res, args)
        finally:
            inst.close()
        results.append(res)
    publish(report(results, args), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
