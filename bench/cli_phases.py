#!/usr/bin/env python3
"""Where the time of ``ipacctd run -q -- true`` goes, phase by phase (bench/cli.py times the
whole command; this splits it).

The interpreter of the installed ``ipacctd`` script runs a copy of what the script and
:func:`ipacctd.cli.main.command` do — the script's own imports (``re`` in pip's console
script, none in contrib/launcher.py), import the CLI, read the command line, import the
verb, freeze what the imports made, run the verb, exit without finalization — with a clock
read between the phases and around the engine's steps, and prints the times as JSON. Each
repetition also times ``python3 -c pass`` with the same interpreter; the parent's wall time
minus the in-process total is the interpreter's own start-up and exit.
Medians and minima over the repetitions, in ms.

Run as root:  python3 bench/cli_phases.py [--reps 25] [--ipacctd PATH] [-- -p NAME=VALUE ...]
(an isolated installation as bench/cli.py makes one: state on tmpfs, own pins and cgroups).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from cli import Install, default_state_parent, fail, find_ipacctd, script_python

PROBE = r"""
import time
T0 = time.perf_counter()
import sys
if sys.argv[1] == "re":  # as the console script pip writes does (contrib/launcher.py not)
    import re
T = {"the script's own imports (pip's: re)": time.perf_counter() - T0}
del sys.argv[1]
import gc, _json
def mark(label, since):
    now = time.perf_counter()
    T[label] = now - since
    return now
t = time.perf_counter()
gc.disable()
from ipacctd.cli import main as m
t = mark("import ipacctd.cli.main", t)
argv = sys.argv[1:]
from ipacctd.cli.runline import parse_run
args = parse_run(argv)
if args is None:  # not a plain run: argparse, as main() does then
    from ipacctd.cli.parser import parse_args
    args = parse_args(argv)
t = mark("command line: runline (argparse if not plain)", t)
from ipacctd.cli import run as mod
t = mark("import the verb (engine, datapath, bpf, policy)", t)
gc.freeze()
gc.enable()
from ipacctd.manager import engine
from ipacctd.datapath import unit as du
W = {}
def wrap(obj, name, label):
    f = getattr(obj, name)
    def w(*a, **k):
        s = time.perf_counter()
        try:
            return f(*a, **k)
        finally:
            W[label] = W.get(label, 0) + time.perf_counter() - s
    setattr(obj, name, w)
STEPS = [
    (mod, "manager_for", "  paths + engine (config, trust checks)"),
    (engine.Manager, "start_transient", "  create the unit (lock, name, record, cgroup, BPF)"),
    (du.UnitDatapath, "create", "    of which: maps, programs, links, pins"),
    (mod, "spawn", "  clone3 into the cgroup + exec (until exec)"),
    (engine.Manager, "record_start", "  record the start"),
    (mod.os, "waitpid", "  the command runs and exits (waitpid)"),
    (engine.Manager, "record_exit", "  record the exit"),
    (engine.Manager, "release_cgroup", "  remove the cgroup"),
]
for obj, name, label in STEPS:
    wrap(obj, name, label)
s = time.perf_counter()
mod.dispatch(args)
T["dispatch (the run itself)"] = time.perf_counter() - s
for _, _, label in STEPS:
    T[label] = W.get(label, 0.0)
T["in-process total"] = time.perf_counter() - T0
print(_json.make_encoder(None, None, _json.encode_basestring_ascii, None, ":", ",", False, False,
                        True)({k: v * 1e3 for k, v in T.items()}, 0)[0], file=sys.stderr)
# The exit ipacctd.cli.main.command makes: no finalization when nothing needs it.
import _thread, atexit, os
if atexit._ncallbacks() == 0 and _thread._count() == 0:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=25)
    ap.add_argument("--ipacctd", help="the ipacctd script (default: beside this python)")
    ap.add_argument(
        "--pause",
        type=float,
        default=0.0,
        help="seconds of idling before each timed command (bench/cli.py's 'pause' condition)",
    )
    ap.add_argument("properties", nargs="*", help="after --: -p NAME=VALUE ... for the run")
    args = ap.parse_args()
    if os.geteuid() != 0:
        fail("run as root (BPF and cgroups)")
    script = find_ipacctd(args.ipacctd)
    python = script_python(script)
    with open(script) as f:  # pip's console script imports re; contrib/launcher.py does not
        imports = "re" if "\nimport re\n" in f.read() else "-"
    inst = Install(find_ipacctd(args.ipacctd), default_state_parent())
    rows: list[dict[str, float]] = []
    walls: list[float] = []
    floors: list[float] = []
    try:
        for _ in range(args.reps):
            time.sleep(args.pause)
            t = time.perf_counter()
            subprocess.run([python, "-c", "pass"], check=True)
            floors.append((time.perf_counter() - t) * 1e3)
            argv = [python, "-c", PROBE, imports, "run", "-q", *args.properties, "--", "true"]
            time.sleep(args.pause)
            t = time.perf_counter()
            out = subprocess.run(argv, env=inst.env, capture_output=True, text=True, check=True)
            walls.append((time.perf_counter() - t) * 1e3)
            rows.append(json.loads(out.stderr.strip().splitlines()[-1]))
            inst.reset_new()
    finally:
        inst.cleanup()
    print(
        f"# ipacctd run -q {' '.join(args.properties)} -- true: {args.reps} repetitions, "
        f"{args.pause} s of idling before each command, "
        f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    print(
        f"{'python3 -c pass (interpreter start-up and exit)':58} "
        f"{statistics.median(floors):6.1f}  (min {min(floors):.1f})"
    )
    for key in rows[0]:
        values = [r[key] for r in rows]
        print(f"{key:58} {statistics.median(values):6.1f}  (min {min(values):.1f})")
    print(
        f"{'wall, as the parent sees it':58} {statistics.median(walls):6.1f}  "
        f"(min {min(walls):.1f})"
    )
    rest = [w - r["in-process total"] for w, r in zip(walls, rows, strict=True)]
    print(
        f"{'  interpreter start-up + exit (wall - in-process)':58} {statistics.median(rest):6.1f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
