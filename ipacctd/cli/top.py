"""``ipacctd top``: units sorted by traffic rate, with the cost of their programs.

BPF run-time statistics are switched on (``BPF_ENABLE_STATS``) only while top runs.
Interactive on a terminal (alternate screen, ``q`` or Ctrl-C quits, the terminal is
restored); ``--once`` / ``-n N`` print plain snapshots for scripts.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import shutil
import sys
import termios
import time
import tty
from collections.abc import Iterator
from dataclasses import dataclass

from ipacctd.cli.engine import manager_for
from ipacctd.cli.format import format_bytes
from ipacctd.cli.remote import DaemonManager
from ipacctd.errors import Error, NotFound
from ipacctd.manager.counters import Counters
from ipacctd.manager.engine import Manager
from ipacctd.manager.reader import CounterReader
from ipacctd.manager.stats import enabled_stats


@dataclass(frozen=True)
class Sample:
    """One unit at one instant."""

    counters: Counters
    run_time_ns: int
    run_cnt: int
    state: str


@dataclass(frozen=True)
class Row:
    """Rates of one unit between two samples."""

    name: str
    state: str
    in_bps: float
    out_bps: float
    in_pps: float
    out_pps: float
    drop_pps: float
    drop_bps: float
    ns_per_packet: float | None

    @property
    def total_bps(self) -> float:
        return self.in_bps + self.out_bps


def _program_stats(mgr: Manager, name: str) -> tuple[int, int]:
    """Run time and runs of the unit's programs, both directions together."""
    stats = mgr.program_stats(name).values()
    return sum(s.run_time_ns for s in stats), sum(s.run_cnt for s in stats)


def sample(mgr: Manager, reader: CounterReader) -> dict[str, Sample]:
    """Counters and program statistics of every unit now."""
    out = {}
    if isinstance(mgr, DaemonManager) and mgr.remote_reads:
        # Through the daemon (the pins are root's): counters and states; the programs'
        # run time needs root (BPF stats), so the cost column stays empty.
        return {st.name: Sample(st.counters, 0, 0, st.active_state)
                for st in mgr.statuses() if st.counters is not None}
    for name in mgr.names():
        c = reader.read(name)
        if c is None:
            continue
        try:
            state = mgr.status(name).active_state
        except NotFound:
            continue
        ns, cnt = _program_stats(mgr, name)
        out[name] = Sample(c, ns, cnt, state)
    reader.keep_only(set(out))
    return out


def rates(before: dict[str, Sample], after: dict[str, Sample], seconds: float) -> list[Row]:
    """Rows sorted by total bytes/s, busiest first."""
    rows = []
    dt = max(seconds, 1e-6)
    for name, b in after.items():
        a = before.get(name)
        d = b.counters - a.counters if a else Counters()
        dn = b.run_time_ns - a.run_time_ns if a else 0
        dc = b.run_cnt - a.run_cnt if a else 0
        rows.append(Row(
            name, b.state,
            d.ingress_bytes / dt, d.egress_bytes / dt,
            d.ingress_packets / dt, d.egress_packets / dt,
            (d.ingress_dropped_packets + d.egress_dropped_packets) / dt,
            (d.ingress_dropped_bytes + d.egress_dropped_bytes) / dt,
            dn / dc if dc > 0 else None))
    rows.sort(key=lambda r: (-r.total_bps, -(r.in_pps + r.out_pps), r.name))
    return rows


def _rate(bps: float) -> str:
    return f"{format_bytes(int(bps))}/s"


def render(rows: list[Row], interval: float, stats_on: bool, width: int = 120,
           height: int | None = None, interactive: bool = False) -> str:
    """One screen of top."""
    head = (f"ipacctd top - {time.strftime('%H:%M:%S')}  {len(rows)} units  every "
            f"{interval:g}s  BPF stats {'on' if stats_on else 'off'}"
            f"{'  (q to quit)' if interactive else ''}")
    cols = f"{'UNIT':<28} {'IN':>10} {'OUT':>10} {'PKT IN/s':>9} {'PKT OUT/s':>9} " \
           f"{'DROP/s':>8} {'DROPPED':>10} {'NS/PKT':>7}  STATE"
    lines = [head[:width], "", cols[:width]]
    for r in rows[: (height - 4) if height else None]:
        cost = f"{r.ns_per_packet:7.1f}" if r.ns_per_packet is not None else f"{'-':>7}"
        lines.append(f"{r.name[:28]:<28} {_rate(r.in_bps):>10} {_rate(r.out_bps):>10} "
                     f"{r.in_pps:>9.0f} {r.out_pps:>9.0f} {r.drop_pps:>8.0f} "
                     f"{_rate(r.drop_bps):>10} {cost}  {r.state}"[:width])
    return "\n".join(lines)


@contextlib.contextmanager
def _stats(wanted: bool) -> Iterator[bool]:
    if not wanted:
        yield False
        return
    try:
        ctx = enabled_stats()
        ctx.__enter__()
    except (Error, OSError):
        yield False
        return
    try:
        yield True
    finally:
        ctx.__exit__(None, None, None)


def dispatch(args: argparse.Namespace) -> int:
    mgr = manager_for(args, write=False)
    count = 1 if args.once else args.iterations
    with _stats(not args.no_stats) as stats_on:
        if count is not None or not sys.stdout.isatty() or not sys.stdin.isatty():
            return _batch(mgr, args.delay, count if count is not None else 1, stats_on)
        return _interactive(mgr, args.delay, stats_on)


def _batch(mgr: Manager, interval: float, count: int, stats_on: bool) -> int:
    with CounterReader(mgr.store) as reader:
        prev, t0 = sample(mgr, reader), time.monotonic()
        for i in range(count):
            time.sleep(interval)
            cur, t1 = sample(mgr, reader), time.monotonic()
            if i:
                print()
            print(render(rates(prev, cur, t1 - t0), interval, stats_on), flush=True)
            prev, t0 = cur, t1
    return 0


def _interactive(mgr: Manager, interval: float, stats_on: bool) -> int:
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    out = sys.stdout
    try:
        tty.setcbreak(fd)
        out.write("\x1b[?1049h\x1b[?25l")
        out.flush()
        with CounterReader(mgr.store) as reader:
            prev, t0 = sample(mgr, reader), time.monotonic()
            rows: list[Row] = []
            while True:
                size = shutil.get_terminal_size()
                out.write("\x1b[H\x1b[2J" + render(rows, interval, stats_on, size.columns,
                                                    size.lines, interactive=True))
                out.flush()
                deadline = t0 + interval
                while (left := deadline - time.monotonic()) > 0:
                    ready, _, _ = select.select([fd], [], [], left)
                    if ready:
                        key = os.read(fd, 32)
                        if b"q" in key or b"Q" in key or b"\x03" in key:
                            return 0
                cur, t1 = sample(mgr, reader), time.monotonic()
                rows = rates(prev, cur, t1 - t0)
                prev, t0 = cur, t1
    except KeyboardInterrupt:
        return 0
    finally:
        out.write("\x1b[?25h\x1b[?1049l")
        out.flush()
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
