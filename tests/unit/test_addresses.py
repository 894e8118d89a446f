"""IPAddressAllow=/IPAddressDeny= parsing, reduction and D-Bus form."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from ipacctd.errors import InvalidInput
from ipacctd.policy.addresses import AddressList, parse_words, reduce

N4 = ipaddress.IPv4Network
N6 = ipaddress.IPv6Network


def strs(value: str, prop: str = "IPAddressAllow") -> list[str]:
    return [str(n) for n in AddressList.parse(value, prop)]


@pytest.mark.parametrize(
    ("keyword", "expected"),
    [
        ("any", ["0.0.0.0/0", "::/0"]),
        ("localhost", ["127.0.0.0/8", "::1/128"]),
        ("link-local", ["169.254.0.0/16", "fe80::/64"]),
        ("multicast", ["224.0.0.0/4", "ff00::/8"]),
    ],
)
def test_keywords(keyword: str, expected: list[str]) -> None:
    assert strs(keyword) == expected
    assert [str(n) for n in parse_words(keyword)] == expected


def test_keywords_are_case_sensitive() -> None:
    with pytest.raises(InvalidInput, match="'Any'"):
        parse_words("Any")


@pytest.mark.parametrize(
    ("word", "expected"),
    [
        ("0.0.0.0/0", "0.0.0.0/0"),
        ("10.1.2.3/8", "10.0.0.0/8"),
        ("10.1.2.3/31", "10.1.2.2/31"),
        ("10.1.2.3/32", "10.1.2.3/32"),
        ("10.1.2.3", "10.1.2.3/32"),
        ("198.51.100.1", "198.51.100.1/32"),
        ("::/0", "::/0"),
        ("2001:db8::1/64", "2001:db8::/64"),
        ("2001:db8::1/127", "2001:db8::/127"),
        ("2001:db8::3/127", "2001:db8::2/127"),
        ("2001:db8::1/128", "2001:db8::1/128"),
        ("2001:db8::1", "2001:db8::1/128"),
        ("10.0.3.2/24", "10.0.3.0/24"),
        ("::ffff:1.2.3.4", "::ffff:1.2.3.4/128"),
    ],
)
def test_prefixes_and_host_bit_masking(word: str, expected: str) -> None:
    assert str(AddressList.parse(word)) == expected


def test_ipv4_mapped_is_ipv6() -> None:
    (net,) = AddressList.parse("::ffff:1.2.3.4/96")
    assert isinstance(net, N6)
    assert net == N6("::ffff:0.0.0.0/96")


def test_covered_entries_are_dropped() -> None:
    assert strs("10.0.0.0/8 10.1.2.3") == ["10.0.0.0/8"]
    assert strs("10.1.2.3 10.0.0.0/8") == ["10.0.0.0/8"]
    assert strs("10.1.2.0/24 10.1.0.0/16 10.1.2.3 10.2.0.0/16") == ["10.1.0.0/16", "10.2.0.0/16"]
    # A shorter prefix of the other family covers nothing.
    assert strs("::/0 10.1.2.3") == ["10.1.2.3/32", "::/0"]
    assert strs("any localhost link-local multicast 2001:db8::1") == ["0.0.0.0/0", "::/0"]


def test_adjacent_networks_are_not_merged() -> None:
    assert strs("10.0.0.0/25 10.0.0.128/25") == ["10.0.0.0/25", "10.0.0.128/25"]


def test_duplicates_vanish_and_order_is_canonical() -> None:
    assert strs("::1 10.0.0.2 10.0.0.1 ::1 10.0.0.1/32 10.0.0.2") == [
        "10.0.0.1/32",
        "10.0.0.2/32",
        "::1/128",
    ]
    assert strs("10.0.0.0/16 9.0.0.0/8 10.1.0.0/16") == ["9.0.0.0/8", "10.0.0.0/16", "10.1.0.0/16"]


def test_whitespace_and_empty() -> None:
    assert strs("  10.0.0.1\t\n ::1  ") == ["10.0.0.1/32", "::1/128"]
    assert not AddressList.parse("")
    assert str(AddressList.parse("   ")) == ""


def test_properties_of_list() -> None:
    a = AddressList.parse("::1 10.0.0.1 fe80::/64 192.168.0.0/16")
    assert len(a) == 4
    assert bool(a)
    assert a.ipv4 == (N4("10.0.0.1/32"), N4("192.168.0.0/16"))
    assert a.ipv6 == (N6("::1/128"), N6("fe80::/64"))
    assert list(a) == [*a.ipv4, *a.ipv6]
    assert str(a) == "10.0.0.1/32 192.168.0.0/16 ::1/128 fe80::/64"
    assert "192.168.7.7" in a
    assert ipaddress.ip_address("fe80::99") in a
    assert "10.0.0.2" not in a
    assert "junk" not in a
    assert N4("192.168.1.0/24") in a
    assert N4("192.0.0.0/8") not in a
    assert len(AddressList()) == 0
    assert not AddressList()


def test_constructor_reduces() -> None:
    a = AddressList((N4("10.1.2.3/32"), N4("10.0.0.0/8"), N4("10.0.0.0/8")))
    assert a.networks == (N4("10.0.0.0/8"),)
    assert a == AddressList.parse("10.0.0.0/8")


def test_assign_appends_and_empty_resets() -> None:
    a = AddressList.parse("10.0.0.1", "IPAddressDeny")
    b = a.assign("10.0.0.2 ::1", "IPAddressDeny")
    assert str(a) == "10.0.0.1/32"  # unchanged
    assert str(b) == "10.0.0.1/32 10.0.0.2/32 ::1/128"
    c = b.assign("10.0.0.0/24", "IPAddressDeny")
    assert str(c) == "10.0.0.0/24 ::1/128"
    assert c.assign("", "IPAddressDeny") == AddressList()
    assert c.assign(" \t ", "IPAddressDeny") == AddressList()
    assert str(c.assign("", "IPAddressDeny").assign("any", "IPAddressDeny")) == "0.0.0.0/0 ::/0"


@pytest.mark.parametrize(
    ("word", "reason"),
    [
        ("foo", "not an IPv4 or IPv6 address"),
        ("10.0.0.256", "not an IPv4 or IPv6 address"),
        ("10.0.0", "not an IPv4 or IPv6 address"),
        ("010.0.0.1", "not an IPv4 or IPv6 address"),
        ("10.0.0.01", "not an IPv4 or IPv6 address"),
        ("1.2.3.4/33", "out of range 0..32"),
        ("::1/129", "out of range 0..128"),
        ("1.2.3.4/99999999999999999999", "out of range"),
        ("1.2.3.4/", "missing prefix length"),
        ("1.2.3.4/x", "not a decimal number"),
        ("1.2.3.4/-1", "not a decimal number"),
        ("1.2.3.4/+8", "not a decimal number"),
        ("1.2.3.4/255.0.0.0", "not a decimal number"),
        ("1.2.3.4/08", "leading zero"),
        ("1.2.3.4/8/8", "not a decimal number"),
        ("/8", "not an IPv4 or IPv6 address"),
        ("fe80::1%eth0", "zone"),
        ("fe80::1%1/64", "zone"),
        ("::1::2", "not an IPv4 or IPv6 address"),
        ("localhost,", "not an IPv4 or IPv6 address"),
        ("1.2.3.4\x00", "not an IPv4 or IPv6 address"),
    ],
)
def test_invalid_words(word: str, reason: str) -> None:
    with pytest.raises(InvalidInput) as info:
        parse_words(f"10.0.0.1 {word} ::1", "IPAddressDeny")
    message = str(info.value)
    assert repr(word) in message
    assert "IPAddressDeny=" in message
    assert reason in message
    before = AddressList.parse("192.0.2.1", "IPAddressDeny")
    with pytest.raises(InvalidInput):
        before.assign(f"10.0.0.1 {word}", "IPAddressDeny")
    assert str(before) == "192.0.2.1/32"


def test_dbus_form() -> None:
    a = AddressList.parse("198.51.100.1 2001:db8::/32")
    assert a.to_dbus() == [
        (2, bytes([198, 51, 100, 1]), 32),
        (10, bytes.fromhex("20010db8") + bytes(12), 32),
    ]
    assert AddressList.from_dbus(a.to_dbus()) == a
    assert AddressList().to_dbus() == []


def test_from_dbus_accepts_byte_lists_and_masks() -> None:
    a = AddressList.from_dbus([(2, [10, 0, 3, 2], 24), [10, bytearray(16), 0]])
    assert str(a) == "10.0.3.0/24 ::/0"


@pytest.mark.parametrize(
    ("items", "reason"),
    [
        ([(3, b"\0\0\0\0", 0)], "family 3"),
        ([(2, b"\0\0\0", 24)], "has 3 bytes"),
        ([(10, b"\0\0\0\0", 0)], "has 4 bytes"),
        ([(2, b"\0\0\0\0", 33)], "out of range 0..32"),
        ([(10, bytes(16), 129)], "out of range 0..128"),
        ([(2, b"\0\0\0\0", -1)], "out of range"),
        ([(2, "1.2.3.4", 32)], "not a byte array"),
        ([(2, [256, 0, 0, 0], 32)], "not a byte array"),
        ([(2, b"\0\0\0\0")], "expected a"),
        ([(True, b"\0\0\0\0", 0)], "family is not an integer"),
        ([(2, b"\0\0\0\0", "8")], "prefix length is not an integer"),
        ("10.0.0.0/8", "expected an array"),
    ],
)
def test_from_dbus_rejects(items: object, reason: str) -> None:
    with pytest.raises(InvalidInput, match="IPAddressDeny=") as info:
        AddressList.from_dbus(items, "IPAddressDeny")  # type: ignore[arg-type]
    assert reason in str(info.value)


# --- property-based tests -------------------------------------------------------------

BASE = int(ipaddress.IPv4Address("10.20.30.0"))

small_v4 = st.builds(
    lambda host, plen: N4((BASE + host, plen), strict=False),
    st.integers(0, 255),
    st.integers(24, 32),
)
any_v4 = st.builds(
    lambda addr, plen: N4((addr, plen), strict=False),
    st.integers(0, 2**32 - 1),
    st.integers(0, 32),
)
any_v6 = st.builds(
    lambda addr, plen: N6((addr, plen), strict=False),
    st.integers(0, 2**128 - 1),
    st.integers(0, 128),
)
networks = st.lists(st.one_of(any_v4, any_v6, small_v4), max_size=30)


def covered(nets: object) -> set[int]:
    """Brute force: the host numbers (0..255) of 10.20.30.0/24 covered by ``nets``."""
    return {
        host
        for host in range(256)
        if any(ipaddress.IPv4Address(BASE + host) in n for n in nets)  # type: ignore[attr-defined]
    }


@given(st.lists(small_v4, max_size=20))
def test_reduce_covers_exactly_the_same_addresses(nets: list[N4]) -> None:
    reduced = reduce(nets)
    assert covered(reduced) == covered(nets)
    assert set(reduced) <= set(nets)
    # No kept entry covers another.
    for a in reduced:
        for b in reduced:
            assert a == b or not a.subnet_of(b)


@given(networks)
def test_reduce_is_idempotent_and_ordered(nets: list[N4 | N6]) -> None:
    reduced = reduce(nets)
    assert reduce(reduced) == reduced
    versions = [n.version for n in reduced]
    assert versions == sorted(versions)
    for family in (4, 6):
        keys = [(int(n.network_address), n.prefixlen) for n in reduced if n.version == family]
        assert keys == sorted(keys)
        assert len(set(keys)) == len(keys)
    for n in nets:
        assert any(n.version == r.version and n.subnet_of(r) for r in reduced)  # type: ignore[arg-type]


@given(networks, st.randoms(use_true_random=False))
def test_reduce_is_order_independent(nets: list[N4 | N6], rnd: object) -> None:
    shuffled = list(nets)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    assert reduce(shuffled) == reduce(nets)
    assert reduce(nets + shuffled) == reduce(nets)


@given(networks)
def test_text_round_trip(nets: list[N4 | N6]) -> None:
    a = AddressList(tuple(nets))
    assert AddressList.parse(str(a)) == a
    assert AddressList.from_dbus(a.to_dbus()) == a


@given(networks, networks)
def test_assign_is_union(first: list[N4 | N6], second: list[N4 | N6]) -> None:
    a = AddressList(tuple(first))
    text = " ".join(str(n) for n in second)
    expected = AddressList((*first, *second)) if second else AddressList()
    assert a.assign(text) == expected


@settings(max_examples=300)
@given(st.text(alphabet=st.sampled_from("0123456789abcdef.:/% -xyz\t\x00"), max_size=40))
def test_garbage_parses_or_raises_invalid_input(text: str) -> None:
    try:
        result = parse_words(text, "IPAddressDeny")
    except InvalidInput as e:
        assert "IPAddressDeny=" in str(e)
    else:
        assert len(result) >= len(text.split())


@given(st.text(max_size=30))
def test_arbitrary_text_parses_or_raises_invalid_input(text: str) -> None:
    try:
        result = AddressList.parse(text)
    except InvalidInput as e:
        assert "IPAddressAllow=" in str(e)
    else:
        assert AddressList.parse(str(result)) == result


def _by_ipaddress(word: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    """The reference: what the standard library makes of an address word (None: invalid)."""
    addr, slash, plen = word.partition("/")
    try:
        address = ipaddress.ip_address(addr)
    except ValueError:
        return None
    if slash and not (plen.isascii() and plen.isdigit() and (plen == "0" or plen[0] != "0")):
        return None
    length = int(plen) if slash else address.max_prefixlen
    if length > address.max_prefixlen:
        return None
    return ipaddress.ip_network((address, length), strict=False)


ADDRESS_PARTS = st.sampled_from(
    [
        "",
        "0",
        "00",
        "01",
        "1",
        "255",
        "256",
        "ffff",
        "FFFF",
        "12345",
        "0000",
        "00000",
        "g",
        "1.2.3.4",
        "01.2.3.4",
        "::",
        "0x1",
    ]
)


@settings(max_examples=500)
@given(
    st.one_of(
        st.lists(ADDRESS_PARTS, min_size=1, max_size=10).map(":".join),
        st.lists(ADDRESS_PARTS, min_size=1, max_size=5).map(".".join),
        st.ip_addresses().map(str),
    ),
    st.one_of(st.just(""), st.integers(0, 130).map(lambda n: f"/{n}")),
)
def test_words_parse_as_the_standard_library_does(address: str, suffix: str) -> None:
    """The fast parser (inet_pton on integers) accepts the same words as ipaddress and
    makes the same networks of them."""
    word = address + suffix
    assume(word)
    want = _by_ipaddress(word)
    if want is None or "%" in word:
        with pytest.raises(InvalidInput):
            parse_words(word)
    else:
        assert parse_words(word) == [want]


def test_appending_reduces_once_when_read(monkeypatch) -> None:
    """200 appended lines are reduced once, when the list is read, not after each line."""
    from ipacctd.policy import addresses

    calls = []
    real = addresses.reduce
    monkeypatch.setattr(addresses, "reduce", lambda nets: calls.append(1) or real(nets))
    value = AddressList()
    for i in range(200):
        value = value.assign(f"10.{i}.0.0/16 10.{i}.1.0/24 2001:db8:{i:x}::/48", "IPAddressDeny")
    assert calls == []
    assert len(value) == 400  # the /24s are covered by their /16s
    assert len(calls) == 1
    assert value.extend(AddressList.parse("10.0.0.0/8")).networks[0] == N4("10.0.0.0/8")
    assert len(value.extend(AddressList.parse("10.0.0.0/8"))) == 201


@settings(max_examples=500)
@given(st.ip_addresses(v=6), st.integers(0, 128))
def test_ipv6_text_is_what_the_standard_library_writes(address, length: int) -> None:
    from ipacctd.policy.addresses import format_network

    net = ipaddress.IPv6Network((int(address) >> (128 - length) << (128 - length), length))
    mapped = net.network_address.ipv4_mapped
    want = f"::ffff:{mapped}/{length}" if mapped is not None else str(net)
    assert format_network(net) == want


@pytest.mark.parametrize(
    "word", ["::1", "::", "::1.2.3.4", "::ffff:1.2.3.4", "1::", "1:0:0:2::3", "2001:db8:0:1::"]
)
def test_ipv6_text_edge_cases(word: str) -> None:
    from ipacctd.policy.addresses import format_network

    net = ipaddress.IPv6Network(word)
    mapped = net.network_address.ipv4_mapped
    assert format_network(net) == (f"::ffff:{mapped}/128" if mapped else str(net))


def test_the_fast_network_builder_is_in_use_here() -> None:
    """On this Python the fast builder passed its self-check (else parsing is 3x slower)."""
    from ipacctd.policy import addresses

    many = " ".join(f"192.0.2.{i}" for i in range(256))
    for _ in range(addresses.SLOW_FIRST // 256 + 1):  # after the first ones, it is chosen
        addresses.parse_words(many)
    assert addresses.make_network is addresses._network_fast


@settings(max_examples=300)
@given(st.booleans(), st.integers(0, 2**128 - 1), st.integers(0, 128))
def test_fast_networks_are_the_constructors_networks(v6: bool, value: int, length: int) -> None:
    from ipacctd.policy import addresses

    bits = 128 if v6 else 32
    length = min(length, bits)
    value = (value % (1 << bits)) >> (bits - length) << (bits - length)
    many = " ".join(f"192.0.2.{i}" for i in range(256))
    for _ in range(addresses.SLOW_FIRST // 256 + 1):  # then the fast builder has its masks
        addresses.parse_words(many)
    fast = addresses._network_fast(v6, value, length)
    slow = addresses._network_slow(v6, value, length)
    assert type(fast) is type(slow)
    assert fast == slow and hash(fast) == hash(slow)
    assert (str(fast), repr(fast), fast.with_netmask) == (str(slow), repr(slow), slow.with_netmask)
    assert fast.network_address == slow.network_address
    assert hash(fast.network_address) == hash(slow.network_address)
    assert fast.broadcast_address == slow.broadcast_address
    assert fast.num_addresses == slow.num_addresses
    assert sorted(vars(fast)) == sorted(vars(slow))
    if length >= bits - 1:
        assert list(fast.hosts()) == list(slow.hosts())
    assert fast.subnet_of(slow) and slow.subnet_of(fast)
    assert {fast: 1}[slow] == 1
