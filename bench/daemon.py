#!/usr/bin/env python3
"""Daemon benchmark: CPU per poll cycle, /metrics scrape latency, D-Bus latency and RSS
of ``ipacctd daemon`` serving 1,000 and 10,000 units.

For each size the script makes an isolated installation (state in a temporary directory,
pins under ``/sys/fs/bpf/ipacctd-bench-<id>``, cgroups under ``/ipacctd-bench-<id>``),
creates the units with the engine directly (``Manager.start_transient``: a cgroup,
programs with ``IPAddressDeny=198.51.100.1`` and a counters map each; no process runs in
them), starts a private ``dbus-daemon`` and ``python -m ipacctd daemon`` against them,
then measures

* poll CPU: the daemon's own utime+stime (``/proc/<pid>/stat``) over a window without
  any client, divided by the poll cycles in that window. A cycle's wall time is its CPU
  time (the loop is single-threaded and CPU-bound), so cycles = (window - CPU) / interval;
  every STATE_EVERY-th cycle also re-checks active states and runs the GC, so this is the
  average over both kinds of cycle;
* the same split in-process: ``Daemon.poll`` timed with ``time.process_time`` for a
  counters-only cycle and for a state cycle (median of several);
* ``/metrics`` scrape latency over HTTP (median), also while BPF run-time statistics are
  on (then every unit's program statistics are read too), D-Bus ``Properties.GetAll`` on a unit
  object and ``Manager.GetCounters`` (median), and the daemon's VmRSS;
* changes through the daemon, as root's CLI makes them while it runs: ``ipacctd run -q --
  true`` (``StartTransientUnit``, a job; the unit reset afterwards, outside the timing) and
  ``ipacctd set-property UNIT Description=...`` (``SetUnitProperties``), wall (median).

Everything it made is removed at the end (daemon and bus by PID, pins, cgroups, files),
also after a failure or Ctrl-C.

Run as root:  python3 bench/daemon.py [--units 1000,10000] [--poll-interval 0.2]
              [--window 10] [--max-create-seconds 300] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import os
import pstats
import statistics
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # support.py: the test suites' helpers (stdlib only)

import isolated  # noqa: E402
from common import BUS_NAME, cpu_seconds, start_daemon, wait_ready  # noqa: E402
from support import PrivateBus, free_port, stop_process  # noqa: E402

from ipacctd.bpf import bpffs  # noqa: E402
from ipacctd.daemon.config import DaemonConfig  # noqa: E402
from ipacctd.daemon.service import STATE_EVERY, Daemon  # noqa: E402

UNIT_IFACE = "org.ipacctd1.Unit"
TARGETS_1K = {"poll_ms": 20.0, "scrape_ms": 100.0, "rss_mb": 80.0}


@dataclass
class Result:
    units: int
    create_s: float = 0.0
    start_s: float = 0.0
    start_cpu_s: float = 0.0  # the daemon's CPU when ready (interpreter and imports included)
    poll_ms: float = 0.0  # daemon process CPU per cycle (external)
    cycles: float = 0.0
    counters_ms: float = 0.0  # in-process, counters-only cycle
    states_ms: float = 0.0  # in-process, state + GC cycle
    scrape_ms: float = 0.0
    scrape_kb: float = 0.0
    scrape_cpu_ms: float = 0.0  # daemon CPU per scrape (includes the polls meanwhile)
    scrape_stats_ms: float = 0.0  # with BPF run-time stats on
    getall_ms: float = 0.0
    getcounters_ms: float = 0.0
    getcounters_client_ms: float = 0.0  # of which the client's unmarshalling of the reply
    getcounters_daemon_ms: float = 0.0  # the daemon's handler + marshalling, in-process CPU
    getcounters_busctl_ms: float = 0.0  # `busctl call GetCounters` (sd-bus, C), wall
    getcounters_busctl_q_ms: float = 0.0  # the same with -q: received, not printed
    ping_busctl_ms: float = 0.0  # `busctl call ... Peer.Ping`: busctl's own start and connect
    gzip_cpu_ms: float = 0.0  # daemon CPU per scrape with Accept-Encoding: gzip
    om_cpu_ms: float = 0.0  # daemon CPU per OpenMetrics scrape
    scrape_inproc_ms: float = 0.0  # metrics.exposition in-process (process_time, median)
    list_units_s: float = 0.0  # `ipacctd list-units --all`, root (reads the kernel itself)
    status_s: float = 0.0  # `ipacctd status UNIT`, root
    list_units_daemon_s: float = 0.0  # DescribeUnits of all units (a user's list-units)
    status_daemon_s: float = 0.0
    describe_cpu_s: float = 0.0  # the daemon's CPU for DescribeUnits of all units
    rss_mb: float = 0.0
    peak_mb: float = 0.0  # VmHWM at the end (after list-units / DescribeUnits of all units)
    peak_pre_mb: float = 0.0  # VmHWM before them (start-up, scrapes, GetCounters)
    run_daemon_ms: float = 0.0  # `ipacctd run -q -- true` through the daemon, wall
    set_property_ms: float = 0.0  # `ipacctd set-property UNIT Description=x` through it
    notes: list[str] = field(default_factory=list)


class Installation(isolated.Installation):
    """An isolated ipacctd installation that this script removes completely."""

    def create(self, n: int, deadline: float) -> int:
        """Create up to ``n`` units before ``deadline`` (monotonic); return how many."""
        for i in range(n):
            if time.monotonic() > deadline:
                return i
            self.manager.start_transient([("IPAddressDeny", "198.51.100.1")], name=f"bench{i:05d}")
            if (i + 1) % 1000 == 0:
                print(f"  {i + 1} units", file=sys.stderr, flush=True)
        return n


def vm_kb(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def scrape(port: int, **headers: str) -> bytes:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", headers=headers)
    with urllib.request.urlopen(req, timeout=60) as r:
        return r.read()


def scrape_cpu(pid: int, port: int, n: int, **headers: str) -> float:
    """The daemon's CPU seconds per scrape over ``n`` scrapes with these headers."""
    c0 = cpu_seconds(pid)
    for _ in range(n):
        scrape(port, **headers)
    return (cpu_seconds(pid) - c0) / n


