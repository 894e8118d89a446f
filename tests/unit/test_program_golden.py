"""What each policy compiles to: golden instruction listings of the program builder.

:func:`ipacctd.datapath.program.build` is pure Python up to the load: given a policy's
compiled rules and the maps' file descriptors it returns instructions and labels. These
tests build one program pair per policy shape, with stand-in maps (nothing is loaded, no
root needed), and compare a readable listing with ``golden/program-<shape>.txt`` — one
instruction per line, ``slot: (opcode) text`` as ``bpftool prog dump xlated`` prints it,
jumps by label name, labels on lines of their own, maps by role (``map[counters]``) — so a
reader sees what a policy compiles to, and a change of the builder shows up as a diff of
these files in review (cf. cilium/ebpf ``asm/dsl_test.go``).

A deliberate change of the bytecode: regenerate the files with

    IPACCTD_UPDATE_GOLDEN=1 python3 -m pytest -q tests/unit/test_program_golden.py

and commit them with the change. Whether a program passes the verifier and does what it
should is the kernel tests' business (tests/kernel/test_verifier_shapes.py,
test_decision_table.py); these pin the text alone.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ipacctd.bpf import asm
from ipacctd.bpf.asm import Insn, Label
from ipacctd.datapath import denied, lookup
from ipacctd.datapath import program as program_mod
from ipacctd.datapath.counters import Direction
from ipacctd.datapath.rules import FamilyRules, Network, compile_rules

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("IPACCTD_UPDATE_GOLDEN") == "1"


@dataclass(frozen=True, eq=False)
class StandIn:
    """A map as the assembler sees it: a file descriptor (never opened), and a role that
    names it in the listing."""

    fd: int
    role: str
    value_size: int = 0  # the denied log's slots: which drop path (busy flag or legacy)


def _v4(n: int, base: str = "198.18.0.0") -> list[Network]:
    """``n`` /32s counting up from ``base`` (the benchmarking range: never a destination)."""
    start = int(ipaddress.IPv4Address(base))
    return [ipaddress.IPv4Network((start + i, 32)) for i in range(n)]


def _v6(n: int) -> list[Network]:
    """``n`` prefixes of 2001:db8::/32 of three lengths (/48, /64, /128), as block lists have;
    the ``i``-th in 2001:db8:i::/48 alone, so that none covers another."""
    base = int(ipaddress.IPv6Address("2001:db8::"))
    out: list[Network] = []
    for i in range(n):
        plen, low = ((48, 0), (64, 1 << 64), (128, 1))[i % 3]
        out.append(ipaddress.IPv6Network((base | (i << 80) | low, plen)))
    return out


def _v6_spread(n: int) -> list[Network]:
    """``n`` /48s in 2000::/3, each in a /16 of its own: every root slot of a lenhash table
    holds one (a "single", compared in place). List entries only, never a destination."""
    return [ipaddress.IPv6Network(((0x2000 + i) << 112 | (i << 80), 48)) for i in range(n)]


def _nets(*texts: str) -> list[Network]:
    return [ipaddress.ip_network(t) for t in texts]


@dataclass(frozen=True)
class Policy:
    """One shape: what a unit's properties boil down to for the builder."""

    title: str  # the properties, as a user writes them
    allow: tuple[Network, ...] = ()
    deny: tuple[Network, ...] = ()
    accounting: bool = True
    audit: bool = False
    log_denied: bool = False
    slot_size: int = denied.SLOT_SIZE  # a log made with the unit (busy flag) or added later


