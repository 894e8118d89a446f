"""compile_rules against the brute-force model in tests/model.py."""

from __future__ import annotations

import ipaddress

import model
from hypothesis import given, settings
from hypothesis import strategies as st

from ipacctd.datapath.rules import DENY, PASS, FamilyRules, compile_family, compile_rules

net = ipaddress.ip_network
addr = ipaddress.ip_address

# A small universe so that prefixes nest, overlap and collide often.
V4_BASES = [f"10.0.0.{i}" for i in range(16)] + ["10.0.1.0", "10.1.0.0", "11.0.0.0", "192.0.2.1"]
V4_LENS = [0, 8, 16, 24, 28, 29, 30, 31, 32]
V6_BASES = [f"2001:db8::{i:x}" for i in range(8)] + ["2001:db8:0:1::", "2001:db9::"]
V6_LENS = [0, 32, 64, 124, 126, 127, 128]
V4_PROBES = [f"10.0.0.{i}" for i in range(18)] + [
    "10.0.1.7",
    "10.1.2.3",
    "11.0.0.1",
    "192.0.2.1",
    "0.0.0.0",
    "255.255.255.255",
    "9.255.255.255",
]
V6_PROBES = [f"2001:db8::{i:x}" for i in range(10)] + [
    "2001:db8:0:1::5",
    "2001:db9::1",
    "::",
    "ffff::1",
]

v4_prefix = st.builds(
    lambda b, n: net(f"{b}/{n}", strict=False), st.sampled_from(V4_BASES), st.sampled_from(V4_LENS)
)
v6_prefix = st.builds(
    lambda b, n: net(f"{b}/{n}", strict=False), st.sampled_from(V6_BASES), st.sampled_from(V6_LENS)
)
prefix_list = st.lists(st.one_of(v4_prefix, v6_prefix), max_size=7)


def _boundary_probes(prefixes: list) -> list:
    """First and last address of each prefix and the neighbours just outside."""
    out = []
    for p in prefixes:
        first, last = int(p.network_address), int(p.broadcast_address)
        top = (1 << p.max_prefixlen) - 1
        for v in (first - 1, first, last, last + 1):
            if 0 <= v <= top:
                cls = ipaddress.IPv4Address if p.version == 4 else ipaddress.IPv6Address
                out.append(cls(v))
    return out


def _probe_set(allow: list, deny: list) -> list:
    fixed = [addr(a) for a in V4_PROBES + V6_PROBES]
    return fixed + _boundary_probes(allow + deny)


def _rules_for(rules: tuple[FamilyRules, FamilyRules], a) -> FamilyRules:
    return rules[0] if a.version == 4 else rules[1]


def _nearest_enclosing(rules: FamilyRules, p) -> int:
    best = None
    for q, v in rules.entries.items():
        if (
            q != p
            and q.prefixlen < p.prefixlen
            and p.subnet_of(q)
            and (best is None or q.prefixlen > best[0])
        ):
            best = (q.prefixlen, v)
    return PASS if best is None else best[1]


@settings(max_examples=300, deadline=None)
@given(
    allow=prefix_list,
    deny=prefix_list,
    extra=st.lists(
        st.one_of(
            st.integers(0, 0xFFFFFFFF).map(ipaddress.IPv4Address),
            st.integers(0x20010DB8 << 96, (0x20010DB8 << 96) + 0xFFFF).map(ipaddress.IPv6Address),
        ),
        max_size=5,
    ),
)
def test_compiled_table_decides_like_the_model(allow, deny, extra) -> None:
    rules = compile_rules(allow, deny)
    assert (rules[0].version, rules[1].version) == (4, 6)
    for a in _probe_set(allow, deny) + extra:
        expected = model.address_verdict(a, allow, deny)
        got = _rules_for(rules, a).verdict(a) == PASS
        assert got == expected, f"{a}: allow={allow} deny={deny} table={rules}"


@settings(max_examples=300, deadline=None)
@given(allow=prefix_list, deny=prefix_list)
def test_compiled_table_is_pruned(allow, deny) -> None:
    inputs = set(allow) | set(deny)
    for rules in compile_rules(allow, deny):
        for p, v in rules.entries.items():
            assert p.version == rules.version
            assert p in inputs, f"{p} was not in the policy"
            assert v in (PASS, DENY)
            # Each entry changes the verdict its nearest enclosing entry (or the default,
            # PASS) would give: otherwise it is redundant.
            assert v != _nearest_enclosing(rules, p), f"redundant {p} in {rules.entries}"
        # The table says "deny" only for prefixes the deny list covers.
        for p, v in rules.entries.items():
            if v == DENY:
                assert any(p.subnet_of(d) for d in deny if d.version == p.version)
        if rules.empty:
            assert rules.constant == PASS


def test_allow_only_compiles_to_empty_tables() -> None:
    v4, v6 = compile_rules([net("10.0.0.0/8"), net("::/0"), net("192.0.2.1/32")], [])
    assert v4.empty and v6.empty
    assert v4.entries == {} and v6.entries == {}
    assert v4.constant == PASS


