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
from dataclasses import dataclass

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

PASS, DENY = 0, 1


@dataclass(frozen=True)
class FamilyRules:
    """The compiled table of one address family: prefix → verdict (PASS or DENY)."""

    version: int
    entries: dict[Network, int]

    @property
    def empty(self) -> bool:
        """No entry: every address of this family passes; no lookup needed."""
        return not self.entries

    @property
    def constant(self) -> int | None:
        """The verdict when it is the same for every address of the family, else None."""
        if not self.entries:
            return PASS
        if len(self.entries) == 1:
            ((net, verdict),) = self.entries.items()
            if net.prefixlen == 0:
                return verdict
        return None

    def verdict(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> int:
        """Longest-prefix-match lookup in Python (what the kernel trie answers)."""
        best: tuple[int, int] | None = None
        for net, v in self.entries.items():
            if address in net and (best is None or net.prefixlen > best[0]):
                best = (net.prefixlen, v)
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
    nets: dict[int, Network] = {}
    for prefixes, which in ((allow, 1), (deny, 2)):
        for n in prefixes:
            if not isinstance(n, cls):
                continue
            key = (int(n.network_address) << 8) | n.prefixlen
            old = flags.get(key)
            if old is None:
                flags[key] = which
                nets[key] = n
            else:
                flags[key] = old | which
    if not any(f & 2 for f in flags.values()):
        return FamilyRules(version, {})
    kept: list[int] = []  # prefix length << bits | start: sorts like (length, address)
    verdict_of: dict[int, int] = {}
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
            kept.append((plen << bits) | start)
            verdict_of[key] = verdict
        ends.append(start + (1 << (bits - plen)) - 1)
        states.append(verdict | inside << 1)
    kept.sort()
    mask = (1 << bits) - 1
    entries = {}
    for k in kept:
        key = ((k & mask) << 8) | (k >> bits)
        entries[nets[key]] = verdict_of[key]
    return FamilyRules(version, entries)


def compile_rules(
    allow: Iterable[Network], deny: Iterable[Network]
) -> tuple[FamilyRules, FamilyRules]:
    """Compile both families: returns (IPv4 rules, IPv6 rules)."""
    allow, deny = list(allow), list(deny)
    return compile_family(4, allow, deny), compile_family(6, allow, deny)
