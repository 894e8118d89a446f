"""Which remote addresses a unit's firewall denied, and how often: a bounded LRU hash with
one per-CPU slot per direction in front of it; and the drop path that fills it and the unit's
dropped (or audit) counters.

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
added to the hash. A packet for that address adds to the slot in place; a packet for
another address first adds the slot's pending counts to the hash (write-combining), then
takes the slot over. Readers merge the hash with the pending slots (:class:`Log`).

The slot (SLOT_SIZE bytes, one per CPU and direction)::

    0   key[20]       the address the slot holds (the hash's key layout)
    20  u32 tick      low 32 bits of the jiffy whose time ``last`` holds
    24  u64 packets   pending: not yet added to the hash
    32  u64 bytes
    40  u64 last      CLOCK_MONOTONIC ns (coarse) of the last packet
    48  u32 busy      1 while a program on this CPU owns the slot and the direction's
                      dropped and audit counters (see below)
    52  u32 zero
    56  u64 deposits  how many deposits were made (a signal only)
    64  u64 x4        deposited (packets, bytes): dropped, audit

What a dropped packet costs, measured with BPF_PROG_TEST_RUN above a ``return 1`` floor
(bench/datapath.py, 1-entry deny list, this 2-CPU machine): each ``lock add`` about 5 ns,
a helper call that is not inlined (``bpf_ktime_get_coarse_ns``) about 5-7 ns (return
thunks), the verdict and the inlined per-CPU lookups about 3 ns, the slot about 3 ns.
The drop path with two ``lock add`` per packet for the dropped counters and a clock read
per packet was 1.55-1.8x systemd's whole drop path (a trie lookup and ``return 0``).

So the drop path of a slot of this layout adds with plain loads and stores under one
``xchg``, and reads the clock once per tick: 0.77-1.0x systemd's drop path above the floor
in the same rounds (bench/results-datapath.txt; the legacy path below, with the clock read
once per tick too, 1.2-1.6x). Why that is exact:

1. Other CPUs. A slot and a CPU's copy of the per-CPU counters value are written only by
   programs running on that CPU: the cgroup hooks run programs with migration disabled
   (``bpf_prog_run_array_cg``: ``migrate_disable(); rcu_read_lock();``), and a per-CPU
   lookup returns this CPU's copy. Userspace only reads them.
2. The same CPU. Migration is disabled, preemption is not: egress runs in process context
   with softirqs enabled (``ip_finish_output`` from ``sendmsg``), so a softirq (a TCP ACK,
   a timer) or, on a preemptible kernel (PREEMPT_DYNAMIC's full/lazy, PREEMPT_RT), another
   task may run the same unit's program on the same CPU between a load and its store. A
   plain add there would lose a count. Hence ``busy``: a program takes it with ``xchg``
   (one locked instruction, atomic against anything on this CPU) before its plain adds to
   the slot and to the direction's dropped (or audit) counters, and clears it with a plain
   store after them. Whoever finds it taken (it interrupted or preempted the owner)
   touches neither: it adds its address to the hash directly (atomic adds, the hash's own
   locking) and its counts to the slot's deposits with ``lock add`` (the owner never
   writes those with plain stores), then tries to fold them in itself (below).
3. Deposits reach the counters. Every program, after clearing ``busy``, reads ``deposits``;
   if it is not zero, and every depositor after depositing, takes ``busy`` again (a
   failure means another owner exists, which reads ``deposits`` after its own release),
   moves the deposits into the counters with ``xchg`` (deposit fields are only ever added
   to atomically or swapped out atomically) and clears ``busy`` again. A depositor writes
   bytes, then packets, then ``deposits``; so whatever the owner swaps out is whole or is
   picked up by the depositor's own try. Each round needs a new interruption inside the
   previous round's few instructions; after FOLD_ROUNDS rounds (never reached in practice)
   the rest stays deposited for the next packet on this CPU and direction, not lost.
   Two rounds: a third would need a third interruption of the same unit's program on the
   same CPU and direction inside the second round's ~30 instructions. Each round is
   verified once more at every load of the program (the verifier walks a bounded loop
   round by round): eight rounds were 224 of the 539 instructions the verifier walked
   for a one-address deny list, ~30 % of its load.
4. Every writer of those fields takes part. The dropped and audit counters of a direction
   are written only on a deny (a program without a deny list drops nothing: allow-only and
   empty lists pass everything; passed packets keep their ``lock add``), and the slots
   have this layout only when the log was made together with the unit's counters map
   (``UnitDatapath.create``, for a unit with a deny list from the start); a unit that has
   a log builds every program with it. So no program without the flag ever wrote those
   counters. A log added to a unit later (its first deny list came by ``set-property``)
   may follow programs of a version before the log that dropped with ``lock add``; a
   program mid-way through its plain adds, preempted by one of those during the swap,
   would lose its count. Such a log, and one pinned before this version (slots of
   LEGACY_SLOT_SIZE bytes, or none: :func:`open_pinned` adds legacy slots), keeps the
   legacy path: ``lock add`` on the counters (exact), and a slot whose plain adds can, in
   the nested case of 2, lose a count in the log (never in the counters).

The time: ``bpf_jiffies64`` is inlined by the verifier (one load); only when the jiffy
changed since the slot's ``tick`` does the program call ``bpf_ktime_get_coarse_ns``, whose
value moves at the same tick. ``last`` may lag one tick behind when a packet falls between
the jiffy's update and the timekeeper's (the coarse clock is tick-grained anyway).

Readers read the hash before the slots: a take-over between the two reads moves counts
from a slot into the hash, so a reader may miss them once, never count them twice.
"""

