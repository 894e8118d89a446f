"""Which remote addresses a unit's firewall denied, and how often: a bounded LRU hash with
one per-CPU slot per direction in front of it.

Key (20 bytes): u8 IP version, u8 direction (0 ingress, 1 egress), u16 zero, then the
remote address (16 bytes; an IPv4 address in the first four). Value (24 bytes): u64
packets, u64 bytes, u64 time of the last one (CLOCK_MONOTONIC ns, coarse: the tick the
packet came in). The maps exist only for units with a deny list, are pinned beside the
counters and survive policy changes; when the hash is full the least recently denied
address makes room. Only the drop (and audit) path touches them, so allowed traffic costs
nothing more.

Why the slots: a hash update per dropped packet (hash the key, find the bucket, two locked
adds on a value other CPUs share, a clock read) cost 65-80 ns here, three times systemd's
whole drop path. A flood of denied packets is nearly always to one address, so each CPU
keeps the address it denied last, per direction, with the packets, bytes and time not yet
added to the hash (48 bytes: the 20-byte key, 4 bytes padding, then the hash's value
layout). A packet for that address adds to the slot in place: an inlined per-CPU array
lookup, a key compare and two adds, no hash. A packet for another address first adds the
slot's pending counts to the hash (write-combining), then takes the slot over. Readers
merge the hash with the pending slots (:class:`Log`): nothing is lost, and what
``status``, ``inspect`` and the metrics show is the same as with a hash update per packet.

Concurrency: a slot belongs to one CPU, so no other CPU ever writes it; its counts are
added with plain loads and stores (two ``lock add`` cost as much as the rest of the drop
path). The one thing that can interleave is a packet of a nested context on the same CPU
(a softirq interrupting a process-context send, or a preempting task): it may lose its
count in the log or have it added to the neighbouring address. The unit's dropped counters
(the counters map, ``lock add``) stay exact; this log is the breakdown by address.
Measured with BPF_PROG_TEST_RUN (bench/datapath.py): a flood of one denied address costs
about 7 ns more than the drop path without a log; a packet that takes a slot over costs
what a hash update costs.
"""

from __future__ import annotations

import ipaddress
import os
import struct
import time
from collections.abc import Iterator
from typing import Any

from ipacctd.bpf import asm
from ipacctd.bpf.asm import DW, FP, R0, R1, R2, R3, R4, R6, R7, Alu, Helper, Insn, Jmp, Label, W
from ipacctd.bpf.maps import LRUHashMap, Map, PerCPUArrayMap, possible_cpus
from ipacctd.bpf.types import NOEXIST
from ipacctd.datapath.counters import Direction

MAP_NAME = "ipacctd_denied"
PIN = "denied"
KEY_SIZE = 20
VALUE_SIZE = 24
MAX_ENTRIES = 256

SLOTS_NAME = "ipacctd_denslot"
SLOTS_PIN = "denied_slots"
SLOT_SIZE = 48
SLOT_VALUE = 24  # offset of the value (packets, bytes, last) in a slot

KTIME_GET_COARSE_NS = 160  # bpf_ktime_get_coarse_ns: the tick's time, no clock read

# Stack slot of the per-CPU slot index (the lookup key lives at fp-8 / fp-20, the address
# at fp-4 / fp-16, the strategies' probe keys above fp-48).
INDEX_OFF = -52


class Log:
    """A unit's denied-addresses log: the LRU hash and the per-CPU slots in front of it.

    ``slots`` is None for a log pinned before the slots existed (it is added when the
    unit's programs are next built). Reading it (:meth:`items_raw`) merges both.
    """

    def __init__(self, table: Map, slots: PerCPUArrayMap | None) -> None:
        self.table = table
        self.slots = slots

    @property
    def fd(self) -> int:
        return self.table.fd

    def pin(self, path: str) -> None:
        """Pin the hash at ``path`` and the slots beside it."""
        self.table.pin(path)
        if self.slots is not None:
            self.slots.pin(os.path.join(os.path.dirname(path), SLOTS_PIN))

    def close(self) -> None:
        self.table.close()
        if self.slots is not None:
            self.slots.close()

    def __enter__(self) -> Log:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def items_raw(self) -> Iterator[tuple[bytes, bytes]]:
        """(key, value) of every address: the hash's counts plus what the slots hold.

        The hash is read before the slots: a take-over between the two reads moves
        counts from a slot into the hash, so a reader may miss them once, never count
        them twice.
        """
        merged: dict[bytes, list[int]] = {}
        for key, value in self.table.items_raw():
            merged[key] = list(struct.unpack_from("=QQQ", value))
        for key, packets, nbytes, last in pending(self.slots) if self.slots else ():
            got = merged.setdefault(key, [0, 0, 0])
            got[0] += packets
            got[1] += nbytes
            got[2] = max(got[2], last)
        for key, (packets, nbytes, last) in merged.items():
            yield key, struct.pack("=QQQ", packets, nbytes, last)


