#!/usr/bin/env python3
"""What a packet would pay if one program pair served every cgroup of a glob unit file.

Issue 13 asks for 10,000 cgroups of a glob unit bound in <= 10 s. Each bound cgroup now gets
its own programs (two verifier runs, ~0.73 ms: bench/results-globbind.txt), because a
program finds its counters by a map fd baked into its code: one counter map, one program.
Programs shared by all cgroups of one file would be loaded once; each packet would then
have to find its cgroup's counters at run time. The ways the kernel offers, each timed here
under BPF_PROG_TEST_RUN beside a ``return 1`` floor (paired runs, alternating order, as
bench/datapath.py does), counting bytes and packets as a unit's programs do:

* ``array``: what ipacctd does now — a per-CPU array with one slot, its fd in the code (the
  verifier inlines the lookup to an address computation);
* ``cgroup id -> hash``: ``bpf_skb_cgroup_id(skb)`` then a per-CPU hash keyed by it,
  holding 10,000 cgroups (a cgroup below the bound one — a container's own sub-cgroups —
  would have to be found with ``bpf_skb_ancestor_cgroup_id`` instead: timed too);
* ``cgroup storage``: ``bpf_get_local_storage`` on a per-CPU cgroup-storage map, one
  storage per (cgroup, attach type) the program is attached to. Cheapest, but the kernel
  frees a cgroup's storage when the program leaves the cgroup — when the cgroup is removed
  and its last socket closed — so the final counts of a removed cgroup would be lost
  (ipacctd's counters outlive the cgroup: "nothing is lost").

The result is put beside the pass and drop paths of bench/results-datapath.txt (what a unit's
programs cost above the floor now, and systemd's), in ns.

Run as root:  python3 bench/shared_counters.py [--repeat N] [--runs N] [--out FILE]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import struct
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, str(ROOT))

from common import publish  # noqa: E402

from ipacctd import cgroup  # noqa: E402
from ipacctd.bpf import asm  # noqa: E402
from ipacctd.bpf.maps import Map, PerCPUArrayMap, possible_cpus  # noqa: E402
from ipacctd.bpf.programs import Program, return_one  # noqa: E402
from ipacctd.bpf.types import AttachType, MapType  # noqa: E402

# Helper ids (include/uapi/linux/bpf.h, __BPF_FUNC_MAPPER) beyond those ipacctd uses.
SKB_CGROUP_ID = 79
GET_LOCAL_STORAGE = 81
SKB_ANCESTOR_CGROUP_ID = 83
# enum bpf_map_type values beyond ipacctd's MapType table (bench only).
PERCPU_CGROUP_STORAGE = 21

VALUE = 16  # bytes, packets: two u64
CGROUPS = 10_000  # entries of the shared hash: a glob unit file's cgroups

# A UDP datagram in an Ethernet frame, as bench/datapath.py sends (the counted length).
FRAME = (
    b"\0" * 12 + b"\x08\x00"
    + struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + 8 + 64, 0, 0, 64, 17, 0,
                  bytes([192, 0, 2, 1]), bytes([198, 51, 100, 2]))
    + struct.pack("!HHHH", 40000, 9, 8 + 64, 0) + b"x" * 64
)  # fmt: skip


class _Type(int):
    """A map type MapType does not list (it names the ones ipacctd uses)."""

    def __new__(cls, value: int, name: str) -> _Type:
        obj = super().__new__(cls, value)
        obj.name = name  # type: ignore[attr-defined]
        return obj


class PerCPUHash(Map):
    map_type = MapType.PERCPU_HASH

    @property
    def _value_buf_size(self) -> int:  # one value per possible CPU, as PerCPUArrayMap's
        return ((self.value_size + 7) & ~7) * possible_cpus()


class PerCPUCgroupStorage(Map):
    map_type = _Type(PERCPU_CGROUP_STORAGE, "PERCPU_CGROUP_STORAGE")


def count(into: asm.Reg) -> list:
    """bytes += skb->len; packets += 1 on the u64 pair at ``into`` (this CPU's copy)."""
    return [
        asm.ldx(asm.W, asm.R1, asm.R6, 0),  # __sk_buff.len
        asm.ldx(asm.DW, asm.R2, into, 0),
        asm.alu64_reg(asm.Alu.ADD, asm.R2, asm.R1),
        asm.stx(asm.DW, into, 0, asm.R2),
        asm.ldx(asm.DW, asm.R2, into, 8),
        asm.alu64_imm(asm.Alu.ADD, asm.R2, 1),
        asm.stx(asm.DW, into, 8, asm.R2),
        asm.Label("out"),
        asm.mov64_imm(asm.R0, 1),
        asm.exit_(),
    ]


def lookup(bpf_map: Map, key_insns: list) -> list:
    """R0 = the map's value for the key at fp-8 (set up by ``key_insns``); out if none."""
    return [
        *key_insns,
        asm.mov64_reg(asm.R2, asm.FP),
        asm.alu64_imm(asm.Alu.ADD, asm.R2, -8),
        asm.ld_map(asm.R1, bpf_map),
        asm.call(asm.Helper.map_lookup_elem),
        asm.jmp_imm(asm.Jmp.JEQ, asm.R0, 0, "out"),
    ]


def own_cgroup_id_and_level() -> tuple[int, int]:
    """The cgroup2 id and depth of this process's cgroup (the test run's socket is ours)."""
    path = cgroup.own_cgroup()
    fs = cgroup.fs_path(path)
    level = len([p for p in path.split("/") if p])
    return os.stat(fs).st_ino, level


def build(level: int) -> tuple[dict[str, Program], list[Map]]:
    ncpu = possible_cpus()
    arr = PerCPUArrayMap.new(VALUE, 1, "sc_array")
    hsh = PerCPUHash.create(8, VALUE, CGROUPS + 1, "sc_hash")
    sto = PerCPUCgroupStorage.create(8, VALUE, 0, "sc_storage")
    cg_id, _ = own_cgroup_id_and_level()
    rng = random.Random(7)
    zero = b"\0" * (((VALUE + 7) & ~7) * ncpu)
    for _ in range(CGROUPS):  # other cgroups of the same unit file
        hsh.update_raw(struct.pack("=Q", rng.getrandbits(63) | 1 << 40), zero)
    hsh.update_raw(struct.pack("=Q", cg_id), zero)
    key0 = [asm.st_imm(asm.DW, asm.FP, -8, 0)]
    cgid = [asm.mov64_reg(asm.R1, asm.R6), asm.call(SKB_CGROUP_ID),
            asm.stx(asm.DW, asm.FP, -8, asm.R0)]  # fmt: skip
    anc = [asm.mov64_reg(asm.R1, asm.R6), asm.mov64_imm(asm.R2, level),
           asm.call(SKB_ANCESTOR_CGROUP_ID), asm.stx(asm.DW, asm.FP, -8, asm.R0)]  # fmt: skip
    head = [asm.mov64_reg(asm.R6, asm.R1)]
    sources = {
        "array (now: one counter map per cgroup)": head + lookup(arr, key0) + count(asm.R0),
        "cgroup id -> per-CPU hash of 10k": head + lookup(hsh, cgid) + count(asm.R0),
        "ancestor cgroup id -> per-CPU hash of 10k": head + lookup(hsh, anc) + count(asm.R0),
        "per-CPU cgroup storage": [
            *head, asm.ld_map(asm.R1, sto), asm.mov64_imm(asm.R2, 0),
            asm.call(GET_LOCAL_STORAGE), *count(asm.R0),
        ],
    }  # fmt: skip
    progs = {
        label: Program.load(code, attach_type=AttachType.CGROUP_INET_EGRESS, name="sc")
        for label, code in sources.items()
    }
    return progs, [arr, hsh, sto]


def packets_counted(hsh: Map, cg_id: int) -> int:
    raw = hsh.lookup_raw(struct.pack("=Q", cg_id)) or b""
    stride = (VALUE + 7) & ~7
    return sum(struct.unpack_from("=Q", raw, i * stride + 8)[0]
               for i in range(len(raw) // stride))  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=200_000, help="runs per BPF_PROG_TEST_RUN")
    ap.add_argument("--runs", type=int, default=15, help="paired rounds per program")
    ap.add_argument("--out", help="also write the report to this file")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root (loads BPF programs)")
    cg_id, level = own_cgroup_id_and_level()
    progs, maps = build(level)
    floor = Program.load(return_one(), attach_type=AttachType.CGROUP_INET_EGRESS, name="floor")
    above: dict[str, list[float]] = {label: [] for label in progs}
    try:
        before = packets_counted(maps[1], cg_id)
        for label, prog in progs.items():  # every program passes the packet
            if prog.test_run(FRAME, 1).retval != 1:
                raise SystemExit(f"{label}: did not pass the packet")
        # The hash programs found this cgroup's entry (not the miss branch): both counted.
        if packets_counted(maps[1], cg_id) - before != 2:
            raise SystemExit("the cgroup-id programs did not find their cgroup's counters")
        for rnd in range(args.runs):
            for label, prog in progs.items():
                pair = (prog, floor) if rnd % 2 else (floor, prog)
                res = {p: p.test_run(FRAME, args.repeat).duration_ns for p in pair}
                above[label].append(res[prog] - res[floor])
    finally:
        for p in (*progs.values(), floor):
            p.close()
        for m in maps:
            m.close()
    med = {label: statistics.median(v) for label, v in above.items()}
    base = med["array (now: one counter map per cgroup)"]
    lines = [
        f"# bench/shared_counters.py, kernel {os.uname().release}, {os.cpu_count()} CPUs, "
        f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}",
        f"# {args.runs} paired rounds of {args.repeat} runs; ns per packet above a return-1 "
        f"floor (median); this cgroup's id {cg_id} at level {level}",
        f"{'counters found by':48} {'ns above floor':>14} {'vs array':>9}",
    ]
    for label, v in med.items():
        lines.append(f"{label:48} {v:14.1f} {v - base:+9.1f}")
    publish("\n".join(lines), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