from __future__ import annotations

import ipaddress
import os
import struct
import time
from collections.abc import Iterator

from ipacctd.bpf import asm
from ipacctd.bpf.asm import DW, FP, R0, R1, R2, R3, R4, R6, R7, R8, R9, Alu, Insn, Jmp, Label, W
from ipacctd.bpf.maps import LRUHashMap, Map, PerCPUArrayMap, possible_cpus
from ipacctd.bpf.types import NOEXIST
from ipacctd.datapath import counters, skb
from ipacctd.datapath.counters import Direction
from ipacctd.record import Record

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing
if TYPE_CHECKING:
    from typing import Any

MAP_NAME = "ipacctd_denied"
PIN = "denied"
KEY_SIZE = 20
VALUE_SIZE = 24
MAX_ENTRIES = 256

SLOTS_NAME = "ipacctd_denslot"
SLOTS_PIN = "denied_slots"
SLOT_SIZE = 96  # the layout in the module's docstring
LEGACY_SLOT_SIZE = 48  # key, tick (then unused padding), value: no busy flag, no deposits
SLOT_TICK = 20
SLOT_VALUE = 24  # offset of the value (packets, bytes, last) in a slot
SLOT_BUSY = 48
SLOT_DEPOSITS = 56
SLOT_DEPOSIT = {"dropped": 64, "audit": 80}  # (packets, bytes) deposited per kind
FOLD_ROUNDS = 2  # why two: the module's docstring, 3

JIFFIES64 = 118  # bpf_jiffies64: inlined by the verifier into one load of jiffies_64
KTIME_GET_COARSE_NS = 160  # bpf_ktime_get_coarse_ns: the tick's time, no clock read

# Stack: the per-CPU slot index and the counters' key (the lookup key lives at fp-8 /
# fp-20, the address at fp-4 / fp-16, the strategies' probe keys above fp-48), and the
# hash key and value a program builds when it finds the slot busy.
INDEX_OFF = -52
ZERO_OFF = -56
KEY_OFF = -80
VAL_OFF = -104


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
            slot = raw[cpu * stride : cpu * stride + slots.value_size]
            packets, nbytes, last = struct.unpack_from("=QQQ", slot, SLOT_VALUE)
            if packets and slot[0] in (4, 6):
                out.append((slot[:KEY_SIZE], packets, nbytes, last))
    return out


