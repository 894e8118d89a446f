"""Build a unit's cgroup_skb program for one direction, specialised to its policy.

Shape of the emitted program (parts drop out when the policy does not need them)::

    r6 = ctx
    dispatch on skb->protocol        (only when some family has rules)
    ipv4: load src/dst address (direct packet read) → lookup → verdict
          (skipped: constant verdict); the lookup is one of (see lookup.py)
            inline    compare with each entry, longest prefix first (≤ 8 entries)
            multibit  walk a 16-4-4-4-4 multibit table in an array map (large IPv4 tables)
            lenhash   root slot, then one hash probe per prefix length under it (large IPv6)
            lpm       one LPM-trie lookup (helper call)
    ipv6: the same with 16-byte addresses
    pass:  count passed packets and skb->len bytes  (only with accounting on)
           return 1
    drop:  log the remote address (with a deny list), count dropped (or, in audit mode,
           count would-be-dropped and go to pass)
           return 0
    cold:  bpf_skb_load_bytes when the address is not in the linear data; slot take-overs
           and the paths of a packet that finds its CPU's slot busy (see denied.py)

Counting: passed packets with a ``lock add`` per counter. Denied ones, with the
denied-addresses log's busy-flag slots (a unit made with its deny list), under this CPU's
slot taken with one ``xchg``, with plain loads and stores (denied.py proves why that is
exact); with legacy slots, or none, with a ``lock add`` per counter too. The pass path
touches no map of the log: a program without a drop path does not reference it.

Ingress checks the packet's source address, egress its destination, as systemd does.
In a cgroup_skb program offset 0 of ``bpf_skb_load_bytes`` is the IP header.
"""

from __future__ import annotations

import _thread  # not threading: the run path imports neither (see ipacctd.record)
import struct
import sys

from ipacctd.bpf import asm
from ipacctd.bpf.asm import (
    DW,
    FP,
    R0,
    R1,
    R2,
    R3,
    R4,
    R5,
    R6,
    R7,
    R8,
    R9,
    Alu,
    B,
    Helper,
    Insn,
    Jmp,
    Label,
    W,
)
from ipacctd.bpf.maps import PerCPUArrayMap
from ipacctd.datapath import counters, lookup, skb
from ipacctd.datapath.counters import Direction
from ipacctd.datapath.lookup import Table
from ipacctd.datapath.rules import DENY, FamilyRules
from ipacctd.record import Record

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing
if TYPE_CHECKING:
    from ipacctd.datapath import denied


def _proto(ethertype: int) -> int:
    # skb->protocol is big-endian in a u32 field; compare with the value as loaded.
    return int.from_bytes(struct.pack("!H", ethertype) + b"\0\0", sys.byteorder)


PROTO_IPV4 = _proto(0x0800)
PROTO_IPV6 = _proto(0x86DD)

# Address offsets in the IP header: (source, destination).
IPV4_ADDR = (12, 16)
IPV6_ADDR = (8, 24)


class Shape(Record):
    """Everything that decides the program's instructions."""

    _fields = ("direction", "accounting", "audit", "v4", "v6", "log_denied")
    __slots__ = _fields
    direction: Direction
    accounting: bool
    audit: bool
    v4: FamilyRules
    v6: FamilyRules
    log_denied: bool  # record denied remote addresses in the denied map

    def __init__(
        self,
        direction: Direction,
        accounting: bool,
        audit: bool,
        v4: FamilyRules,
        v6: FamilyRules,
        log_denied: bool = False,
    ) -> None:
        set_ = object.__setattr__
        set_(self, "direction", direction)
        set_(self, "accounting", accounting)
        set_(self, "audit", audit)
        set_(self, "v4", v4)
        set_(self, "v6", v6)
        set_(self, "log_denied", log_denied)