def test_deny_any_compiles_to_one_constant_entry_per_family() -> None:
    v4, v6 = compile_rules([], [net("0.0.0.0/0"), net("::/0")])
    assert v4.entries == {net("0.0.0.0/0"): DENY}
    assert v6.entries == {net("::/0"): DENY}
    assert v4.constant == DENY and v6.constant == DENY
    # any deny entry under "deny any" is redundant
    v4, _ = compile_rules([], [net("0.0.0.0/0"), net("10.0.0.0/8"), net("10.1.2.3/32")])
    assert v4.entries == {net("0.0.0.0/0"): DENY}


def test_deny_covered_by_allow_vanishes() -> None:
    v4, v6 = compile_rules([net("10.0.0.0/8")], [net("10.1.0.0/16"), net("2001:db8::/32")])
    assert v4.empty
    assert v6.entries == {net("2001:db8::/32"): DENY}
    assert v6.constant is None


def test_whitelist_keeps_deny_any_and_the_allowed_holes() -> None:
    v4, v6 = compile_rules(
        [net("192.0.2.0/24"), net("10.0.0.1/32")], [net("0.0.0.0/0"), net("::/0")]
    )
    assert v4.entries == {
        net("0.0.0.0/0"): DENY,
        net("192.0.2.0/24"): PASS,
        net("10.0.0.1/32"): PASS,
    }
    assert v4.constant is None
    assert v6.constant == DENY
    assert v4.verdict(addr("192.0.2.255")) == PASS
    assert v4.verdict(addr("192.0.3.0")) == DENY
    assert v4.verdict(addr("10.0.0.0")) == DENY
    assert v4.verdict(addr("10.0.0.1")) == PASS


def test_allow_inside_deny_and_deny_inside_allow() -> None:
    allow = [net("10.1.0.0/16"), net("192.0.2.0/24")]
    deny = [net("10.0.0.0/8"), net("192.0.2.128/25"), net("192.0.2.7/32")]
    v4 = compile_family(4, allow, deny)
    assert v4.entries == {net("10.0.0.0/8"): DENY, net("10.1.0.0/16"): PASS}
    for a in ["10.0.0.1", "10.1.0.1", "10.2.0.0", "192.0.2.7", "192.0.2.200", "11.0.0.0"]:
        assert (v4.verdict(addr(a)) == PASS) == model.address_verdict(a, allow, deny), a


def test_families_do_not_leak_into_each_other() -> None:
    v4, v6 = compile_rules([net("::/0")], [net("0.0.0.0/0")])
    assert v4.constant == DENY  # the IPv6 allow does not cover IPv4
    assert v6.empty


# ---- the sweep compiler against the straightforward one it replaced ------------------------


def _reference_compile(version: int, allow: list, deny: list) -> dict:
    """The original per-prefix compiler (supernet lookups), kept as a reference."""
    allow_set = {n for n in allow if n.version == version}
    deny_set = {n for n in deny if n.version == version}
    if not deny_set:
        return {}

    def covered(n, table) -> bool:
        return any(n.subnet_of(t) for t in table)

    verdicts = {}
    for n in allow_set | deny_set:
        verdicts[n] = PASS if covered(n, allow_set) else DENY if covered(n, deny_set) else PASS
    kept = {}
    for n in sorted(verdicts, key=lambda n: (n.prefixlen, n.network_address)):
        parents = [p for p in verdicts if p.prefixlen < n.prefixlen and n.subnet_of(p)]
        parent = verdicts[max(parents, key=lambda p: p.prefixlen)] if parents else PASS
        if verdicts[n] != parent:
            kept[n] = verdicts[n]
    return kept


@settings(max_examples=300, deadline=None)
@given(allow=prefix_list, deny=prefix_list)
def test_compiler_gives_the_reference_table_in_order(allow, deny) -> None:
    for version in (4, 6):
        got = compile_family(version, allow, deny).entries
        want = _reference_compile(version, allow, deny)
        assert list(got.items()) == list(want.items())


def test_compiler_is_fast_on_large_lists() -> None:
    import random
    import time

    rng = random.Random(7)
    deny = [
        net((rng.getrandbits(32), rng.choice([16, 20, 24, 24, 32, 32])), strict=False)
        for _ in range(50_000)
    ]
    allow = [net((int(d.network_address), 32)) for d in deny[:5000]]
    start = time.perf_counter()
    rules = compile_family(4, allow, deny)
    assert time.perf_counter() - start < 3
    sample = deny[:10] + allow[:10]
    for n in sample:
        a = n.network_address
        want = model.address_verdict(a, allow, deny)
        assert (rules.verdict(a) == PASS) == want, a


# ---- lookup strategies and the multibit table (Python side) -------------------------------


def _table(version: int, n: int) -> FamilyRules:
    bits = 32 if version == 4 else 128
    return FamilyRules(version, {net((i << (bits - 24), 24)): DENY for i in range(1, n + 1)})


