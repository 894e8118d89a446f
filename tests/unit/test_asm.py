"""The assembler against real bytecode: systemd 252's ingress firewall program as the kernel
showed it (``bpftool prog dump xlated ... opcodes`` in shared/reference)."""

from __future__ import annotations

import re
from dataclasses import dataclass

import pytest
from support import missing, shared_dir

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
    R10,
    Alu,
    B,
    H,
    Helper,
    Insn,
    Jmp,
    Label,
    W,
)
from ipacctd.errors import InvalidInput

REFERENCE_LOG = "reference/systemd-252-ip-firewall.log"  # in shared/, beside the checkout


@dataclass(frozen=True)
class Fd:
    """Stands in for a map: the assembler only needs its fd number."""

    fd: int


def h(text: str) -> bytes:
    return bytes.fromhex(text)


def _reference_text() -> str:
    shared = shared_dir()
    if shared is None or not (shared / REFERENCE_LOG).exists():
        missing(
            f"shared/{REFERENCE_LOG} is not available (beside the checkout or its main "
            "git checkout)"
        )
    return (shared / REFERENCE_LOG).read_text()


def reference_listing() -> list[tuple[int, int, str, bytes]]:
    """(slot, opcode, bpftool text, bytes) of each instruction of systemd's program 409."""
    text = _reference_text()
    section = text.split("=== bpftool prog dump xlated id 409 opcodes", 1)[1]
    section = section.split("# rc=", 1)[0]
    lines = [ln for ln in section.splitlines() if ln.strip() and not ln.startswith("#")]
    out = []
    for head, code in zip(lines[0::2], lines[1::2], strict=True):
        m = re.match(r"\s*(\d+): \(([0-9a-f]{2})\) (.*)$", head)
        assert m, head
        out.append((int(m[1]), int(m[2], 16), m[3], h(code.strip().replace(" ", ""))))
    return out


# ---- single instructions ------------------------------------------------------------------

ENCODINGS = [
    # straight from the systemd listing
    (asm.mov64_reg(R6, R1), "bf16000000000000"),
    (asm.ldx(H, R7, R6, 176), "6967b00000000000"),
    (asm.mov32_imm(R8, 0), "b408000000000000"),
    (asm.mov64_reg(R1, R6), "bf61000000000000"),
    (asm.mov32_imm(asm.R2, 12), "b40200000c000000"),
    (asm.mov64_reg(R3, R10), "bfa3000000000000"),
    (asm.alu64_imm(Alu.ADD, R3, -4), "07030000fcffffff"),
    (asm.mov32_imm(R4, 4), "b404000004000000"),
    (asm.st_imm(W, R2, 0, 32), "6202000020000000"),
    (asm.alu32_imm(Alu.OR, R8, 2), "4408000002000000"),
    (asm.mov64_imm(R0, 1), "b700000001000000"),
    (asm.stx(W, R10, -4, R0), "630afcff00000000"),
    (asm.alu64_imm(Alu.ADD, R1, 312), "0701000038010000"),
    (asm.ldx(W, R0, R2, 0), "6120000000000000"),
    (asm.alu64_imm(Alu.LSH, R0, 3), "6700000003000000"),
    (asm.alu64_reg(Alu.ADD, R0, R1), "0f10000000000000"),
    (asm.atomic_add(DW, R0, 0, R1), "db10000000000000"),
    (asm.ldx(W, R1, R6, 112), "6161700000000000"),
    (asm.exit_(), "9500000000000000"),
    (asm.call(Helper.skb_load_bytes), "850000001a000000"),
    (asm.call(Helper.map_lookup_elem), "8500000001000000"),
    # other forms
    (asm.mov64_imm(R0, -1), "b7000000ffffffff"),
    (asm.ldx(B, R1, R0, 0), "7101000000000000"),
    (asm.ldx(DW, R1, R10, -8), "79a1f8ff00000000"),
    (asm.stx(DW, R10, -16, R1), "7b1af0ff00000000"),
    (asm.st_imm(B, FP, -1, 0xAB), "720affffab000000"),
    (asm.atomic_add(W, R0, 8, R1), "c310080000000000"),
    (asm.alu64_reg(Alu.SUB, R2, R3), "1f32000000000000"),
    (asm.alu32_imm(Alu.AND, R1, 0xFFFF), "54010000ffff0000"),
    (asm.mov64_imm(R1, 0x7FFFFFFF), "b7010000ffffff7f"),
    (asm.mov64_imm(R1, 0xFFFFFFFF), "b7010000ffffffff"),  # unsigned form of -1
]


