#!/usr/bin/env python3
"""Real send path: UDP packets/s from inside a cgroup, for each kind of program on it.

``shared/tools/pps/blast.c`` (built with ``cc -O2`` into a temporary directory) sends N
datagrams of 64 bytes with ``sendmmsg`` on a connected socket, inside a private network
namespace whose ``lo`` holds the targets, each with a socket bound there that never reads
(so the receive path costs the same in every case). It runs in one of four cgroups:

* ``bare``: no program;
* ``return1``: a ``return 1`` program on egress and ingress (the hook's own cost);
* ``ipacctd``: a real unit's datapath, built as ``UnitDatapath.create`` builds it for
  ``IPAccounting=yes IPAddressDeny=198.51.100.2`` (accounting, a one-entry deny list,
  the denied-addresses log), attached and pinned in a temporary bpffs directory;
* ``systemd``: the programs systemd 252 attached to ``sdref-long.service``
  (``IPAccounting=yes IPAddressDeny=198.51.100.1``: the same program shape) in
  ``shared/tools/systemd-ref``, attached by id to our cgroup
  (``bpftool cgroup attach CG egress id N multi``). systemd-ref is used under its lock
  (``/tmp/sdref.lock``) and brought down again if this script brought it up.

Two paths: ``pass`` sends to an address no list holds (198.51.100.1... for systemd the
deny entry is 198.51.100.1, for ipacctd 198.51.100.2: each case sends to an address its
own list does not hold, 203.0.113.1), and ``drop`` floods the address each case's list
denies (every sendmmsg call fails with EPERM after one packet, so the rate counts calls;
bare and return1 have no deny list and are shown for scale only).

Rounds interleave the cases (the order rotates per round); reported are the median rate
per case as a ratio to ``bare`` and per-round ratios (ipacctd / return1, ipacctd /
systemd), with their medians: never absolute packet rates, which depend on the machine.
The load average is printed beside them: other work on the machine moves all rates.

Run as root:  python3 bench/realpath.py [--rounds 9] [--packets 300000] [--out FILE]
              [--no-systemd]
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(1, ROOT)
sys.path.insert(2, os.path.join(ROOT, "tests"))

from datapath import shared_tools, systemd_programs  # noqa: E402
from netns import NetNS  # noqa: E402

from ipacctd import cgroup  # noqa: E402
from ipacctd.bpf.links import CgroupLink, open_cgroup  # noqa: E402
from ipacctd.bpf.programs import Program, return_one  # noqa: E402
from ipacctd.datapath.unit import ATTACH, Spec, UnitDatapath  # noqa: E402

BLAST_C = str(shared_tools() / "pps" / "blast.c")
PASS_TARGET = "203.0.113.1"  # in no deny list
DENIED = {"ipacctd": "198.51.100.2", "systemd": "198.51.100.1"}  # each case's deny entry
ADDRESSES = ["198.51.100.1", "198.51.100.2", PASS_TARGET]
SINK = r"""
import socket, sys
socks = []
for a in sys.argv[1:]:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((a, 9))
    socks.append(s)
