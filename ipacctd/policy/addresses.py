"""``IPAddressAllow=`` / ``IPAddressDeny=`` values, with systemd's semantics.

A value is a whitespace-separated list of words. Each word is an IPv4 or IPv6 address with
an optional ``/N`` prefix length (no suffix means a host route, /32 or /128), or one of the
keywords ``any``, ``localhost``, ``link-local`` and ``multicast``. Host bits are cleared,
duplicates vanish and entries covered by a shorter prefix of the same list are dropped.

Unlike systemd, which logs and skips an invalid word, an invalid word rejects the whole
value with :class:`~ipacctd.errors.InvalidInput`: a firewall must not half-apply.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from ipacctd.errors import InvalidInput

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

AF_INET = 2
AF_INET6 = 10

#: The keywords systemd accepts in an address list, and what each one stands for.
KEYWORDS: dict[str, tuple[Network, ...]] = {
    "any": (ipaddress.IPv4Network("0.0.0.0/0"), ipaddress.IPv6Network("::/0")),
    "localhost": (ipaddress.IPv4Network("127.0.0.0/8"), ipaddress.IPv6Network("::1/128")),
    "link-local": (ipaddress.IPv4Network("169.254.0.0/16"), ipaddress.IPv6Network("fe80::/64")),
    "multicast": (ipaddress.IPv4Network("224.0.0.0/4"), ipaddress.IPv6Network("ff00::/8")),
}


def _parse_word(word: str, prop: str) -> tuple[Network, ...]:
    keyword = KEYWORDS.get(word)
    if keyword is not None:
        return keyword

    def bad(reason: str) -> InvalidInput:
        return InvalidInput(f"invalid address {word!r} in {prop}=: {reason}")

    if "%" in word:
        raise bad("zone (scope) ids are not allowed")
    addr_text, slash, plen_text = word.partition("/")
    if slash:
        if not plen_text:
            raise bad("missing prefix length after '/'")
        if not (plen_text.isascii() and plen_text.isdigit()):
            raise bad(f"prefix length {plen_text!r} is not a decimal number")
        if len(plen_text) > 1 and plen_text.startswith("0"):
            raise bad(f"prefix length {plen_text!r} has a leading zero")
    try:
        address = ipaddress.ip_address(addr_text)
    except ValueError:
        raise bad(
            "not an IPv4 or IPv6 address, nor one of the keywords " + ", ".join(KEYWORDS)
        ) from None
    max_len = address.max_prefixlen
    if not slash:
        prefix_len = max_len
    else:
        # Bounded length first: int() of a huge digit string is slow or refused.
        prefix_len = int(plen_text) if len(plen_text) <= 3 else max_len + 1
        if prefix_len > max_len:
            raise bad(f"prefix length {plen_text} is out of range 0..{max_len}")
    return (ipaddress.ip_network((address, prefix_len), strict=False),)


def parse_words(value: str, prop: str = "IPAddressAllow") -> list[Network]:
    """Parse a whitespace-separated address list into networks, in input order.

    Host bits are cleared (``10.0.3.2/24`` becomes ``10.0.3.0/24``) and keywords are
    expanded; the result is not reduced (see :func:`reduce`). ``prop`` names the property in
    error messages.

    Raises:
        InvalidInput: if any word is invalid; the message names the word and ``prop``.
    """
    networks: list[Network] = []
    for word in value.split():
        networks.extend(_parse_word(word, prop))
    return networks


def _sort_key(network: Network) -> tuple[int, int]:
    return int(network.network_address), network.prefixlen


def reduce(networks: Iterable[Network]) -> tuple[Network, ...]:
    """Deduplicate networks and drop those covered by a shorter prefix of the same family.

    The result is ordered deterministically: IPv4 first, then IPv6, each sorted by
    (network address, prefix length).
    """
    v4: set[ipaddress.IPv4Network] = set()
    v6: set[ipaddress.IPv6Network] = set()
    for network in networks:
        if isinstance(network, ipaddress.IPv4Network):
            v4.add(network)
        elif isinstance(network, ipaddress.IPv6Network):
            v6.add(network)
        else:
            raise TypeError(f"not an IP network: {network!r}")
    result: list[Network] = []
    for family in (v4, v6):
        # Sorted by (address, prefix length), a covering network always precedes the ones
        # it covers, and the kept networks are disjoint, so comparing with the last kept
        # one is enough.
        last: Network | None = None
        for network in sorted(family, key=_sort_key):
            if last is not None and network.subnet_of(last):  # type: ignore[arg-type]
                continue
            result.append(network)
            last = network
    return tuple(result)


def format_network(network: Network) -> str:
    """Format a network as ``addr/len`` like systemd does (IPv4-mapped as ``::ffff:a.b.c.d``)."""
    if isinstance(network, ipaddress.IPv6Network):
        mapped = network.network_address.ipv4_mapped
        if mapped is not None:
            return f"::ffff:{mapped}/{network.prefixlen}"
    return str(network)


def _dbus_item(item: Any, prop: str) -> Network:
    def bad(reason: str) -> InvalidInput:
        return InvalidInput(f"invalid D-Bus address entry {item!r} in {prop}=: {reason}")

    if not isinstance(item, tuple | list) or len(item) != 3:
        raise bad("expected a (family, address bytes, prefix length) structure")
    family, raw, prefix_len = item
    if isinstance(family, bool) or not isinstance(family, int):
        raise bad("family is not an integer")
    if isinstance(prefix_len, bool) or not isinstance(prefix_len, int):
        raise bad("prefix length is not an integer")
    byte_list = isinstance(raw, list | tuple) and all(
        isinstance(b, int) and not isinstance(b, bool) and 0 <= b <= 255 for b in raw
    )
    if not (byte_list or isinstance(raw, bytes | bytearray)):
        raise bad("address is not a byte array")
    packed = bytes(raw)
    if family == AF_INET:
        cls: type[Network] = ipaddress.IPv4Network
        size, max_len = 4, 32
    elif family == AF_INET6:
        cls = ipaddress.IPv6Network
        size, max_len = 16, 128
    else:
        raise bad(f"family {family} is neither {AF_INET} (AF_INET) nor {AF_INET6} (AF_INET6)")
    if len(packed) != size:
        raise bad(f"address has {len(packed)} bytes, family {family} needs {size}")
    if not 0 <= prefix_len <= max_len:
        raise bad(f"prefix length {prefix_len} is out of range 0..{max_len}")
    return cls((packed, prefix_len), strict=False)


@dataclass(frozen=True)
class AddressList:
    """An immutable, reduced list of IP networks (the value of ``IPAddressAllow=``/``Deny=``).

    The constructor reduces whatever it is given (see :func:`reduce`), so ``networks`` is
    always deduplicated, free of covered entries and in canonical order.
    """

    networks: tuple[Network, ...] = field(default=())

    def __post_init__(self) -> None:
        object.__setattr__(self, "networks", reduce(self.networks))

    @classmethod
    def parse(cls, value: str, prop: str = "IPAddressAllow") -> AddressList:
        """Parse a property value (whitespace-separated words) into a reduced list.

        Raises:
            InvalidInput: if any word is invalid.
        """
        return cls(tuple(parse_words(value, prop)))

    def assign(self, value: str, prop: str = "IPAddressAllow") -> AddressList:
        """Apply one ``prop=value`` assignment with systemd semantics, returning a new list.

        An empty (or whitespace-only) value resets the list; otherwise the words are
        appended to this list. ``self`` is never modified.

        Raises:
            InvalidInput: if any word is invalid (nothing is applied).
        """
        if not value.strip():
            return EMPTY
        return self.extend(parse_words(value, prop))

    def extend(self, networks: Iterable[Network]) -> AddressList:
        """Return a new list holding this list's networks and ``networks``, reduced."""
        return AddressList((*self.networks, *networks))

    @property
    def ipv4(self) -> tuple[ipaddress.IPv4Network, ...]:
        """The IPv4 networks, in canonical order."""
        return tuple(n for n in self.networks if isinstance(n, ipaddress.IPv4Network))

    @property
    def ipv6(self) -> tuple[ipaddress.IPv6Network, ...]:
        """The IPv6 networks, in canonical order."""
        return tuple(n for n in self.networks if isinstance(n, ipaddress.IPv6Network))

    def __contains__(self, address: object) -> bool:
        """Whether an address (object or string) or network lies inside one of the networks."""
        if isinstance(address, str):
            try:
                address = ipaddress.ip_address(address)
            except ValueError:
                return False
        if isinstance(address, ipaddress.IPv4Network | ipaddress.IPv6Network):
            return any(
                n.version == address.version and address.subnet_of(n)  # type: ignore[arg-type]
                for n in self.networks
            )
        if isinstance(address, ipaddress.IPv4Address | ipaddress.IPv6Address):
            return any(address in n for n in self.networks)
        return False

    def __str__(self) -> str:
        return " ".join(format_network(n) for n in self.networks)

    def __len__(self) -> int:
        return len(self.networks)

    def __iter__(self) -> Iterator[Network]:
        return iter(self.networks)

    def __bool__(self) -> bool:
        return bool(self.networks)

    def to_dbus(self) -> list[tuple[int, bytes, int]]:
        """Return systemd's D-Bus form ``a(iayu)``: (family, packed address, prefix length)."""
        return [
            (AF_INET if n.version == 4 else AF_INET6, n.network_address.packed, n.prefixlen)
            for n in self.networks
        ]

    @classmethod
    def from_dbus(cls, items: Sequence[Any], prop: str = "IPAddressAllow") -> AddressList:
        """Build a list from systemd's D-Bus form ``a(iayu)``; host bits are cleared.

        Raises:
            InvalidInput: if an entry has a bad family, address length or prefix length.
        """
        if not isinstance(items, list | tuple):
            raise InvalidInput(f"invalid D-Bus value for {prop}=: expected an array")
        return cls(tuple(_dbus_item(item, prop) for item in items))


#: The empty address list.
EMPTY = AddressList()
