"""Verdicts and counters of the loaded programs under BPF_PROG_TEST_RUN, against tests/model.py.

Every packet goes through the kernel's own program run (the verifier-checked, JIT-compiled
program with its real LPM tries and per-CPU counters); the expectation comes from the
brute-force model, never from ipacctd's rule compiler.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from contextlib import contextmanager

import model
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lookup_strategies import STRATEGIES, expected, force

from ipacctd.datapath import counters, lookup
from ipacctd.datapath.counters import Counters, Direction
from ipacctd.datapath.rules import DENY, PASS
from ipacctd.datapath.unit import Programs, Spec, build_programs

net = ipaddress.ip_network
ip = ipaddress.ip_address

# Prefixes at the boundaries the brief names: /0 /8 /31 /32 and /0 /64 /127 /128.
V4 = {
    "p8": net("10.0.0.0/8"),
    "p31": net("192.0.2.2/31"),
    "p32": net("192.0.2.9/32"),
    "in8_31": net("10.20.30.40/31"),
    "in8_32": net("10.20.30.50/32"),
    "p24": net("203.0.113.0/24"),
}
V6 = {
    "p64": net("2001:db8:1::/64"),
    "p127": net("2001:db8::2/127"),
    "p128": net("2001:db8::9/128"),
    "in64_127": net("2001:db8:1::40/127"),
    "in64_128": net("2001:db8:1::50/128"),
    "p48": net("2001:db8:5::/48"),
}
ANY = (net("0.0.0.0/0"), net("::/0"))
BOUNDARY = (V4["p8"], V4["p31"], V4["p32"], V6["p64"], V6["p127"], V6["p128"])

POLICIES: dict[str, tuple[tuple, tuple]] = {
    "neither": ((), ()),
    "allow-only": (BOUNDARY, ()),
    "deny-only": ((), BOUNDARY),
    "both": (
        (V4["p8"], V4["p32"], V6["p64"], V6["p128"]),
        (V4["p31"], V4["p24"], V6["p127"], V6["p48"]),
    ),
    # allow inside deny, and deny inside allow (which allow wins)
    "overlapping": (
        (V4["in8_31"], V4["in8_32"], V4["p24"], V6["in64_127"], V6["in64_128"], V6["p48"]),
        (
            V4["p8"],
            net("203.0.113.128/25"),
            net("203.0.113.7/32"),
            V6["p64"],
            net("2001:db8:5::/127"),
            net("2001:db8:5::1:0/112"),
        ),
    ),
    "deny-any": ((), ANY),
    "deny-any-allow-holes": (BOUNDARY, ANY),
    "allow-any": (ANY, BOUNDARY),
    "deny-v4-any-only": ((), (net("0.0.0.0/0"), V6["p128"])),
}


def _neighbours(p) -> list:
    """First and last address inside ``p`` and the addresses just outside it."""
    cls = ipaddress.IPv4Address if p.version == 4 else ipaddress.IPv6Address
    first, last = int(p.network_address), int(p.broadcast_address)
    top = (1 << p.max_prefixlen) - 1
    return [cls(v) for v in (first - 1, first, last, last + 1) if 0 <= v <= top]


def _probes(version: int) -> list:
    prefixes = [p for _, (a, d) in POLICIES.items() for p in (*a, *d) if p.version == version]
    found = {a for p in prefixes for a in _neighbours(p)}
    fixed = (
        ["0.0.0.0", "255.255.255.255", "127.0.0.1", "198.51.100.1", "1.1.1.1"]
        if version == 4
        else ["::", "::1", "fe80::1", "2001:db9::1", "ffff::"]
    )
    found |= {ip(a) for a in fixed}
    return sorted(found)


@contextmanager
def loaded(spec: Spec) -> Iterator[tuple[Programs, object]]:
    cmap = counters.create_map()
    try:
        progs = build_programs(spec, cmap)
        try:
            yield progs, cmap
        finally:
            progs.close()
    finally:
        cmap.close()


def _expected(direction: Direction, results: list[tuple[bool, int]], audit: bool) -> Counters:
    passed = [n for ok, n in results if ok]
    dropped = [n for ok, n in results if not ok]
    d = direction.name.lower()
    fields = {}
    if audit:
        fields[f"{d}_packets"] = len(results)
        fields[f"{d}_bytes"] = sum(n for _, n in results)
        fields[f"{d}_audit_packets"] = len(dropped)
        fields[f"{d}_audit_bytes"] = sum(dropped)
    else:
        fields[f"{d}_packets"] = len(passed)
        fields[f"{d}_bytes"] = sum(passed)
        fields[f"{d}_dropped_packets"] = len(dropped)
        fields[f"{d}_dropped_bytes"] = sum(dropped)
    return Counters(**fields)


def _run_table(progs: Programs, direction: Direction, frames: list, allow, deny):
    """Run every (src, dst, frame) and return mismatches and (model verdict, bytes)."""
    prog = progs.by_direction(direction)
    wrong, results = [], []
    for src, dst, frame in frames:
        want = model.verdict(direction, src, dst, allow, deny)
        got = prog.test_run(frame).retval
        assert got in (0, 1)
        if bool(got) != want:
            wrong.append(f"{direction.name} {src} -> {dst}: kernel {got}, model {int(want)}")
        results.append((want, model.ip_length(frame)))
    return wrong, results


# multibit tables are IPv4 only, lenhash tables IPv6 only: forcing one on the other family
# would test the trie again
TABLE_CASES = [
    pytest.param(strategy, version, id=f"{strategy}-ipv{version}")
    for strategy in STRATEGIES
    if strategy != "auto"
    for version in (4, 6)
    if not (version == 6 and strategy.startswith("multibit"))
    and not (version == 4 and strategy.startswith("lenhash"))
]


@pytest.mark.parametrize("direction", list(Direction), ids=lambda d: d.name.lower())
@pytest.mark.parametrize(("strategy", "version"), TABLE_CASES)
@pytest.mark.parametrize("policy", list(POLICIES))
def test_decision_table(
    monkeypatch, policy: str, strategy: str, version: int, direction: Direction
) -> None:
    force(monkeypatch, strategy)
    allow, deny = POLICIES[policy]
    probes = _probes(version)
    # Pair each probe with a different one on the other side of the packet, both ways
    # round, so a program reading the wrong address field cannot agree with the model.
    frames = []
    for i, a in enumerate(probes):
        b = probes[(i * 7 + 3) % len(probes)]
        frames.append((a, b, model.udp_frame(a, b, b"p" * (i % 5))))
        frames.append((b, a, model.udp_frame(b, a)))
    frames.append((None, None, model.arp_frame()))
    with loaded(Spec(allow=allow, deny=deny)) as (progs, cmap):
        assert progs.rules is not None
        rules = progs.rules[0 if version == 4 else 1]
        want = None if rules.constant is not None else expected(strategy, version)
        assert progs.strategy(version) == want
        wrong, results = _run_table(progs, direction, frames, allow, deny)
        assert not wrong, "\n".join(wrong)
        assert counters.read(cmap) == _expected(direction, results, audit=False)


def test_both_outcomes_occur() -> None:
    """The table is not vacuous: for each family and direction, some probes pass and some
    are dropped under the 'both' policy."""
    allow, deny = POLICIES["both"]
    for version in (4, 6):
        verdicts = {model.address_verdict(a, allow, deny) for a in _probes(version)}
        assert verdicts == {True, False}


@pytest.mark.parametrize(
    "frame",
    [
        model.arp_frame(),
        model.ethernet(0x88CC, b"\0" * 46),  # LLDP
        model.ethernet(0x0806, b""),
    ],
    ids=["arp", "lldp", "empty-arp"],
)
def test_non_ip_frames_pass_and_are_counted(frame: bytes) -> None:
    with loaded(Spec(deny=ANY)) as (progs, cmap):
        for direction in Direction:
            assert progs.by_direction(direction).test_run(frame).retval == 1
        n = model.ip_length(frame)
        assert counters.read(cmap) == Counters(
            ingress_packets=1, ingress_bytes=n, egress_packets=1, egress_bytes=n
        )


def test_accounting_off_counts_only_drops() -> None:
    allow, deny = (), (V4["p32"],)
    with loaded(Spec(allow=allow, deny=deny, accounting=False)) as (progs, cmap):
        ok = model.ipv4_udp("192.0.2.1", "192.0.2.8")
        bad = model.ipv4_udp("192.0.2.1", "192.0.2.9", b"z" * 100)
        assert progs.egress.test_run(ok).retval == 1
        assert progs.egress.test_run(bad).retval == 0
        assert counters.read(cmap) == Counters(
            egress_dropped_packets=1, egress_dropped_bytes=model.ip_length(bad)
        )
        assert model.ip_length(bad) == model.udp_ip_bytes(100, 4)


@pytest.mark.parametrize("direction", list(Direction), ids=lambda d: d.name.lower())
def test_audit_mode_passes_and_counts_would_be_drops(direction: Direction) -> None:
    allow, deny = POLICIES["overlapping"]
    frames = []
    for version in (4, 6):
        probes = _probes(version)
        for i, a in enumerate(probes):
            b = probes[-1 - i]
            frames.append((a, b, model.udp_frame(a, b, b"a" * i)))
    with loaded(Spec(allow=allow, deny=deny, audit=True)) as (progs, cmap):
        prog = progs.by_direction(direction)
        results = []
        for src, dst, frame in frames:
            assert prog.test_run(frame).retval == 1, f"audit mode dropped {src} -> {dst}"
            results.append(
                (model.verdict(direction, src, dst, allow, deny), model.ip_length(frame))
            )
        assert any(not ok for ok, _ in results)
        assert counters.read(cmap) == _expected(direction, results, audit=True)


def test_repeat_counts_every_run() -> None:
    frame = model.ipv6_udp("2001:db8::1", "2001:db8::9", b"r" * 10)
    with loaded(Spec(deny=(V6["p128"],))) as (progs, cmap):
        assert progs.egress.test_run(frame, repeat=50).retval == 0
        assert progs.ingress.test_run(frame, repeat=20).retval == 1
        n = model.udp_ip_bytes(10, 6)
        assert model.ip_length(frame) == n
        assert counters.read(cmap) == Counters(
            ingress_packets=20,
            ingress_bytes=20 * n,
            egress_dropped_packets=50,
            egress_dropped_bytes=50 * n,
        )


# ---- random policies ----------------------------------------------------------------------

V4_BASES = ["10.0.0.0", "10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.8", "10.1.0.0", "192.0.2.1"]
V4_LENS = [0, 8, 16, 24, 30, 31, 32]
V6_BASES = [
    "2001:db8::",
    "2001:db8::1",
    "2001:db8::2",
    "2001:db8::3",
    "2001:db8:0:1::",
    "2001:db9::",
]
V6_LENS = [0, 32, 64, 126, 127, 128]

prefix = st.one_of(
    st.builds(
        lambda b, n: net(f"{b}/{n}", strict=False),
        st.sampled_from(V4_BASES),
        st.sampled_from(V4_LENS),
    ),
    st.builds(
        lambda b, n: net(f"{b}/{n}", strict=False),
        st.sampled_from(V6_BASES),
        st.sampled_from(V6_LENS),
    ),
)
v4_addr = st.one_of(
    st.sampled_from(
        [
            "10.0.0.0",
            "10.0.0.1",
            "10.0.0.2",
            "10.0.0.3",
            "10.0.0.4",
            "10.0.0.9",
            "10.1.0.0",
            "10.2.0.0",
            "192.0.2.1",
            "192.0.2.0",
            "11.0.0.0",
        ]
    ).map(ip),
    st.integers(0, 0xFFFFFFFF).map(ipaddress.IPv4Address),
)
v6_addr = st.one_of(
    st.sampled_from(
        [
            "2001:db8::",
            "2001:db8::1",
            "2001:db8::2",
            "2001:db8::3",
            "2001:db8::4",
            "2001:db8:0:1::1",
            "2001:db8:0:2::",
            "2001:db9::",
            "::1",
        ]
    ).map(ip),
    st.integers(0, (1 << 128) - 1).map(ipaddress.IPv6Address),
)
packet = st.one_of(
    st.tuples(v4_addr, v4_addr, st.integers(0, 64)),
    st.tuples(v6_addr, v6_addr, st.integers(0, 64)),
    st.just((None, None, 0)),
)


@pytest.mark.parametrize("strategy", ["inline", "lpm", "multibit-16-4", "multibit-20-4"])
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    allow=st.lists(prefix, max_size=6),
    deny=st.lists(prefix, max_size=6),
    audit=st.booleans(),
    packets=st.lists(packet, min_size=1, max_size=12),
)
def test_random_policies_match_the_model(
    monkeypatch, strategy, allow, deny, audit, packets
) -> None:
    force(monkeypatch, strategy)
    with loaded(Spec(allow=tuple(allow), deny=tuple(deny), audit=audit)) as (progs, cmap):
        expected = Counters()
        for direction in Direction:
            results = []
            for src, dst, size in packets:
                frame = model.arp_frame() if src is None else model.udp_frame(src, dst, b"h" * size)
                want = model.verdict(direction, src, dst, allow, deny)
                got = progs.by_direction(direction).test_run(frame).retval
                assert got == (1 if want or audit else 0), (
                    f"{direction.name} {src} -> {dst} allow={allow} deny={deny} audit={audit}"
                )
                results.append((want, model.ip_length(frame)))
            expected = expected + _expected(direction, results, audit)
        assert counters.read(cmap) == expected


# ---- large random tables: every strategy on thousands of prefixes ------------------------


def _random_prefixes(rng, version: int, count: int) -> list:
    bits = 32 if version == 4 else 128
    lengths = [8, 12, 16, 18, 20, 22, 23, 24, 24, 24, 26, 28, 29, 30, 31, 32, 32, 32]
    if version == 6:
        lengths = [16, 24, 32, 40, 44, 48, 48, 56, 60, 64, 64, 80, 96, 112, 120, 126, 127, 128]
    out = set()
    # cluster half of them under a few /8s (or /16s) so that prefixes nest and collide
    hubs = [rng.getrandbits(bits) for _ in range(4)]
    while len(out) < count:
        value = rng.getrandbits(bits)
        if rng.random() < 0.5:
            hub_len = 8 if version == 4 else 16
            keep = bits - hub_len
            value = (rng.choice(hubs) >> keep << keep) | (value & ((1 << keep) - 1))
        out.add(net((value, rng.choice(lengths)), strict=False))
    return sorted(out)


def _probes_for(rng, rules, version: int, count: int) -> list:
    cls = ipaddress.IPv4Address if version == 4 else ipaddress.IPv6Address
    top = (1 << (32 if version == 4 else 128)) - 1
    entries = list(rules.entries)
    found = set()
    for p in rng.sample(entries, min(len(entries), count // 5)):
        first, last = int(p.network_address), int(p.broadcast_address)
        for v in (first - 1, first, last, last + 1, rng.randint(first, last)):
            if 0 <= v <= top:
                found.add(cls(v))
    while len(found) < count:
        found.add(cls(rng.getrandbits(top.bit_length())))
    return sorted(found)


@pytest.mark.parametrize(
    ("strategy", "version"),
    [
        ("auto", 4),
        ("auto", 6),
        ("lpm", 4),
        ("lpm", 6),
        ("multibit-16-4", 4),
        ("multibit-16-8", 4),
        ("lenhash-12", 6),
        ("lenhash-20", 6),
    ],
    ids=lambda v: v if isinstance(v, str) else f"ipv{v}",
)
def test_thousands_of_random_prefixes(monkeypatch, strategy: str, version: int) -> None:
    """Kernel verdicts on random and boundary addresses equal FamilyRules.verdict (and the
    model on a sample) for a few thousand random allow/deny prefixes."""
    import random

    force(monkeypatch, strategy)
    rng = random.Random(f"thousands-{version}")
    deny = _random_prefixes(rng, version, 3000)
    allow = _random_prefixes(rng, version, 300)
    with loaded(Spec(allow=tuple(allow), deny=tuple(deny))) as (progs, _):
        rules = progs.rules[0 if version == 4 else 1]
        assert len(rules.entries) > lookup.INLINE_MAX
        auto = lookup.MULTIBIT if version == 4 else lookup.LENHASH  # > 1024 entries
        want = auto if strategy == "auto" else expected(strategy, version)
        assert progs.strategy(version) == want
        probes = _probes_for(rng, rules, version, 600)
        verdicts = {rules.verdict(a) for a in probes}
        assert verdicts == {PASS, DENY}, "the probes must see both verdicts"
        other = ipaddress.ip_address("192.0.2.10" if version == 4 else "2001:db8:ffff::10")
        wrong = []
        for i, a in enumerate(probes):
            want_pass = rules.verdict(a) == PASS
            if i % 20 == 0:  # the compiler itself against the model, on a sample
                assert want_pass == model.address_verdict(a, allow, deny), a
            for direction in Direction:
                src, dst = (a, other) if direction == Direction.INGRESS else (other, a)
                got = progs.by_direction(direction).test_run(model.udp_frame(src, dst)).retval
                if got != int(want_pass):
                    wrong.append(f"{direction.name} {a}: kernel {got}, table {int(want_pass)}")
        assert not wrong, "\n".join(wrong[:20])