print("ready", flush=True)
sys.stdin.read()
"""


def build_blast(tmp: str) -> str:
    exe = os.path.join(tmp, "blast")
    subprocess.run(["cc", "-O2", "-o", exe, BLAST_C], check=True)
    return exe


def blast(ns: NetNS, exe: str, cg: str, target: str, packets: int) -> tuple[float, int]:
    """(packets/s, failed calls) of one run inside cgroup ``cg``."""
    res = ns.run([exe, target, str(packets), "64"], cgroup_fs=cg, timeout=120)
    if res.returncode != 0:
        raise SystemExit(f"blast failed in {cg}: {res.stderr}{res.stdout}")
    rate, _, errors, _ = res.stdout.split()
    return float(rate), int(errors)


def bpftool(*args: str) -> None:
    subprocess.run(["bpftool", *args], check=True, capture_output=True, text=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--packets", type=int, default=300_000, help="datagrams per run")
    ap.add_argument("--out", help="also write the report to this file")
    ap.add_argument("--no-systemd", action="store_true", help="leave systemd's programs out")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root", file=sys.stderr)
        return 2
    report: list[str] = []

    def out(text: str = "") -> None:
        print(text, flush=True)
        report.append(text)

    tag = f"ipacctd-pps-{os.getpid()}"
    tmp = tempfile.mkdtemp(prefix=f"{tag}-")
    cg_root = os.path.join(cgroup.mount_point(), tag)
    pin_dir = f"/sys/fs/bpf/{tag}"
    cgs = {name: os.path.join(cg_root, name) for name in ("bare", "return1", "ipacctd", "systemd")}
    links: list[CgroupLink] = []
    attached_sd: list[tuple[str, str, int]] = []
    unit: UnitDatapath | None = None
    with contextlib.ExitStack() as stack:
        try:
            exe = build_blast(tmp)
            os.mkdir(cg_root)
            for path in cgs.values():
                os.mkdir(path)
            ns = stack.enter_context(NetNS(ADDRESSES))
            sink = ns.popen(
                [sys.executable, "-c", SINK, *ADDRESSES],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            if sink.stdout is None or sink.stdout.readline().strip() != "ready":
                raise SystemExit("the receiving sockets did not come up")
            # return 1 on both hooks
            floor = Program.load(return_one(), name="pps_return1")
            fd = open_cgroup(cgs["return1"])
            try:
                for attach in ATTACH.values():
                    links.append(CgroupLink.create(fd, floor, attach))
            finally:
                os.close(fd)
                floor.close()
            # a real unit
            spec = Spec(deny=(ipaddress.ip_network(f"{DENIED['ipacctd']}/32"),), accounting=True)
            unit = UnitDatapath.create(pin_dir, cgs["ipacctd"], spec)
            cases = ["bare", "return1", "ipacctd"]
            if not args.no_systemd:
                ing, eg = stack.enter_context(systemd_programs())
                for direction, prog in (("ingress", ing), ("egress", eg)):
                    pid = prog.info().id
                    bpftool("cgroup", "attach", cgs["systemd"], direction, "id", str(pid), "multi")
                    attached_sd.append((cgs["systemd"], direction, pid))
                cases.append("systemd")
            with open("/proc/loadavg") as f:
                load = " ".join(f.read().split()[:3])
            out(
                f"# real send path (blast.c, sendmmsg of 64-byte UDP datagrams, {args.packets} "
                f"per run): kernel {platform.release()}, {os.cpu_count()} CPUs, "
                f"{args.rounds} interleaved rounds; load average at start {load}"
            )
            out(
                "# ipacctd: a unit's programs as UnitDatapath.create builds them (accounting, "
                "1-entry deny list, denied-address log); systemd: systemd 252's programs "
                "of sdref-long.service (same policy shape) attached by id"
            )
            rates: dict[tuple[str, str], list[float]] = {}
            for rnd in range(args.rounds):
                order = cases[rnd % len(cases) :] + cases[: rnd % len(cases)]
                for path in ("pass", "drop"):
                    for case in order:
                        target = PASS_TARGET if path == "pass" else DENIED.get(case, PASS_TARGET)
                        rate, errors = blast(ns, exe, cgs[case], target, args.packets)
                        if path == "pass" and errors:
                            raise SystemExit(f"{case}: {errors} failed sends on the pass path")
                        if path == "drop" and case in DENIED and errors == 0:
                            raise SystemExit(f"{case}: the denied address was not dropped")
                        rates.setdefault((path, case), []).append(rate)
            with open("/proc/loadavg") as f:
                load = " ".join(f.read().split()[:3])
            out(f"# load average at end {load}")
            for path in ("pass", "drop"):
                bare = rates[path, "bare"]
                out()
                if path == "pass":
                    out(f"## pass path: sends to {PASS_TARGET} (in no list); median rate / bare")
                else:
                    out(
                        "## drop path: a flood of the address each unit denies (EPERM per "
                        "call); bare and return1 send to a bound address instead (scale only)"
                    )
                for case in cases:
                    r = rates[path, case]
                    per_round = [a / b for a, b in zip(r, bare, strict=True)]
                    out(
                        f"{case:8} x bare: median {statistics.median(per_round):.3f}  "
                        f"(rounds: {' '.join(f'{x:.3f}' for x in per_round)})"
                    )
                pairs = [("ipacctd", "return1")] if path == "pass" else []
                if "systemd" in cases:
                    pairs.append(("ipacctd", "systemd"))
                for a, b in pairs:
                    per_round = [x / y for x, y in zip(rates[path, a], rates[path, b], strict=True)]
                    out(
                        f"{a} / {b}: median {statistics.median(per_round):.3f}  "
                        f"(rounds: {' '.join(f'{x:.3f}' for x in per_round)})"
                    )
        finally:
            for cg, direction, pid in attached_sd:
                with contextlib.suppress(subprocess.CalledProcessError):
                    bpftool("cgroup", "detach", cg, direction, "id", str(pid))
            for link in links:
                with contextlib.suppress(OSError):
                    link.detach()
                link.close()
            if unit is not None:
                unit.remove()
            stack.close()  # the namespace (and its processes) and systemd-ref go first
            for path in cgs.values():
                with contextlib.suppress(OSError):
                    os.rmdir(path)
            with contextlib.suppress(OSError):
                os.rmdir(cg_root)
            shutil.rmtree(tmp, ignore_errors=True)
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(report) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