@pytest.mark.parametrize(("insn", "code"), ENCODINGS, ids=[c for _, c in ENCODINGS])
def test_constructor_encoding(insn: Insn, code: str) -> None:
    assert insn.encode() == h(code)
    assert asm.assemble([insn]) == h(code)


def test_ld_map_is_pseudo_map_fd_ld_imm64() -> None:
    # "10: (18) r1 = map[id:415]  18 11 00 00 9f 01 00 00 00 00 00 00 00 00 00 00"
    ins = asm.ld_map(R1, Fd(415))
    assert ins.is_wide and ins.slots == 2
    assert asm.assemble([ins]) == h("181100009f0100000000000000000000")
    assert asm.assemble([asm.ld_map(R2, Fd(3))]) == h("18120000030000000000000000000000")


def test_ld_imm64_splits_the_immediate_over_two_slots() -> None:
    code = asm.assemble([asm.ld_imm64(R3, 0x1122334455667788)])
    assert code == h("18030000887766550000000044332211")
    assert asm.assemble([asm.ld_imm64(R0, -1)]) == h("18000000ffffffff00000000ffffffff")


def test_jump_encodings() -> None:
    code = asm.assemble(
        [
            asm.jmp_imm(Jmp.JNE, R7, 8, "t"),  # 55 07 off imm
            asm.jmp_imm(Jmp.JEQ, R0, 0, "t"),
            asm.jmp_imm(Jmp.JGE, R0, 2, "t"),
            asm.jmp_reg(Jmp.JNE, R1, R2, "t"),  # 5d: JNE | X
            asm.jmp_reg(Jmp.JGT, R3, R4, "t"),  # 2d
            asm.ja("t"),
            Label("t"),
            asm.exit_(),
        ]
    )
    assert code == h(
        "5507050008000000"
        "1500040000000000"
        "3500030002000000"
        "5d21020000000000"
        "2d43010000000000"
        "0500000000000000"
        "9500000000000000"
    )


def test_jump_to_the_next_instruction_has_offset_zero() -> None:
    code = asm.assemble([asm.jmp_imm(Jmp.JNE, R2, 0xDD86, "x"), Label("x"), asm.exit_()])
    assert code[:8] == h("5502000086dd0000")


# ---- labels -------------------------------------------------------------------------------


def systemd_ingress() -> list[Insn | Label]:
    """systemd's ingress program 409 (xlated form: rewritten helper ids and ctx offset),
    written with labels instead of offsets."""
    trie, acct = Fd(415), Fd(416)

    def count_one(reg_value: list[Insn], skip: str) -> list[Insn | Label]:
        return [
            asm.stx(W, R10, -4, R0),
            asm.mov64_reg(R2, R10),
            asm.alu64_imm(Alu.ADD, R2, -4),
            asm.ld_map(R1, acct),
            asm.alu64_imm(Alu.ADD, R1, 312),
            asm.ldx(W, R0, R2, 0),
            asm.jmp_imm(Jmp.JGE, R0, 2, f"oob_{skip}"),
            asm.alu64_imm(Alu.LSH, R0, 3),
            asm.alu64_reg(Alu.ADD, R0, R1),
            asm.ja(f"got_{skip}"),
            Label(f"oob_{skip}"),
            asm.mov64_imm(R0, 0),
            Label(f"got_{skip}"),
            asm.jmp_imm(Jmp.JEQ, R0, 0, skip),
            *reg_value,
            asm.atomic_add(DW, R0, 0, R1),
            Label(skip),
        ]

    return [
        asm.mov64_reg(R6, R1),
        asm.ldx(H, R7, R6, 176),
        asm.mov32_imm(R8, 0),
        asm.jmp_imm(Jmp.JNE, R7, 0x8, "verdict"),
        asm.mov64_reg(R1, R6),
        asm.mov32_imm(R2, 12),
        asm.mov64_reg(R3, R10),
        asm.alu64_imm(Alu.ADD, R3, -4),
        asm.mov32_imm(R4, 4),
        asm.call(10530944),
        asm.ld_map(R1, trie),
        asm.mov64_reg(R2, R10),
        asm.alu64_imm(Alu.ADD, R2, -8),
        asm.st_imm(W, R2, 0, 32),
        asm.call(374496),
        asm.jmp_imm(Jmp.JEQ, R0, 0, "not_denied"),
        asm.alu32_imm(Alu.OR, R8, 2),
        Label("verdict"),
        Label("not_denied"),  # two labels on one slot
        asm.mov64_imm(R0, 1),
        asm.jmp_imm(Jmp.JNE, R8, 2, "keep"),
        asm.mov64_imm(R0, 0),
        Label("keep"),
        asm.jmp_imm(Jmp.JEQ, R0, 0, "exit"),
        asm.mov64_imm(R0, 0),
        *count_one([asm.mov64_imm(R1, 1)], "pkts_done"),
        asm.mov64_imm(R0, 1),
        *count_one([asm.ldx(W, R1, R6, 112)], "bytes_done"),
        asm.mov64_imm(R0, 1),
        Label("exit"),
        asm.exit_(),
    ]