def test_strategy_follows_the_table_size() -> None:
    from ipacctd.datapath import lookup

    assert lookup.strategy(FamilyRules(4, {})) is None
    assert lookup.strategy(FamilyRules(4, {net("0.0.0.0/0"): DENY})) is None
    for version in (4, 6):
        assert lookup.strategy(_table(version, 1)) == lookup.INLINE
        assert lookup.strategy(_table(version, lookup.INLINE_MAX)) == lookup.INLINE
        assert lookup.strategy(_table(version, lookup.INLINE_MAX + 1)) == lookup.LPM
        assert lookup.strategy(_table(version, lookup.MULTIBIT_MIN - 1)) == lookup.LPM
    assert lookup.strategy(_table(4, lookup.MULTIBIT_MIN)) == lookup.MULTIBIT
    assert lookup.strategy(_table(6, lookup.LENHASH_MIN - 1)) == lookup.LPM
    assert lookup.strategy(_table(6, lookup.LENHASH_MIN)) == lookup.LENHASH


def test_lenhash_needs_few_enough_lengths_above_its_root() -> None:
    """Each length above the root is a bit of a slot: a table with more lengths than the
    slot has bits gets the trie."""
    from ipacctd.datapath import lookup

    n = lookup.LENHASH_MIN
    root = lookup.lenhash_root_bits(n)
    many = {net(((i + 1) << 99, 128 - i % 100)): DENY for i in range(n)}  # 100 lengths
    assert len({p.prefixlen for p in many if p.prefixlen > root}) > lookup.LENHASH_MAX_LENGTHS
    assert lookup.strategy(FamilyRules(6, many)) == lookup.LPM
    few = {net(((i + 1) << 99, 128 - i % 60)): DENY for i in range(n)}
    assert lookup.strategy(FamilyRules(6, few)) == lookup.LENHASH
    table = lookup.build_lenhash(FamilyRules(6, few))
    assert table.lengths == tuple(range(128, 68, -1))
    assert sum(table.count(w) for w in lookup.KEY_WORDS) == n
    meta = lookup.parse_lenhash_trailer(table.value())
    assert meta == {
        "prefixes": n,
        "root_bits": root,
        "lengths": list(table.lengths),
        "singles": 0,  # all share slot 0
    }
    # the same prefixes spread over the root: each alone under its slot, no hash at all
    spread = {net(((i + 1) << (128 - root), 128 - i % 100)): DENY for i in range(n)}
    table = lookup.build_lenhash(FamilyRules(6, spread))
    assert table.n_singles == n and table.lengths == () and table.keys == {}
    for p in spread:
        assert table.lookup(int(p.network_address)) == DENY
        assert table.lookup(int(p.network_address) - 1) == PASS


@settings(max_examples=200, deadline=None)
@given(
    allow=st.lists(v6_prefix, max_size=7),
    deny=st.lists(v6_prefix, max_size=7),
    root=st.sampled_from([1, 4, 12, 20]),
)
def test_lenhash_table_decides_like_the_compiled_table(allow, deny, root) -> None:
    from ipacctd.datapath import lookup

    rules = compile_family(6, allow, deny)
    table = lookup.build_lenhash(rules, root)
    for a in (a for a in _probe_set(allow, deny) if a.version == 6):
        assert table.lookup(int(a)) == rules.verdict(a), (root, a, rules.entries)


@settings(max_examples=200, deadline=None)
@given(allow=st.lists(v4_prefix, max_size=7), deny=st.lists(v4_prefix, max_size=7))
def test_multibit_table_decides_like_the_compiled_table(allow, deny) -> None:
    from ipacctd.datapath import lookup

    rules = compile_family(4, allow, deny)
    probes = [a for a in _probe_set(allow, deny) if a.version == 4]
    for strides in lookup.STRIDES:
        table = lookup.build_multibit(rules, strides)
        assert table.size == lookup.multibit_size(
            sorted((n.prefixlen, int(n.network_address), v) for n, v in rules.entries.items()),
            strides,
        )
        assert lookup.parse_trailer(table.value())["strides"] == list(strides)
        for a in probes:
            assert table.lookup(int(a)) == rules.verdict(a), (strides, a, rules.entries)


def test_multibit_strides_are_chosen_by_memory() -> None:
    from ipacctd.datapath import lookup

    # a dense cluster: 16-8-8 costs little more than the smallest, and has fewest levels
    dense = FamilyRules(4, {net((0x0A000000 | i, 32)): DENY for i in range(0, 4096, 3)})
    assert lookup.build_multibit(dense).strides == (16, 8, 8)
    # prefixes spread over every /16: the 16-8-8 chunks would cost far more
    spread = FamilyRules(
        4, {net(((i * 40503 & 0xFFFF) << 16 | 0x0101, 32)): DENY for i in range(5000)}
    )
    assert lookup.build_multibit(spread).strides == (16, 4, 4, 4, 4)