def build(
    shape: Shape,
    counters_map: PerCPUArrayMap,
    table4: Table | None,
    table6: Table | None,
    denied_map: denied.Log | None = None,
) -> list[Insn | Label]:
    """Instructions for one direction of a unit. ``table4``/``table6`` are the families'
    lookups (see :mod:`ipacctd.datapath.lookup`); None where the verdict is constant."""
    if shape.log_denied and denied_map is None:
        raise ValueError("logging denied addresses needs the denied map")
    p: list[Insn | Label] = [asm.mov64_reg(R6, R1)]
    cold: list[Insn | Label] = []  # rarely taken paths, placed after the exits
    families = [(shape.v4, PROTO_IPV4, 4, table4, "v4"), (shape.v6, PROTO_IPV6, 16, table6, "v6")]
    active = [f for f in families if not f[0].empty]
    if active:
        p.append(asm.ldx(W, R2, R6, skb.PROTOCOL))
        # The last family's check comes first, reached by falling through its JNE.
        active = active[-1:] + active[:-1]
        for _, proto, _, _, tag in active[1:]:
            p.append(asm.jmp_imm(Jmp.JEQ, R2, proto, tag))
        p.append(asm.jmp_imm(Jmp.JNE, R2, active[0][1], "pass"))
        for rules, _, alen, table, tag in active:
            p.append(Label(tag))
            hot, slow = _family_check(shape.direction, rules, alen, table, shape.log_denied)
            p += hot
            cold += slow
    p.append(Label("pass"))
    if shape.accounting:
        p += _count(counters_map, shape.direction, "passed")
    p += [asm.mov64_imm(R0, 1), asm.exit_()]
    kind = "audit" if shape.audit else "dropped"
    jumped = {i.target for i in p + cold if isinstance(i, Insn) and i.target}
    log = denied_map if shape.log_denied else None
    if log is not None:
        # Imported here: only a unit with a deny list logs (and its log imported it).
        from ipacctd.datapath import denied
    if log is not None and denied.guarded(log):
        entries = [
            denied.Entry(f"drop_{tag}", rules.version, -alen)
            for rules, _, alen, _, tag in active
            if f"drop_{tag}" in jumped
        ]
        if "drop" in jumped:  # an address that could not be read: counted, not logged
            entries.append(denied.Entry("drop"))
        if entries:
            hot, slow = denied.guarded_drop(
                log, counters_map, shape.direction, kind, entries, "verdict"
            )
            p += [*hot, Label("verdict"), *_verdict(shape.audit)]
            cold += slow
        return _tighten(p + cold)
    if log is not None:
        for rules, _, alen, _, tag in active:
            if f"drop_{tag}" in jumped:
                p.append(Label(f"drop_{tag}"))
                p += denied.record(log, shape.direction, rules.version, -alen, "drop")
                jumped.add("drop")
    if "drop" in jumped:
        p.append(Label("drop"))
        p += _count(counters_map, shape.direction, kind)
        p += _verdict(shape.audit)
    return _tighten(p + cold)


# Registers that hold the address words (as loaded: network byte order) after the load.
WORD_REGS = (R1, R2, R3, R4)


def _load_address(
    direction: Direction, alen: int, tag: str, words: tuple[int, ...] = (), stack: bool = True
) -> tuple[list[Insn | Label], list[Insn | Label]]:
    """Load the packet's remote address: (hot path, cold path).

    Afterwards word ``i`` (u32, network byte order) of the address is in WORD_REGS[i] for
    each ``i`` in ``words``, and with ``stack`` the whole address is at fp-alen. The address
    is read straight from the packet when the linear data holds it (a helper call costs
    more than the rest of the check); otherwise the cold path calls bpf_skb_load_bytes.
    """
    src, dst = IPV4_ADDR if alen == 4 else IPV6_ADDR
    offset = src if direction == Direction.INGRESS else dst
    hot: list[Insn | Label] = [
        asm.ldx(W, R5, R6, skb.DATA),
        asm.ldx(W, R0, R6, skb.DATA_END),
        asm.mov64_reg(R1, R5),
        asm.alu64_imm(Alu.ADD, R1, offset + alen),
        asm.jmp_reg(Jmp.JGT, R1, R0, f"{tag}_load_bytes"),
    ]
    load = words
    if stack and alen == 4 and words == (0,):  # the word is the address: one load
        hot += [asm.ldx(W, WORD_REGS[0], R5, offset), asm.stx(W, FP, -alen, WORD_REGS[0])]
        load = ()
    elif stack:
        size = DW if alen == 16 else W
        for i in range(0, alen, asm.size_bytes(size)):
            hot += [asm.ldx(size, R0, R5, offset + i), asm.stx(size, FP, -alen + i, R0)]
    hot += [asm.ldx(W, WORD_REGS[i], R5, offset + 4 * i) for i in load]
    hot.append(Label(f"{tag}_loaded"))
    cold: list[Insn | Label] = [
        Label(f"{tag}_load_bytes"),
        asm.mov64_reg(R1, R6),
        asm.mov64_imm(R2, offset),
        asm.mov64_reg(R3, FP),
        asm.alu64_imm(Alu.ADD, R3, -alen),
        asm.mov64_imm(R4, alen),
        asm.call(Helper.skb_load_bytes),
        # A packet of this family whose address cannot be read is not let through.
        asm.jmp_imm(Jmp.JNE, R0, 0, "drop"),
        *[asm.ldx(W, WORD_REGS[i], FP, -alen + 4 * i) for i in words],
        asm.ja(f"{tag}_loaded"),
    ]
    return hot, cold