def create_map(guarded: bool = True) -> Log:
    """A new, empty denied-addresses log (hash and slots).

    ``guarded``: slots with the busy flag, whose drop path adds with plain stores. Pass
    False for a log added to a unit whose counters map programs without the flag may have
    written (see the module's docstring, 4): it gets legacy slots.
    """
    table = LRUHashMap.new(KEY_SIZE, VALUE_SIZE, MAX_ENTRIES, MAP_NAME)
    try:
        slots = create_slots(SLOT_SIZE if guarded else LEGACY_SLOT_SIZE)
    except BaseException:
        table.close()
        raise
    return Log(table, slots)


def create_slots(size: int = LEGACY_SLOT_SIZE) -> PerCPUArrayMap:
    """The per-CPU slots: one per direction, of ``size`` bytes (SLOT_SIZE or legacy)."""
    return PerCPUArrayMap.new(size, len(Direction), SLOTS_NAME)


def guarded(log: Log) -> bool:
    """Whether the log's slots have the busy flag (the cheap, exact drop path)."""
    return log.slots is not None and log.slots.value_size == SLOT_SIZE


def open_pinned(path: str, create: bool = False) -> Log:
    """Open the log whose hash is pinned at ``path``; with ``create``, make and pin its
    slots when they are missing (a log pinned by an older version: legacy slots, as its
    programs added to the counters without the busy flag)."""
    table = LRUHashMap.open_pinned(path)
    slots_path = os.path.join(os.path.dirname(path), SLOTS_PIN)
    try:
        if os.path.exists(slots_path):
            slots: PerCPUArrayMap | None = PerCPUArrayMap.open_pinned(slots_path)
        elif create:
            slots = create_slots(LEGACY_SLOT_SIZE)
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


def _time(slot: asm.Reg, tick_done: str) -> list[Insn | Label]:
    """Store the packet's time in the slot at ``slot``: read the clock only when the jiffy
    moved since the slot's tick (bpf_jiffies64 is one inlined load, the clock a call)."""
    return [
        asm.call(JIFFIES64),
        asm.ldx(W, R1, slot, SLOT_TICK),
        asm.jmp32_reg(Jmp.JEQ, R0, R1, tick_done),  # same tick: ``last`` holds its time
        asm.stx(W, slot, SLOT_TICK, R0),
        asm.call(KTIME_GET_COARSE_NS),
        asm.stx(DW, slot, SLOT_VALUE + 16, R0),
        Label(tick_done),
    ]


def _same_address(head: int, alen: int, addr_off: int, miss: str) -> list[Insn | Label]:
    """Go to ``miss`` unless the slot at r7 holds ``head`` and the address at fp+addr_off."""
    p: list[Insn | Label] = [asm.ldx(W, R1, R7, 0), asm.jmp_imm(Jmp.JNE, R1, head, miss)]
    for i in range(0, alen, 4):
        p += [
            asm.ldx(W, R1, R7, 4 + i),
            asm.ldx(W, R2, FP, addr_off + i),
            asm.jmp_reg(Jmp.JNE, R1, R2, miss),
        ]
    return p


def _add_to_slot(tag: str) -> list[Insn | Label]:
    """slot(r7).packets += 1, .bytes += skb->len, time: plain loads and stores."""
    return [
        asm.ldx(DW, R1, R7, SLOT_VALUE),
        asm.ldx(W, R2, R6, skb.LEN),
        asm.ldx(DW, R3, R7, SLOT_VALUE + 8),
        asm.alu64_imm(Alu.ADD, R1, 1),
        asm.alu64_reg(Alu.ADD, R3, R2),
        asm.stx(DW, R7, SLOT_VALUE, R1),
        asm.stx(DW, R7, SLOT_VALUE + 8, R3),
        *_time(R7, f"{tag}_ticked"),
    ]


