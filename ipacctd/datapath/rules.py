"""Compile allow/deny prefix lists into one longest-prefix-match table per address family.

systemd's decision for an address *a* is: allowed if any allow prefix contains *a*; else
denied if any deny prefix contains *a*; else allowed. Two prefixes that both contain *a*
are nested, so the longest prefix *P* in allow + deny that contains *a* is contained in
every other prefix that contains *a*. Hence "some allow prefix contains *a*" is the same as
"some allow prefix contains *P*", and likewise for deny: the verdict of *a* is a property
of *P* alone. We store that verdict as *P*'s value in one LPM trie, so the kernel answers
with a single lookup whatever the lists hold, where systemd does one lookup per list.

Entries whose verdict equals that of their nearest enclosing entry (or "pass" when none
encloses them) change nothing and are left out: an allow list with no deny list compiles
to no entries at all, and the program then skips the lookup.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

PASS, DENY = 0, 1


Item = tuple[int, int, int]  # (prefix length, network address as an integer, verdict)


class FamilyRules:
    """The compiled table of one address family: prefix → verdict (PASS or DENY).

    Two views of the same table: ``items``, (prefix length, address, verdict) integers
    sorted by length then address, which the lookup builders use; and ``entries``, a dict
    of ``ipaddress`` networks, made on first use (100k network objects cost a second, and
    building a unit's programs does not need them).
    """

    __slots__ = ("_entries", "_items", "version")

    def __init__(
        self,
        version: int,
        entries: dict[Network, int] | None = None,
        *,
        items: tuple[Item, ...] | None = None,
    ) -> None:
        self.version = version
        self._entries = entries
        if items is None:
            items = tuple(
                sorted((n.prefixlen, int(n.network_address), v) for n, v in (entries or {}).items())
            )
        self._items = items

    @property
    def items(self) -> tuple[Item, ...]:
        """(prefix length, network address, verdict), sorted by length, then address."""
        return self._items

    @property
    def entries(self) -> dict[Network, int]:
        """Network → verdict."""
        if self._entries is None:
            cls = ipaddress.IPv4Network if self.version == 4 else ipaddress.IPv6Network
            self._entries = {cls((addr, plen)): v for plen, addr, v in self._items}
        return self._entries

    def __len__(self) -> int:
        return len(self._items)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FamilyRules):
            return NotImplemented
        return (self.version, self._items) == (other.version, other._items)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"FamilyRules(version={self.version}, entries={self.entries!r})"

    @property
    def empty(self) -> bool:
        """No entry: every address of this family passes; no lookup needed."""
        return not self._items

    @property
    def constant(self) -> int | None:
        """The verdict when it is the same for every address of the family, else None."""
        if not self._items:
            return PASS
        if len(self._items) == 1:
            ((plen, _, verdict),) = self._items
            if plen == 0:
                return verdict
        return None

    def verdict(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> int:
        """Longest-prefix-match lookup in Python (what the kernel trie answers)."""
        bits = 32 if self.version == 4 else 128
        value = int(address)
        best: tuple[int, int] | None = None
        for plen, addr, v in self._items:
            if value >> (bits - plen) == addr >> (bits - plen) and (best is None or plen > best[0]):
                best = (plen, v)
        return PASS if best is None else best[1]


def compile_family(version: int, allow: Iterable[Network], deny: Iterable[Network]) -> FamilyRules:
    """Compile one family's allow and deny prefixes into a pruned verdict table.

    One sweep over the prefixes in address order (shorter first at equal addresses): two
    prefixes either nest or are disjoint, so the prefixes that contain the current one are
    exactly those on the stack whose last address is not behind it. Plain integers (no
    containers per prefix, which would also wake the garbage collector); O(n log n).
    """
    bits = 32 if version == 4 else 128
    cls = ipaddress.IPv4Network if version == 4 else ipaddress.IPv6Network
    # key: start address << 8 | prefix length; sorts by address, then shorter first
    flags: dict[int, int] = {}  # key -> 1 in allow | 2 in deny
    for prefixes, which in ((allow, 1), (deny, 2)):
        for n in prefixes:
            if n.__class__ is not cls and not isinstance(n, cls):
                continue
            key = (int(n.network_address) << 8) | n.prefixlen
            flags[key] = flags.get(key, 0) | which
    if not any(f & 2 for f in flags.values()):
        return FamilyRules(version, {})
    kept: list[Item] = []
    # The enclosing prefixes: last address, and state = verdict | in allow << 1 | in deny << 2.
    ends: list[int] = []
    states: list[int] = []
    for key in sorted(flags):
        start, plen = key >> 8, key & 0xFF
        while ends and ends[-1] < start:
            ends.pop()
            states.pop()
        parent = states[-1] if states else 0
        inside = (parent >> 1) | flags[key]  # bit 0: some allow contains it, bit 1: deny
        verdict = PASS if inside & 1 else DENY if inside & 2 else PASS
        # Keep an entry only where its verdict differs from the nearest enclosing entry's
        # (or from PASS when none encloses it).
        if verdict != parent & 1:
            kept.append((plen, start, verdict))
        ends.append(start + (1 << (bits - plen)) - 1)
        states.append(verdict | inside << 1)
    kept.sort()
    return FamilyRules(version, items=tuple(kept))


def compile_rules(
    allow: Iterable[Network], deny: Iterable[Network]
) -> tuple[FamilyRules, FamilyRules]:
    """Compile both families: returns (IPv4 rules, IPv6 rules)."""
    allow, deny = list(allow), list(deny)
    return compile_family(4, allow, deny), compile_family(6, allow, deny)
