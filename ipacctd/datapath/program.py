"""Build a unit's cgroup_skb program for one direction, specialised to its policy.

Shape of the emitted program (parts drop out when the policy does not need them)::

    r6 = ctx
    dispatch on skb->protocol        (only when some family has rules)
    ipv4: load src/dst address (direct packet read; bpf_skb_load_bytes when the header is
          not in the linear data) → one LPM lookup → verdict   (skipped: constant verdict)
    ipv6: the same with 16-byte addresses
    drop:  count dropped (or, in audit mode, count would-be-dropped and go to pass)
           return 0
    pass:  count passed packets and skb->len bytes  (only with accounting on)
           return 1

Ingress checks the packet's source address, egress its destination, as systemd does.
In a cgroup_skb program offset 0 of ``bpf_skb_load_bytes`` is the IP header.
"""

from __future__ import annotations

import struct
import sys
from dataclasses import dataclass

from ipacctd.bpf import asm
from ipacctd.bpf.asm import (
    DW,
    FP,
    R0,
    R1,
    R2,
    R3,
    R4,
    R6,
    Alu,
    B,
    Helper,
    Insn,
    Jmp,
    Label,
    W,
)
from ipacctd.bpf.maps import LPMTrieMap, Map, PerCPUArrayMap
from ipacctd.datapath import counters, denied
from ipacctd.datapath.counters import Direction
from ipacctd.datapath.rules import DENY, FamilyRules

SKB_LEN = 0
SKB_PROTOCOL = 16
SKB_DATA = 76
SKB_DATA_END = 80


def _proto(ethertype: int) -> int:
    # skb->protocol is big-endian in a u32 field; compare with the value as loaded.
    return int.from_bytes(struct.pack("!H", ethertype) + b"\0\0", sys.byteorder)


PROTO_IPV4 = _proto(0x0800)
PROTO_IPV6 = _proto(0x86DD)

# Address offsets in the IP header: (source, destination).
IPV4_ADDR = (12, 16)
IPV6_ADDR = (8, 24)


@dataclass(frozen=True)
class Shape:
    """Everything that decides the program's instructions."""

    direction: Direction
    accounting: bool
    audit: bool
    v4: FamilyRules
    v6: FamilyRules
    log_denied: bool = False  # record denied remote addresses in the denied map


def build(shape: Shape, counters_map: PerCPUArrayMap, trie4: LPMTrieMap | None,
          trie6: LPMTrieMap | None, denied_map: Map | None = None) -> list[Insn | Label]:
    """Instructions for one direction of a unit."""
    if shape.log_denied and denied_map is None:
        raise ValueError("logging denied addresses needs the denied map")
    p: list[Insn | Label] = [asm.mov64_reg(R6, R1)]
    families = [(shape.v4, PROTO_IPV4, 4, trie4, "v4"), (shape.v6, PROTO_IPV6, 16, trie6, "v6")]
    active = [f for f in families if not f[0].empty]
    if active:
        p.append(asm.ldx(W, R2, R6, SKB_PROTOCOL))
        # The last family's check comes first, reached by falling through its JNE.
        active = active[-1:] + active[:-1]
        for _, proto, _, _, tag in active[1:]:
            p.append(asm.jmp_imm(Jmp.JEQ, R2, proto, tag))
        p.append(asm.jmp_imm(Jmp.JNE, R2, active[0][1], "pass"))
        for rules, _, alen, trie, tag in active:
            p.append(Label(tag))
            p += _family_check(shape.direction, rules, alen, trie, shape.log_denied)
    p.append(Label("pass"))
    if shape.accounting:
        p += _count(counters_map, shape.direction, "passed")
    p += [asm.mov64_imm(R0, 1), asm.exit_()]
    if shape.log_denied and denied_map is not None:
        for rules, _, alen, _, tag in active:
            if any(isinstance(i, Insn) and i.target == f"drop_{tag}" for i in p):
                p.append(Label(f"drop_{tag}"))
                p += denied.record(denied_map, shape.direction, rules.version, -alen, "drop")
    if any(isinstance(i, Insn) and i.target == "drop" for i in p):
        p.append(Label("drop"))
        if shape.audit:
            p += _count(counters_map, shape.direction, "audit")
            p.append(asm.ja("pass"))
        else:
            p += _count(counters_map, shape.direction, "dropped")
            p += [asm.mov64_imm(R0, 0), asm.exit_()]
    return _tighten(p)