POLICIES = {
    "accounting-only": Policy("IPAccounting=yes"),
    "nothing": Policy("IPAccounting=no"),
    "deny-v4": Policy("IPAddressDeny=198.51.100.1", deny=tuple(_nets("198.51.100.1/32"))),
    "deny-v6": Policy("IPAddressDeny=2001:db8::/64", deny=tuple(_nets("2001:db8::/64"))),
    "deny-any": Policy("IPAddressDeny=any", deny=tuple(_nets("0.0.0.0/0", "::/0"))),
    "allow-deny": Policy(
        "IPAddressAllow=203.0.113.7 2001:db8::7 IPAddressDeny=203.0.113.0/24 2001:db8::/32",
        allow=tuple(_nets("203.0.113.7/32", "2001:db8::7/128")),
        deny=tuple(_nets("203.0.113.0/24", "2001:db8::/32")),
    ),
    "allow-localhost-deny-any": Policy(
        "IPAddressAllow=localhost IPAddressDeny=any",
        allow=tuple(_nets("127.0.0.0/8", "::1/128")),
        deny=tuple(_nets("0.0.0.0/0", "::/0")),
    ),
    "deny-v4-no-accounting": Policy(
        "IPAccounting=no IPAddressDeny=198.51.100.0/24",
        deny=tuple(_nets("198.51.100.0/24")),
        accounting=False,
    ),
    "audit": Policy(
        "IPAddressDeny=198.51.100.1 IPAddressDenyMode=audit",
        deny=tuple(_nets("198.51.100.1/32")),
        audit=True,
    ),
    "denied-log": Policy(
        "IPAddressDeny=198.51.100.1 2001:db8::1 (denied addresses logged)",
        deny=tuple(_nets("198.51.100.1/32", "2001:db8::1/128")),
        log_denied=True,
    ),
    "denied-log-legacy-slots": Policy(
        "IPAddressDeny=198.51.100.1 2001:db8::1 (denied addresses logged; the log added by "
        "set-property: legacy slots, locked adds)",
        deny=tuple(_nets("198.51.100.1/32", "2001:db8::1/128")),
        log_denied=True,
        slot_size=denied.LEGACY_SLOT_SIZE,
    ),
    "denied-log-deny-any": Policy(
        "IPAddressDeny=any (denied addresses logged)",
        deny=tuple(_nets("0.0.0.0/0", "::/0")),
        log_denied=True,
    ),
    "lpm": Policy(
        f"IPAddressDeny= {lookup.INLINE_MAX + 1} IPv4 and {lookup.INLINE_MAX + 1} IPv6 prefixes",
        deny=(*_v4(lookup.INLINE_MAX + 1), *_v6(lookup.INLINE_MAX + 1)),
    ),
    "multibit-v4": Policy(
        f"IPAddressDeny= {lookup.MULTIBIT_MIN} IPv4 /32s",
        deny=tuple(_v4(lookup.MULTIBIT_MIN)),
    ),
    "lenhash-v6": Policy(
        f"IPAddressDeny= {lookup.LENHASH_MIN} IPv6 prefixes (/48, /64, /128)",
        deny=tuple(_v6(lookup.LENHASH_MIN)),
    ),
    "lenhash-v6-singles": Policy(
        f"IPAddressDeny= {lookup.LENHASH_MIN} IPv6 /48s, one per /16 of 2000::/3",
        deny=tuple(_v6_spread(lookup.LENHASH_MIN)),
    ),
    "large-lists-denied-log": Policy(
        f"IPAddressDeny= {lookup.MULTIBIT_MIN} IPv4 and {lookup.LENHASH_MIN} IPv6 prefixes "
        "(denied addresses logged)",
        deny=(*_v4(lookup.MULTIBIT_MIN), *_v6(lookup.LENHASH_MIN)),
        log_denied=True,
    ),
}


def _table(rules: FamilyRules, fds: Iterator[int]) -> lookup.Table | None:
    """The family's lookup as :func:`lookup.build_table` makes it, with stand-in maps."""
    how = lookup.strategy(rules)
    if how is None:
        return None
    v = f"v{rules.version}"
    if how == lookup.INLINE:
        return lookup.Table(rules, how)
    if how == lookup.MULTIBIT:
        return lookup.Table(
            rules, how, StandIn(next(fds), f"{v} multibit"), lookup.build_multibit(rules)
        )
    if how == lookup.LENHASH:
        lh = lookup.build_lenhash(rules)
        hashes = {w: StandIn(next(fds), f"{v} lenhash k{w}") for w in sorted(lh.keys)}
        return lookup.Table(
            rules, how, StandIn(next(fds), f"{v} lenhash root"), lenhash=lh, hashes=hashes
        )
    return lookup.Table(rules, how, StandIn(next(fds), f"{v} lpm trie"))


def listing(items: list[Insn | Label]) -> list[str]:
    """One line per instruction (``slot: (opcode) text``), labels on lines of their own,
    maps by role."""
    lines = []
    slot = 0
    for item in items:
        if isinstance(item, Label):
            lines.append(f"{item.name}:")
            continue
        text = str(item)
        if item.map_ref is not None:
            text = re.sub(r"map\[fd:\d+\]", f"map[{item.map_ref.role}]", text)
        lines.append(f"{slot:4d}: ({item.op:02x}) {text}")
        slot += item.slots
    return lines