def _take_over(
    log: Log, head: int, alen: int, addr_off: int, tag: str, done: str
) -> list[Insn | Label]:
    """The slot at r7 holds another address: add its pending counts to the hash, then make
    it this packet's (1 packet, skb->len bytes, now). Goes to ``done``."""
    assert log.slots is not None
    fill, insert = f"{tag}_fill", f"{tag}_insert"
    p: list[Insn | Label] = [
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
        asm.ldx(W, R1, R6, skb.LEN),
        asm.stx(DW, R7, SLOT_VALUE + 8, R1),
        asm.call(JIFFIES64),
        asm.stx(W, R7, SLOT_TICK, R0),
        asm.call(KTIME_GET_COARSE_NS),
        asm.stx(DW, R7, SLOT_VALUE + 16, R0),
        asm.ja(done),
    ]
    return p


def _lookup_slot(log: Log, direction: Direction, missing: str) -> list[Insn | Label]:
    """r7 = this CPU's slot for ``direction`` (the per-CPU array lookup is inlined)."""
    assert log.slots is not None
    return [
        asm.st_imm(W, FP, INDEX_OFF, int(direction)),
        asm.ld_map(R1, log.slots),
        asm.mov64_reg(R2, FP),
        asm.alu64_imm(Alu.ADD, R2, INDEX_OFF),
        asm.call(asm.Helper.map_lookup_elem),
        asm.jmp_imm(Jmp.JEQ, R0, 0, missing),  # cannot happen: index < max_entries
        asm.mov64_reg(R7, R0),
    ]


def record(
    log: Log, direction: Direction, version: int, addr_off: int, done: str
) -> list[Insn | Label]:
    """Legacy slots (no busy flag): instructions adding one packet for the address at
    ``addr_off`` (stack) to the log; the caller counts the packet with ``lock add``.

    Clobbers r0-r5 and r7; expects r6 = skb. Jumps to ``done`` when finished.
    """
    if log.slots is None:
        raise ValueError("the denied-addresses log has no per-CPU slots")
    alen = 4 if version == 4 else 16
    head = version | (int(direction) << 8)
    tag = f"denied_v{version}"
    miss = f"{tag}_miss"
    return [
        *_lookup_slot(log, direction, done),
        *_same_address(head, alen, addr_off, miss),
        # The slot holds this address: add in place (plain adds, see the module's notes).
        *_add_to_slot(tag),
        asm.ja(done),
        # Another address: add the slot's pending counts to the hash, then take it over.
        Label(miss),
        *_take_over(log, head, alen, addr_off, tag, done),
    ]


class Entry(Record):
    """Where a deny jumps to: ``label``; the address is at fp+``addr_off`` for IPv
    ``version`` (None: no address, e.g. one that could not be read: counted, not logged)."""

    _fields = ("label", "version", "addr_off")
    __slots__ = _fields
    label: str
    version: int | None
    addr_off: int

    def __init__(self, label: str, version: int | None = None, addr_off: int = 0) -> None:
        set_ = object.__setattr__
        set_(self, "label", label)
        set_(self, "version", version)
        set_(self, "addr_off", addr_off)


def guarded_drop(
    log: Log,
    counters_map: PerCPUArrayMap,
    direction: Direction,
    kind: str,
    entries: list[Entry],
    verdict: str,
) -> tuple[list[Insn | Label], list[Insn | Label]]:
    """The drop path of a log with guarded slots (see the module's docstring): (hot, cold).

    For each entry: take this CPU's slot for ``direction`` (busy flag), add the packet to
    the slot (or take the slot over), add it to the counters of ``kind`` ("dropped" or
    "audit") with plain adds, release the slot, fold in deposits; then go to ``verdict``.
    Uses r7 = slot, r8 = this CPU's counters, r9; expects r6 = skb.
    """
    if not guarded(log):
        raise ValueError("guarded_drop needs slots with the busy flag")
    tag = f"dp_{direction.name.lower()}"
    count, deposit, fold = f"{tag}_count", f"{tag}_deposit", f"{tag}_fold"
    hot: list[Insn | Label] = []
    cold: list[Insn | Label] = []
    for n, entry in enumerate(entries):
        etag = f"{tag}_{entry.label}"
        busy = f"{etag}_busy" if entry.version is not None else deposit
        path = [Label(entry.label), *_take(log, counters_map, direction, verdict, busy)]
        if entry.version is not None:
            alen = 4 if entry.version == 4 else 16
            head = entry.version | (int(direction) << 8)
            miss = f"{etag}_miss"
            path += [
                *_same_address(head, alen, entry.addr_off, miss),
                *_add_to_slot(etag),
            ]
            cold += [
                Label(miss),
                *_take_over(log, head, alen, entry.addr_off, etag, count),
                Label(busy),
                *_to_hash(log, direction, entry.version, entry.addr_off, etag, deposit),
            ]
        path.append(asm.ja(count))
        if n == 0:  # the first entry falls through into the shared count
            hot += [*path, Label(count), *_owner_adds(direction, kind, fold, verdict)]
        else:
            cold += path
    cold += _deposit_and_fold(direction, kind, deposit, fold, verdict)
    return hot, cold