def cli_seconds(env: dict[str, str], argv: list[str], runs: int) -> float:
    """Median wall seconds of ``python -m ipacctd ARGV`` (exit 0, or 3: an inactive unit's
    ``status``, as systemctl)."""
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        res = subprocess.run(
            [sys.executable, "-m", "ipacctd", *argv],
            env=env,
            cwd=str(ROOT),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            check=False,
            timeout=300,
        )
        times.append(time.perf_counter() - t)
        if res.returncode not in (0, 3):
            raise subprocess.CalledProcessError(res.returncode, argv, stderr=res.stderr)
    return statistics.median(times)


def changes_ms(env: dict[str, str], runs: int) -> tuple[float, float]:
    """Median wall ms of ``ipacctd run -q -- true`` and of ``ipacctd set-property`` through
    the daemon (root's CLI with the daemon on its system bus); each run's unit is reset
    afterwards (through the daemon too), outside the timing."""
    runs_ms, props_ms = [], []
    for i in range(runs):
        before = set(os.listdir(os.path.join(env["IPACCTD_STATE_DIR"], "units")))
        runs_ms.append(cli_seconds(env, ["run", "-q", "--", "true"], 1) * 1e3)
        made = sorted(
            f[:-5]
            for f in set(os.listdir(os.path.join(env["IPACCTD_STATE_DIR"], "units"))) - before
            if f.endswith(".json")
        )
        if made:
            cli_seconds(env, ["reset", *made], 1)
        props_ms.append(
            cli_seconds(env, ["set-property", "bench00001.service", f"Description=x{i}"], 1) * 1e3
        )
    return statistics.median(runs_ms), statistics.median(props_ms)


