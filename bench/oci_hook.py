#!/usr/bin/env python3
"""OCI hook benchmark: what ``ipacctd oci-hook`` adds to ``podman run``, and its own time.

Part 1, ``podman run --rm localhost/ipacctd-bb true`` (podman + runc, isolated storage,
the test suite's :class:`podman_support.Podman`), three cases interleaved (one of each per
repetition, in turn, so that a noisy machine disturbs them alike):

* no hook installed;
* the hook installed, no unit file matching (the path every unmatched container takes);
* the hook installed and a unit file matching ``/libpod_parent/libpod-*`` with a deny list
  (each run binds a new unit; the units are reset between repetitions, outside the timing).

Part 2, the hook alone (``python3 -m ipacctd oci-hook`` fed an OCI state on stdin, as the
runtime does) for a process in a container-like cgroup ``/ipacctd-bench-<pid>/libpod-<id>``:

* no unit file matches;
* a new unit (attach);
* a container started again: its cgroup re-created, programs re-attached (rebind);
* called again on a bound cgroup (nothing to do but check);

beside ``python3 -c pass`` with the same interpreter and environment (the floor any
Python hook pays).

Reported: median, p90 and min per case, and the medians' differences and ratios. Run as
root: python3 bench/oci_hook.py [--reps 15] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [
    os.path.join(ROOT, "tests"),
    os.path.join(ROOT, "tests", "containers"),
    ROOT,
]

from e2e_helpers import Installation  # noqa: E402
from netns import NetNS  # noqa: E402
from podman_support import IMAGE, Podman  # noqa: E402

UNIT = "[Match]\nControlGroup={pattern}\n[Service]\nIPAddressDeny=198.51.100.9\n"


def stats(samples: list[float]) -> dict[str, float]:
    s = sorted(samples)
    return {"median": statistics.median(s), "p90": s[int(0.9 * (len(s) - 1))], "min": s[0]}


def line(name: str, st: dict[str, float]) -> str:
    return (
        f"  {name:<44} median {st['median']:7.1f} ms   p90 {st['p90']:7.1f} ms   "
        f"min {st['min']:7.1f} ms"
    )


def timed(argv: list[str], **kw) -> float:
    t = time.perf_counter()
    res = subprocess.run(argv, capture_output=True, text=True, check=False, **kw)
    dt = (time.perf_counter() - t) * 1000
    if res.returncode != 0:
        raise SystemExit(f"{argv[:3]}... failed ({res.returncode}): {res.stderr.strip()}")
    return dt


def reset_units(inst: Installation) -> None:
    mgr = inst.manager()
    for name in mgr.names():
        mgr.reset(name)


def part1(podman: Podman, inst: Installation, ns: NetNS, reps: int) -> dict[str, list[float]]:
    unit_file = Path(inst.unit_dir, "ctr.unit")
    cases = {"no hook": [], "hook, no unit file matches": [], "hook, unit file matches": []}
    run = ["podman", *podman.run_args(ns, "--rm"), IMAGE, "true"]
    for _ in range(reps):
        for case, samples in cases.items():
            podman.install_hook(None if case == "no hook" else inst)
            if case == "hook, unit file matches":
                unit_file.write_text(UNIT.format(pattern="/libpod_parent/libpod-*"))
            elif unit_file.exists():
                unit_file.unlink()
            samples.append(timed(run, env=podman.env))
        reset_units(inst)
    podman.install_hook(None)
    return cases


def part2(inst: Installation, reps: int) -> dict[str, list[float]]:
    from ipacctd import cgroup

    parent = f"/ipacctd-bench-{os.getpid()}"
    cid = os.urandom(32).hex()
    rel = f"{parent}/libpod-{cid}"
    fs = cgroup.fs_path(rel)
    unit_file = Path(inst.unit_dir, "ctr.unit")
    hook = [sys.executable, "-m", "ipacctd", "oci-hook"]
    env = {**inst.env, "PYTHONPATH": ROOT}
    cases = {
        "python3 -c pass (the interpreter's floor)": [],
        "hook alone: no unit file matches": [],
        "hook alone: new unit (attach)": [],
        "hook alone: restarted container (rebind)": [],
        "hook alone: already bound (check only)": [],
    }
    procs: list[subprocess.Popen] = []

    def container() -> dict:
        """A fresh cgroup at ``rel`` with a process in it; its OCI state."""
        for p in procs:
            p.kill()
            p.wait()
        procs.clear()
        if os.path.isdir(fs):
            cgroup.remove(fs)
        cgroup.create(fs)

        def enter() -> None:
            with open(os.path.join(fs, "cgroup.procs"), "w") as f:
                f.write(str(os.getpid()))

        procs.append(subprocess.Popen(["sleep", "600"], preexec_fn=enter))
        return {
            "ociVersion": "1.0.2",
            "id": cid,
            "status": "created",
            "pid": procs[-1].pid,
            "bundle": "/nonexistent",
            "annotations": {},
        }

    def run(state: dict) -> float:
        return timed(hook, input=json.dumps(state), env=env, cwd=ROOT)

    try:
        for _ in range(reps):
            cases["python3 -c pass (the interpreter's floor)"].append(
                timed([sys.executable, "-c", "pass"], env=env)
            )
            unit_file.write_text(UNIT.format(pattern="/nowhere/libpod-*"))
            cases["hook alone: no unit file matches"].append(run(container()))
            unit_file.write_text(UNIT.format(pattern=f"{parent}/libpod-*"))
            state = container()
            cases["hook alone: new unit (attach)"].append(run(state))
            cases["hook alone: already bound (check only)"].append(run(state))
            cases["hook alone: restarted container (rebind)"].append(run(container()))
            reset_units(inst)
    finally:
        for p in procs:
            p.kill()
            p.wait()
        reset_units(inst)
        pfs = cgroup.fs_path(parent)
        cgroup.kill_all(pfs, signal.SIGKILL)
        cgroup.remove(pfs)
    return cases


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--out", help="also write the report to this file")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root")
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    tmp = tempfile.mkdtemp(prefix="ipacctd-bench-hook-")
    podman = Podman()
    try:
        with Installation(Path(tmp)) as inst:
            ns = inst.netns([])
            res1 = part1(podman, inst, ns, args.reps)
            res2 = part2(inst, args.reps)
    finally:
        podman.close()
    out = [
        f"bench/oci_hook.py — {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"{platform.node()}, {os.cpu_count()} CPUs, kernel {platform.release()}, "
        f"Python {platform.python_version()}, {args.reps} repetitions, interleaved, "
        f"load average before {load}",
        "",
        "podman run --rm localhost/ipacctd-bb true (runc, cgroupfs, vfs storage):",
    ]
    s1 = {k: stats(v) for k, v in res1.items()}
    for k, st in s1.items():
        out.append(line(k, st))
    base = s1["no hook"]["median"]
    for k in ("hook, no unit file matches", "hook, unit file matches"):
        m = s1[k]["median"]
        out.append(f"  {k}: +{m - base:.1f} ms over no hook (ratio {m / base:.2f})")
    out += ["", "the hook alone (python3 -m ipacctd oci-hook, OCI state on stdin):"]
    s2 = {k: stats(v) for k, v in res2.items()}
    floor = s2["python3 -c pass (the interpreter's floor)"]["median"]
    for k, st in s2.items():
        out.append(line(k, st))
    for k, st in s2.items():
        if k.startswith("hook"):
            out.append(f"  {k}: +{st['median'] - floor:.1f} ms over the interpreter's floor")
    text = "\n".join(out) + "\n"
    print(text, end="")
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