def pending(slots: PerCPUArrayMap) -> list[tuple[bytes, int, int, int]]:
    """(key, packets, bytes, last) not yet added to the hash, one per busy slot."""
    stride = (slots.value_size + 7) & ~7
    out = []
    for direction in Direction:
        raw = slots.lookup_raw(struct.pack("=I", int(direction)))
        if raw is None:
            continue
        for cpu in range(possible_cpus()):
            slot = raw[cpu * stride : cpu * stride + SLOT_SIZE]
            packets, nbytes, last = struct.unpack_from("=QQQ", slot, SLOT_VALUE)
            if packets and slot[0] in (4, 6):
                out.append((slot[:KEY_SIZE], packets, nbytes, last))
    return out


def create_map() -> Log:
    """A new, empty denied-addresses log (hash and slots)."""
    table = LRUHashMap.new(KEY_SIZE, VALUE_SIZE, MAX_ENTRIES, MAP_NAME)
    try:
        slots = create_slots()
    except BaseException:
        table.close()
        raise
    return Log(table, slots)


def create_slots() -> PerCPUArrayMap:
    """The per-CPU slots: one per direction."""
    return PerCPUArrayMap.new(SLOT_SIZE, len(Direction), SLOTS_NAME)


def open_pinned(path: str, create: bool = False) -> Log:
    """Open the log whose hash is pinned at ``path``; with ``create``, make and pin its
    slots when they are missing (a log pinned by an older version)."""
    table = LRUHashMap.open_pinned(path)
    slots_path = os.path.join(os.path.dirname(path), SLOTS_PIN)
    try:
        if os.path.exists(slots_path):
            slots: PerCPUArrayMap | None = PerCPUArrayMap.open_pinned(slots_path)
        elif create:
            slots = create_slots()
            try:
                slots.pin(slots_path)
            except BaseException:
                slots.close()
                raise
        else:
            slots = None
    except BaseException:
        table.close()
        raise
    return Log(table, slots)


