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
            (net, verdict), = self.entries.items()
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


def _covered_by(net: Network, table: set[Network], lengths: list[int]) -> bool:
    """Whether some prefix in ``table`` (whose lengths are ``lengths``) contains ``net``."""
    for plen in lengths:
        if plen > net.prefixlen:
            break
        if net.supernet(new_prefix=plen) in table:
            return True
    return False


def compile_family(version: int, allow: Iterable[Network], deny: Iterable[Network]) -> FamilyRules:
    """Compile one family's allow and deny prefixes into a pruned verdict table."""
    allow_set = {n for n in allow if n.version == version}
    deny_set = {n for n in deny if n.version == version}
    if not deny_set:
        return FamilyRules(version, {})
    allow_lens = sorted({n.prefixlen for n in allow_set})
    deny_lens = sorted({n.prefixlen for n in deny_set})
    verdicts: dict[Network, int] = {}
    for net in allow_set | deny_set:
        if _covered_by(net, allow_set, allow_lens):
            verdicts[net] = PASS
        elif _covered_by(net, deny_set, deny_lens):
            verdicts[net] = DENY
        else:
            verdicts[net] = PASS
    # Keep an entry only where its verdict differs from the nearest enclosing entry's.
    all_lens = sorted({n.prefixlen for n in verdicts})
    kept: dict[Network, int] = {}
    for net in sorted(verdicts, key=lambda n: (n.prefixlen, n.network_address)):
        parent = PASS
        for plen in reversed(all_lens):
            if plen >= net.prefixlen:
                continue
            sup = net.supernet(new_prefix=plen)
            if sup in verdicts:
                parent = verdicts[sup]
                break
        if verdicts[net] != parent:
            kept[net] = verdicts[net]
    return FamilyRules(version, kept)


def compile_rules(allow: Iterable[Network], deny: Iterable[Network]) -> tuple[FamilyRules,
                                                                              FamilyRules]:
    """Compile both families: returns (IPv4 rules, IPv6 rules)."""
    allow, deny = list(allow), list(deny)
    return compile_family(4, allow, deny), compile_family(6, allow, deny)
