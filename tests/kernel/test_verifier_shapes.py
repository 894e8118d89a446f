"""The kernel verifier accepts every program shape the datapath builder can emit."""

from __future__ import annotations

import errno
import ipaddress

import pytest
from lookup_strategies import expected, force

from ipacctd.bpf import asm
from ipacctd.bpf.errors import VerifierError
from ipacctd.bpf.maps import open_map_id
from ipacctd.bpf.programs import Program
from ipacctd.bpf.types import AttachType, MapType, ProgType
from ipacctd.datapath import counters, denied
from ipacctd.datapath.counters import Direction
from ipacctd.datapath.unit import Spec, build_programs

net = ipaddress.ip_network

ALLOW = {
    "none": (),
    "v4": (net("192.0.2.0/24"), net("10.0.0.1/32")),
    "v6": (net("2001:db8:1::/48"),),
    "both": (net("192.0.2.0/24"), net("2001:db8:1::/48")),
}
DENY = {
    "none": (),
    "v4": (net("198.51.100.0/24"), net("10.0.0.0/8")),
    "v6": (net("2001:db8::/32"), net("2001:db8:2::1/128")),
    "both": (net("198.51.100.1/32"), net("2001:db8::/32")),
    "any": (net("0.0.0.0/0"), net("::/0")),
}


def _has(prefixes: tuple, version: int) -> bool:
    return any(p.version == version for p in prefixes)


def _needs_lookup(allow_key: str, deny_key: str) -> dict[int, bool]:
    """Which families need a lookup, worked out from the policy (not from rules.py).

    A family needs a lookup when it has deny prefixes, unless the verdict is the same for
    every address: no deny at all (all pass) or "deny any" without an allow hole.
    """
    allow, deny = ALLOW[allow_key], DENY[deny_key]
    out = {}
    for version in (4, 6):
        if not _has(deny, version):
            out[version] = False
        elif deny_key == "any":
            out[version] = _has(allow, version)
        else:
            out[version] = True
    return out


def _ld_ctx(insns: list[asm.Insn], offset: int) -> bool:
    return any(i.cls == asm.LDX and i.src == asm.R6 and i.off == offset for i in insns)


@pytest.fixture(scope="module")
def cmap():
    m = counters.create_map()
    yield m
    m.close()


# The map a family's lookup uses: (map type, key size) or None for inline.
TABLE_MAP = {
    "inline": {4: None, 6: None},
    "lpm": {4: (MapType.LPM_TRIE, 8), 6: (MapType.LPM_TRIE, 20)},
    "multibit-16-4": {4: (MapType.ARRAY, 4), 6: (MapType.LPM_TRIE, 20)},
    "multibit-20-4": {4: (MapType.ARRAY, 4), 6: (MapType.LPM_TRIE, 20)},
    # the root array, then one hash per key size in use (see _lenhash_maps)
    "lenhash-12": {4: (MapType.LPM_TRIE, 8), 6: "lenhash"},
}


