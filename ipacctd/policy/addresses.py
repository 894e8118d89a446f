"""``IPAddressAllow=`` / ``IPAddressDeny=`` values, with systemd's semantics.

A value is a whitespace-separated list of words. Each word is an IPv4 or IPv6 address with
an optional ``/N`` prefix length (no suffix means a host route, /32 or /128), or one of the
keywords ``any``, ``localhost``, ``link-local`` and ``multicast``. Host bits are cleared,
duplicates vanish and entries covered by a shorter prefix of the same list are dropped.

Unlike systemd, which logs and skips an invalid word, an invalid word rejects the whole
value with :class:`~ipacctd.errors.InvalidInput`: a firewall must not half-apply.
"""

from __future__ import annotations

import _socket as socket  # socket.py's C core, the same inet_pton/ntop: 2 ms less start-up
import contextlib
import ipaddress
from collections.abc import Iterable, Iterator, Sequence

from ipacctd.errors import InvalidInput

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing
if TYPE_CHECKING:
    from typing import Any

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


#: Prefix length texts as written canonically (no sign, no leading zero) and their values.
_PREFIX_LENGTHS = {str(n): n for n in range(129)}
_INET_PTON = socket.inet_pton
_AF_INET, _AF_INET6 = socket.AF_INET, socket.AF_INET6


def _plain_word(word: str) -> tuple[bool, bytes, int] | None:
    """The common word (an address with an optional plain prefix length) as (IPv6?, packed
    address, prefix length); None for anything else, which :func:`_parse_word_checked`
    handles (keywords) or explains (errors)."""
    addr_text, slash, plen_text = word.partition("/")
    v6 = ":" in addr_text
    max_len = 128 if v6 else 32
    prefix_len = _PREFIX_LENGTHS.get(plen_text, 999) if slash else max_len
    if prefix_len > max_len or "%" in addr_text:
        return None
    try:
        return v6, _INET_PTON(_AF_INET6 if v6 else _AF_INET, addr_text), prefix_len
    except (OSError, ValueError):
        return None


def _parse_word(word: str, prop: str) -> tuple[Network, ...]:
    """One word of a list: the common case straight through, anything else by
    :func:`_parse_word_checked` (a 200k-prefix list spends most of its parsing here)."""
    plain = _plain_word(word)
    if plain is None:
        return _parse_word_checked(word, prop)
    v6, packed, prefix_len = plain
    host_bits = (128 if v6 else 32) - prefix_len
    value = int.from_bytes(packed, "big") >> host_bits << host_bits  # clear the host bits
    return (make_network(v6, value, prefix_len),)


def check_words(value: str, prop: str = "IPAddressAllow") -> None:
    """Validate a list as :func:`parse_words` does, with the same errors, making no
    networks (a fifth of the cost: for lists that may never be needed, see
    :meth:`AddressList.from_words`)."""
    for word in value.split():
        if _plain_word(word) is None:
            _parse_word_checked(word, prop)


def _parse_word_checked(word: str, prop: str) -> tuple[Network, ...]:
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
    # inet_pton accepts exactly the texts ipaddress.ip_address accepts (checked by a
    # differential fuzz, and tests/unit/test_addresses.py compares them), at a tenth of its
    # cost: a 100k-prefix list is parsed in well under a second.
    v6 = ":" in addr_text
    try:
        packed = socket.inet_pton(socket.AF_INET6 if v6 else socket.AF_INET, addr_text)
    except (OSError, ValueError):
        raise bad(
            "not an IPv4 or IPv6 address, nor one of the keywords " + ", ".join(KEYWORDS)
        ) from None
    max_len = 128 if v6 else 32
    if not slash:
        prefix_len = max_len
    else:
        # Bounded length first: int() of a huge digit string is slow or refused.
        prefix_len = int(plen_text) if len(plen_text) <= 3 else max_len + 1
        if prefix_len > max_len:
            raise bad(f"prefix length {plen_text} is out of range 0..{max_len}")
    value = int.from_bytes(packed, "big")
    host_bits = max_len - prefix_len
    value = value >> host_bits << host_bits  # clear the host bits
    return (make_network(v6, value, prefix_len),)


