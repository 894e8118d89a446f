"""Soak: the reliability suite's long versions, summed up in one table.

Runs ``pytest tests/reliability`` with ``IPACCTD_SOAK=1`` (20 daemon/CLI crashes, 1,000
policy changes, >= 10,000 fuzz inputs per parser, 1,000 create/remove cycles, 50
concurrent runs and 1,000 units) and prints, per experiment: runs, packets sent, packets
leaked (to a denied address), bytes lost (counters vs. what sendto accepted), inputs
tried, and leaks found (fds, memory, kernel objects). Needs root, cgroup v2 and BPF, like
the suite. Usage::

    python3 bench/soak.py [--ci] [-- PYTEST ARGS...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

COLUMNS = (
    "experiment",
    "runs",
    "packets sent",
    "packets leaked",
    "bytes lost",
    "inputs tried",
    "leaks found",
)


def _leaks(row: dict) -> str:
    parts = []
    if "fd_growth" in row:
        parts.append(f"fds {row['fd_growth']:+d}")
    if "rss_growth_kib" in row:
        parts.append(f"rss {row['rss_growth_kib']:+d} KiB")
    if "leaks_found" in row:
        parts.append(f"kernel objects {row['leaks_found']} of {row['objects_tracked']}")
    return ", ".join(parts) if parts else "-"


def _cell(row: dict, key: str) -> str:
    v = row.get(key)
    return "-" if v is None else f"{v:,}" if isinstance(v, int) else str(v)


def table(rows: list[dict]) -> str:
    body = [
        [
            r["test"],
            _cell(r, "runs"),
            _cell(r, "packets_sent"),
            _cell(r, "packets_leaked"),
            _cell(r, "bytes_lost"),
            _cell(r, "inputs_tried"),
            _leaks(r),
        ]
        for r in rows
    ]
    totals = [
        "TOTAL",
        f"{sum(r.get('runs', 0) for r in rows):,}",
        f"{sum(r.get('packets_sent', 0) for r in rows):,}",
        f"{sum(r.get('packets_leaked', 0) for r in rows):,}",
        f"{sum(r.get('bytes_lost', 0) for r in rows):,}",
        f"{sum(r.get('inputs_tried', 0) for r in rows):,}",
        f"{sum(r.get('leaks_found', 0) + abs(r.get('fd_growth', 0)) for r in rows)} fds/objects",
    ]
    grid = [list(COLUMNS), *body, totals]
    widths = [max(len(row[i]) for row in grid) for i in range(len(COLUMNS))]
    line = "+".join("-" * (w + 2) for w in widths)
    out = []
    for i, row in enumerate(grid):
        out.append(
            " | ".join(
                c.ljust(w) if j == 0 else c.rjust(w)
                for j, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
        if i == 0 or i == len(grid) - 2:
            out.append(line)
    return "\n".join(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ci", action="store_true", help="the short (CI) counts instead")
    p.add_argument("pytest_args", nargs="*")
    args = p.parse_args()
    with tempfile.NamedTemporaryFile(prefix="ipacctd-soak-", suffix=".jsonl", delete=False) as f:
        report = f.name
    env = dict(os.environ, IPACCTD_SOAK_REPORT=report, IPACCTD_REQUIRE_KERNEL="1")
    if not args.ci:
        env["IPACCTD_SOAK"] = "1"
    t0 = time.monotonic()
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/reliability",
            *args.pytest_args,
        ],
        cwd=REPO,
        env=env,
        check=False,
        capture_output=True,
        text=True,
    )
    elapsed = time.monotonic() - t0
    try:
        with open(report) as f:
            rows = [json.loads(line) for line in f if line.strip()]
    finally:
        os.unlink(report)
    tail = res.stdout.strip().splitlines()[-1:] or [""]
    print(
        f"ipacctd soak ({'CI counts' if args.ci else 'IPACCTD_SOAK=1'}), "
        f"{time.strftime('%Y-%m-%d %H:%M:%S')}, {os.cpu_count()} CPUs, kernel "
        f"{os.uname().release}"
    )
    print(f"pytest: {tail[0]} (exit {res.returncode}), {elapsed:.0f} s\n")
    print(table(rows))
    extra = [
        r
        for r in rows
        if any(
            k in r
            for k in (
                "interrupted_calls",
                "interrupted_pending",
                "commands_started",
                "verdict_flips",
                "changes_per_second",
                "inputs_applied",
                "other_new_kernel_objects",
                "limit_kib",
                "seconds_to_create",
            )
        )
    ]
    if extra:
        print("\ndetails:")
        skip = {"test", "runs", "packets_sent", "packets_leaked", "bytes_lost", "inputs_tried"}
        for r in extra:
            print(f"  {r['test']}: " + ", ".join(f"{k}={v}" for k, v in r.items() if k not in skip))
    if res.returncode != 0:
        print("\n" + res.stdout[-4000:])
    return res.returncode


if __name__ == "__main__":
    sys.exit(main())