def _family_check(
    direction: Direction, rules: FamilyRules, alen: int, table: Table | None, log_denied: bool
) -> tuple[list[Insn | Label], list[Insn | Label]]:
    """(hot, cold) instructions deciding one family's packets: jump to pass or drop."""
    tag = f"v{rules.version}"
    drop = f"drop_{tag}" if log_denied else "drop"
    const = rules.constant
    if const is not None:
        if const == DENY and log_denied:  # the address is needed for the log only
            hot, cold = _load_address(direction, alen, tag)
            return [*hot, asm.ja(drop)], cold
        return [asm.ja("drop" if const == DENY else "pass")], []
    if table is None:
        raise ValueError(f"IPv{rules.version} rules need their lookup table")
    if table.strategy == lookup.INLINE:
        return _inline(direction, rules, alen, tag, drop, log_denied)
    if table.strategy == lookup.MULTIBIT:
        return _multibit(direction, table, tag, drop, log_denied)
    if table.strategy == lookup.LENHASH:
        return _lenhash(direction, table, tag, drop)
    hot, cold = _load_address(direction, alen, tag)
    key = -(4 + alen)  # stack: u32 prefixlen, then the address
    return [
        *hot,
        asm.st_imm(W, FP, key, alen * 8),
        asm.ld_map(R1, table.map),
        asm.mov64_reg(R2, FP),
        asm.alu64_imm(Alu.ADD, R2, key),
        asm.call(Helper.map_lookup_elem),
        asm.jmp_imm(Jmp.JEQ, R0, 0, "pass"),
        asm.ldx(B, R1, R0, 0),
        asm.jmp_imm(Jmp.JNE, R1, 0, drop),
        asm.ja("pass"),
    ], cold


def _as_loaded(word: int) -> int:
    """A u32 in network byte order as a little/big-endian host loads it from memory."""
    return int.from_bytes(word.to_bytes(4, "big"), sys.byteorder)


