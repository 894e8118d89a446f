#!/usr/bin/env python3
"""Glob binding benchmark: a unit file ``ControlGroup=<root>/gb-*.scope`` and N cgroups made
under it in batches while ``ipacctd daemon`` runs; the time until every one is bound, and the
daemon's D-Bus latency meanwhile.

For each N the script makes an isolated installation (state and unit files in a temporary
directory, pins under ``/sys/fs/bpf/ipacctd-bench-<id>``, cgroups under
``/ipacctd-bench-<id>``), writes the unit file (``IPAddressDeny=198.51.100.1``), starts a
private ``dbus-daemon`` and ``python -m ipacctd daemon``, then makes the cgroups
``gb-00000.scope`` ... in batches of ``--batch`` (no pause between batches). It records

* bound: seconds from the first mkdir until the installation holds a unit for every cgroup
  (metadata files counted every 50 ms by this script, without asking the daemon);
* D-Bus: ``org.freedesktop.DBus.Peer.Ping`` to the daemon every ~50 ms from the first
  mkdir until all are bound (one call at a time, each call's round trip): max, p99, median
  — a Ping is answered by the daemon's event loop, so a loop blocked by binding shows here;
* after: every cgroup's egress programs (``BPF_PROG_QUERY``): exactly one each (bound
  once, none left unbound or bound twice); and the daemon's RSS once all are bound.

Everything made is removed at the end (daemon and bus by PID, pins, cgroups, files), also
after a failure or Ctrl-C.

``--steps N``: instead, what the daemon does per unit, in this process (CPU time of this
thread, less sensitive to the load of a shared machine than the wall time above): N cgroups
made at once and bound in slices as the daemon binds them (the engine, a registry, D-Bus
signals on a private bus), each step timed; rounds alternate between the way the daemon
showed a new unit before (``read-back``: Registry.refresh reads its record and the kernel
again, its UnitNew sent at once) and now (``engine``: Registry.bound takes the unit
attach_many returned, the slice's UnitNew sent after it), each round on a fresh
installation.

``--floor N``: the kernel's part of binding a cgroup, beside the engine's whole binding, in
this process, rounds interleaved, each on a fresh installation with N cgroups: ``kernel``
makes for each cgroup what a bound unit holds in the kernel and nothing else (a pin
directory; the counters map and the denied-address log, pinned; the two programs from the
template the engine uses, loaded; two links, pinned; a 600-byte record file in the state
directory) — the bookkeeping around it (the record's contents, the registry, locks, path
checks) left out; ``engine``: ``Manager.attach_many`` for the same N, as the daemon calls
it. Wall, user and system ms a cgroup. What the kernel's part costs is the floor a binding
of that shape cannot go below, whatever the daemon's own code does.

Run as root:  python3 bench/globbind.py [--counts 1000,2000,5000] [--batch 100]
              [--timeout 900] [--out FILE]
              python3 bench/globbind.py --steps 2000 [--rounds 3]
              python3 bench/globbind.py --floor 1000 [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # support.py: the test suites' helpers (stdlib only)

import isolated  # noqa: E402
from common import BUS_NAME, publish, start_daemon, wait_ready  # noqa: E402
from support import PrivateBus, free_port, stop_process  # noqa: E402

from ipacctd import cgroup  # noqa: E402
from ipacctd.bpf import bpffs  # noqa: E402
from ipacctd.bpf.links import open_cgroup, prog_query  # noqa: E402
from ipacctd.bpf.types import AttachType  # noqa: E402


class Pinger(threading.Thread):
    """Peer.Ping round trips, one every ``interval`` s, until stopped."""

    def __init__(self, address: str, interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.address, self.interval = address, interval
        self.rtts: list[float] = []
        self.inflight: float | None = None  # perf_counter() when the call under way began
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as exc:  # reported by the caller
            self.error = exc

    async def _run(self) -> None:
        from dbus_fast import Message
        from dbus_fast.aio import MessageBus

        bus = await MessageBus(bus_address=self.address).connect()
        try:
            while not self.stop.is_set():
                t = self.inflight = time.perf_counter()
                await bus.call(
                    Message(
                        destination=BUS_NAME,
                        path="/org/ipacctd1",
                        interface="org.freedesktop.DBus.Peer",
                        member="Ping",
                    )
                )
                self.rtts.append((time.perf_counter() - t) * 1000)
                self.inflight = None
                await asyncio.sleep(self.interval)
        finally:
            bus.disconnect()


def units_recorded(state_dir: str) -> int:
    try:
        return sum(1 for e in os.listdir(os.path.join(state_dir, "units")) if e.endswith(".json"))
    except FileNotFoundError:
        return 0


def daemon_rss_mb(pid: int) -> float:
    """The daemon's resident memory (MB), from /proc/PID/status."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def egress_count(fs: str) -> int:
    fd = open_cgroup(fs)
    try:
        return len(prog_query(fd, AttachType.CGROUP_INET_EGRESS).prog_ids)
    finally:
        os.close(fd)