def unmarshal_seconds(reply) -> float:
    """Median seconds this process takes to unmarshal ``reply`` (a dbus-fast Message) as
    its bus connection did when it arrived: the client's share of a call's wall time."""
    import io

    from dbus_fast._private.unmarshaller import Unmarshaller

    data = reply._marshall(False)
    times = []
    for _ in range(3):
        t = time.perf_counter()
        Unmarshaller(io.BytesIO(data)).unmarshall()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def busctl_seconds(address: str, runs: int) -> tuple[float, float, float]:
    """Median wall seconds of ``busctl`` (sd-bus: a C client) calling GetCounters and
    printing the reply as JSON (``--json=short``, into a pipe nobody reads), the same call
    with ``-q`` (the reply received, not printed) and a Peer.Ping to the daemon (busctl's
    own start, connection and one round trip)."""
    base = ["busctl", f"--address={address}", "--json=short", "call"]
    counters = [BUS_NAME, "/org/ipacctd1", "org.ipacctd1.Manager", "GetCounters"]
    ping = [BUS_NAME, "/org/ipacctd1", "org.freedesktop.DBus.Peer", "Ping"]
    out = []
    for argv in ([*base, *counters], [*base, "-q", *counters], [*base, *ping]):
        times = []
        for _ in range(runs):
            t = time.perf_counter()
            subprocess.run(argv, stdout=subprocess.DEVNULL, check=True, timeout=60)
            times.append(time.perf_counter() - t)
        out.append(statistics.median(times))
    return out[0], out[1], out[2]


