#!/usr/bin/env python3
"""Cost of arming a systemd service: ``systemctl restart`` with and without ipacctd's drop-in.

Runs inside ``shared/tools/systemd-ref`` (real systemd 252 as PID 1; brought up here and
always brought down; its lock ``/tmp/sdref.lock`` is held throughout). Three services run
the same ``sleep``:

* ``bench-plain``  — no IP firewall at all (the floor);
* ``bench-armed``  — bound by ``ipacctd attach ... -p IPAddressDeny=198.51.100.1``: systemd
  loads ipacctd's two pinned programs and attaches them at every start (the drop-in);
* ``bench-systemd`` — systemd's own ``IPAccounting=yes`` + ``IPAddressDeny=198.51.100.1``
  (systemd compiles and loads its programs at every start), for comparison.

A helper inside the namespaces times ``systemctl restart`` of each in turn (interleaved, one
of each per repetition, so a noisy machine disturbs them alike), and the one-off operations
of the armed unit: ``attach`` (pin + drop-in + daemon-reload), ``set-property`` (new pins +
swap on the running cgroup), ``daemon-reload`` with the drop-in, ``detach``. Reported: median,
p90, min per case (ms) and the medians' difference to the floor.

Run as root:  python3 bench/systemd_arming.py [--reps 30] [--out FILE]
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

from common import publish  # beside this script
from datapath import shared_tools

REPO = Path(__file__).resolve().parents[1]
NS_PATH = "PATH=/usr/sbin:/usr/bin:/sbin:/bin"

HELPER = r"""
import json, statistics, subprocess, sys, time
root, reps = sys.argv[1], int(sys.argv[2])
env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONPATH": root}

def timed(*cmd):
    a = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, capture_output=True)
    return (time.perf_counter() - a) * 1e3

ipacctd = ("python3", "-m", "ipacctd")
out = {"restart": {s: [] for s in ("bench-plain", "bench-armed", "bench-systemd")}}
for s in out["restart"]:
    subprocess.run(("systemctl", "start", s), check=True)
out["attach"] = [timed(*ipacctd, "attach", "/system.slice/bench-armed.service",
                       "-p", "IPAddressDeny=198.51.100.1")]
for s in out["restart"]:  # warm-up
    subprocess.run(("systemctl", "restart", s), check=True)
for _ in range(reps):
    for s in out["restart"]:
        out["restart"][s].append(timed("systemctl", "restart", s))
out["python3 -m ipacctd --help (floor of the CLI)"] = [timed(*ipacctd, "--help")
                                                     for _ in range(5)]
out["set-property"] = [timed(*ipacctd, "set-property", "bench-armed.service",
                             f"IPAddressDeny=198.51.100.{10 + i}") for i in range(5)]
out["daemon-reload (drop-in present)"] = [timed("systemctl", "daemon-reload")
                                          for _ in range(5)]
out["detach"] = [timed(*ipacctd, "detach", "bench-armed.service")]
out["daemon-reload (no drop-in)"] = [timed("systemctl", "daemon-reload") for _ in range(5)]
print(json.dumps(out))
"""

SERVICE = """[Unit]
StartLimitIntervalSec=0
[Service]
ExecStart=/bin/sleep 3600
{extra}"""


def _script() -> str:
    path = shared_tools() / "systemd-ref" / "systemd-ref.sh"
    if path.exists():
        return str(path)
    sys.exit(f"{path} not found")


def _stats(v: list[float]) -> tuple[float, float, float]:
    s = sorted(v)
    return s[len(s) // 2], s[min(len(s) - 1, int(len(s) * 0.9))], s[0]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--out", help="also write the report to this file")
    args = ap.parse_args()
    script = _script()
    root = f"/var/tmp/ipacctd-sdbench-{uuid.uuid4().hex[:8]}"
    with open("/tmp/sdref.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            os.makedirs(root)
            shutil.copytree(
                REPO / "ipacctd", f"{root}/ipacctd", ignore=shutil.ignore_patterns("__pycache__")
            )
            Path(root, "helper.py").write_text(HELPER)
            os.chmod(root, 0o755)
            subprocess.run([script, "up"], check=True, capture_output=True, timeout=180)

            def ns(*cmd: str, input: str | None = None) -> str:
                res = subprocess.run(
                    [script, "sh", "env", "-i", NS_PATH, *cmd],
                    input=input,
                    capture_output=True,
                    text=True,
                    timeout=900,
                )
                if res.returncode != 0:
                    sys.exit(f"{cmd} failed: {res.stderr}{res.stdout}")
                return res.stdout

            for name, extra in (
                ("bench-plain", ""),
                ("bench-armed", ""),
                ("bench-systemd", "IPAccounting=yes\nIPAddressDeny=198.51.100.1\n"),
            ):
                ns(
                    "sh",
                    "-c",
                    f"cat > /run/systemd/system/{name}.service",
                    input=SERVICE.format(extra=extra),
                )
            ns("systemctl", "daemon-reload")
            res = json.loads(ns("python3", f"{root}/helper.py", root, str(args.reps)))
            version = ns("systemctl", "--version").splitlines()[0]
        finally:
            subprocess.run([script, "down"], capture_output=True, timeout=120)
            shutil.rmtree(root, ignore_errors=True)
    lines = [
        f"systemd-ref ({version}), kernel {os.uname().release}; "
        f"{args.reps} interleaved restarts per service; ms: median / p90 / min"
    ]
    floor = _stats(res["restart"]["bench-plain"])[0]
    for name, v in res.pop("restart").items():
        med, p90, low = _stats(v)
        lines.append(
            f"  systemctl restart {name:14s} {med:7.2f} / {p90:7.2f} / {low:7.2f}"
            f"   (median - plain: {med - floor:+.2f})"
        )
    for name, v in res.items():
        med, p90, low = _stats(v)
        lines.append(f"  {name:38s} {med:7.2f} / {p90:7.2f} / {low:7.2f}   (n={len(v)})")
    publish("\n".join(lines), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