def _network_slow(v6: bool, value: int, prefix_len: int) -> Network:
    cls = ipaddress.IPv6Network if v6 else ipaddress.IPv4Network
    return cls((value, prefix_len))


def _network_fast(v6: bool, value: int, prefix_len: int) -> Network:
    """The network ``value/prefix_len`` (host bits clear), built without the constructor's
    re-parsing and checks: a third of its cost, which is most of parsing a large list.

    It sets what ``IPv4Network``/``IPv6Network.__init__`` sets (CPython 3.9-3.13): the
    address objects' slots and the network's ``network_address``, ``netmask``,
    ``_prefixlen`` and, for the last two lengths, ``hosts``. :func:`_check_fast` compares
    it with the constructor at import; any difference and the constructor is used.
    """
    if v6:
        net = _new(_V6N)
        address = _new(_V6A)
        address._ip = value
        address._scope_id = None
        net.network_address = address
        net.netmask, net._prefixlen = _V6_MASKS[prefix_len]
        if prefix_len >= 127:
            net.hosts = net.__iter__ if prefix_len == 127 else (lambda: [address])
        return net
    net = _new(_V4N)
    address = _new(_V4A)
    address._ip = value
    net.network_address = address
    net.netmask, net._prefixlen = _V4_MASKS[prefix_len]
    if prefix_len >= 31:
        net.hosts = net.__iter__ if prefix_len == 31 else (lambda: [address])
    return net


_new = object.__new__
_V4N, _V4A = ipaddress.IPv4Network, ipaddress.IPv4Address
_V6N, _V6A = ipaddress.IPv6Network, ipaddress.IPv6Address
# Filled with the masks when make_network sets up the fast builder (162 networks: ~1 ms of
# every start-up that parses few addresses or none).
_V4_MASKS: list[tuple[ipaddress.IPv4Address, int]] = []
_V6_MASKS: list[tuple[ipaddress.IPv6Address, int]] = []


def _check_fast() -> bool:
    """Whether _network_fast builds exactly what the constructor builds, here."""
    samples = [(False, 0, 0), (False, 0xC6336400, 24), (False, 0xC6336401, 32)]
    samples += [(False, 0xC6336400, 31), (True, 0, 0), (True, 1, 128), (True, 0x20 << 120, 3)]
    samples += [(True, 0x20010DB8 << 96, 32), (True, 0x20010DB8 << 96 | 2, 127)]
    try:
        for v6, value, plen in samples:
            fast, slow = _network_fast(v6, value, plen), _network_slow(v6, value, plen)
            same = (
                fast == slow
                and hash(fast) == hash(slow)
                and str(fast) == str(slow)
                and repr(fast) == repr(slow)
                and fast.prefixlen == slow.prefixlen
                and fast.netmask == slow.netmask
                and fast.broadcast_address == slow.broadcast_address
                and fast.network_address == slow.network_address
                and hash(fast.network_address) == hash(slow.network_address)
                and str(fast.network_address) == str(slow.network_address)
                and set(vars(fast)) == set(vars(slow))
                and (plen < fast.max_prefixlen - 1 or list(fast.hosts()) == list(slow.hosts()))
                and fast.subnet_of(slow)
                and slow.supernet_of(fast)
            )
            if not same:
                return False
    except Exception:  # any difference means: do not use it
        return False
    return True


#: Networks a process builds with the constructor before it sets up the fast builder:
#: below this, the constructor's extra ~1 µs a network costs less than the set-up (the
#: masks and :func:`_check_fast`: ~0.9 ms), which a run with a one-address list would pay.
SLOW_FIRST = 256
_built_slow = 0