def _take(
    log: Log, counters_map: PerCPUArrayMap, direction: Direction, missing: str, busy: str
) -> list[Insn | Label]:
    """r7 = this CPU's slot, r8 = this CPU's counters; take the slot's busy flag, or go to
    ``busy`` when another context on this CPU holds it."""
    return [
        *_lookup_slot(log, direction, missing),
        asm.st_imm(W, FP, ZERO_OFF, 0),
        asm.ld_map(R1, counters_map),
        asm.mov64_reg(R2, FP),
        asm.alu64_imm(Alu.ADD, R2, ZERO_OFF),
        asm.call(asm.Helper.map_lookup_elem),  # inlined too
        asm.jmp_imm(Jmp.JEQ, R0, 0, missing),  # cannot happen: the counters' one index
        asm.mov64_reg(R8, R0),
        # One xchg: atomic against a softirq or a task on this CPU.
        asm.mov64_imm(R1, 1),
        asm.atomic_xchg(W, R7, SLOT_BUSY, R1),
        asm.jmp_imm(Jmp.JNE, R1, 0, busy),
    ]


def _owner_adds(direction: Direction, kind: str, fold: str, done: str) -> list[Insn | Label]:
    """The owner: counters of ``kind`` with plain adds, release, then look for deposits."""
    pkts, nbytes = counters.offsets(direction, kind)
    return [
        asm.ldx(DW, R1, R8, pkts),
        asm.ldx(W, R2, R6, skb.LEN),
        asm.ldx(DW, R3, R8, nbytes),
        asm.alu64_imm(Alu.ADD, R1, 1),
        asm.alu64_reg(Alu.ADD, R3, R2),
        asm.stx(DW, R8, pkts, R1),
        asm.stx(DW, R8, nbytes, R3),
        asm.st_imm(W, R7, SLOT_BUSY, 0),
        asm.ldx(DW, R1, R7, SLOT_DEPOSITS),
        asm.jmp_imm(Jmp.JNE, R1, 0, fold),
        asm.ja(done),
    ]