def run_one(n: int, args: argparse.Namespace) -> dict:
    inst = isolated.Installation(make_unit_dir=True)
    bus = PrivateBus()
    daemon = None
    made: list[str] = []
    try:
        cgroup.create(inst.root_fs)
        root = inst.config.cgroup_root
        Path(inst.config.unit_dir, "gb.service").write_text(
            f"[Match]\nControlGroup={root}/gb-*.scope\n\n[Service]\nIPAddressDeny=198.51.100.1\n"
        )
        log_path = os.path.join(inst.tmp, "daemon.log")
        daemon = start_daemon(inst.env, log_path, bus.address, free_port(), 1.0)
        wait_ready(daemon, bus.address, log_path, time.monotonic())
        time.sleep(1.0)
        pinger = Pinger(bus.address)
        pinger.start()
        t0 = time.monotonic()
        done_at = None
        deadline = t0 + args.timeout
        i = 0
        while time.monotonic() < deadline:
            if i < n:
                for _ in range(min(args.batch, n - i)):
                    fs = os.path.join(inst.root_fs, f"gb-{i:05d}.scope")
                    os.mkdir(fs)
                    made.append(fs)
                    i += 1
            if i == n and units_recorded(inst.config.state_dir) >= n:
                done_at = time.monotonic()
                break
            if daemon.poll() is not None:
                raise RuntimeError("daemon exited:\n" + Path(log_path).read_text())
            time.sleep(0.05)
        pinger.stop.set()
        stopped, inflight = time.perf_counter(), pinger.inflight
        rss = daemon_rss_mb(daemon.pid)
        if args.keep_log:
            Path(args.keep_log).write_text(Path(log_path).read_text())
        pinger.join(timeout=60)
        if pinger.error is not None:
            raise pinger.error
        if pinger.inflight is not None and inflight is not None:  # unanswered: a lower bound
            pinger.rtts.append((stopped - inflight) * 1000)
        counts = [egress_count(fs) for fs in made]
        rtts = sorted(pinger.rtts)
        res = {
            "n": n,
            "bound_s": None if done_at is None else done_at - t0,
            "recorded": units_recorded(inst.config.state_dir),
            "pings": len(rtts),
            "max": rtts[-1] if rtts else float("nan"),
            "p99": rtts[min(len(rtts) - 1, int(0.99 * len(rtts)))] if rtts else float("nan"),
            "median": statistics.median(rtts) if rtts else float("nan"),
            "once": sum(1 for c in counts if c == 1),
            "none": sum(1 for c in counts if c == 0),
            "twice": sum(1 for c in counts if c > 1),
            "rss": rss,
        }
        return res
    finally:
        if daemon is not None:
            stop_process(daemon)
        bus.close()
        inst.extra_cgroups.extend(reversed(made))
        inst.close()


def run_steps(n: int, mode: str) -> dict:
    """One round of ``--steps``: N cgroups bound in slices as the daemon binds them, the
    new unit shown by ``mode`` ("read-back" or "engine"); CPU seconds of each step."""
    from ipacctd.daemon.binder import Binder
    from ipacctd.daemon.bus import BusService
    from ipacctd.daemon.contract import open_bus
    from ipacctd.daemon.registry import Registry
    from ipacctd.daemon.service import BIND_SLICE

    inst = isolated.Installation(make_unit_dir=True)
    bus = PrivateBus()
    made: list[str] = []
    cpu = {"attach_many": 0.0, "view": 0.0, "signals": 0.0, "all": 0.0}

    def timed(key: str, fn):
        def call(*args, **kwargs):
            t = time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                cpu[key] += time.thread_time() - t

        return call

    async def bind() -> None:
        conn = await open_bus(bus.address)
        registry = Registry(inst.manager)
        try:
            service = BusService(conn, registry, "bench", 1.0, lambda: None)
            registry.listeners[-1] = timed("signals", service._on_registry)
            inst.manager.attach_many = timed("attach_many", inst.manager.attach_many)
            if mode == "engine":
                on_bound, hold = registry.bound, registry.held
            else:
                on_bound, hold = (lambda unit: registry.refresh(unit.name)), contextlib.nullcontext
            binder = Binder(
                inst.manager,
                lambda: [e.status.unit for e in registry.units.values()],
                timed("view", on_bound),
            )
            binder.load()
            t = time.thread_time()
            with hold():
                binder.reconcile(BIND_SLICE)
            while binder.busy:
                await asyncio.sleep(0)  # the loop between slices (the bus writer flushes)
                with hold():
                    binder.bind_pending(BIND_SLICE)
            cpu["all"] = time.thread_time() - t
            await asyncio.sleep(0.2)
            if len(registry.units) != n:
                raise RuntimeError(f"{len(registry.units)} units shown, {n} bound")
        finally:
            registry.close()
            conn.disconnect()

    try:
        cgroup.create(inst.root_fs)
        Path(inst.config.unit_dir, "gb.service").write_text(
            f"[Match]\nControlGroup={inst.config.cgroup_root}/gb-*.scope\n\n[Service]\n"
            "IPAddressDeny=198.51.100.1\n"
        )
        for i in range(n):
            made.append(os.path.join(inst.root_fs, f"gb-{i:05d}.scope"))
            os.mkdir(made[-1])
        asyncio.run(bind())
        if mode == "read-back":  # its signals were sent from inside the refresh
            cpu["view"] -= cpu["signals"]
        return {"mode": mode, **{k: v / n * 1000 for k, v in cpu.items()}}
    finally:
        bus.close()
        inst.extra_cgroups.extend(reversed(made))
        inst.close()