def _load_address(direction: Direction, alen: int, tag: str) -> list[Insn | Label]:
    """Copy the packet's remote address to the stack at fp-alen (key at fp-(4+alen))."""
    src, dst = IPV4_ADDR if alen == 4 else IPV6_ADDR
    offset = src if direction == Direction.INGRESS else dst
    # Read the address straight from the packet when the linear data holds it (a helper
    # call costs more than the rest of the check); otherwise bpf_skb_load_bytes.
    word = DW if alen == 16 else W
    copy: list[Insn | Label] = []
    for i in range(0, alen, asm.size_bytes(word)):
        copy += [asm.ldx(word, R1, R2, offset + i), asm.stx(word, FP, -alen + i, R1)]
    return [
        asm.ldx(W, R2, R6, SKB_DATA),
        asm.ldx(W, R3, R6, SKB_DATA_END),
        asm.mov64_reg(R1, R2),
        asm.alu64_imm(Alu.ADD, R1, offset + alen),
        asm.jmp_reg(Jmp.JGT, R1, R3, f"{tag}_load_bytes"),
        *copy,
        asm.ja(f"{tag}_loaded"),
        Label(f"{tag}_load_bytes"),
        asm.mov64_reg(R1, R6),
        asm.mov64_imm(R2, offset),
        asm.mov64_reg(R3, FP),
        asm.alu64_imm(Alu.ADD, R3, -alen),
        asm.mov64_imm(R4, alen),
        asm.call(Helper.skb_load_bytes),
        # A packet of this family whose address cannot be read is not let through.
        asm.jmp_imm(Jmp.JNE, R0, 0, "drop"),
        Label(f"{tag}_loaded"),
    ]


def _family_check(direction: Direction, rules: FamilyRules, alen: int,
                  trie: LPMTrieMap | None, log_denied: bool) -> list[Insn | Label]:
    tag = f"v{rules.version}"
    drop = f"drop_{tag}" if log_denied else "drop"
    const = rules.constant
    if const is not None:
        if const == DENY and log_denied:  # the address is needed for the log only
            return [*_load_address(direction, alen, tag), asm.ja(drop)]
        return [asm.ja("drop" if const == DENY else "pass")]
    if trie is None:
        raise ValueError(f"IPv{rules.version} rules need a trie map")
    key = -(4 + alen)  # stack: u32 prefixlen, then the address
    return [
        *_load_address(direction, alen, tag),
        asm.st_imm(W, FP, key, alen * 8),
        asm.ld_map(R1, trie),
        asm.mov64_reg(R2, FP),
        asm.alu64_imm(Alu.ADD, R2, key),
        asm.call(Helper.map_lookup_elem),
        asm.jmp_imm(Jmp.JEQ, R0, 0, "pass"),
        asm.ldx(B, R1, R0, 0),
        asm.jmp_imm(Jmp.JNE, R1, 0, drop),
        asm.ja("pass"),
    ]


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
        asm.ldx(W, R1, R6, SKB_LEN),
        asm.atomic_add(DW, R0, nbytes, R1),
        Label(done),
    ]


def _tighten(p: list[Insn | Label]) -> list[Insn | Label]:
    """Remove jumps to the very next instruction, then labels nothing jumps to."""
    out: list[Insn | Label] = []
    for i, item in enumerate(p):
        nxt = p[i + 1] if i + 1 < len(p) else None
        if (isinstance(item, Insn) and item.op == (asm.JMP | Jmp.JA) and isinstance(nxt, Label)
                and nxt.name == item.target):
            continue
        out.append(item)
    used = {i.target for i in out if isinstance(i, Insn) and i.target}
    return [i for i in out if not isinstance(i, Label) or i.name in used]