def _deposit_and_fold(
    direction: Direction, kind: str, deposit: str, fold: str, done: str
) -> list[Insn | Label]:
    """``deposit``: the slot is busy (this program interrupted or preempted its owner): add
    the counts with locked adds, bytes, then packets, then the signal. ``fold``: take the
    slot if free and move every kind's deposits into the counters; again while new ones
    arrived, up to FOLD_ROUNDS times. Then go to ``done``."""
    dep = SLOT_DEPOSIT[kind]
    p: list[Insn | Label] = [
        Label(deposit),
        asm.ldx(W, R1, R6, skb.LEN),
        asm.atomic_add(DW, R7, dep + 8, R1),
        asm.mov64_imm(R1, 1),
        asm.atomic_add(DW, R7, dep, R1),
        asm.atomic_add(DW, R7, SLOT_DEPOSITS, R1),
        Label(fold),
        asm.mov64_imm(R9, FOLD_ROUNDS),
        Label(f"{fold}_round"),
        asm.mov64_imm(R1, 1),
        asm.atomic_xchg(W, R7, SLOT_BUSY, R1),
        asm.jmp_imm(Jmp.JNE, R1, 0, done),  # its owner reads the deposits after release
        asm.mov64_imm(R1, 0),
        asm.atomic_xchg(DW, R7, SLOT_DEPOSITS, R1),
    ]
    for k, off in SLOT_DEPOSIT.items():
        for i, field in enumerate(counters.offsets(direction, k)):
            p += [
                asm.mov64_imm(R1, 0),
                asm.atomic_xchg(DW, R7, off + 8 * i, R1),
                asm.ldx(DW, R2, R8, field),
                asm.alu64_reg(Alu.ADD, R2, R1),
                asm.stx(DW, R8, field, R2),
            ]
    return [
        *p,
        asm.st_imm(W, R7, SLOT_BUSY, 0),
        asm.ldx(DW, R1, R7, SLOT_DEPOSITS),
        asm.jmp_imm(Jmp.JEQ, R1, 0, done),
        asm.alu64_imm(Alu.SUB, R9, 1),
        asm.jmp_imm(Jmp.JNE, R9, 0, f"{fold}_round"),
        asm.ja(done),
    ]


def _to_hash(
    log: Log, direction: Direction, version: int, addr_off: int, tag: str, done: str
) -> list[Insn | Label]:
    """Add one packet for the address at fp+addr_off straight to the hash (the slot is
    busy): atomic adds to its entry, or insert one. Goes to ``done``; keeps r7, r8."""
    alen = 4 if version == 4 else 16
    found, insert = f"{tag}_h_found", f"{tag}_h_insert"
    p: list[Insn | Label] = [asm.st_imm(W, FP, KEY_OFF, version | (int(direction) << 8))]
    for i in range(0, 16, 4):
        if i < alen:
            p += [asm.ldx(W, R1, FP, addr_off + i), asm.stx(W, FP, KEY_OFF + 4 + i, R1)]
        else:
            p.append(asm.st_imm(W, FP, KEY_OFF + 4 + i, 0))
    lookup = [
        asm.ld_map(R1, log.table),
        asm.mov64_reg(R2, FP),
        asm.alu64_imm(Alu.ADD, R2, KEY_OFF),
        asm.call(asm.Helper.map_lookup_elem),
    ]
    p += [
        *lookup,
        asm.jmp_imm(Jmp.JEQ, R0, 0, insert),
        Label(found),
        asm.mov64_reg(R9, R0),
        asm.mov64_imm(R1, 1),
        asm.atomic_add(DW, R9, 0, R1),
        asm.ldx(W, R1, R6, skb.LEN),
        asm.atomic_add(DW, R9, 8, R1),
        asm.call(KTIME_GET_COARSE_NS),
        asm.stx(DW, R9, 16, R0),
        asm.ja(done),
        Label(insert),
        asm.call(KTIME_GET_COARSE_NS),
        asm.stx(DW, FP, VAL_OFF + 16, R0),
        asm.st_imm(DW, FP, VAL_OFF, 1),
        asm.ldx(W, R1, R6, skb.LEN),
        asm.stx(DW, FP, VAL_OFF + 8, R1),
        asm.ld_map(R1, log.table),
        asm.mov64_reg(R2, FP),
        asm.alu64_imm(Alu.ADD, R2, KEY_OFF),
        asm.mov64_reg(R3, FP),
        asm.alu64_imm(Alu.ADD, R3, VAL_OFF),
        asm.mov64_imm(R4, NOEXIST),
        asm.call(asm.Helper.map_update_elem),
        asm.jmp_imm(Jmp.JEQ, R0, 0, done),
        # Another CPU inserted the address meanwhile: add to its entry.
        *lookup,
        asm.jmp_imm(Jmp.JNE, R0, 0, found),
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
        asm.call(asm.Helper.map_lookup_elem),
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
        asm.call(asm.Helper.map_update_elem),
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