def render(name: str) -> str:
    policy = POLICIES[name]
    v4, v6 = compile_rules(policy.allow, policy.deny)
    counters_map, table4, table6, log = _maps(policy, v4, v6, 100)
    out = [
        f"# {policy.title}",
        f"# accounting {'on' if policy.accounting else 'off'}; IPv4 lookup "
        f"{table4.strategy if table4 else 'none'} ({len(v4)} compiled entries), IPv6 lookup "
        f"{table6.strategy if table6 else 'none'} ({len(v6)} compiled entries)",
        "# built by ipacctd.datapath.program.build; regenerate with IPACCTD_UPDATE_GOLDEN=1",
    ]
    for direction in Direction:
        shape = program_mod.Shape(
            direction, policy.accounting, policy.audit, v4, v6, log_denied=policy.log_denied
        )
        items = program_mod.build(shape, counters_map, table4, table6, log)  # type: ignore[arg-type]
        insns = asm.resolve(items)  # every jump lands on a label, in range
        out += ["", f"== {direction.name.lower()} ({sum(i.slots for i in insns)} slots)"]
        out += listing(items)
    return "\n".join(out) + "\n"


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_program_matches_golden(name: str) -> None:
    path = GOLDEN / f"program-{name}.txt"
    text = render(name)
    if UPDATE:
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(text)
    if not path.exists():
        pytest.fail(f"{path} is missing: IPACCTD_UPDATE_GOLDEN=1 writes it")
    want = path.read_text()
    if text != want:
        diff = "".join(
            difflib.unified_diff(
                want.splitlines(True), text.splitlines(True), str(path), "built now", n=2
            )
        )
        pytest.fail(
            f"the program built for {name!r} differs from {path.name} (a deliberate change: "
            f"IPACCTD_UPDATE_GOLDEN=1 regenerates it)\n{diff[:6000]}"
        )


def test_every_golden_file_has_a_shape() -> None:
    """A shape removed from POLICIES takes its file with it (no stale listing remains)."""
    files = {p.name for p in GOLDEN.glob("program-*.txt")}
    assert files == {f"program-{n}.txt" for n in POLICIES}


def test_shapes_cover_every_lookup_strategy_and_part() -> None:
    """The shapes exercise what the builder can emit: each lookup strategy of each family
    that has one, the drop and audit paths, the denied log, and no accounting."""
    text = {n: render(n) for n in POLICIES}
    for strategy, family in (
        ("inline", "IPv4"),
        ("inline", "IPv6"),
        ("lpm", "IPv4"),
        ("lpm", "IPv6"),
        ("multibit", "IPv4"),
        ("lenhash", "IPv6"),
    ):
        assert any(f"{family} lookup {strategy} " in t for t in text.values()), (strategy, family)
    assert "map[denied slots]" in text["denied-log"]
    assert "counted_audit" in text["audit"] and "counted_dropped" not in text["audit"]
    assert "map[counters]" not in text["deny-v4-no-accounting"].split("\ndrop:")[0]


def _maps(policy: Policy, v4: FamilyRules, v6: FamilyRules, first_fd: int):
    """Stand-in maps of one unit of ``policy``: counters, log, tables, fds from ``first_fd``."""
    fds = iter(range(first_fd, first_fd + 100))
    counters_map = StandIn(next(fds), "counters")
    log = (
        denied.Log(
            StandIn(next(fds), "denied"),
            StandIn(next(fds), "denied slots", policy.slot_size),
        )
        if policy.log_denied
        else None
    )
    return counters_map, _table(v4, fds), _table(v6, fds), log


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_relocated_program_equals_a_fresh_build(name: str) -> None:
    """A program assembled for one unit's maps and relocated to another's (what binding
    thousands of cgroups of one glob file does) is byte for byte the program built afresh
    for the other unit's maps; and the holes are exactly the map loads."""
    policy = POLICIES[name]
    v4, v6 = compile_rules(policy.allow, policy.deny)
    first = _maps(policy, v4, v6, 100)
    other = _maps(policy, v4, v6, 1000)
    for direction in Direction:
        shape = program_mod.Shape(
            direction, policy.accounting, policy.audit, v4, v6, log_denied=policy.log_denied
        )
        items = program_mod.build(shape, *first[:3], first[3])  # type: ignore[arg-type]
        tpl = program_mod.template(items, program_mod.maps_of(*first))  # type: ignore[arg-type]
        assert tpl.code == asm.assemble(items)
        fresh = asm.assemble(program_mod.build(shape, *other[:3], other[3]))  # type: ignore[arg-type]
        relocated = tpl.emit(program_mod.maps_of(*other))  # type: ignore[arg-type]
        assert relocated == fresh
        assert relocated != tpl.code or not tpl.holes  # the fds did change
        assert len(tpl.holes) == sum(1 for i in items if isinstance(i, Insn) and i.map_ref)
        assert program_mod.template_key(shape, *first[1:]) == program_mod.template_key(
            shape, *other[1:]
        )