def _first_make_network(v6: bool, value: int, prefix_len: int) -> Network:
    """:func:`make_network` for a process's first :data:`SLOW_FIRST` networks (built by the
    constructor); then it makes the masks, runs the fast builder's self-check
    (:func:`_check_fast`) and rebinds ``make_network`` to the builder chosen. The module's
    callers look the name up on each call, so they use that builder directly from then on."""
    global make_network, _built_slow
    if _built_slow < SLOW_FIRST:
        _built_slow += 1
        return _network_slow(v6, value, prefix_len)
    _V4_MASKS[:] = [(ipaddress.IPv4Network((0, n)).netmask, n) for n in range(33)]
    _V6_MASKS[:] = [(ipaddress.IPv6Network((0, n)).netmask, n) for n in range(129)]
    make_network = _network_fast if _check_fast() else _network_slow
    return make_network(v6, value, prefix_len)


#: The network ``value/prefix_len`` (host bits clear): the fast builder where its
#: self-check passes, else the constructor.
make_network = _first_make_network


def parse_words(value: str, prop: str = "IPAddressAllow") -> list[Network]:
    """Parse a whitespace-separated address list into networks, in input order.

    Host bits are cleared (``10.0.3.2/24`` becomes ``10.0.3.0/24``) and keywords are
    expanded; the result is not reduced (see :func:`reduce`). ``prop`` names the property in
    error messages.

    Raises:
        InvalidInput: if any word is invalid; the message names the word and ``prop``.
    """
    networks: list[Network] = []
    with collector_paused(len(value)):
        for word in value.split():
            networks.extend(_parse_word(word, prop))
    return networks


#: Text length from which parsing pauses the cyclic garbage collector (about 60 words).
PAUSE_GC_FROM = 1_000


@contextlib.contextmanager
def collector_paused(size: int) -> Iterator[None]:
    """Pause the cyclic garbage collector while a large list is parsed (``size``: the text's
    length). Every network is two new tracked objects, and each few hundred of them start a
    collection that walks the young ones again: two thirds of the time of parsing 200k
    prefixes (1.1 s instead of 0.4 s). Networks form no cycles, so nothing is left for the
    collector to find; it runs again as before once the list is parsed."""
    import gc

    if size < PAUSE_GC_FROM or not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def reduce(networks: Iterable[Network]) -> tuple[Network, ...]:
    """Deduplicate networks and drop those covered by a shorter prefix of the same family.

    The result is ordered deterministically: IPv4 first, then IPv6, each sorted by
    (network address, prefix length). One sort and one sweep over integers: sorted by
    (address, prefix length), a covering network always precedes the ones it covers and the
    kept networks are disjoint, so a network is covered exactly when it starts before the
    last kept one ends. O(n log n); 100k prefixes take a fraction of a second.
    """
    v4: dict[int, Network] = {}
    v6: dict[int, Network] = {}
    for network in networks:
        if isinstance(network, ipaddress.IPv4Network):
            v4[int(network.network_address) << 8 | network.prefixlen] = network
        elif isinstance(network, ipaddress.IPv6Network):
            v6[int(network.network_address) << 8 | network.prefixlen] = network
        else:
            raise TypeError(f"not an IP network: {network!r}")
    result: list[Network] = []
    for family, bits in ((v4, 32), (v6, 128)):
        end = -1  # last address of the last kept network
        for key in sorted(family):
            start = key >> 8
            if start <= end:
                continue
            end = start + (1 << (bits - (key & 0xFF))) - 1
            result.append(family[key])
    return tuple(result)


