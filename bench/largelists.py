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

Then what follows the list once it is in force (issue 13, "costs that follow what
changed"): one running unit (``run --unit big -- sleep``) whose unit file holds 200k IPv4
prefixes in 400 lines (200k IPv6 prefixes would exceed the 4 MiB a unit file may hold),
and, interleaved, ``show big -p IPEgressBytes --value``, ``status big``, ``list-units``,
``set-property big Description=...`` (a new text each time: a change that does not touch
the policy) and the start of ``ipacctd daemon`` (from exec until it owns its bus name and
has answered one scrape; a private ``dbus-daemon``; its CPU time until then). A second
running unit with a one-prefix list gives the floor of each row (``list-units small``
for ``list-units``): what a list of any size should cost them, once it is in force. The
rows are measured twice in each round: without a daemon (``IPACCTD_NO_DAEMON=1``: reads
and changes straight from the kernel and the metadata) and with ``ipacctd daemon``
running on the private bus (root's reads still go straight to the kernel; changes go
through the daemon over D-Bus, so ``set-property`` includes the D-Bus client's import,
connection and proof of the daemon's identity).

What runs is what users run: by default a venv of Debian's ``/usr/bin/python3`` with a
normal (non-editable) ``pip install .[daemon]`` of this checkout, made in a temporary
directory and removed at the end (``--ipacctd PATH``: that installation's script;
``--checkout``: this checkout through the interpreter running this script, as before).

Linear work shows as (100k - floor) / (20k - floor) near 5 (quadratic appending gave
about 25). Cases run interleaved (one of each per round), in an isolated installation
(bench/cli.py's ``Install``: temporary state, pins and cgroups, no daemon), each unit reset
after its run outside the timing; reported are the medians of wall time and of the child's
CPU time (user + system, from wait4), which a busy machine inflates less than wall time.

Each row is printed beside its target and the previous measurement (``PREVIOUS``: the
issue's figures, and this script's earlier results file).

Run as root:  python3 bench/largelists.py [--reps 3] [--part run|unit|all]
              [--ipacctd PATH | --checkout] [--out FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(1, os.path.dirname(HERE))

from cli import Install, find_ipacctd, install_kind, script_python  # noqa: E402
from common import Report, cpu_seconds, wait_ready  # noqa: E402
from datapath import random_net  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))
from support import PrivateBus, free_port, stop_process  # noqa: E402

PER_LINE = 500
BIG = "big"  # the unit of the second part
BIG_PREFIXES = 200_000

#: Targets (issue 13), seconds: (wall, CPU); None where the issue sets none.
TARGETS: dict[str, tuple[float | None, float | None]] = {
    "unit file, 100k IPv6 in 200 lines": (None, 3.0),
    "show -p IPEgressBytes --value": (0.1, None),
    "list-units": (0.2, None),
    "set-property Description=x": (0.1, None),
    "daemon start": (2.0, None),
    "daemon running: show -p IPEgressBytes": (0.1, None),
    "daemon running: list-units": (0.2, None),
    "daemon running: set-property Description": (0.1, None),
}
SMALL = "small"  # a unit with a one-prefix list beside it: the floor of each read

#: Earlier measurements, seconds (wall, CPU), and where they come from.
PREVIOUS: dict[str, tuple[tuple[float | None, float | None], str]] = {
    "unit file, 20k IPv6 in 40 lines": ((1.04, 0.85), "results file before"),
    "unit file, 100k IPv6 in 200 lines": ((4.22, 3.77), "results file before"),
    "unit file, 100k IPv4 in 200 lines": ((4.22, 4.18), "results file before"),
    "-p x40, 20k IPv6": ((0.86, 0.73), "results file before"),
    # The results file's last part 2 (session 3: load ~7, pyenv's python, the checkout);
    # the figures were 4.6 s / 6 s / 11.5 s / 20 s.
    "show -p IPEgressBytes --value": ((0.56, 0.20), "session 3"),
    "status big": ((0.47, 0.22), "session 3"),
    "list-units": ((0.46, 0.21), "session 3"),
    "set-property Description=x": ((0.62, 0.29), "session 3"),
    "daemon start": ((1.31, 0.66), "session 3"),
}


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
    proc = subprocess.Popen(  # cwd /: "python -c" never imports a checkout it stands in
        argv,
        env=env,
        cwd="/",
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
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


def fmt(value: float | None) -> str:
    return f"{value:8.2f}" if value is not None else f"{'-':>8}"


class Table:
    """Medians of (wall, CPU) per case, printed beside target and previous measurement."""

    def __init__(self) -> None:
        self.walls: dict[str, list[float]] = {}
        self.cpus: dict[str, list[float]] = {}

    def add(self, name: str, wall: float, cpu: float | None) -> None:
        self.walls.setdefault(name, []).append(wall)
        if cpu is not None:
            self.cpus.setdefault(name, []).append(cpu)

    def median(self, name: str) -> tuple[float, float | None]:
        cpus = self.cpus.get(name)
        return statistics.median(self.walls[name]), statistics.median(cpus) if cpus else None

    def print(self, out: Report) -> None:
        out(
            f"{'case':40} {'wall s':>8} {'CPU s':>8}   {'target':>15}   "
            f"{'previous (wall, CPU)':>20}"
        )
        for name in self.walls:
            wall, cpu = self.median(name)
            tw, tc = TARGETS.get(name, (None, None))
            target = f"wall <= {tw:g}" if tw else f"CPU <= {tc:g}" if tc else "-"
            met = ""
            if tw or tc:
                ok = (tw is None or wall <= tw) and (tc is None or (cpu or 0) <= tc)
                met = " met" if ok else " MISSED"
            (pw, pc), where = PREVIOUS.get(name, ((None, None), ""))
            prev = f"{fmt(pw)} {fmt(pc)}  ({where})" if where else "-"
            out(f"{name:40} {wall:8.2f} {fmt(cpu)}   {target:>15}{met:7} {prev}")


def load() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def run_part(inst: Install, cmd: list[str], reps: int, out: Report) -> None:
    """``ipacctd run`` with large lists (the first part)."""
    env = inst.env
    v6_100k = prefixes(6, 100_000, "largelists-v6")
    v4_100k = prefixes(4, 100_000, "largelists-v4")
    v6_20k = v6_100k[::5]
    write_unit(inst.unit_dir, "v6-20k", v6_20k)
    write_unit(inst.unit_dir, "v6-100k", v6_100k)
    write_unit(inst.unit_dir, "v4-100k", v4_100k)
    # argv is bounded (ARG_MAX, 2 MiB here): the 20k list as 40 arguments
    p_args = [a for line in lines(v6_20k) for a in ("-p", f"IPAddressDeny={line}")]
    true = ["-q", "--", "true"]
    cases = {
        "run -q -- true (no list: floor)": [*cmd, "run", *true],
        "unit file, 20k IPv6 in 40 lines": [*cmd, "run", "--unit", "v6-20k", *true],
        "unit file, 100k IPv6 in 200 lines": [*cmd, "run", "--unit", "v6-100k", *true],
        "unit file, 100k IPv4 in 200 lines": [*cmd, "run", "--unit", "v4-100k", *true],
        "-p x40, 20k IPv6": [*cmd, "run", *p_args, *true],
    }
    out(f"# part 1: ipacctd run with large lists; load average at start {load()}")
    out("# each unit file: one IPAddressDeny= line per 500 prefixes; unit reset after each run")
    table = Table()
    for _ in range(reps):
        for name, argv in cases.items():
            table.add(name, *timed(argv, env))
            inst.reset_new()
    out(f"# load average at end {load()}")
    table.print(out)
    floor = table.median("run -q -- true (no list: floor)")
    small = table.median("unit file, 20k IPv6 in 40 lines")
    big = table.median("unit file, 100k IPv6 in 200 lines")
    for i, what in ((0, "wall"), (1, "CPU")):
        growth = (big[i] - floor[i]) / max(small[i] - floor[i], 1e-9)  # type: ignore[operator]
        out(f"# {what}: (100k - floor) / (20k - floor) = {growth:.1f} (linear: 5, quadratic: 25)")


def start_daemon(cmd: list[str], env: dict[str, str], log_path: str, bus: str, port: int):
    """``ipacctd daemon`` of the installation measured, on the private bus and port."""
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            [*cmd, "daemon", "--bus", bus, "--listen", f"127.0.0.1:{port}", "--poll-interval", "1"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )


def daemon_start(
    inst: Install, cmd: list[str], bus: PrivateBus
) -> tuple[float, float, subprocess.Popen]:
    """Wall seconds from exec of ``ipacctd daemon`` until it owns its bus name and has
    answered one scrape, the daemon's CPU seconds until then, and the daemon (running;
    the caller stops it)."""
    import urllib.request

    port = free_port()
    log_path = os.path.join(inst.state, "daemon.log")
    env = {k: v for k, v in inst.env.items() if k != "IPACCTD_NO_DAEMON"}
    t = time.monotonic()
    daemon = start_daemon(cmd, env, log_path, bus.address, port)
    try:

        def scrape() -> None:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=60).read()

        wait_ready(daemon, bus.address, log_path, t, timeout=600, then=scrape)
        return time.monotonic() - t, cpu_seconds(daemon.pid), daemon
    except BaseException:
        stop_process(daemon, 30)
        raise


def reads_and_changes(i: int, prefix: str = "") -> dict[str, list[str]]:
    """The rows of part 2, each followed by its floor (the one-prefix unit)."""
    return {
        f"{prefix}show -p IPEgressBytes" + ("" if prefix else " --value"): [
            "show",
            BIG,
            "-p",
            "IPEgressBytes",
            "--value",
        ],
        f"  {prefix}show, 1-prefix unit (floor)": ["show", SMALL, "-p", "IPEgressBytes", "--value"],
        f"{prefix}status {BIG}": ["status", BIG],
        f"  {prefix}status, 1-prefix unit (floor)": ["status", SMALL],
        f"{prefix}list-units": ["list-units"],
        f"  {prefix}list-units {SMALL} (floor)": ["list-units", SMALL],
        f"{prefix}set-property Description" + ("" if prefix else "=x"): [
            "set-property",
            BIG,
            f"Description=x{i}",
        ],
        f"  {prefix}set-property, 1-prefix unit (floor)": [
            "set-property",
            SMALL,
            f"Description=x{i}",
        ],
    }


#: What the D-Bus client costs a change through the daemon, step by step (run by the
#: installation's interpreter, with the daemon running): the interpreter alone, the
#: imports of asyncio and dbus-fast, and those plus connecting and proving the daemon
#: (what ``set-property`` does before its one call).
CLIENT_STEPS = {
    "  D-Bus client: interpreter alone": "pass",
    "  D-Bus client: import asyncio, dbus_fast": "import asyncio, dbus_fast.aio",
    "  D-Bus client: + connect, prove daemon": (
        "from ipacctd.cli.remote import connect\n"
        "from ipacctd.manager.config import Config\n"
        "link = connect(Config.from_env())\n"
        "assert link is not None, 'no daemon found'\n"
        "link.close()\n"
    ),
}


class Side:
    """One installation measured in part 2 (this checkout's, or ``--baseline``'s), with its
    two running units."""

    def __init__(self, label: str, inst: Install, python: str) -> None:
        self.label = label  # prefix of its rows ("" for the installation measured)
        self.inst = inst
        self.cmd = [inst.ipacctd]
        self.python = python
        self.runners: list[subprocess.Popen] = []

    def start(self) -> None:
        write_unit(self.inst.unit_dir, BIG, prefixes(4, BIG_PREFIXES, "largelists-big"))
        for unit, props in ((BIG, []), (SMALL, ["-p", "IPAddressDeny=198.51.100.1"])):
            self.inst.keep.add(f"{unit}.service")
            self.runners.append(start_running(self.inst, self.cmd, unit, props))

    def round(self, i: int, bus: PrivateBus, table: Table) -> None:
        inst, cmd, env, tag = self.inst, self.cmd, self.inst.env, self.label
        # With the daemon running the CLI finds it on this bus (its runtime file is in the
        # state directory); without, IPACCTD_NO_DAEMON=1 keeps it from looking.
        daemon_env = {k: v for k, v in env.items() if k != "IPACCTD_NO_DAEMON"}
        daemon_env["DBUS_SYSTEM_BUS_ADDRESS"] = bus.address
        for name, argv in reads_and_changes(i, tag).items():
            table.add(name, *timed([*cmd, *argv], env))
        wall, cpu, daemon = daemon_start(inst, cmd, bus)
        table.add(f"{tag}daemon start", wall, cpu)
        try:
            for name, argv in reads_and_changes(i, f"{tag}daemon running: ").items():
                table.add(name, *timed([*cmd, *argv], daemon_env))
            for name, code in CLIENT_STEPS.items():
                table.add(f"  {tag}{name.lstrip()}", *timed([self.python, "-c", code], daemon_env))
        finally:
            stop_process(daemon, 30)
        # The same without the unit file to parse (the unit and its list stay recorded).
        unit_file = os.path.join(inst.unit_dir, f"{BIG}.unit")
        os.rename(unit_file, unit_file + ".off")
        try:
            wall, cpu, daemon = daemon_start(inst, cmd, bus)
            stop_process(daemon, 30)
            table.add(f"  {tag}same, without big.unit to load", wall, cpu)
        finally:
            os.rename(unit_file + ".off", unit_file)

    def check(self, reps: int) -> None:
        desc = self.inst.cli("show", BIG, "-p", "Description", "--value").stdout.strip()
        if desc != f"x{reps - 1}":
            raise SystemExit(f"set-property did not take: Description is {desc!r}")

    def stop(self) -> None:
        for unit in (BIG, SMALL):
            with contextlib.suppress(subprocess.CalledProcessError, OSError):
                self.inst.cli("stop", unit, check=False)
        for runner in self.runners:
            stop_process(runner, 30)
            if runner.stderr:
                runner.stderr.close()


def unit_part(sides: list[Side], reps: int, out: Report) -> None:
    """Reads and non-policy changes of one running unit with a 200k-prefix list, for each
    installation (rounds interleaved: one of each side per round)."""
    out(
        f"# part 2: one running unit ({BIG}.service) whose unit file holds {BIG_PREFIXES // 1000}k "
        f"IPv4 prefixes in {BIG_PREFIXES // PER_LINE} lines; load average at start {load()}"
    )
    out(f"# beside it {SMALL}.service, running, with a one-prefix list: the floor of its rows")
    if len(sides) > 1:
        out("# rows 'before: ...' are --baseline's installation, interleaved round by round")
    bus = None
    try:
        for side in sides:
            side.start()
        bus = PrivateBus()
        table = Table()
        for i in range(reps):
            for side in sides:
                side.round(i, bus, table)
        for side in sides:
            side.check(reps)
        out(f"# load average at end {load()}")
        out(
            "# daemon start: CPU s is the daemon's own until ready (which includes loading the "
            "unit directory: parsing big.unit)"
        )
        table.print(out)
    finally:
        if bus is not None:
            bus.close()
        for side in sides:
            side.stop()


def make_venv() -> str:
    """A venv of Debian's python3 with a normal install of this checkout (and the daemon's
    dependencies), as an operator installs it."""
    python = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
    venv = tempfile.mkdtemp(prefix="ipacctd-largelists-venv-")
    try:
        subprocess.run([python, "-m", "venv", venv], check=True)
        subprocess.run(
            [os.path.join(venv, "bin", "pip"), "install", "-q", f"{os.path.dirname(HERE)}[daemon]"],
            check=True,
            cwd="/",
            env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
        )
    except BaseException:
        shutil.rmtree(venv, ignore_errors=True)
        raise
    return venv


def start_running(inst: Install, cmd: list[str], unit: str, props: list[str]) -> subprocess.Popen:
    """``run --unit UNIT ... -- sleep``, returned once its command runs."""
    runner = subprocess.Popen(
        [*cmd, "run", "--unit", unit, *props, "-q", "--", "sleep", "3600"],
        env=inst.env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 600
    while True:  # until its command runs (the unit is built first)
        r = inst.cli("show", unit, "-p", "MainPID", "--value", check=False)
        if r.returncode == 0 and r.stdout.strip() not in ("", "0"):
            return runner
        if runner.poll() is not None or time.monotonic() > deadline:
            err = runner.stderr.read().decode() if runner.stderr else ""
            stop_process(runner, 30)
            raise SystemExit(f"run --unit {unit} did not start: {err[-2000:]}")
        time.sleep(0.2)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=3, help="rounds (default 3)")
    ap.add_argument("--part", choices=("run", "unit", "all"), default="all")
    ap.add_argument("--ipacctd", help="the ipacctd script of an installation to measure")
    ap.add_argument(
        "--checkout",
        action="store_true",
        help="this checkout through this script's interpreter (default: a venv of "
        "/usr/bin/python3 with pip install .[daemon])",
    )
    ap.add_argument(
        "--baseline",
        help="part 2 also for this installation's ipacctd script (e.g. a venv of the version "
        "before), interleaved; its rows start with 'before:'",
    )
    ap.add_argument("--out", help="also write the report to this file")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (loads BPF programs, makes cgroups)", file=sys.stderr)
        return 2
    out = Report()
    venv = None
    if args.ipacctd:
        inst = Install(find_ipacctd(args.ipacctd))
    elif args.checkout:  # this checkout, through a wrapper script (Install runs one executable)
        inst = Install("/bin/false")
        inst.ipacctd = os.path.join(inst.state, "ipacctd")
        with open(inst.ipacctd, "w") as f:
            f.write(f'#!/bin/sh\nexec {sys.executable} -m ipacctd "$@"\n')
        os.chmod(inst.ipacctd, 0o755)
        inst.env["PYTHONPATH"] = os.path.dirname(HERE)
    else:
        os.environ.pop("PYTHONPATH", None)  # the installed package, never a checkout
        venv = make_venv()
        inst = Install(os.path.join(venv, "bin", "ipacctd"))
    cmd = [inst.ipacctd]
    baseline = None
    if args.baseline:
        baseline = Install(find_ipacctd(args.baseline))
        # An installation of its own: state, pins and cgroups apart from the other's.
        baseline.bpf_dir += "-before"
        baseline.cgroup_root += "-before"
        baseline.env.update(
            IPACCTD_BPF_DIR=baseline.bpf_dir, IPACCTD_CGROUP_ROOT=baseline.cgroup_root
        )
    try:
        out(
            f"# ipacctd large lists end to end: kernel {platform.release()}, "
            f"{os.cpu_count()} CPUs, {args.reps} rounds, medians, {' '.join(cmd)}"
        )
        python = sys.executable if args.checkout else script_python(inst.ipacctd)
        if not args.checkout:
            version = subprocess.run(
                [python, "--version"], capture_output=True, text=True, check=True
            ).stdout.strip()
            out(f"# interpreter {python} ({version}); {install_kind(python)}")
        if args.part in ("run", "all"):
            run_part(inst, cmd, args.reps, out)
        if args.part in ("unit", "all"):
            sides = [Side("", inst, python)]
            if baseline is not None:
                base_python = script_python(baseline.ipacctd)
                out(f"# baseline {baseline.ipacctd}: {install_kind(base_python)}")
                sides.append(Side("before: ", baseline, base_python))
            unit_part(sides, args.reps, out)
    finally:
        inst.cleanup()
        if baseline is not None:
            baseline.cleanup()
        if venv is not None:
            shutil.rmtree(venv, ignore_errors=True)
    out.save(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