def _inline(
    direction: Direction, rules: FamilyRules, alen: int, tag: str, drop: str, log_denied: bool
) -> tuple[list[Insn | Label], list[Insn | Label]]:
    """Compare the address with each entry, longest prefix first; the first match decides.

    Each entry checks the 32-bit words its mask touches: a fully covered word is compared
    as it is, a partly covered one after AND-ing it with the mask (in load order); words
    outside the mask are skipped. No match: pass.
    """
    bits = alen * 8
    entries = sorted(rules.entries.items(), key=lambda kv: -kv[0].prefixlen)
    checks: list[list[tuple[int, int | None, int]]] = []  # per entry: (word, mask, value)
    for net, _ in entries:
        value = int(net.network_address)
        words = []
        for i in range(alen // 4):
            covered = min(max(net.prefixlen - 32 * i, 0), 32)
            if covered == 0:
                continue
            word = (value >> (bits - 32 * (i + 1))) & 0xFFFFFFFF
            mask = (0xFFFFFFFF << (32 - covered)) & 0xFFFFFFFF
            words.append((i, None if covered == 32 else _as_loaded(mask), _as_loaded(word)))
        checks.append(words)
    used = tuple(sorted({i for words in checks for i, _, _ in words}))
    hot, cold = _load_address(direction, alen, tag, used, stack=log_denied)
    for n, ((_, verdict), words) in enumerate(zip(entries, checks, strict=True)):
        miss = f"{tag}_e{n + 1}" if n + 1 < len(entries) else "pass"
        if n:
            hot.append(Label(f"{tag}_e{n}"))
        for i, mask, value in words:
            reg = WORD_REGS[i]
            if mask is not None:
                hot += [asm.mov32_reg(R5, reg), asm.alu32_imm(Alu.AND, R5, mask)]
                reg = R5
            hot.append(asm.jmp32_imm(Jmp.JNE, reg, value, miss))
        hot.append(asm.ja(drop if verdict == DENY else "pass"))
        if not words:  # a /0 matches everything: nothing after it is reachable
            break
    return hot, cold


def _multibit(
    direction: Direction, table: Table, tag: str, drop: str, log_denied: bool
) -> tuple[list[Insn | Label], list[Insn | Label]]:
    """Walk the multibit table: one u32 load per level, straight-line code.

    r1 = address (host order), r3 = the table (map value), r0 = slot. A slot above the last
    chunk's offset is a leaf (bit 31), whose bit 0 is the verdict. Each level's pointer
    into its chunk (table + slot index * 4) is computed from the address up front, so the
    chain of dependent instructions per level is one add and one load.
    """
    mb = table.multibit
    if mb is None or table.map is None:
        raise ValueError("multibit lookup without its table")
    hot, cold = _load_address(direction, 4, tag, (0,), stack=log_denied)
    root = mb.strides[0]
    leaf = f"{tag}_leaf"
    levels = mb.strides[1:]
    if len(levels) > len(LEVEL_REGS):
        raise ValueError(f"multibit table with {len(mb.strides)} levels")
    hot += [
        asm.to_be(R1, 32),
        asm.ld_map_value(R3, table.map, 0),
        asm.mov32_reg(R0, R1),
        asm.alu32_imm(Alu.RSH, R0, 32 - root),
        asm.alu32_imm(Alu.LSH, R0, 2),
        asm.alu64_reg(Alu.ADD, R0, R3),
        asm.ldx(W, R0, R0, 0),
    ]
    end = root
    for reg, stride in zip(LEVEL_REGS, levels, strict=False):
        end += stride
        shift = 32 - end - 2  # slot index * 4 = byte offset in the chunk
        hot += [
            # computed while the previous level's load is in flight
            asm.mov32_reg(reg, R1),
            asm.alu32_imm(Alu.RSH, reg, shift)
            if shift >= 0
            else asm.alu32_imm(Alu.LSH, reg, -shift),
            asm.alu32_imm(Alu.AND, reg, ((1 << stride) - 1) << 2),
            asm.alu64_reg(Alu.ADD, reg, R3),
            asm.jmp_imm(Jmp.JGT, R0, mb.max_chunk_offset, leaf),
            asm.alu64_reg(Alu.ADD, R0, reg),
            asm.ldx(W, R0, R0, 0),
        ]
    hot += [Label(leaf), asm.jmp_imm(Jmp.JSET, R0, 1, drop), asm.ja("pass")]
    return hot, cold


# Registers holding each lower level's pointer into the table (chunk base not added yet).
LEVEL_REGS = (R2, R4, R5, R7, R8, R9)

# Stack: the lenhash probe key (u32 length, then up to four address words), below the
# address (fp-16) and the LPM key (fp-20).
PROBE_KEY = -40


def _lenhash(
    direction: Direction, table: Table, tag: str, drop: str
) -> tuple[list[Insn | Label], list[Insn | Label]]:
    """Root slot, then a hash probe for each length present under it, longest first.

    r7 = the slot (bit 0: verdict of the short prefixes, bit j + 1: the table's j-th
    longest length occurs under the slot, bit 63: a single entry, its index in bits
    32-62), r8 = its upper half (JMP32 tests 32 bits, and a JSET immediate is 32 bits),
    r9 = the table's value. The address stays on the stack for the compares and keys.
    """
    lh = table.lenhash
    if lh is None or table.map is None:
        raise ValueError("lenhash lookup without its table")
    hot, cold = _load_address(direction, 16, tag, (0,), stack=True)
    done = f"{tag}_lh_slot"
    single = f"{tag}_lh_single"
    hot += [
        asm.to_be(R1, 32),
        asm.ld_map_value(R9, table.map, 0),
        asm.mov32_reg(R0, R1),
        asm.alu32_imm(Alu.RSH, R0, 32 - lh.root_bits),
        asm.alu64_imm(Alu.LSH, R0, 3),
        asm.alu64_reg(Alu.ADD, R0, R9),
        asm.ldx(DW, R7, R0, 0),
        asm.mov64_reg(R1, R7),
        asm.alu64_imm(Alu.RSH, R1, 1),
        asm.jmp_imm(Jmp.JEQ, R1, 0, done),  # no longer prefix under this slot
        asm.mov64_reg(R8, R7),
        asm.alu64_imm(Alu.RSH, R8, 32),
    ]
    if lh.n_singles:
        hot.append(asm.jmp32_imm(Jmp.JSET, R8, 1 << 31, single))
    probes: list[Insn | Label] = []
    for j, length in enumerate(lh.lengths):
        bit = j + 1
        reg, b = (R7, bit) if bit < 32 else (R8, bit - 32)
        probe, after = f"{tag}_lh_p{j}", f"{tag}_lh_c{j + 1}"
        if j:
            hot.append(Label(f"{tag}_lh_c{j}"))
        hot.append(asm.jmp32_imm(Jmp.JSET, reg, 1 << b, probe))
        words = lookup.key_words(length)
        probes += [Label(probe), asm.st_imm(W, FP, PROBE_KEY, length)]
        for i in range(words):
            probes.append(asm.ldx(W, R1, FP, -16 + 4 * i))
            covered = min(length - 32 * i, 32)
            if covered < 32:
                mask = (0xFFFFFFFF << (32 - covered)) & 0xFFFFFFFF
                probes.append(asm.alu32_imm(Alu.AND, R1, _as_loaded(mask)))
            probes.append(asm.stx(W, FP, PROBE_KEY + 4 + 4 * i, R1))
        probes += [
            asm.ld_map(R1, table.hashes[words]),
            asm.mov64_reg(R2, FP),
            asm.alu64_imm(Alu.ADD, R2, PROBE_KEY),
            asm.call(Helper.map_lookup_elem),
            asm.jmp_imm(Jmp.JEQ, R0, 0, after),
            asm.ldx(B, R1, R0, 0),
            asm.jmp_imm(Jmp.JNE, R1, 0, drop),
            asm.ja("pass"),
        ]
    singles: list[Insn | Label] = []
    if lh.n_singles:
        # r1 = the entry: value + slots + index * SINGLE_SIZE (the bound check lets the
        # verifier prove the entry inside the value; it never fails)
        singles = [
            Label(single),
            asm.mov32_reg(R1, R8),
            asm.alu32_imm(Alu.AND, R1, 0x7FFF_FFFF),
            asm.jmp_imm(Jmp.JGE, R1, lh.n_singles, done),
            asm.alu64_imm(Alu.MUL, R1, lookup.SINGLE_SIZE),
            asm.alu64_reg(Alu.ADD, R1, R9),
            asm.alu64_imm(Alu.ADD, R1, lh.slots_size),
        ]
        for i in range(4):
            singles += [
                asm.ldx(W, R2, FP, -16 + 4 * i),
                asm.ldx(W, R4, R1, 16 + 4 * i),
                asm.alu32_reg(Alu.AND, R2, R4),
                asm.ldx(W, R4, R1, 4 * i),
                asm.jmp_reg(Jmp.JNE, R2, R4, done),
            ]
        singles += [
            asm.ldx(W, R2, R1, 32),
            asm.jmp_imm(Jmp.JNE, R2, 0, drop),
            asm.ja("pass"),
        ]
    hot += [
        Label(f"{tag}_lh_c{len(lh.lengths)}"),
        Label(done),
        asm.jmp32_imm(Jmp.JSET, R7, 1, drop),
        asm.ja("pass"),
        *singles,
        *probes,
    ]
    return hot, cold


def _count(counters_map: PerCPUArrayMap, direction: Direction, kind: str) -> list[Insn | Label]:
    """counters[direction, kind] += (1 packet, skb->len bytes); skips when the lookup fails."""
    pkts, nbytes = counters.offsets(direction, kind)
    done = f"counted_{kind}"
    return [
        asm.st_imm(W, FP, -4, 0),
        asm.ld_map(R1, counters_map),
        asm.mov64_reg(R2, FP),
        asm.alu64_imm(Alu.ADD, R2, -4),
        asm.call(Helper.map_lookup_elem),
        asm.jmp_imm(Jmp.JEQ, R0, 0, done),
        asm.mov64_imm(R1, 1),
        asm.atomic_add(DW, R0, pkts, R1),
        asm.ldx(W, R1, R6, skb.LEN),
        asm.atomic_add(DW, R0, nbytes, R1),
        Label(done),
    ]


def _verdict(audit: bool) -> list[Insn | Label]:
    """After counting a denied packet: in audit mode let it pass, else drop it."""
    return [asm.ja("pass")] if audit else [asm.mov64_imm(R0, 0), asm.exit_()]


def _tighten(p: list[Insn | Label]) -> list[Insn | Label]:
    """Remove jumps to the very next instruction, then labels nothing jumps to."""
    out: list[Insn | Label] = []
    used: set[str] = set()
    for item, nxt in zip(p, [*p[1:], None], strict=True):
        if type(item) is Label:
            out.append(item)
            continue
        if item.op == _JA and type(nxt) is Label and nxt.name == item.target:
            continue
        if item.target:
            used.add(item.target)
        out.append(item)
    return [i for i in out if type(i) is not Label or i.name in used]


_JA = asm.JMP | Jmp.JA  # once: an enum member's access costs a descriptor call (Python 3.11)


# ---- assembled once, relocated per unit ----------------------------------------------------
#
# The instructions of a program depend on its shape (direction, accounting, audit, the
# compiled rules, whether denied addresses are logged and with which slots) and on the
# maps it loads only through their file descriptors, which sit in the low 32 bits of the
# first half of each LD_IMM64 map load (the assembler puts them there, and nothing else
# depends on them). So the bytecode built for one unit is the bytecode of every unit of
# the same shape once those 32-bit holes hold the other unit's fds: a glob unit file that
# binds thousands of cgroups assembles its two programs once, not once per cgroup.
# tests/unit/test_program_golden.py checks, for every golden shape, that the relocated
# bytecode equals the bytecode built afresh for the other maps.


def maps_of(
    counters_map: asm.HasFd,
    table4: Table | None,
    table6: Table | None,
    denied_map: denied.Log | None,
) -> list[asm.HasFd]:
    """Every map a program built from these arguments may load, in a fixed order: the
    relocation's numbering of the holes (the same arguments of another unit give its maps
    in the same order)."""
    out: list[asm.HasFd] = [counters_map]
    for table in (table4, table6):
        if table is not None:
            if table.map is not None:
                out.append(table.map)
            out += [table.hashes[w] for w in sorted(table.hashes)]
    if denied_map is not None:
        out.append(denied_map.table)
        if denied_map.slots is not None:
            out.append(denied_map.slots)
    return out


def template_key(
    shape: Shape, table4: Table | None, table6: Table | None, denied_map: denied.Log | None
) -> tuple:
    """Everything besides the maps' fds that :func:`build` reads: equal keys, equal
    bytecode up to the fds. Of a table: its strategy, the maps it holds, and the shape of
    its value that the lookup's code is written for — a multibit table's strides and last
    chunk offset, a lenhash table's root bits, lengths, single entries and slots' size
    (:func:`_multibit`, :func:`_lenhash`; not fixed by the rules: a table may be built with
    other strides). The denied log counts by its slots (busy flag or legacy:
    :func:`denied.guarded`)."""

    def table(t: Table | None) -> tuple | None:
        if t is None:
            return None
        mb, lh = t.multibit, t.lenhash
        return (
            t.strategy,
            t.map is not None,
            tuple(sorted(t.hashes)),
            None if mb is None else (mb.strides, mb.max_chunk_offset),
            None if lh is None else (lh.root_bits, lh.lengths, lh.n_singles, lh.slots_size),
        )

    log = None
    if denied_map is not None:
        from ipacctd.datapath import denied  # a unit with a deny list has it loaded already

        slots = denied_map.slots
        log = (denied.guarded(denied_map), None if slots is None else slots.value_size)
    return (
        shape.direction,
        shape.accounting,
        shape.audit,
        shape.log_denied,
        shape.v4.items,
        shape.v6.items,
        table(table4),
        table(table6),
        log,
    )


class Template(Record):
    """A program's bytecode with its map fds as holes: ``holes`` are (byte offset of an
    LD_IMM64's low immediate, index of the map in :func:`maps_of`)."""

    _fields = ("code", "holes")
    __slots__ = _fields
    code: bytes
    holes: tuple[tuple[int, int], ...]

    def __init__(self, code: bytes, holes: tuple[tuple[int, int], ...]) -> None:
        object.__setattr__(self, "code", code)
        object.__setattr__(self, "holes", holes)

    def emit(self, maps: list[asm.HasFd]) -> bytes:
        """The bytecode for ``maps`` (:func:`maps_of` of the unit's own maps)."""
        code = bytearray(self.code)
        for offset, index in self.holes:
            struct.pack_into("<I", code, offset, maps[index].fd & 0xFFFFFFFF)
        return bytes(code)


def template(items: list[Insn | Label], maps: list[asm.HasFd]) -> Template:
    """The :class:`Template` of instructions built with ``maps``; ValueError when one of
    them loads a map not among ``maps`` (then it cannot be relocated)."""
    index = {id(m): i for i, m in enumerate(maps)}
    code, loads = asm.assemble_with_maps(items)
    holes: list[tuple[int, int]] = []
    for offset, bpf_map in loads:
        if id(bpf_map) not in index:
            raise ValueError("a map load of a map the relocation does not know")
        holes.append((offset, index[id(bpf_map)]))
    return Template(code, tuple(holes))


# Templates by key (template_key), most recently used last; a few shapes per installation
# (one per policy of a unit file), bounded all the same. A key holds its rules: only
# policies of up to TEMPLATE_MAX_RULES compiled entries are kept (thousands of cgroups of
# one glob file share a short list; a long list's table costs far more than assembling,
# and its rules must not outlive the build — a memory-limited change reuses that memory).
_TEMPLATES: dict[tuple, Template] = {}
_TEMPLATES_LOCK = _thread.allocate_lock()
TEMPLATES_MAX = 64
TEMPLATE_MAX_RULES = 256


def bytecode(
    shape: Shape,
    counters_map: PerCPUArrayMap,
    table4: Table | None,
    table6: Table | None,
    denied_map: denied.Log | None = None,
) -> bytes:
    """``asm.assemble(build(...))``, from a template when a program of the same shape was
    built before (its fds relocated to these maps)."""
    if len(shape.v4) + len(shape.v6) > TEMPLATE_MAX_RULES:
        return asm.assemble(build(shape, counters_map, table4, table6, denied_map))
    key = template_key(shape, table4, table6, denied_map)
    maps = maps_of(counters_map, table4, table6, denied_map)
    with _TEMPLATES_LOCK:
        found = _TEMPLATES.pop(key, None)
        if found is not None:
            _TEMPLATES[key] = found  # most recent last
    if found is None:
        items = build(shape, counters_map, table4, table6, denied_map)
        try:
            found = template(items, maps)
        except ValueError:
            return asm.assemble(items)
        with _TEMPLATES_LOCK:
            _TEMPLATES[key] = found
            while len(_TEMPLATES) > TEMPLATES_MAX:
                del _TEMPLATES[next(iter(_TEMPLATES))]
    return found.emit(maps)