async def dbus_latency(address: str, unit_path: str, runs: int) -> tuple[float, float, float]:
    """Median seconds of GetAll on a unit object and of GetCounters, and of unmarshalling a
    GetCounters reply in this process."""
    from dbus_fast import Message, MessageType
    from dbus_fast.aio import MessageBus

    bus = await MessageBus(bus_address=address).connect()
    try:
        last = []

        async def timed(msg_args: dict, n: int) -> float:
            times = []
            for _ in range(n):
                t = time.perf_counter()
                reply = await asyncio.wait_for(bus.call(Message(**msg_args)), 60)
                times.append(time.perf_counter() - t)
                assert reply.message_type == MessageType.METHOD_RETURN, reply.body
            last[:] = [reply]
            return statistics.median(times)

        getall = await timed(
            dict(
                destination=BUS_NAME,
                path=unit_path,
                interface="org.freedesktop.DBus.Properties",
                member="GetAll",
                signature="s",
                body=[UNIT_IFACE],
            ),
            runs,
        )
        counters = await timed(
            dict(
                destination=BUS_NAME,
                path="/org/ipacctd1",
                interface="org.ipacctd1.Manager",
                member="GetCounters",
            ),
            max(3, runs // 5),
        )
        return getall, counters, unmarshal_seconds(last[0])
    finally:
        bus.disconnect()


async def describe_latency(address: str, unit: str, pid: int) -> tuple[float, float, float]:
    """Wall seconds of the daemon's ``DescribeUnits`` for all units (once) and for one
    (median of 3): what ``list-units`` and ``status`` call for a user who cannot read the
    state (``cli/remote.py``); and the daemon's CPU seconds for the call of all units."""
    from dbus_fast import Message, MessageType
    from dbus_fast.aio import MessageBus

    bus = await MessageBus(bus_address=address).connect()
    try:
        times, cpu = [], 0.0
        for names in ([], [unit], [unit], [unit]):
            c0 = cpu_seconds(pid)
            t = time.perf_counter()
            msg = Message(
                destination=BUS_NAME,
                path="/org/ipacctd1",
                interface="org.ipacctd1.Manager",
                member="DescribeUnits",
                signature="asu",
                body=[names, 5],
            )
            reply = await asyncio.wait_for(bus.call(msg), 300)
            assert reply.message_type == MessageType.METHOD_RETURN, reply.body
            times.append(time.perf_counter() - t)
            cpu = cpu or cpu_seconds(pid) - c0
        return times[0], statistics.median(times[1:]), cpu
    finally:
        bus.disconnect()


def getcounters_cpu(d: Daemon) -> float:
    """Median CPU seconds of the daemon's GetCounters in this process: its message
    handler and the reply's marshalling (what the daemon's connection writes), without the
    bus; the counters as the last poll read them."""
    from dbus_fast import Message

    from ipacctd.daemon.bus import BusService

    class Recorder:
        def add_message_handler(self, handler) -> None:
            pass

        def send(self, msg: Message) -> None:
            msg.serial = 1
            msg._marshall(False)

    bus = Recorder()
    service = BusService(bus, d.registry, "bench", 0.2, lambda: None)
    call = Message(
        destination=BUS_NAME,
        path="/org/ipacctd1",
        interface="org.ipacctd1.Manager",
        member="GetCounters",
        serial=5,
    )
    call.sender = ":1.1"
    times = []
    for _ in range(7):
        t = time.process_time()
        out = service._handle(call)
        if type(out) is Message:  # an older tree's daemon returned it to dbus-fast
            bus.send(out)
        times.append(time.process_time() - t)
    return statistics.median(times[1:])  # the first one makes the rows


def in_process(inst: Installation, res: Result, profile: bool) -> None:
    """Time Daemon.poll in this process (no bus, no HTTP): counters-only and state cycles."""
    d = Daemon(DaemonConfig(paths=inst.config, bus="unused", listen=""))
    try:
        d.registry.sync()
        d.poll(1)  # opens and caches the map fds
        counters = []
        for cycle in range(1, 8):
            t = time.process_time()
            d.poll(cycle if cycle % STATE_EVERY else cycle + 1)
            counters.append(time.process_time() - t)
        states = []
        for _ in range(5):
            t = time.process_time()
            d.poll(STATE_EVERY)
            states.append(time.process_time() - t)
        res.counters_ms = statistics.median(counters) * 1e3
        res.states_ms = statistics.median(states) * 1e3
        from ipacctd.daemon import metrics

        units, prom = metrics.UnitCollector(d.registry), metrics.make_registry()
        scrapes = []
        for _ in range(5):
            t = time.process_time()
            b"".join(metrics.exposition(units, prom, None)[1])  # made as taken: take all
            scrapes.append(time.process_time() - t)
        res.scrape_inproc_ms = statistics.median(scrapes) * 1e3
        res.getcounters_daemon_ms = getcounters_cpu(d) * 1e3
        if profile:
            runs = (
                ("counters-only cycle", d.poll, (1,)),
                ("state cycle", d.poll, (STATE_EVERY,)),
                ("scrape", lambda: b"".join(metrics.exposition(units, prom, None)[1]), ()),
            )
            for label, fn, fn_args in runs:
                prof = cProfile.Profile()
                prof.runcall(fn, *fn_args)
                out = io.StringIO()
                pstats.Stats(prof, stream=out).sort_stats("cumulative").print_stats(18)
                print(
                    f"--- cProfile of {label}, {res.units} units ---\n{out.getvalue()}",
                    file=sys.stderr,
                )
    finally:
        d.registry.close()


def bench(n: int, args: argparse.Namespace) -> Result:
    res = Result(n)
    inst = Installation()
    bus = daemon = None
    try:
        print(f"{n} units: creating", file=sys.stderr, flush=True)
        t = time.monotonic()
        made = inst.create(n, t + args.max_create_seconds)
        res.create_s = time.monotonic() - t
        if made < n:
            res.notes.append(
                f"creation stopped after {args.max_create_seconds:.0f}s at {made} units"
            )
            res.units = made
        bus = PrivateBus()
        port = free_port()
        log_path = os.path.join(inst.tmp, "daemon.log")
        t = time.monotonic()
        daemon = start_daemon(inst.env, log_path, bus.address, port, args.poll_interval)
        wait_ready(daemon, bus.address, log_path, t, then=lambda: scrape(port))
        res.start_s = time.monotonic() - t
        res.start_cpu_s = cpu_seconds(daemon.pid)

        time.sleep(max(2.0, 3 * args.poll_interval))  # settle: fds opened, first GC round
        c0, w0 = cpu_seconds(daemon.pid), time.monotonic()
        time.sleep(args.window)
        c1, w1 = cpu_seconds(daemon.pid), time.monotonic()
        cpu, wall = c1 - c0, w1 - w0
        res.cycles = max(1.0, (wall - cpu) / args.poll_interval)
        res.poll_ms = cpu / res.cycles * 1e3

        from ipacctd.bpf.stats import enabled_stats
        from ipacctd.manager.stats import StatsProbe

        probe = StatsProbe()
        probe.on()
        for _ in range(2):  # warm-up (first-scrape costs: the stats probe program, imports)
            scrape(port)
        times, size, stats_on = [], 0, 0
        c0 = cpu_seconds(daemon.pid)
        for _ in range(args.scrapes):
            stats_on += probe.on()
            t = time.perf_counter()
            size = len(scrape(port))
            times.append(time.perf_counter() - t)
        res.scrape_cpu_ms = (cpu_seconds(daemon.pid) - c0) / args.scrapes * 1e3
        res.scrape_ms = statistics.median(times) * 1e3
        res.scrape_kb = size / 1024
        if stats_on or probe.on():
            res.notes.append(
                "BPF run-time stats were on (kernel.bpf_stats_enabled or another "
                "process's BPF_ENABLE_STATS fd) during the 'scrape ms' runs, so "
                "they include reading every unit's program stats"
            )
        times = []
        with enabled_stats():  # as while `ipacctd top` runs: program stats exported too
            for _ in range(args.scrapes):
                t = time.perf_counter()
                scrape(port)
                times.append(time.perf_counter() - t)
        res.scrape_stats_ms = statistics.median(times) * 1e3

        from ipacctd.daemon.bus import unit_path

        getall, getcounters, client = asyncio.run(
            dbus_latency(bus.address, unit_path("bench00000.service"), args.dbus_runs)
        )
        res.getall_ms, res.getcounters_ms = getall * 1e3, getcounters * 1e3
        res.getcounters_client_ms = client * 1e3
        try:
            c_client, quiet, ping = busctl_seconds(bus.address, 5)
            res.getcounters_busctl_ms, res.ping_busctl_ms = c_client * 1e3, ping * 1e3
            res.getcounters_busctl_q_ms = quiet * 1e3
        except (OSError, subprocess.SubprocessError) as exc:
            res.notes.append(f"busctl: {exc}")
        res.rss_mb = vm_kb(daemon.pid, "VmRSS") / 1024  # after the scrapes and D-Bus calls
        res.gzip_cpu_ms = scrape_cpu(daemon.pid, port, args.scrapes, **{"Accept-Encoding": "gzip"})
        res.gzip_cpu_ms *= 1e3
        om = "application/openmetrics-text; version=1.0.0"
        res.om_cpu_ms = scrape_cpu(daemon.pid, port, args.scrapes, Accept=om) * 1e3
        res.peak_pre_mb = vm_kb(daemon.pid, "VmHWM") / 1024
        env = dict(inst.env, DBUS_SYSTEM_BUS_ADDRESS=bus.address)
        try:
            res.list_units_s = cli_seconds(env, ["list-units", "--all"], 3)
            res.status_s = cli_seconds(env, ["status", "bench00000.service"], 3)
        except subprocess.CalledProcessError as exc:
            res.notes.append(f"CLI failed: {exc.stderr!r}")
        try:
            res.run_daemon_ms, res.set_property_ms = changes_ms(env, 5)
        except subprocess.CalledProcessError as exc:
            res.notes.append(f"changes through the daemon failed: {exc.stderr!r}")
        res.list_units_daemon_s, res.status_daemon_s, res.describe_cpu_s = asyncio.run(
            describe_latency(bus.address, "bench00000.service", daemon.pid)
        )
        res.peak_mb = vm_kb(daemon.pid, "VmHWM") / 1024
        stop_process(daemon, 10)
        daemon = None
        in_process(inst, res, args.profile)
    finally:
        if daemon is not None:
            stop_process(daemon, 10)
        if bus is not None:
            bus.close()
        inst.close()
    return res


def grid(rows: list[tuple[str, ...]]) -> list[str]:
    """Right-aligned columns, a rule under the head row."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def table(results: list[Result], args: argparse.Namespace) -> str:
    head = (
        "units",
        "create s",
        "start s",
        "start CPU s",
        "poll CPU ms",
        "cycles",
        "counters ms",
        "states ms",
        "scrape ms",
        "scrape CPU ms",
        "+stats ms",
        "scrape KiB",
        "GetAll ms",
        "GetCounters ms",
        "RSS MB",
    )
    rows = [head]
    for r in results:
        rows.append(
            (
                str(r.units),
                f"{r.create_s:.1f}",
                f"{r.start_s:.2f}",
                f"{r.start_cpu_s:.2f}",
                f"{r.poll_ms:.2f}",
                f"{r.cycles:.0f}",
                f"{r.counters_ms:.2f}",
                f"{r.states_ms:.2f}",
                f"{r.scrape_ms:.1f}",
                f"{r.scrape_cpu_ms:.1f}",
                f"{r.scrape_stats_ms:.1f}",
                f"{r.scrape_kb:.0f}",
                f"{r.getall_ms:.2f}",
                f"{r.getcounters_ms:.1f}",
                f"{r.rss_mb:.1f}",
            )
        )
    more = [
        (
            "units",
            "scrape in-process ms",
            "gzip scrape CPU ms",
            "OpenMetrics CPU ms",
            "list-units s",
            "status s",
            "DescribeUnits all s",
            "DescribeUnits one s",
            "DescribeUnits all CPU s",
            "GetCounters client ms",
            "GetCounters daemon CPU ms",
            "GetCounters busctl ms",
            "busctl -q ms",
            "busctl Ping ms",
            "RSS peak before MB",
            "RSS peak MB",
            "run via daemon ms",
            "set-property ms",
        )
    ]
    for r in results:
        more.append(
            (
                str(r.units),
                f"{r.scrape_inproc_ms:.1f}",
                f"{r.gzip_cpu_ms:.1f}",
                f"{r.om_cpu_ms:.1f}",
                f"{r.list_units_s:.2f}",
                f"{r.status_s:.2f}",
                f"{r.list_units_daemon_s:.2f}",
                f"{r.status_daemon_s:.2f}",
                f"{r.describe_cpu_s:.2f}",
                f"{r.getcounters_client_ms:.1f}",
                f"{r.getcounters_daemon_ms:.1f}",
                f"{r.getcounters_busctl_ms:.1f}",
                f"{r.getcounters_busctl_q_ms:.1f}",
                f"{r.ping_busctl_ms:.1f}",
                f"{r.peak_pre_mb:.1f}",
                f"{r.peak_mb:.1f}",
                f"{r.run_daemon_ms:.1f}",
                f"{r.set_property_ms:.1f}",
            )
        )
    out = [
        f"ipacctd daemon benchmark — {time.strftime('%Y-%m-%d %H:%M:%S')}, kernel "
        f"{os.uname().release}, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}",
        f"poll interval {args.poll_interval}s, CPU window {args.window}s, state re-check "
        f"every {STATE_EVERY} cycles; each unit: own cgroup, IPAddressDeny=198.51.100.1",
        "",
        *grid(rows),
        "",
        *grid(more),
        "",
        "start s / start CPU s: until the daemon owns its bus name and answers /metrics, wall",
        "  / the daemon's utime+stime then (interpreter and imports included; what a loaded",
        "  machine changes less).",
        "poll CPU ms: the daemon's utime+stime per cycle, averaged over counters-only and",
        "  state cycles (external, /proc/<pid>/stat); counters ms / states ms: Daemon.poll",
        "  in-process (time.process_time, median) for the two kinds of cycle.",
        "scrape ms: GET /metrics, wall time (median); scrape CPU ms: the daemon's CPU per",
        "  scrape (with the polls that ran meanwhile: less sensitive to a loaded machine);",
        "  +stats ms: the same while BPF run-time stats are on",
        "  (program run time and runs exported per unit, as while `ipacctd top` runs).",
        "scrape in-process ms: metrics.exposition (snapshot + text) in this process, CPU",
        "  (time.process_time, median of 5; BPF stats as they are: see the notes).",
        "gzip / OpenMetrics CPU ms: the daemon's CPU per scrape with Accept-Encoding: gzip",
        "  (as Prometheus asks) / with the OpenMetrics Accept header.",
        "list-units / status: `ipacctd list-units --all` / `ipacctd status bench00000.service`,",
        "  wall s (median of 3), as root (reads the kernel and metadata itself);",
        "  DescribeUnits all / one: the daemon's D-Bus call behind them for users who cannot",
        "  read the state (all units once; one unit, median of 3); DescribeUnits all CPU s:",
        "  the daemon's utime+stime over that call of all units (the polls wait for it).",
        "GetCounters client ms: of GetCounters ms, what this process takes to unmarshal the",
        "  reply (12 counters of every unit; dbus-fast, median of 3); GetCounters daemon",
        "  CPU ms: the daemon's handler and the reply's marshalling, in this process",
        "  (time.process_time, median of 6, the counters unchanged since the last poll);",
        "  GetCounters busctl ms: `busctl --json=short call ... GetCounters` (sd-bus, a C",
        "  client, printing 10,000 rows), wall, median of 5, process start included;",
        "  busctl -q ms: the same call with -q (the reply received, not printed); busctl",
        "  Ping ms: Peer.Ping the same way (busctl's start, connection, one round trip).",
        "RSS MB: the daemon's VmRSS after the scrapes and D-Bus calls; RSS peak before MB:",
        "  VmHWM then (start-up, scrapes, D-Bus calls); RSS peak MB: VmHWM at the end, after",
        "  list-units and DescribeUnits of all units.",
        "run via daemon ms / set-property ms: `ipacctd run -q -- true` / `ipacctd set-property",
        "  bench00001.service Description=...` as root with the daemon on the bus (so through",
        "  it: StartTransientUnit and its job / SetUnitProperties), wall ms, median of 5,",
        "  process start included (python -m ipacctd from the checkout).",
        f"load average at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}",
    ]
    for r in results:
        if r.units >= 1000 and r.units < 2000:
            verdict = [
                f"{k.split('_')[0]} {getattr(r, k):.1f} <= {v:g}: "
                f"{'ok' if getattr(r, k) <= v else 'MISSED'}"
                for k, v in TARGETS_1K.items()
            ]
            out.append(f"targets at {r.units} units: " + "; ".join(verdict))
        out += [f"note ({r.units} units): {note}" for note in r.notes]
    return "\n".join(out) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--units", default="1000,10000", help="comma-separated unit counts")
    p.add_argument("--poll-interval", type=float, default=0.2)
    p.add_argument("--window", type=float, default=10.0, help="CPU measurement window, s")
    p.add_argument("--scrapes", type=int, default=11)
    p.add_argument("--dbus-runs", type=int, default=50)
    p.add_argument("--max-create-seconds", type=float, default=300.0)
    p.add_argument("--profile", action="store_true", help="cProfile Daemon.poll (stderr)")
    p.add_argument("--out", help="also write the table to this file")
    args = p.parse_args()
    if os.geteuid() != 0:
        print("bench/daemon.py needs root (BPF, cgroups)", file=sys.stderr)
        return 2
    bpffs.ensure_mounted()
    results = []
    for n in (int(x) for x in args.units.split(",")):
        results.append(bench(n, args))
    text = table(results, args)
    print(text, end="")
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