def format_network(network: Network) -> str:
    """Format a network as ``addr/len`` like systemd does (IPv4-mapped as ``::ffff:a.b.c.d``)."""
    if isinstance(network, ipaddress.IPv4Network):
        # inet_ntoa writes what str() writes (dotted decimal) at a fraction of its cost.
        packed = int(network.network_address).to_bytes(4, "big")
        return f"{socket.inet_ntoa(packed)}/{network.prefixlen}"
    if isinstance(network, ipaddress.IPv6Network):
        value = int(network.network_address)
        if value >> 32 == 0xFFFF:  # IPv4-mapped
            return f"::ffff:{ipaddress.IPv4Address(value & 0xFFFFFFFF)}/{network.prefixlen}"
        if value >> 32:
            # inet_ntop writes what str() writes (RFC 5952: lower case, the longest run of
            # two or more zero groups as ::, the first of equals) at a tenth of the cost,
            # except for ::a.b.c.d (the first 96 bits zero), handled by str() below.
            text = socket.inet_ntop(socket.AF_INET6, value.to_bytes(16, "big"))
            return f"{text}/{network.prefixlen}"
    return str(network)


def _dbus_word(word: str) -> tuple[int, bytes, int]:
    """One word of canonical text (``addr/len``, as :func:`format_network` writes it) in
    D-Bus form."""
    addr, _, plen = word.rpartition("/")
    if ":" in addr:
        return AF_INET6, socket.inet_pton(socket.AF_INET6, addr), int(plen)
    return AF_INET, socket.inet_pton(socket.AF_INET, addr), int(plen)


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


