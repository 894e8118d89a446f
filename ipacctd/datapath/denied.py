"""Which remote addresses a unit's firewall denied, and how often: a bounded LRU hash.

Key (20 bytes): u8 IP version, u8 direction (0 ingress, 1 egress), u16 zero, then the
remote address (16 bytes; an IPv4 address in the first four). Value (24 bytes): u64
packets, u64 bytes, u64 time of the last one (CLOCK_MONOTONIC ns). The map exists only
for units with a deny list, is pinned beside the counters and survives policy changes;
when it is full the least recently denied address makes room. Only the drop (and audit)
path touches it, so allowed traffic costs nothing more.
"""

from __future__ import annotations

import ipaddress
import struct
import time
from typing import Any

from ipacctd.bpf import asm
from ipacctd.bpf.asm import DW, FP, R0, R1, R2, R3, R4, R6, Alu, Helper, Insn, Jmp, Label, W
from ipacctd.bpf.maps import LRUHashMap, Map
from ipacctd.datapath.counters import Direction

MAP_NAME = "ipacctd_denied"
PIN = "denied"
KEY_SIZE = 20
VALUE_SIZE = 24
MAX_ENTRIES = 256
NOEXIST = 1

# Stack slots used on the drop path (the lookup key lives at fp-8 / fp-20 before this).
KEY_OFF = -48
VALUE_OFF = -72


def create_map() -> LRUHashMap:
    """A new, empty denied-addresses map."""
    return LRUHashMap.new(KEY_SIZE, VALUE_SIZE, MAX_ENTRIES, MAP_NAME)


def record(
    denied: Map, direction: Direction, version: int, addr_off: int, done: str
) -> list[Insn | Label]:
    """Instructions adding one packet to the entry of the address at ``addr_off`` (stack).

    Clobbers r0-r5; expects r6 = skb. Jumps to ``done`` when finished.
    """
    alen = 4 if version == 4 else 16
    p: list[Insn | Label] = [
        asm.st_imm(W, FP, KEY_OFF, version | (int(direction) << 8)),
    ]
    for i in range(0, 16, 4):  # copy the address, zero-padding IPv4
        if i < alen:
            p += [asm.ldx(W, R1, FP, addr_off + i), asm.stx(W, FP, KEY_OFF + 4 + i, R1)]
        else:
            p.append(asm.st_imm(W, FP, KEY_OFF + 4 + i, 0))
    new = f"denied_new_v{version}"
    p += [
        asm.ld_map(R1, denied),
        asm.mov64_reg(R2, FP),
        asm.alu64_imm(Alu.ADD, R2, KEY_OFF),
        asm.call(Helper.map_lookup_elem),
        asm.jmp_imm(Jmp.JEQ, R0, 0, new),
        asm.mov64_imm(R1, 1),
        asm.atomic_add(DW, R0, 0, R1),
        asm.ldx(W, R1, R6, 0),
        asm.atomic_add(DW, R0, 8, R1),
        asm.stx(DW, FP, VALUE_OFF, R0),  # spill the value pointer across the call
        asm.call(Helper.ktime_get_ns),
        asm.ldx(DW, R2, FP, VALUE_OFF),
        asm.stx(DW, R2, 16, R0),
        asm.ja(done),
        Label(new),
        asm.st_imm(DW, FP, VALUE_OFF, 1),
        asm.ldx(W, R1, R6, 0),
        asm.stx(DW, FP, VALUE_OFF + 8, R1),
        asm.call(Helper.ktime_get_ns),
        asm.stx(DW, FP, VALUE_OFF + 16, R0),
        asm.ld_map(R1, denied),
        asm.mov64_reg(R2, FP),
        asm.alu64_imm(Alu.ADD, R2, KEY_OFF),
        asm.mov64_reg(R3, FP),
        asm.alu64_imm(Alu.ADD, R3, VALUE_OFF),
        asm.mov64_imm(R4, NOEXIST),  # a concurrent first packet may win; then we lose one
        asm.call(Helper.map_update_elem),
        asm.ja(done),
    ]
    return p


def decode(m: Map) -> list[dict[str, Any]]:
    """Entries as dicts, most packets first."""
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