def test_systemd_program_assembles_to_the_reference_bytes() -> None:
    """Forward jumps over one and two LD_IMM64s (pc+14 at 3, pc+33 at 21) resolve exactly."""
    ref = reference_listing()
    expected = b"".join(code for _, _, _, code in ref)
    assert len(expected) == 448  # "xlated 448B"
    assert asm.assemble(systemd_ingress()) == expected


def test_backward_jump_offsets() -> None:
    code = asm.assemble(
        [
            Label("top"),
            asm.mov64_imm(R0, 0),  # slot 0
            asm.ld_imm64(R1, 1 << 40),  # slots 1-2
            Label("mid"),
            asm.jmp_imm(Jmp.JEQ, R0, 1, "top"),  # slot 3: 0 - 4 = -4
            asm.ja("mid"),  # slot 4: 3 - 5 = -2
            asm.ja("self"),  # slot 5 jumps to slot 6 (+0)
            Label("self"),
            asm.ja("self"),  # slot 6: 6 - 7 = -1
        ]
    )
    insns = asm.disassemble(code)
    assert [i.off for i in insns] == [0, 0, -4, -2, 0, -1]
    assert code[24:32] == h("1500fcff01000000")
    assert code[32:40] == h("0500feff00000000")
    assert code[48:56] == h("0500ffff00000000")


def test_forward_jump_across_ld_imm64_counts_two_slots() -> None:
    code = asm.assemble(
        [
            asm.ja("end"),
            asm.ld_imm64(R1, 5),
            asm.ld_map(R2, Fd(7)),
            asm.mov64_imm(R0, 0),
            Label("end"),
            asm.exit_(),
        ]
    )
    assert code[:8] == h("0500050000000000")  # 2 + 2 + 1 slots skipped
    assert len(code) == 8 * 7


def test_undefined_label_is_an_error() -> None:
    with pytest.raises(InvalidInput, match="undefined label 'nowhere'"):
        asm.assemble([asm.ja("nowhere"), asm.exit_()])


def test_duplicate_label_is_an_error() -> None:
    with pytest.raises(InvalidInput, match="'twice' defined twice"):
        asm.assemble([Label("twice"), asm.mov64_imm(R0, 1), Label("twice"), asm.exit_()])


def test_out_of_range_jump_is_an_error() -> None:
    body = [asm.mov64_imm(R0, 0)] * (1 << 15)
    with pytest.raises(InvalidInput, match="out of range"):
        asm.assemble([asm.ja("far"), *body, Label("far"), asm.exit_()])
    # one less fits exactly: off = 32767
    code = asm.assemble([asm.ja("far"), *body[1:], Label("far"), asm.exit_()])
    assert code[:8] == h("0500ff7f00000000")


def test_map_reference_resolves_to_the_fd_at_assembly() -> None:
    m = Fd(42)
    ins = asm.ld_map(R1, m)
    assert ins.imm == 0
    (resolved,) = asm.resolve([ins])
    assert resolved.imm == 42 and resolved.src == asm.PSEUDO_MAP_FD


# ---- disassembly and dump -----------------------------------------------------------------


