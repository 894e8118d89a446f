"""An eBPF instruction assembler with symbolic jump labels and map references.

Programs are lists of :class:`Insn` and :class:`Label` markers::

    prog = [
        mov64_reg(R6, R1),
        jmp_imm(JNE, R2, 0x0008, "not_ipv4"),
        ...,
        Label("not_ipv4"),
        mov64_imm(R0, 1),
        exit_(),
    ]
    code = assemble(prog)

Jumps name their target label; :func:`assemble` resolves labels to offsets and map
references (``ld_map(R1, some_map)``) to the map's file descriptor. :func:`disassemble`
decodes bytecode (e.g. a loaded program's xlated instructions) back into :class:`Insn`,
whose ``str()`` reads like ``bpftool prog dump xlated``.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence

from ipacctd.enums import IntEnum
from ipacctd.errors import InvalidInput
from ipacctd.record import Record

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (~2 ms of start-up)
if TYPE_CHECKING:
    from typing import Protocol

    class HasFd(Protocol):
        """Anything with a file descriptor, such as a map object."""

        @property
        def fd(self) -> int: ...


# Instruction classes
LD, LDX, ST, STX, ALU, JMP, JMP32, ALU64 = range(8)
# Sizes
W, H, B, DW = 0x00, 0x08, 0x10, 0x18
# Modes
IMM, ABS, IND, MEM, ATOMIC = 0x00, 0x20, 0x40, 0x60, 0xC0
# Operand source
K, X = 0x00, 0x08


class Alu(IntEnum):
    """ALU operations (upper four bits of the opcode)."""

    ADD = 0x00
    SUB = 0x10
    MUL = 0x20
    DIV = 0x30
    OR = 0x40
    AND = 0x50
    LSH = 0x60
    RSH = 0x70
    NEG = 0x80
    MOD = 0x90
    XOR = 0xA0
    MOV = 0xB0
    ARSH = 0xC0
    END = 0xD0


class Jmp(IntEnum):
    """Jump operations (upper four bits of the opcode)."""

    JA = 0x00
    JEQ = 0x10
    JGT = 0x20
    JGE = 0x30
    JSET = 0x40
    JNE = 0x50
    JSGT = 0x60
    JSGE = 0x70
    CALL = 0x80
    EXIT = 0x90
    JLT = 0xA0
    JLE = 0xB0
    JSLT = 0xC0
    JSLE = 0xD0


class Helper(IntEnum):
    """BPF helper function ids used by ipacctd."""

    map_lookup_elem = 1
    map_update_elem = 2
    map_delete_elem = 3
    ktime_get_ns = 5
    get_smp_processor_id = 8
    skb_load_bytes = 26


class Reg(IntEnum):
    """eBPF registers. R0 return value, R1-R5 arguments, R6-R9 callee-saved, R10 frame."""

    R0 = 0
    R1 = 1
    R2 = 2
    R3 = 3
    R4 = 4
    R5 = 5
    R6 = 6
    R7 = 7
    R8 = 8
    R9 = 9
    R10 = 10


R0, R1, R2, R3, R4, R5, R6, R7, R8, R9, R10 = Reg
FP = R10

PSEUDO_MAP_FD = 1
PSEUDO_MAP_VALUE = 2
ATOMIC_ADD = 0x00
ATOMIC_FETCH = 0x01
ATOMIC_XCHG = 0xE0 | ATOMIC_FETCH  # BPF_XCHG: the kernel defines it with BPF_FETCH set

_SIZE_BYTES = {W: 4, H: 2, B: 1, DW: 8}
_SIZE_NAME = {W: "u32", H: "u16", B: "u8", DW: "u64"}
_ALU_SYM = {
    Alu.ADD: "+=", Alu.SUB: "-=", Alu.MUL: "*=", Alu.DIV: "/=", Alu.OR: "|=", Alu.AND: "&=",
    Alu.LSH: "<<=", Alu.RSH: ">>=", Alu.MOD: "%=", Alu.XOR: "^=", Alu.MOV: "=",
    Alu.ARSH: "s>>=",
}
_JMP_SYM = {
    Jmp.JEQ: "==", Jmp.JGT: ">", Jmp.JGE: ">=", Jmp.JSET: "&", Jmp.JNE: "!=", Jmp.JSGT: "s>",
    Jmp.JSGE: "s>=", Jmp.JLT: "<", Jmp.JLE: "<=", Jmp.JSLT: "s<", Jmp.JSLE: "s<=",
}


class Label(Record):
    """Marks the position of the next instruction; jumps name it as their target."""

    _fields = ("name",)
    __slots__ = _fields
    name: str

    def __init__(self, name: str) -> None:
        object.__setattr__(self, "name", name)


class Insn(Record):
    """One eBPF instruction (two slots for a 64-bit immediate load).

    ``target`` names the label a jump goes to (resolved by :func:`assemble`); ``map_ref``
    is the map whose fd an ``ld_map`` loads.
    """

    _fields = ("op", "dst", "src", "off", "imm", "target", "map_ref")
    __slots__ = _fields
    _no_compare = ("map_ref",)
    op: int
    dst: int
    src: int
    off: int
    imm: int
    target: str | None
    map_ref: HasFd | None

    def __init__(
        self,
        op: int,
        dst: int = 0,
        src: int = 0,
        off: int = 0,
        imm: int = 0,
        target: str | None = None,
        map_ref: HasFd | None = None,
    ) -> None:
        set_ = object.__setattr__
        set_(self, "op", op)
        set_(self, "dst", dst)
        set_(self, "src", src)
        set_(self, "off", off)
        set_(self, "imm", imm)
        set_(self, "target", target)
        set_(self, "map_ref", map_ref)

    @property
    def cls(self) -> int:
        return self.op & 0x07

    @property
    def is_wide(self) -> bool:
        """True for LD_IMM64, which takes two instruction slots."""
        return self.op == _LD_IMM64

    @property
    def slots(self) -> int:
        return 2 if self.op == _LD_IMM64 else 1

    def encode(self) -> bytes:
        """Return the 8 (or 16) bytes of this instruction."""
        regs = ((self.src & 0xF) << 4) | (self.dst & 0xF)
        if self.op == _LD_IMM64:
            lo, hi = self.imm & 0xFFFFFFFF, (self.imm >> 32) & 0xFFFFFFFF
            return _WIDE.pack(self.op, regs, self.off, lo, 0, 0, 0, hi)
        return _NARROW.pack(self.op, regs, self.off, _s32(self.imm))

    def __str__(self) -> str:
        return _format(self)


# Computed once: an expression of these constants in a method would be computed at every
# call, and the assembler calls them for every instruction (a program is assembled at
# every `ipacctd run` with a deny list, in its ~1 ms of Python before the kernel).
_LD_IMM64 = LD | DW | IMM
_WIDE = struct.Struct("<BBhIBBhI")
_NARROW = struct.Struct("<BBhi")


def _s32(v: int) -> int:
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v & 0x80000000 else v


# ---- constructors -------------------------------------------------------------------------


def mov64_reg(dst: Reg, src: Reg) -> Insn:
    """dst = src (64 bit)."""
    return Insn(ALU64 | Alu.MOV | X, dst, src)


def mov64_imm(dst: Reg, imm: int) -> Insn:
    """dst = imm (sign-extended 32-bit immediate)."""
    return Insn(ALU64 | Alu.MOV | K, dst, 0, 0, imm)


def mov32_imm(dst: Reg, imm: int) -> Insn:
    """w(dst) = imm (upper 32 bits cleared)."""
    return Insn(ALU | Alu.MOV | K, dst, 0, 0, imm)


def mov32_reg(dst: Reg, src: Reg) -> Insn:
    """w(dst) = w(src) (upper 32 bits cleared)."""
    return Insn(ALU | Alu.MOV | X, dst, src)


def alu32_reg(op: Alu, dst: Reg, src: Reg) -> Insn:
    """w(dst) op= w(src) (32 bit)."""
    return Insn(ALU | op | X, dst, src)


def alu64_imm(op: Alu, dst: Reg, imm: int) -> Insn:
    """dst op= imm (64 bit)."""
    return Insn(ALU64 | op | K, dst, 0, 0, imm)


def alu64_reg(op: Alu, dst: Reg, src: Reg) -> Insn:
    """dst op= src (64 bit)."""
    return Insn(ALU64 | op | X, dst, src)


def alu32_imm(op: Alu, dst: Reg, imm: int) -> Insn:
    """w(dst) op= imm (32 bit)."""
    return Insn(ALU | op | K, dst, 0, 0, imm)


def ldx(size: int, dst: Reg, src: Reg, off: int) -> Insn:
    """dst = *(size *)(src + off)."""
    return Insn(LDX | size | MEM, dst, src, off)


def stx(size: int, dst: Reg, off: int, src: Reg) -> Insn:
    """*(size *)(dst + off) = src."""
    return Insn(STX | size | MEM, dst, src, off)


def st_imm(size: int, dst: Reg, off: int, imm: int) -> Insn:
    """*(size *)(dst + off) = imm."""
    return Insn(ST | size | MEM, dst, 0, off, imm)


def atomic_add(size: int, dst: Reg, off: int, src: Reg) -> Insn:
    """lock *(size *)(dst + off) += src (size W or DW)."""
    return Insn(STX | size | ATOMIC, dst, src, off, ATOMIC_ADD)


def atomic_xchg(size: int, dst: Reg, off: int, src: Reg) -> Insn:
    """src = xchg(*(size *)(dst + off), src): one locked instruction (size W or DW)."""
    return Insn(STX | size | ATOMIC, dst, src, off, ATOMIC_XCHG)


def ld_imm64(dst: Reg, imm: int) -> Insn:
    """dst = imm (full 64-bit immediate, two slots)."""
    return Insn(LD | DW | IMM, dst, 0, 0, imm)


def ld_map(dst: Reg, bpf_map: HasFd) -> Insn:
    """dst = pointer to ``bpf_map`` (LD_IMM64 with a pseudo map fd, resolved at assembly)."""
    return Insn(LD | DW | IMM, dst, PSEUDO_MAP_FD, 0, 0, map_ref=bpf_map)


def jmp_imm(op: Jmp, dst: Reg, imm: int, target: str) -> Insn:
    """if dst op imm goto target."""
    return Insn(JMP | op | K, dst, 0, 0, imm, target=target)


def ld_map_value(dst: Reg, bpf_map: HasFd, offset: int = 0) -> Insn:
    """dst = pointer to byte ``offset`` of the value of a one-element array map
    (LD_IMM64 with BPF_PSEUDO_MAP_VALUE: direct value access, no helper call)."""
    return Insn(LD | DW | IMM, dst, PSEUDO_MAP_VALUE, 0, (offset & 0xFFFFFFFF) << 32,
                map_ref=bpf_map)


def jmp32_imm(op: Jmp, dst: Reg, imm: int, target: str) -> Insn:
    """if w(dst) op imm goto target: compares the low 32 bits with the 32-bit immediate
    (a 64-bit compare would sign-extend an immediate with bit 31 set)."""
    return Insn(JMP32 | op | K, dst, 0, 0, imm, target=target)


def jmp32_reg(op: Jmp, dst: Reg, src: Reg, target: str) -> Insn:
    """if w(dst) op w(src) goto target."""
    return Insn(JMP32 | op | X, dst, src, 0, 0, target=target)


def to_be(dst: Reg, bits: int) -> Insn:
    """dst = host-to-big-endian of the low ``bits`` (16, 32, 64) of dst; on a little-endian
    host a byte swap (upper bits cleared), so a network-order load becomes a number."""
    return Insn(ALU | Alu.END | X, dst, 0, 0, bits)


def jmp_reg(op: Jmp, dst: Reg, src: Reg, target: str) -> Insn:
    """if dst op src goto target."""
    return Insn(JMP | op | X, dst, src, 0, 0, target=target)


def ja(target: str) -> Insn:
    """goto target."""
    return Insn(JMP | Jmp.JA, target=target)


def call(helper: Helper | int) -> Insn:
    """Call a kernel helper by id."""
    return Insn(JMP | Jmp.CALL, imm=int(helper))


def exit_() -> Insn:
    """Return r0."""
    return Insn(JMP | Jmp.EXIT)


# ---- assembly -----------------------------------------------------------------------------


def _labels(items: Iterable[Insn | Label]) -> tuple[list[Insn], dict[str, int]]:
    """The instructions, and the slot of each label."""
    insns: list[Insn] = []
    labels: dict[str, int] = {}
    slot = 0
    for item in items:
        if isinstance(item, Label):
            if item.name in labels:
                raise InvalidInput(f"assembler: label {item.name!r} defined twice")
            labels[item.name] = slot
            continue
        insns.append(item)
        slot += 2 if item.op == _LD_IMM64 else 1
    return insns, labels


def _jump_off(target: str, labels: dict[str, int], slot: int) -> int:
    if target not in labels:
        raise InvalidInput(f"assembler: jump to undefined label {target!r}")
    off = labels[target] - (slot + 1)
    if not -(1 << 15) <= off < (1 << 15):
        raise InvalidInput(f"assembler: jump to {target!r} out of range ({off})")
    return off


def resolve(items: Iterable[Insn | Label]) -> list[Insn]:
    """Resolve label targets into jump offsets and map references into fds."""
    insns, labels = _labels(items)
    out: list[Insn] = []
    slot = 0
    for ins in insns:
        if ins.target is not None:
            ins = Insn(ins.op, ins.dst, ins.src, _jump_off(ins.target, labels, slot), ins.imm)
        elif ins.map_ref is not None:  # the fd goes in the low half (a value offset above)
            ins = Insn(ins.op, ins.dst, ins.src, ins.off,
                       (ins.imm & ~0xFFFFFFFF) | ins.map_ref.fd)
        out.append(ins)
        slot += ins.slots
    return out


def assemble(items: Iterable[Insn | Label]) -> bytes:
    """Return the bytecode of a program given as instructions and labels."""
    return assemble_with_maps(items)[0]


def assemble_with_maps(items: Iterable[Insn | Label]) -> tuple[bytes, list[tuple[int, HasFd]]]:
    """The bytecode (``b"".join(i.encode() for i in resolve(items))``) and, for each map
    load, the byte offset of the low immediate holding the map's fd, and the map.

    Written in one pass over the instructions, without the resolved :class:`Insn` objects
    :func:`resolve` makes: a deny list's two programs are assembled at every ``ipacctd
    run`` (~460 instructions), and that pass was ~40 % of their time in Python.
    tests/unit/test_asm.py checks it against ``resolve`` and ``encode``.
    """
    insns, labels = _labels(items)
    code = bytearray()
    maps: list[tuple[int, HasFd]] = []
    narrow, wide = _NARROW.pack, _WIDE.pack
    slot = 0
    for ins in insns:
        op, off, imm = ins.op, ins.off, ins.imm
        regs = ((ins.src & 0xF) << 4) | (ins.dst & 0xF)
        if ins.target is not None:
            off = _jump_off(ins.target, labels, slot)
        elif ins.map_ref is not None:  # the fd goes in the low half (a value offset above)
            maps.append((len(code) + 4, ins.map_ref))
            imm = (imm & ~0xFFFFFFFF) | ins.map_ref.fd
        if op == _LD_IMM64:
            code += wide(op, regs, off, imm & 0xFFFFFFFF, 0, 0, 0, (imm >> 32) & 0xFFFFFFFF)
            slot += 2
        else:
            code += narrow(op, regs, off, _s32(imm))
            slot += 1
    return bytes(code), maps


def disassemble(code: bytes) -> list[Insn]:
    """Decode bytecode into instructions (LD_IMM64 joined into one wide instruction)."""
    if len(code) % 8:
        raise InvalidInput(f"bytecode length {len(code)} is not a multiple of 8")
    out: list[Insn] = []
    i = 0
    while i < len(code):
        op, regs, off, imm = struct.unpack_from("<BBhi", code, i)
        dst, src = regs & 0xF, regs >> 4
        if op == (LD | DW | IMM) and i + 16 <= len(code):
            hi = struct.unpack_from("<i", code, i + 12)[0]
            out.append(Insn(op, dst, src, off, ((hi & 0xFFFFFFFF) << 32) | (imm & 0xFFFFFFFF)))
            i += 16
        else:
            out.append(Insn(op, dst, src, off, imm))
            i += 8
    return out


def dump(insns: Sequence[Insn], xlated: bool = False) -> list[str]:
    """Readable listing with slot numbers, like ``bpftool prog dump xlated``.

    ``xlated``: the code came back from the kernel, where map loads hold map ids and
    helper calls hold kernel offsets instead of helper ids.
    """
    lines = []
    slot = 0
    for ins in insns:
        text = _format(ins, helper_names=not xlated)
        if xlated and ins.is_wide and ins.src == PSEUDO_MAP_FD:
            text = f"r{ins.dst} = map[id:{ins.imm}]"
        elif xlated and ins.is_wide and ins.src == PSEUDO_MAP_VALUE:
            text = f"r{ins.dst} = map[id:{ins.imm & 0xFFFFFFFF}][0]+{ins.imm >> 32}"
        lines.append(f"{slot:4d}: ({ins.op:02x}) {text}")
        slot += ins.slots
    return lines


def _reg(n: int, wide: bool = True) -> str:
    return f"{'r' if wide else 'w'}{n}"


def _format(ins: Insn, helper_names: bool = True) -> str:
    cls, op = ins.cls, ins.op
    if ins.is_wide:
        if ins.src == PSEUDO_MAP_FD:
            return f"r{ins.dst} = map[fd:{ins.imm}]"
        if ins.src == PSEUDO_MAP_VALUE:
            return f"r{ins.dst} = map[fd:{ins.imm & 0xFFFFFFFF}][0]+{ins.imm >> 32}"
        return f"r{ins.dst} = {ins.imm:#x}"
    if cls in (ALU, ALU64):
        code = Alu(op & 0xF0)
        wide = cls == ALU64
        if code == Alu.NEG:
            return f"{_reg(ins.dst, wide)} = -{_reg(ins.dst, wide)}"
        if code == Alu.END:
            return f"r{ins.dst} = {'be' if op & X else 'le'}{ins.imm} r{ins.dst}"
        rhs = _reg(ins.src, wide) if op & X else str(ins.imm)
        return f"{_reg(ins.dst, wide)} {_ALU_SYM[code]} {rhs}"
    size = _SIZE_NAME.get(op & 0x18, "?")
    if cls == LDX:
        return f"r{ins.dst} = *({size} *)(r{ins.src} {ins.off:+d})"
    if cls == ST:
        return f"*({size} *)(r{ins.dst} {ins.off:+d}) = {ins.imm}"
    if cls == STX:
        if op & 0xE0 == ATOMIC:
            if ins.imm == ATOMIC_XCHG:
                return f"r{ins.src} = xchg(*({size} *)(r{ins.dst} {ins.off:+d}), r{ins.src})"
            return f"lock *({size} *)(r{ins.dst} {ins.off:+d}) += r{ins.src}"
        return f"*({size} *)(r{ins.dst} {ins.off:+d}) = r{ins.src}"
    if cls in (JMP, JMP32):
        code = Jmp(op & 0xF0)
        if code == Jmp.EXIT:
            return "exit"
        if code == Jmp.CALL:
            try:
                name = Helper(ins.imm).name if helper_names else f"#{ins.imm}"
            except ValueError:
                name = f"#{ins.imm}"
            return f"call {name}"
        dest = ins.target if ins.target is not None else f"pc{ins.off:+d}"
        if code == Jmp.JA:
            return f"goto {dest}"
        wide = cls == JMP
        rhs = _reg(ins.src, wide) if op & X else f"{ins.imm:#x}"
        return f"if {_reg(ins.dst, wide)} {_JMP_SYM[code]} {rhs} goto {dest}"
    return f"op {op:#04x} dst r{ins.dst} src r{ins.src} off {ins.off} imm {ins.imm}"


def size_bytes(size: int) -> int:
    """Width in bytes of a load/store size code (W, H, B, DW)."""
    return _SIZE_BYTES[size]