def _lenhash_maps(rules, root_bits: int) -> list[tuple[MapType, int]]:
    """A lenhash table's maps: the root array and a hash per key size (u32 length + the
    address words the prefix touches) of the entries longer than the root that share
    their root slot with another (one alone is stored in the root's value)."""
    under: dict[int, list] = {}
    for n in rules.entries:
        if n.prefixlen > root_bits:
            under.setdefault(int(n.network_address) >> (128 - root_bits), []).append(n)
    sizes = {4 + 4 * ((n.prefixlen + 31) // 32) for g in under.values() if len(g) > 1 for n in g}
    return [(MapType.ARRAY, 4), *((MapType.HASH, k) for k in sorted(sizes))]


@pytest.mark.parametrize("log_denied", [False, True], ids=["nolog", "log"])
@pytest.mark.parametrize("audit", [False, True], ids=["enforce", "audit"])
@pytest.mark.parametrize("accounting", [False, True], ids=["noacct", "acct"])
@pytest.mark.parametrize("deny_key", list(DENY), ids=[f"deny-{k}" for k in DENY])
@pytest.mark.parametrize("allow_key", list(ALLOW), ids=[f"allow-{k}" for k in ALLOW])
@pytest.mark.parametrize("strategy", list(TABLE_MAP))
def test_every_shape_verifies(
    monkeypatch,
    cmap,
    strategy: str,
    allow_key: str,
    deny_key: str,
    accounting: bool,
    audit: bool,
    log_denied: bool,
) -> None:
    force(monkeypatch, strategy)
    spec = Spec(allow=ALLOW[allow_key], deny=DENY[deny_key], accounting=accounting, audit=audit)
    dmap = denied.create_map() if log_denied else None
    progs = build_programs(spec, cmap, dmap)
    try:
        log_ids = {dmap.table.info().id, dmap.slots.info().id} if dmap is not None else set()
        fixed = {cmap.info().id} | log_ids
        need = _needs_lookup(allow_key, deny_key)
        has_drop_path = _has(DENY[deny_key], 4) or _has(DENY[deny_key], 6)
        for version in (4, 6):
            want = expected(strategy, version) if need[version] else None
            assert progs.strategy(version) == want
        want_maps = []
        for v in (4, 6):
            kind = TABLE_MAP[strategy][v]
            if not need[v] or not kind:
                continue
            if kind == "lenhash":
                want_maps += _lenhash_maps(progs.rules[1], 12)
            else:
                want_maps.append(kind)
        want_maps.sort()
        for direction in Direction:
            prog = progs.by_direction(direction)
            info = prog.info()
            assert info.type == ProgType.CGROUP_SKB
            assert info.verified_insns > 0
            assert info.xlated_len > 0 and info.xlated_len % 8 == 0
            assert info.name == f"ipacctd_{direction.name.lower()}"
            ids = set(info.map_ids)
            assert len(ids) == len(info.map_ids)
            # The counters map is used when counting passed packets or dropped ones.
            assert (cmap.info().id in ids) == (accounting or has_drop_path)
            if dmap is not None:  # the log's hash and its per-CPU slots
                assert (log_ids <= ids) == has_drop_path
                assert bool(log_ids & ids) == has_drop_path
            maps = []
            for map_id in ids - fixed:
                with open_map_id(map_id) as m:
                    mi = m.info()
                    maps.append((MapType(mi.type), mi.key_size))
            assert sorted(maps) == want_maps, f"{strategy} allow={allow_key} deny={deny_key}"
            # Both directions share the tables.
            other = progs.by_direction(Direction(1 - direction)).info()
            assert set(other.map_ids) == ids
            insns = asm.disassemble(prog.xlated())
            dispatch = any(need.values()) or has_drop_path
            # skb->protocol (rewritten by the kernel to a u16 load) is read only to dispatch.
            loads = [i for i in insns if i.cls == asm.LDX and i.src == asm.R6]
            assert any(i.op & 0x18 == asm.H for i in loads) == dispatch
            calls = [i for i in insns if i.op == asm.JMP | asm.Jmp.CALL]
            if strategy == "inline" and not accounting and not log_denied:
                # no map, no helper: only the cold bpf_skb_load_bytes and the counting of
                # drops may call (the drop counter's lookup is inlined for per-CPU arrays)
                assert len(calls) <= 2 + 2 * has_drop_path
            if (strategy.startswith("multibit") and need[4]) or (
                strategy.startswith("lenhash") and need[6]
            ):
                assert any(i.is_wide and i.src == asm.PSEUDO_MAP_VALUE for i in insns)
    finally:
        progs.close()
        if dmap is not None:
            dmap.close()


def test_empty_policy_without_accounting_is_return_one(cmap) -> None:
    for spec in (
        Spec(accounting=False),
        Spec(allow=ALLOW["both"], accounting=False),
        Spec(accounting=False, audit=True),
    ):
        progs = build_programs(spec, cmap)
        try:
            for direction in Direction:
                info = progs.by_direction(direction).info()
                insns = asm.disassemble(progs.by_direction(direction).xlated())
                assert info.map_ids == ()
                assert len(insns) <= 3, asm.dump(insns)
                assert insns[-2:] == [asm.mov64_imm(asm.R0, 1), asm.exit_()]
                assert not any(i.op == asm.JMP | asm.Jmp.CALL for i in insns)
        finally:
            progs.close()


def test_accounting_only_has_no_dispatch_and_one_map(cmap) -> None:
    progs = build_programs(Spec(accounting=True), cmap)
    try:
        for direction in Direction:
            prog = progs.by_direction(direction)
            assert prog.info().map_ids == (cmap.info().id,)
            insns = asm.disassemble(prog.xlated())
            assert not _ld_ctx(insns, 176), "no protocol dispatch without rules"
            # one lock add for packets, one for bytes
            assert sum(i.op == asm.STX | asm.DW | asm.ATOMIC for i in insns) == 2
    finally:
        progs.close()


def test_trie_holds_the_compiled_entries(monkeypatch, cmap) -> None:
    force(monkeypatch, "lpm")
    spec = Spec(
        allow=(net("10.1.0.0/16"),),
        deny=(net("10.0.0.0/8"), net("192.0.2.7/32"), net("2001:db8::/32")),
    )
    progs = build_programs(spec, cmap)
    try:
        assert len(progs.tries) == 2
        by_version = {t.version: dict(t.items()) for t in progs.tries}
        assert by_version[4] == {
            net("10.0.0.0/8"): b"\x01",
            net("10.1.0.0/16"): b"\x00",
            net("192.0.2.7/32"): b"\x01",
        }
        assert by_version[6] == {net("2001:db8::/32"): b"\x01"}
    finally:
        progs.close()


BAD_PROGRAMS = {
    "r0 never set": [asm.exit_()],
    "falls off the end": [asm.mov64_imm(asm.R0, 1)],
    "reads the stack uninitialised": [asm.ldx(asm.DW, asm.R0, asm.R10, -8), asm.exit_()],
    "writes to ctx": [asm.st_imm(asm.W, asm.R1, 0, 0), asm.mov64_imm(asm.R0, 1), asm.exit_()],
}


@pytest.mark.parametrize("items", list(BAD_PROGRAMS.values()), ids=list(BAD_PROGRAMS))
def test_verifier_error_carries_the_log(items: list[asm.Insn]) -> None:
    with pytest.raises(VerifierError) as caught:
        Program.load(items, attach_type=AttachType.CGROUP_INET_EGRESS, name="bad")
    exc = caught.value
    assert exc.errno in (errno.EACCES, errno.EINVAL)
    assert exc.log.strip(), "the verifier log must be returned"
    assert "verifier log" in str(exc)
    assert "bad" in str(exc)


def test_verifier_log_names_the_problem() -> None:
    with pytest.raises(VerifierError) as caught:
        Program.load([asm.exit_()], name="r0_unset")
    assert "R0 !read_ok" in caught.value.log