def _bpftool_to_ours(text: str) -> str:
    # bpftool names the rewritten helper and shows map ids; ours shows the number and fd.
    text = re.sub(r"call \w+#(\d+)", r"call #\1", text)
    return text.replace("map[id:", "map[fd:")


def test_disassemble_reference_matches_bpftool_text() -> None:
    ref = reference_listing()
    code = b"".join(c for *_, c in ref)
    insns = asm.disassemble(code)
    assert len(insns) == len(ref)
    lines = asm.dump(insns)
    for (slot, op, text, raw), ins, line in zip(ref, insns, lines, strict=True):
        assert ins.op == op
        assert ins.encode() == raw, f"slot {slot}"
        assert line == f"{slot:4d}: ({op:02x}) {_bpftool_to_ours(text)}"


def test_disassemble_assemble_round_trip() -> None:
    code = asm.assemble(systemd_ingress())
    assert asm.assemble(asm.disassemble(code)) == code
    ours = [asm.mov64_imm(R0, 1), asm.ld_imm64(R2, 0x8000000000000001), asm.exit_()]
    back = asm.disassemble(asm.assemble(ours))
    assert [i.encode() for i in back] == [i.encode() for i in ours]
    assert back[1].imm == 0x8000000000000001


def test_disassemble_rejects_partial_instructions() -> None:
    with pytest.raises(InvalidInput):
        asm.disassemble(b"\x95" + b"\0" * 6)


def test_dump_text() -> None:
    prog = [
        asm.mov64_reg(R6, R1),
        asm.ldx(W, R2, R6, 16),
        asm.jmp_imm(Jmp.JEQ, R2, 8, "v4"),
        asm.ld_map(R1, Fd(9)),
        Label("v4"),
        asm.call(Helper.map_lookup_elem),
        asm.call(Helper.skb_load_bytes),
        asm.call(999),
        asm.atomic_add(DW, R0, 8, R1),
        asm.st_imm(W, FP, -4, 0),
        asm.alu32_imm(Alu.MOV, R1, 7),
        asm.ja("v4"),
        asm.exit_(),
    ]
    assert asm.dump(asm.resolve(prog)) == [
        "   0: (bf) r6 = r1",
        "   1: (61) r2 = *(u32 *)(r6 +16)",
        "   2: (15) if r2 == 0x8 goto pc+2",
        "   3: (18) r1 = map[fd:9]",
        "   5: (85) call map_lookup_elem",
        "   6: (85) call skb_load_bytes",
        "   7: (85) call #999",
        "   8: (db) lock *(u64 *)(r0 +8) += r1",
        "   9: (62) *(u32 *)(r10 -4) = 0",
        "  10: (b4) w1 = 7",
        "  11: (05) goto pc-7",
        "  12: (95) exit",
    ]
    # Unresolved jumps show their label; code read back from the kernel (xlated) holds
    # kernel offsets in calls and map ids in map loads.
    assert str(asm.ja("v4")) == "goto v4"
    assert asm.dump([asm.call(Helper.map_lookup_elem)], xlated=True) == ["   0: (85) call #1"]
    wide = asm.Insn(asm.LD | asm.DW | asm.IMM, 1, asm.PSEUDO_MAP_FD, 0, 415)
    assert asm.dump([wide], xlated=True) == ["   0: (18) r1 = map[id:415]"]


# ---- additions: JMP32, byte swap, direct map value access ---------------------------------


def test_jmp32_imm_compares_32_bits_without_sign_extension() -> None:
    # class JMP32 (0x06) | JNE (0x50) | K = 0x56; imm 0x80000001 as the raw 32 bits
    code = asm.assemble([asm.jmp32_imm(Jmp.JNE, R1, 0x80000001, "t"), Label("t"), asm.exit_()])
    assert code[:8] == h("5601000001000080")
    assert asm.assemble([asm.jmp32_imm(Jmp.JEQ, R5, 7, "t"), Label("t")]) == h("1605000007000000")
    (ins,) = asm.resolve([asm.jmp32_imm(Jmp.JNE, R2, 0xFFFFFFFF, "t"), Label("t")])
    assert ins.cls == asm.JMP32
    assert str(ins) == "if w2 != 0xffffffff goto pc+0"  # the raw 32 bits, no sign
    assert asm.jmp32_reg(Jmp.JGT, R1, R2, "t").op == 0x2E