def test_bytecode_cache_relocates_per_unit_and_keys_by_shape() -> None:
    """program.bytecode: the second unit of a shape gets its own fds from the cached template
    (equal to a fresh build); a different shape (audit) or a log with legacy slots is a
    different template, never the cached one."""
    deny = POLICIES["denied-log"]
    v4, v6 = compile_rules(deny.allow, deny.deny)
    program_mod._TEMPLATES.clear()
    for first_fd in (100, 2000, 3000):
        maps = _maps(deny, v4, v6, first_fd)
        shape = program_mod.Shape(Direction.EGRESS, True, False, v4, v6, log_denied=True)
        got = program_mod.bytecode(shape, maps[0], maps[1], maps[2], maps[3])  # type: ignore[arg-type]
        assert got == asm.assemble(program_mod.build(shape, *maps[:3], maps[3]))  # type: ignore[arg-type]
    assert len(program_mod._TEMPLATES) == 1
    legacy = _maps(POLICIES["denied-log-legacy-slots"], v4, v6, 4000)
    got = program_mod.bytecode(shape, *legacy[:3], legacy[3])  # type: ignore[arg-type]
    assert got == asm.assemble(program_mod.build(shape, *legacy[:3], legacy[3]))  # type: ignore[arg-type]
    audit = program_mod.Shape(Direction.EGRESS, True, True, v4, v6, log_denied=True)
    maps = _maps(deny, v4, v6, 5000)
    got = program_mod.bytecode(audit, *maps[:3], maps[3])  # type: ignore[arg-type]
    assert got == asm.assemble(program_mod.build(audit, *maps[:3], maps[3]))  # type: ignore[arg-type]
    assert len(program_mod._TEMPLATES) == 3


def test_bytecode_cache_keys_by_table_shape_not_only_rules(monkeypatch) -> None:
    """The same rules in tables of other shapes (multibit strides, lenhash root bits: the
    decision-table tests build them so) are other templates: each program equals its fresh
    build. (Lists this long are not cached by default: the limit is lifted here.)"""
    v4, v6 = compile_rules((), (*_v4(lookup.MULTIBIT_MIN), *_v6(lookup.LENHASH_MIN)))
    monkeypatch.setattr(program_mod, "TEMPLATE_MAX_RULES", len(v4) + len(v6))
    program_mod._TEMPLATES.clear()
    fds = iter(range(6000, 7000))
    for strides, root_bits in (((16, 8, 8), 12), ((20, 4, 4, 4), 16), ((16, 8, 8), 16)):
        counters_map = StandIn(next(fds), "counters")
        t4 = lookup.Table(
            v4, lookup.MULTIBIT, StandIn(next(fds), "mb"), lookup.build_multibit(v4, strides)
        )
        lh = lookup.build_lenhash(v6, root_bits)
        hashes = {w: StandIn(next(fds), f"k{w}") for w in sorted(lh.keys)}
        t6 = lookup.Table(v6, lookup.LENHASH, StandIn(next(fds), "lh"), lenhash=lh, hashes=hashes)
        shape = program_mod.Shape(Direction.INGRESS, True, False, v4, v6)
        got = program_mod.bytecode(shape, counters_map, t4, t6)  # type: ignore[arg-type]
        fresh = program_mod.build(shape, counters_map, t4, t6)  # type: ignore[arg-type]
        assert got == asm.assemble(fresh), (strides, root_bits)
    assert len(program_mod._TEMPLATES) == 3


def test_long_lists_are_assembled_not_cached() -> None:
    """A policy longer than TEMPLATE_MAX_RULES is assembled afresh and leaves no template
    (its rules would stay in memory with it)."""
    policy = POLICIES["lpm"]
    v4, v6 = compile_rules(policy.allow, policy.deny)
    assert len(v4) + len(v6) <= program_mod.TEMPLATE_MAX_RULES  # lpm: cached
    deny = (*_v4(program_mod.TEMPLATE_MAX_RULES + 1),)
    v4, v6 = compile_rules((), deny)
    program_mod._TEMPLATES.clear()
    maps = _maps(Policy("long", deny=deny), v4, v6, 8000)
    shape = program_mod.Shape(Direction.EGRESS, True, False, v4, v6)
    got = program_mod.bytecode(shape, *maps[:3], maps[3])  # type: ignore[arg-type]
    assert got == asm.assemble(program_mod.build(shape, *maps[:3], maps[3]))  # type: ignore[arg-type]
    assert program_mod._TEMPLATES == {}