def run_floor(n: int, mode: str) -> dict:
    """One round of ``--floor``: N cgroups bound by ``mode`` ("kernel" or "engine"); wall,
    user and system ms a cgroup."""
    import ipaddress

    from ipacctd.bpf.links import CgroupLink
    from ipacctd.bpf.programs import Program
    from ipacctd.datapath import counters, denied, lookup
    from ipacctd.datapath import program as pm
    from ipacctd.datapath.rules import compile_rules
    from ipacctd.datapath.unit import ATTACH, LINK
    from ipacctd.policy.properties import Properties

    inst = isolated.Installation(make_unit_dir=True)
    made: list[str] = []
    try:
        cgroup.create(inst.root_fs)
        for i in range(n):
            made.append(os.path.join(inst.root_fs, f"gb-{i:05d}.scope"))
            os.mkdir(made[-1])
        deny = "198.51.100.1"
        t0, c0 = time.perf_counter(), os.times()
        if mode == "kernel":
            v4, v6 = compile_rules((), [ipaddress.ip_network(deny)])
            t4, t6 = lookup.build_table(v4), lookup.build_table(v6)
            os.makedirs(inst.config.state_dir)
            bpffs.make_dir(inst.config.bpf_dir)
            record = b" " * 600
            for i, fs in enumerate(made):
                pins = os.path.join(inst.config.bpf_dir, f"u{i}")
                os.mkdir(pins)
                cmap = counters.create_map()
                cmap.pin(os.path.join(pins, "counters"))
                log = denied.create_map()
                log.pin(os.path.join(pins, denied.PIN))
                cg = os.open(fs, os.O_RDONLY | os.O_DIRECTORY)
                for direction in counters.Direction:
                    shape = pm.Shape(direction, True, False, v4, v6, log_denied=True)
                    prog = Program.load(pm.bytecode(shape, cmap, t4, t6, log),
                                        attach_type=ATTACH[direction], name="x")
                    link = CgroupLink.create(cg, prog, ATTACH[direction])
                    link.pin(os.path.join(pins, LINK[direction]))
                    link.close()
                    prog.close()
                os.close(cg)
                cmap.close()
                log.close()
                fd = os.open(os.path.join(inst.config.state_dir, f"u{i}.json"),
                             os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                os.write(fd, record)
                os.close(fd)
        else:
            base = Properties.from_json({"IPAccounting": True, "IPAddressDeny": [deny]})
            reqs = [
                dict(cgroup_path=f"{inst.config.cgroup_root}/{os.path.basename(fs)}",
                     name=os.path.basename(fs), base=base, source=None, container=None)
                for fs in made
            ]
            done = 0
            while done < n:  # in slices, as the daemon binds
                out = inst.manager.attach_many(iter(reqs[done:]), budget=0.04)
                bad = [o for o in out if not hasattr(o, "name")]
                if bad:
                    raise RuntimeError(f"attach_many: {bad[0]!r}")
                done += len(out)
        t1, c1 = time.perf_counter(), os.times()
        return {"mode": mode, "wall": (t1 - t0) / n * 1e3,
                "user": (c1.user - c0.user) / n * 1e3, "sys": (c1.system - c0.system) / n * 1e3}
    finally:
        inst.extra_cgroups.extend(reversed(made))
        inst.close()


def _heading(what: str) -> str:
    """The first line of an in-process report: what, when, on what."""
    return (
        f"ipacctd glob binding, {what} — {time.strftime('%Y-%m-%d %H:%M:%S')}, kernel "
        f"{platform.release()}, {os.cpu_count()} CPUs, load average "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )


def floor_report(n: int, rounds: list[dict]) -> str:
    lines = [
        _heading(f"the kernel's part (--floor {n})"),
        "ms a cgroup, in this process: kernel = maps, pins, two program loads, two links, a "
        "record file; engine = Manager.attach_many (IPAddressDeny=198.51.100.1)",
        "",
        f"{'mode':>7} {'wall':>7} {'user':>7} {'sys':>7}",
    ]
    for r in rounds:
        lines.append(f"{r['mode']:>7} {r['wall']:>7.3f} {r['user']:>7.3f} {r['sys']:>7.3f}")
    med = {m: statistics.median(r["wall"] for r in rounds if r["mode"] == m)
           for m in ("kernel", "engine") if any(r["mode"] == m for r in rounds)}
    if len(med) == 2:
        lines.append(
            f"median wall: kernel {med['kernel']:.3f}, engine {med['engine']:.3f} ms a cgroup "
            f"(the kernel's part {med['kernel'] / med['engine']:.0%} of the engine's); "
            f"10,000 cgroups: >= {med['kernel'] * 10:.1f} s of kernel work"
        )
    return "\n".join(lines)


def steps_report(n: int, rounds: list[dict]) -> str:
    lines = [
        _heading(f"per unit in-process (--steps {n})"),
        "CPU ms a unit (this thread): attach_many (the engine), the registry's view of the new "
        "unit (its signals apart), its D-Bus signals, and the whole binding (slices, view, "
        "signals, the rest)",
        "",
        f"{'mode':>10} {'attach_many':>12} {'view':>8} {'signals':>8} {'all':>8}",
    ]
    for r in rounds:
        lines.append(
            f"{r['mode']:>10} {r['attach_many']:>12.3f} {r['view']:>8.3f} {r['signals']:>8.3f} "
            f"{r['all']:>8.3f}"
        )
    for mode in ("read-back", "engine"):
        mine = [r for r in rounds if r["mode"] == mode]
        if mine:
            med = {k: statistics.median(r[k] for r in mine) for k in ("view", "signals", "all")}
            lines.append(
                f"{mode:>10} median: view {med['view']:.3f}, signals {med['signals']:.3f}, "
                f"view + signals {med['view'] + med['signals']:.3f}, all {med['all']:.3f}"
            )
    return "\n".join(lines)


def report(results: list[dict], args: argparse.Namespace) -> str:
    lines = [
        f"ipacctd glob binding benchmark — {time.strftime('%Y-%m-%d %H:%M:%S')}, kernel "
        f"{platform.release()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        f"one unit file ControlGroup=<root>/gb-*.scope, IPAddressDeny=198.51.100.1; cgroups "
        f"made in batches of {args.batch}; Peer.Ping every 50 ms meanwhile",
        "",
        f"{'N':>6} {'bound s':>8} {'units':>6} {'pings':>6} {'ping max ms':>11} "
        f"{'p99':>8} {'median':>8} {'1 prog':>7} {'0 prog':>7} {'2+ prog':>7} {'RSS MB':>7}",
    ]
    for r in results:
        b = "timeout" if r["bound_s"] is None else f"{r['bound_s']:.1f}"
        lines.append(
            f"{r['n']:>6} {b:>8} {r['recorded']:>6} {r['pings']:>6} {r['max']:>11.1f} "
            f"{r['p99']:>8.1f} {r['median']:>8.1f} {r['once']:>7} {r['none']:>7} "
            f"{r['twice']:>7} {r['rss']:>7.0f}"
        )
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--counts", default="1000,2000,5000")
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--timeout", type=float, default=900)
    p.add_argument("--out")
    p.add_argument("--keep-log", help="copy the daemon's log here (the last N's)")
    p.add_argument("--steps", type=int, help="per-unit CPU of each step, in-process (N units)")
    p.add_argument("--floor", type=int, help="the kernel's part beside the engine (N cgroups)")
    p.add_argument("--rounds", type=int, default=3, help="--steps/--floor: rounds of each mode")
    args = p.parse_args()
    if os.geteuid() != 0:
        print("run as root", file=sys.stderr)
        return 1
    bpffs.ensure_mounted()
    for n, modes, run, report_of in (
        (args.floor, ("kernel", "engine"), run_floor, floor_report),
        (args.steps, ("read-back", "engine"), run_steps, steps_report),
    ):
        if n:
            rounds = []
            for _ in range(args.rounds):
                for mode in modes:  # interleaved
                    rounds.append(run(n, mode))
                    print(report_of(n, rounds[-1:]).splitlines()[4], file=sys.stderr)
            publish(report_of(n, rounds), args.out)
            return 0
    results = []
    for n in (int(x) for x in args.counts.split(",")):
        print(f"N={n}", file=sys.stderr, flush=True)
        results.append(run_one(n, args))
        print(report(results[-1:], args).splitlines()[-1], file=sys.stderr, flush=True)
    publish(report(results, args), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