def test_mov32_reg_and_to_be() -> None:
    assert asm.mov32_reg(R5, R1).encode() == h("bc15000000000000")
    assert asm.alu32_reg(Alu.AND, R1, R2).encode() == h("5c21000000000000")
    # END | TO_BE (0x08) in the ALU class: "r1 = be32 r1" (dc 01 .. 20 00 00 00)
    assert asm.to_be(R1, 32).encode() == h("dc01000020000000")
    assert str(asm.to_be(R1, 32)) == "r1 = be32 r1"


def test_ld_map_value_keeps_the_offset_in_the_second_slot() -> None:
    ins = asm.ld_map_value(R3, Fd(9), 0x40)
    assert ins.is_wide and ins.src == asm.PSEUDO_MAP_VALUE
    # src_reg 2 (BPF_PSEUDO_MAP_VALUE), fd in the first imm, offset in the second
    assert asm.assemble([ins]) == h("18230000090000000000000040000000")
    assert str(asm.resolve([ins])[0]) == "r3 = map[fd:9][0]+64"
    # the xlated form holds the map id instead of the fd
    (back,) = asm.disassemble(asm.assemble([ins]))
    assert asm.dump([back], xlated=True) == ["   0: (18) r3 = map[id:9][0]+64"]


# ---- the one-pass assembler against resolve + encode --------------------------------------


def _random_program(rng, maps: list) -> list:
    """Instructions of every encoding class, jumps forward and backward, map loads (fd and
    value), wide immediates and negative ones, labels between them."""
    n = rng.randrange(1, 120)
    labels = [f"l{i}" for i in range(rng.randrange(1, 8))]
    regs = [R0, R1, R2, R3, R4, R5, R6, R7, R8]
    edges = [0, 1, -1, 0x7FFFFFFF, -0x80000000, 0xFFFFFFFF]
    imm = lambda: rng.choice([*edges, rng.randrange(-(1 << 31), 1 << 32)])  # noqa: E731
    makers = [
        lambda: asm.mov64_imm(rng.choice(regs), imm()),
        lambda: asm.mov64_reg(rng.choice(regs), rng.choice(regs)),
        lambda: asm.alu64_imm(rng.choice([Alu.ADD, Alu.SUB, Alu.AND]), rng.choice(regs), imm()),
        lambda: asm.ldx(rng.choice([DW, W, H, B]), rng.choice(regs), R10, -rng.randrange(1, 512)),
        lambda: asm.stx(DW, R10, -8, rng.choice(regs)),
        lambda: asm.st_imm(W, R10, -4, imm()),
        lambda: asm.atomic_xchg(DW, R7, 8, R1),
        lambda: asm.ld_imm64(rng.choice(regs), rng.randrange(-(1 << 63), 1 << 64)),
        lambda: asm.ld_map(R1, rng.choice(maps)),
        lambda: asm.ld_map_value(R2, rng.choice(maps), rng.randrange(0, 4096)),
        lambda: asm.jmp_imm(Jmp.JNE, rng.choice(regs), imm(), rng.choice(labels)),
        lambda: asm.jmp32_reg(Jmp.JEQ, R0, R1, rng.choice(labels)),
        lambda: asm.ja(rng.choice(labels)),
        lambda: asm.call(Helper.map_lookup_elem),
        lambda: asm.exit_(),
    ]
    body: list = [rng.choice(makers)() for _ in range(n)]
    for name in labels:
        body.insert(rng.randrange(len(body) + 1), Label(name))
    return body


def test_assemble_with_maps_is_resolve_then_encode() -> None:
    import random

    rng = random.Random(1302)
    maps = [Fd(3), Fd(4), Fd(0x7FFFFFFF)]
    for _ in range(2000):
        items = _random_program(rng, maps)
        code, loads = asm.assemble_with_maps(items)
        assert code == b"".join(i.encode() for i in asm.resolve(items))
        assert asm.assemble(items) == code
        # Each map load's hole: where its fd sits, in the order of the loads.
        want = []
        slot = 0
        for ins in (i for i in items if isinstance(i, Insn)):
            if ins.map_ref is not None:
                want.append((slot * 8 + 4, ins.map_ref))
            slot += ins.slots
        assert loads == want
        for offset, m in loads:
            assert int.from_bytes(code[offset : offset + 4], "little") == m.fd