def record(
    log: Log, direction: Direction, version: int, addr_off: int, done: str
) -> list[Insn | Label]:
    """Instructions adding one packet for the address at ``addr_off`` (stack) to the log.

    Clobbers r0-r5 and r7; expects r6 = skb. Jumps to ``done`` when finished.
    """
    if log.slots is None:
        raise ValueError("the denied-addresses log has no per-CPU slots")
    alen = 4 if version == 4 else 16
    head = version | (int(direction) << 8)
    tag = f"denied_v{version}"
    miss, fill, insert = f"{tag}_miss", f"{tag}_fill", f"{tag}_insert"
    p: list[Insn | Label] = [
        asm.st_imm(W, FP, INDEX_OFF, int(direction)),
        asm.ld_map(R1, log.slots),
        asm.mov64_reg(R2, FP),
        asm.alu64_imm(Alu.ADD, R2, INDEX_OFF),
        asm.call(Helper.map_lookup_elem),  # inlined by the verifier: per-CPU array
        asm.jmp_imm(Jmp.JEQ, R0, 0, done),
        asm.mov64_reg(R7, R0),
        asm.ldx(W, R1, R7, 0),
        asm.jmp_imm(Jmp.JNE, R1, head, miss),
    ]
    for i in range(0, alen, 4):
        p += [
            asm.ldx(W, R1, R7, 4 + i),
            asm.ldx(W, R2, FP, addr_off + i),
            asm.jmp_reg(Jmp.JNE, R1, R2, miss),
        ]
    # The slot holds this address: add in place (plain adds, see the module's notes).
    p += [
        asm.ldx(DW, R1, R7, SLOT_VALUE),
        asm.ldx(W, R2, R6, 0),
        asm.ldx(DW, R3, R7, SLOT_VALUE + 8),
        asm.alu64_imm(Alu.ADD, R1, 1),
        asm.alu64_reg(Alu.ADD, R3, R2),
        asm.stx(DW, R7, SLOT_VALUE, R1),
        asm.stx(DW, R7, SLOT_VALUE + 8, R3),
        asm.call(KTIME_GET_COARSE_NS),
        asm.stx(DW, R7, SLOT_VALUE + 16, R0),
        asm.ja(done),
        # Another address: add the slot's pending counts to the hash, then take it over.
        Label(miss),
        asm.ldx(DW, R1, R7, SLOT_VALUE),
        asm.jmp_imm(Jmp.JEQ, R1, 0, fill),
        *_flush(log.table, insert, fill),
        Label(fill),
        asm.st_imm(W, R7, 0, head),
    ]
    for i in range(0, 16, 4):  # the address, zero-padding IPv4
        if i < alen:
            p += [asm.ldx(W, R1, FP, addr_off + i), asm.stx(W, R7, 4 + i, R1)]
        else:
            p.append(asm.st_imm(W, R7, 4 + i, 0))
    p += [
        asm.st_imm(DW, R7, SLOT_VALUE, 1),
        asm.ldx(W, R1, R6, 0),
        asm.stx(DW, R7, SLOT_VALUE + 8, R1),
        asm.call(KTIME_GET_COARSE_NS),
        asm.stx(DW, R7, SLOT_VALUE + 16, R0),
        asm.ja(done),
    ]
    return p


def _flush(table: Map, insert: str, fill: str) -> list[Insn | Label]:
    """Add the slot at r7 (key, then packets, bytes, last) to the hash; go to ``fill``."""
    add = [
        asm.ldx(DW, R1, R7, SLOT_VALUE),
        asm.atomic_add(DW, R0, 0, R1),
        asm.ldx(DW, R1, R7, SLOT_VALUE + 8),
        asm.atomic_add(DW, R0, 8, R1),
        asm.ldx(DW, R1, R7, SLOT_VALUE + 16),
        asm.stx(DW, R0, 16, R1),
        asm.ja(fill),
    ]
    lookup = [
        asm.ld_map(R1, table),
        asm.mov64_reg(R2, R7),  # the slot starts with the key
        asm.call(Helper.map_lookup_elem),
    ]
    return [
        *lookup,
        asm.jmp_imm(Jmp.JEQ, R0, 0, insert),
        *add,
        Label(insert),
        asm.ld_map(R1, table),
        asm.mov64_reg(R2, R7),
        asm.mov64_reg(R3, R7),
        asm.alu64_imm(Alu.ADD, R3, SLOT_VALUE),  # the slot's value has the hash's layout
        asm.mov64_imm(R4, NOEXIST),
        asm.call(Helper.map_update_elem),
        asm.jmp_imm(Jmp.JEQ, R0, 0, fill),
        # Another CPU inserted the address meanwhile: add to its entry.
        *lookup,
        asm.jmp_imm(Jmp.JEQ, R0, 0, fill),
        *add,
    ]


def decode(m: Map | Log) -> list[dict[str, Any]]:
    """Entries as dicts, most packets first (of a :class:`Log`: hash and slots merged)."""
    now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    out = []
    for key, value in m.items_raw():
        version, direction = key[0], key[1]
        addr = ipaddress.IPv4Address(key[4:8]) if version == 4 else ipaddress.IPv6Address(key[4:20])
        packets, nbytes, last = struct.unpack("=QQQ", value[:24])
        out.append(
            {
                "address": str(addr),
                "direction": Direction(direction).name.lower(),
                "packets": packets,
                "bytes": nbytes,
                "last_seen_ago": max(0.0, (now - last) / 1e9) if last else None,
            }
        )
    out.sort(key=lambda e: (-e["packets"], e["address"]))
    return out
