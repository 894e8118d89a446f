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

Rounds interleave the cases (the order rotates per round); reported are ratios between
cases measured in the same round (to ``bare``, ipacctd / return1, ipacctd / systemd) and
their medians, never absolute packet rates, which depend on the machine. Two clocks:
packets per CPU second of the sender (user + system time from wait4: the loopback
delivery runs in the sender's context too), robust against other work on a busy machine,
and packets per second of wall time as blast reports it. The load average is printed.

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

from common import Report  # noqa: E402
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


def blast(ns: NetNS, exe: str, cg: str, target: str, packets: int) -> tuple[float, float, int]:
    """(packets per second of wall time, packets per CPU second, failed calls) of one run
    inside cgroup ``cg``. The CPU time (user + system of blast, which also pays for the
    loopback delivery it triggers) is what the programs cost the sender; unlike the wall
    clock, it does not count the time other work on a busy machine takes the CPU away."""
    proc = ns.popen(
        [exe, target, str(packets), "64"],
        cg,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    out = proc.stdout.read() if proc.stdout else ""
    err = proc.stderr.read() if proc.stderr else ""
    for f in (proc.stdout, proc.stderr):
        if f:
            f.close()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"blast failed in {cg}: {err}{out}")
    rate, _, errors, _ = out.split()
    cpu = usage.ru_utime + usage.ru_stime
    return float(rate), packets / cpu if cpu > 0 else float("nan"), int(errors)


def _ratio_line(out, label: str, a: list[float], b: list[float]) -> None:
    per_round = [x / y for x, y in zip(a, b, strict=True)]
    out(
        f"{label:20} {statistics.median(per_round):6.3f}  "
        f"({' '.join(f'{x:.3f}' for x in per_round)})"
    )


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
    out = Report()

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
            rates: dict[tuple[str, str, str], list[float]] = {}
            for rnd in range(args.rounds):
                order = cases[rnd % len(cases) :] + cases[: rnd % len(cases)]
                for path in ("pass", "drop"):
                    for case in order:
                        target = PASS_TARGET if path == "pass" else DENIED.get(case, PASS_TARGET)
                        rate, per_cpu, errors = blast(ns, exe, cgs[case], target, args.packets)
                        if path == "pass" and errors:
                            raise SystemExit(f"{case}: {errors} failed sends on the pass path")
                        if path == "drop" and case in DENIED and errors == 0:
                            raise SystemExit(f"{case}: the denied address was not dropped")
                        rates.setdefault((path, case, "wall"), []).append(rate)
                        rates.setdefault((path, case, "cpu"), []).append(per_cpu)
            with open("/proc/loadavg") as f:
                load = " ".join(f.read().split()[:3])
            out(f"# load average at end {load}")
            for path in ("pass", "drop"):
                out()
                if path == "pass":
                    out(f"## pass path: sends to {PASS_TARGET} (in no list)")
                else:
                    out(
                        "## drop path: a flood of the address each unit denies (EPERM per "
                        "call); bare and return1 send to a bound address instead (scale only)"
                    )
                for clock, what in (
                    ("cpu", "packets per CPU second of the sender"),
                    ("wall", "packets per second of wall time (blast's own figure)"),
                ):
                    out(f"# {what}: median of per-round ratios (per-round values)")
                    bare = rates[path, "bare", clock]
                    for case in cases:
                        _ratio_line(out, f"{case} / bare", rates[path, case, clock], bare)
                    if path == "pass":
                        _ratio_line(
                            out,
                            "ipacctd / return1",
                            rates[path, "ipacctd", clock],
                            rates[path, "return1", clock],
                        )
                    if "systemd" in cases:
                        _ratio_line(
                            out,
                            "ipacctd / systemd",
                            rates[path, "ipacctd", clock],
                            rates[path, "systemd", clock],
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
    out.save(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
