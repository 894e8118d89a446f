#!/usr/bin/env python3
"""Large address lists end to end: wall and CPU time of ``ipacctd run`` with big lists.

What an operator does with a FireHOL-style block list: a unit file whose ``[Service]``
section holds the list in many ``IPAddressDeny=`` lines (500 prefixes a line), or the same
list as repeated ``-p IPAddressDeny=`` arguments (one argument may not exceed 128 KiB),
then ``ipacctd run --unit NAME -q -- true``. That parses, appends and reduces the list,
compiles it, builds the lookup tables, loads both programs, starts ``true`` in the armed
cgroup and writes the unit's metadata. Cases (seeded random prefixes shaped like real
lists, as bench/datapath.py makes them):

* ``run -q -- true`` with no list (the floor of this run);
* unit files with 20k and 100k IPv6 prefixes (40 and 200 lines) and 100k IPv4 prefixes;
* 20k IPv6 prefixes as 40 ``-p`` arguments (argv is bounded: ARG_MAX, 2 MiB here).

Linear work shows as (100k - floor) / (20k - floor) near 5 (quadratic appending gave
about 25). Cases run interleaved (one of each per round), in an isolated installation
(bench/cli.py's ``Install``: temporary state, pins and cgroups, no daemon), each unit reset
after its run outside the timing; reported are the medians of wall time and of the child's
CPU time (user + system, from wait4), which a busy machine inflates less than wall time.

Run as root:  python3 bench/largelists.py [--reps 3] [--ipacctd PATH] [--out FILE]
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(1, os.path.dirname(HERE))

from cli import Install, find_ipacctd  # noqa: E402
from common import Report  # noqa: E402
from datapath import random_net  # noqa: E402

PER_LINE = 500


def prefixes(version: int, count: int, seed: str) -> list[str]:
    rng = random.Random(seed)
    nets: set = set()
    while len(nets) < count:
        nets.add(random_net(rng, version))
    return [str(n) for n in sorted(nets)]


def lines(words: list[str]) -> list[str]:
    return [" ".join(words[i : i + PER_LINE]) for i in range(0, len(words), PER_LINE)]


def write_unit(unit_dir: str, name: str, words: list[str]) -> None:
    with open(os.path.join(unit_dir, f"{name}.unit"), "w") as f:
        f.write(f"[Unit]\nDescription=bench: {len(words)} prefixes\n\n[Service]\n")
        for line in lines(words):
            f.write(f"IPAddressDeny={line}\n")


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall s, child CPU s) of one run; fails loudly when it fails."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode() if proc.stderr else ""
    if proc.stderr:
        proc.stderr.close()
    if proc.returncode != 0:
        raise SystemExit(f"{argv[:4]}... exited with {proc.returncode}: {err[-2000:]}")
    return wall, usage.ru_utime + usage.ru_stime


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=3, help="rounds (default 3)")
    ap.add_argument("--ipacctd", help="the ipacctd script to run (default: this checkout)")
    ap.add_argument("--out", help="also write the report to this file")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (loads BPF programs, makes cgroups)", file=sys.stderr)
        return 2
    out = Report()

    v6_100k = prefixes(6, 100_000, "largelists-v6")
    v4_100k = prefixes(4, 100_000, "largelists-v4")
    v6_20k = v6_100k[::5]
    if args.ipacctd:
        inst = Install(find_ipacctd(args.ipacctd))
    else:  # this checkout, through a wrapper script (Install runs one executable)
        inst = Install("/bin/false")
        inst.ipacctd = os.path.join(inst.state, "ipacctd")
        with open(inst.ipacctd, "w") as f:
            f.write(f'#!/bin/sh\nexec {sys.executable} -m ipacctd "$@"\n')
        os.chmod(inst.ipacctd, 0o755)
        inst.env["PYTHONPATH"] = os.path.dirname(HERE)
    cmd = [inst.ipacctd]
    env = inst.env
    try:
        write_unit(inst.unit_dir, "v6-20k", v6_20k)
        write_unit(inst.unit_dir, "v6-100k", v6_100k)
        write_unit(inst.unit_dir, "v4-100k", v4_100k)
        # argv is bounded (ARG_MAX, 2 MiB here): the 20k list as 40 arguments
        p_args = [a for line in lines(v6_20k) for a in ("-p", f"IPAddressDeny={line}")]
        cases = {
            "run -q -- true (no list: floor)": [*cmd, "run", "-q", "--", "true"],
            "unit file, 20k IPv6 in 40 lines": [
                *cmd,
                "run",
                "--unit",
                "v6-20k",
                "-q",
                "--",
                "true",
            ],
            "unit file, 100k IPv6 in 200 lines": [
                *cmd,
                "run",
                "--unit",
                "v6-100k",
                "-q",
                "--",
                "true",
            ],
            "unit file, 100k IPv4 in 200 lines": [
                *cmd,
                "run",
                "--unit",
                "v4-100k",
                "-q",
                "--",
                "true",
            ],
            "-p x40, 20k IPv6": [*cmd, "run", *p_args, "-q", "--", "true"],
        }
        with open("/proc/loadavg") as f:
            load = " ".join(f.read().split()[:3])
        out(
            f"# ipacctd large lists end to end: kernel {platform.release()}, "
            f"{os.cpu_count()} CPUs, load average at start {load}, {args.reps} rounds, "
            f"{' '.join(cmd)}"
        )
        out("# each unit file: one IPAddressDeny= line per 500 prefixes; unit reset after each run")
        walls: dict[str, list[float]] = {k: [] for k in cases}
        cpus: dict[str, list[float]] = {k: [] for k in cases}
        for _ in range(args.reps):
            for name, argv in cases.items():
                wall, cpu = timed(argv, env)
                walls[name].append(wall)
                cpus[name].append(cpu)
                inst.reset_new()
        with open("/proc/loadavg") as f:
            load = " ".join(f.read().split()[:3])
        out(f"# load average at end {load}")
        out(f"{'case':40} {'wall s':>8} {'CPU s':>8}  (medians)")
        med = {k: (statistics.median(walls[k]), statistics.median(cpus[k])) for k in cases}
        for name in cases:
            out(f"{name:40} {med[name][0]:8.2f} {med[name][1]:8.2f}")
        floor = med["run -q -- true (no list: floor)"]
        small, big = (
            med["unit file, 20k IPv6 in 40 lines"],
            med["unit file, 100k IPv6 in 200 lines"],
        )
        for i, what in ((0, "wall"), (1, "CPU")):
            growth = (big[i] - floor[i]) / max(small[i] - floor[i], 1e-9)
            out(
                f"# {what}: (100k - floor) / (20k - floor) = {growth:.1f} "
                "(linear: 5, quadratic: 25)"
            )
    finally:
        inst.cleanup()
    out.save(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