class AddressList:
    """An immutable, reduced list of IP networks (the value of ``IPAddressAllow=``/``Deny=``).

    ``networks`` is always deduplicated, free of covered entries and in canonical order
    (see :func:`reduce`). The reduction runs once, when ``networks`` is first read: a unit
    file with 200 ``IPAddressDeny=`` lines appends 200 times, and reducing the whole list
    after each line made loading it quadratic (100k prefixes: 80-100 s).

    A list is also made from its canonical text (:meth:`from_canonical`: what ``str()`` of a
    list gives, as the unit's metadata stores it, checked against its digest there): then
    it is parsed only when its networks are needed (to build programs, to append to it).
    Its text, emptiness, length and equality with another such list come from the text, so
    reading a unit's state (counters, status, ``show``) never parses a 100k-prefix list.
    Or from words validated but not parsed yet (:meth:`from_words`: a unit file the daemon
    only checks).
    """

    __slots__ = ("_networks", "_parts", "_prop", "_text", "_words")

    def __init__(self, networks: Iterable[Network] = ()) -> None:
        #: Networks appended, not yet reduced; None for a list known by its text only
        #: (canonical, or validated words; not parsed yet).
        self._parts: tuple[tuple[Network, ...], ...] | None = (tuple(networks),)
        self._networks: tuple[Network, ...] | None = None
        self._text: str | None = None
        self._words: str | None = None  # validated words, not parsed yet (from_words)
        self._prop = "IPAddressAllow"  # names the property should parsing the text fail

    @classmethod
    def _new(
        cls,
        parts: tuple[tuple[Network, ...], ...] | None,
        text: str | None = None,
        words: str | None = None,
        prop: str = "IPAddressAllow",
    ) -> AddressList:
        new = cls.__new__(cls)
        new._parts, new._networks, new._text, new._words, new._prop = parts, None, text, words, prop
        return new

    @classmethod
    def from_canonical(cls, text: str, prop: str = "IPAddressAllow") -> AddressList:
        """The list whose canonical text (``str()``) is ``text``, parsed on first use
        (``prop`` names the property in the error, should it not parse then).

        Only for text that ``str()`` of a list wrote (the caller checks, e.g. by a digest).
        """
        return cls._new(None, text=text, prop=prop)

    @classmethod
    def from_words(cls, value: str, prop: str = "IPAddressAllow") -> AddressList:
        """The list of a property value (as :meth:`parse`), validated now (the same errors)
        but parsed on first use: a unit file loaded only to be checked, or to learn which
        cgroups it binds, makes none of its networks.

        Raises:
            InvalidInput: if any word is invalid.
        """
        check_words(value, prop)
        return cls._new(None, words=value, prop=prop)

    @classmethod
    def joined(cls, lists: Iterable[AddressList]) -> AddressList:
        """One list holding the networks of all ``lists`` (reduced once, when read; lists
        of words not parsed yet give one such list of all their words)."""
        lists = [lst for lst in lists if not (lst._parts == ((),) or lst._networks == ())]
        if lists and all(lst._words is not None for lst in lists):
            words = " ".join(lst._words for lst in lists)  # type: ignore[misc]
            return cls._new(None, words=words, prop=lists[-1]._prop)
        return cls._new(tuple(part for lst in lists for part in lst._pieces()))

    def _pieces(self) -> tuple[tuple[Network, ...], ...]:
        """The networks of this list as parts to append (not reduced again if reduced)."""
        if self._networks is None and self._parts is not None:
            return self._parts
        return (self.networks,)

    @property
    def networks(self) -> tuple[Network, ...]:
        """The reduced networks: IPv4 first, then IPv6, each by (address, prefix length)."""
        if self._networks is None:
            if self._parts is None:  # known by its text (canonical, or words): parse it now
                text = self._text if self._text is not None else self._words
                assert text is not None
                self._networks = reduce(parse_words(text, self._prop))
                self._words = None
            else:
                self._networks = reduce(n for part in self._parts for n in part)
            self._parts = ()
        return self._networks

    @property
    def parsed(self) -> bool:
        """Whether the networks have been parsed (False: known by its text only)."""
        return self._parts is not None or self._networks is not None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, AddressList):
            return NotImplemented
        if self is other:
            return True
        if (self._text is not None and other._text is not None) or not (
            self.parsed and other.parsed
        ):
            # Canonical texts are equal exactly when the lists are; formatting a parsed
            # list costs less than parsing one known by its text only.
            return str(self) == str(other)
        return self.networks == other.networks

    def __hash__(self) -> int:
        return hash(str(self))

    def __repr__(self) -> str:
        if not self.parsed and self._text is not None:
            return f"AddressList.from_canonical({self._text!r})"
        return f"AddressList(networks={self.networks!r})"

    @classmethod
    def parse(cls, value: str, prop: str = "IPAddressAllow") -> AddressList:
        """Parse a property value (whitespace-separated words) into a reduced list.

        Raises:
            InvalidInput: if any word is invalid.
        """
        return cls(parse_words(value, prop))

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
        """Return a new list holding this list's networks and ``networks`` (reduced when
        read: appending is linear in what is appended)."""
        new = networks._pieces() if isinstance(networks, AddressList) else (tuple(networks),)
        return AddressList._new(self._pieces() + new)

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
        """The canonical text: the networks in canonical order, one space apart."""
        if self._text is None:
            self._text = " ".join(format_network(n) for n in self.networks)
        return self._text

    def __len__(self) -> int:
        if self._networks is None and self._parts is None and self._text is not None:
            # canonical: one word per network
            return self._text.count(" ") + 1 if self._text else 0
        return len(self.networks)

    def __iter__(self) -> Iterator[Network]:
        return iter(self.networks)

    def __bool__(self) -> bool:
        if self._networks is None and self._parts is None:
            # canonical text, or valid words: each word is one network at least
            return bool(self._text) if self._text is not None else bool(self._words.strip())
        return bool(self.networks)

    def to_dbus(self) -> list[tuple[int, bytes, int]]:
        """Return systemd's D-Bus form ``a(iayu)``: (family, packed address, prefix length).

        A list known by its canonical text only is converted word by word, without making
        its networks (a unit's D-Bus properties are sent whenever the unit changes)."""
        if self._networks is None and self._parts is None and self._text is not None:
            return [_dbus_word(word) for word in self._text.split()]
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
        with collector_paused(len(items) * 20):
            return cls([_dbus_item(item, prop) for item in items])


#: The empty address list.
EMPTY = AddressList()
