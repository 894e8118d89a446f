"""How the kernel looks an address up in one family's compiled table: three strategies.

The compiled table (:class:`~ipacctd.datapath.rules.FamilyRules`) maps prefixes to their
final verdict, so every strategy only has to find the longest prefix that contains the
address (no match: pass). Which one a family gets depends on the table's size:

``inline`` (at most :data:`INLINE_MAX` entries)
    No map: the program compares the address with each entry, longest first, as 32-bit
    words under the entry's mask (JMP32 compares: a 64-bit compare would sign-extend the
    immediate). The first match decides. A handful of instructions, no helper call.

``multibit`` (IPv4 with at least :data:`MULTIBIT_MIN` entries)
    A leaf-pushed, fixed-stride multibit trie held as ONE value of a one-element
    ``BPF_MAP_TYPE_ARRAY``. The program gets a pointer to that value with a
    ``BPF_PSEUDO_MAP_VALUE`` load (direct value access, as for global data: not even an
    inlined helper call) and walks at most five levels in straight-line code, one
    dependent u32 load per level. Layout: the root's 2^root u32 slots, then chunks of
    2^stride u32 slots. A slot is either a leaf, ``LEAF | verdict`` (bit 31 set), or the
    byte offset of the next level's chunk in the value (below 2^31, never 0: the root
    comes first). A 64-byte trailer after the last chunk describes the table for
    ``inspect``. The map is ``BPF_F_RDONLY_PROG``.

    Strides: each table takes the candidate of :data:`STRIDES` with the fewest levels
    whose memory is within :data:`MULTIBIT_SLACK` (1.25x) of the smallest candidate's
    (sizes are counted from the prefixes before anything is built). Memory measured on
    bench/datapath.py's seeded random lists (prefix lengths shaped like real block lists:
    mostly /24 and /32), in MiB::

        strides      levels   1k      10k     100k prefixes
        16-4-4-4-4   5        0.44    2.11    15.83
        20-4-4-4     4        4.13    5.30    16.48   <- chosen at 100k
        16-8-8       3        1.81    15.04   106.08
        22-5-5       3        16.19   17.87   34.24
        20-6-6       3        4.39    7.80    40.33

    so random lists get 16-4-4-4-4 up to some tens of thousands of prefixes and 20-4-4-4
    above; a dense list (many long prefixes in few /16s) gets 16-8-8. Time (ns above the
    return-1 floor, 100k prefixes, a /32 hit at full depth): 20-4-4-4 14, 22-5-5 14,
    16-8-8 13; 16-4-4-4-4 17. Three levels buy about 1 ns for two to six times the memory,
    so 16-8-8 is only taken when it is nearly free. Building a 100k table takes about
    0.3-1 s on this (busy, 2-CPU) machine: integers and slice fills, no ipaddress objects
    in the loop.

``lenhash`` (IPv6 with at least :data:`LENHASH_MIN` entries)
    A multibit IPv6 table is not an option: 128-bit addresses need ~28 levels of 4-bit
    strides (or huge chunks with wider ones), and each /48-/128 prefix of a random list
    drags a private chain of chunks behind it, ~1-2 KiB per prefix (100k prefixes:
    ~150 MiB). The trie walks ~20 levels at 100k prefixes (~117 ns). Instead: a root
    table indexed by the first ``r`` bits of the address (16 or 20 by the table's size:
    :func:`lenhash_root_bits`), one u64 slot each, in ONE value of a one-element array
    read with a direct value load (as the multibit table); below it one hash per prefix
    length, searched longest first but only for the lengths that occur under the slot.

    A slot holds bit 0: the verdict of the longest prefix of at most ``r`` bits that
    covers it (prefixes painted shortest first, as leaves of a multibit root), and bit
    ``j + 1`` when a prefix of the table's ``j``-th longest length above ``r`` lies under
    the slot (at most :data:`LENHASH_MAX_LENGTHS` lengths above ``r``; a table with more
    gets the trie). Every prefix longer than ``r`` that contains an address lies under
    the address's slot, so probing the slot's lengths longest first finds the longest
    match; no hit leaves the slot's own verdict. The program tests the slot's bits with
    one ``JSET`` each and probes a hash only for a set bit: the key is the prefix length
    (u32) and the address words the length touches, the last one masked, so the hashes
    are grouped by key size (lengths 1-32, 33-64, 65-96, 97-128: keys of 8, 12, 16 and 20
    bytes), one map each, ``BPF_F_RDONLY_PROG``, filled by batch updates. A 128-byte
    trailer after the slots describes the table for ``inspect``.

    Most slots of a big random list hold one longer prefix: such a slot is a *single*
    (bit 63, and in bits 32-62 the index of a 40-byte entry stored after the slots: the
    prefix's address and mask words as the packet holds them, and its verdict). The
    program compares the address with it under the mask, no hash probe; no match leaves
    the slot's own verdict.

    Cost: one u64 load, then for a single four masked compares, else the JSETs and one
    hash probe per length present under the slot until one hits. A random 100k list in
    2000::/3 (bench/datapath.py) puts about one prefix under each occupied /20 slot: most
    hits and misses cost no probe. A list
    crowded into a few /20s with many different lengths costs one probe per length below
    the matching one: lists of that kind (many lengths in one /20) are rare; its worst
    case is bounded by the number of lengths. Memory (the kernel's memlock): 8 MiB of
    root slots at r = 20, 40 bytes per single entry and about 80 bytes per prefix in the
    hashes (100k random prefixes: about 12 MiB).

``lpm`` (everything else: 9-1023 IPv4 or IPv6 entries, IPv6 tables with too many lengths)
    The kernel's ``BPF_MAP_TYPE_LPM_TRIE`` (one helper call, ~5-6 ns per trie level).

The thresholds are module constants so that tests can force every strategy on small
tables (monkeypatch :data:`INLINE_MAX` to 0, :data:`MULTIBIT_MIN` or :data:`LENHASH_MIN`
to 1, :data:`LENHASH_ROOT` to a root size).
"""

from __future__ import annotations

import struct
import sys
from array import array

from ipacctd.bpf.maps import ArrayMap, HashMap, LPMTrieMap, Map
from ipacctd.bpf.types import F_RDONLY_PROG
from ipacctd.datapath.rules import FamilyRules, Item
from ipacctd.record import Record

INLINE_MAX = 8
MULTIBIT_MIN = 1024
# Stride sets a multibit table may use, fewest levels first; a table takes the first whose
# memory is at most MULTIBIT_SLACK times that of the smallest candidate for its prefixes.
STRIDES = ((16, 8, 8), (20, 4, 4, 4), (16, 4, 4, 4, 4))
MULTIBIT_SLACK = 1.25

LENHASH_MIN = 1024
LENHASH_MAX_LENGTHS = 62  # bits 1-62 of a root slot; bit 0 is the slot's own verdict
LENHASH_ROOT: int | None = None  # root bits; None: lenhash_root_bits(entries)

INLINE, LPM, MULTIBIT, LENHASH = "inline", "lpm", "multibit", "lenhash"

LEAF = 0x8000_0000
TRAILER = 64
MAGIC = b"ipacmbt1"
MULTIBIT_NAME = "ipacctd_mb_ipv4"


def strategy(rules: FamilyRules) -> str | None:
    """The lookup strategy for a family's table; None when no lookup is needed (the verdict
    is the same for every address)."""
    if rules.constant is not None:
        return None
    n = len(rules)
    if n <= INLINE_MAX:
        return INLINE
    if rules.version == 4 and n >= MULTIBIT_MIN:
        return MULTIBIT
    if rules.version == 6 and n >= LENHASH_MIN:
        root = lenhash_root_bits(n)
        lengths = {plen for plen, _, _ in rules.items if plen > root}
        if len(lengths) <= LENHASH_MAX_LENGTHS:
            return LENHASH
    return LPM


# ---- multibit table -----------------------------------------------------------------------


class Multibit(Record):
    """A built multibit table: its u32 slots and the strides that shape them."""

    _fields = ("strides", "slots", "prefixes")
    __slots__ = _fields
    strides: tuple[int, ...]
    slots: array  # array("I"): root, then the chunks
    prefixes: int

    def __init__(self, strides: tuple[int, ...], slots: array, prefixes: int) -> None:
        set_ = object.__setattr__
        set_(self, "strides", strides)
        set_(self, "slots", slots)
        set_(self, "prefixes", prefixes)

    @property
    def chunks(self) -> int:
        """Chunks below the root."""
        return (len(self.slots) - (1 << self.strides[0])) >> self.strides[1]

    @property
    def size(self) -> int:
        """Bytes of the map value (slots and trailer)."""
        return len(self.slots) * 4 + TRAILER

    @property
    def max_chunk_offset(self) -> int:
        """Byte offset of the last chunk: the largest slot value that is not a leaf."""
        return (len(self.slots) - (1 << self.strides[-1])) * 4

    def value(self) -> bytes:
        """The map value: slots in host byte order, then the trailer."""
        return self.slots.tobytes() + trailer(self.strides, self.prefixes, self.chunks)

    def lookup(self, address: int) -> int:
        """The verdict for an IPv4 address as an integer (what the program computes)."""
        end = self.strides[0]
        v = self.slots[address >> (32 - end)]
        for stride in self.strides[1:]:
            if v & LEAF:
                break
            end += stride
            v = self.slots[(v >> 2) + ((address >> (32 - end)) & ((1 << stride) - 1))]
        return v & 1


def trailer(strides: tuple[int, ...], prefixes: int, chunks: int) -> bytes:
    """magic, u32 prefixes, u32 chunks, u8 levels, u8 strides[8]; zero padded."""
    body = MAGIC + struct.pack(
        "=IIB8B", prefixes, chunks, len(strides), *strides, *([0] * (8 - len(strides)))
    )
    return body.ljust(TRAILER, b"\0")


def parse_trailer(value: bytes) -> dict[str, object] | None:
    """What the trailer of a multibit map value says (None if it has none)."""
    tail = value[-TRAILER:]
    if not tail.startswith(MAGIC):
        return None
    prefixes, chunks, levels, *strides = struct.unpack_from("=IIB8B", tail, len(MAGIC))
    return {"prefixes": prefixes, "chunks": chunks, "strides": list(strides[:levels])}


def _bounds(strides: tuple[int, ...]) -> list[int]:
    return [sum(strides[: i + 1]) for i in range(len(strides))]


def multibit_size(items: list[tuple[int, int, int]], strides: tuple[int, ...]) -> int:
    """Bytes of the table for (prefix length, address, verdict) ``items``, without building
    it: a level has one chunk per distinct parent of the prefixes that end below it."""
    bounds = _bounds(strides)
    slots = 1 << strides[0]
    for level in range(1, len(strides)):
        above = bounds[level - 1]
        shift = 32 - above
        parents = {addr >> shift for plen, addr, _ in items if plen > above}
        slots += len(parents) << strides[level]
    return slots * 4 + TRAILER


def choose_strides(items: list[tuple[int, int, int]]) -> tuple[int, ...]:
    """The stride set with the fewest levels whose table stays within MULTIBIT_SLACK of the
    smallest candidate's memory."""
    sizes = {s: multibit_size(items, s) for s in STRIDES}
    least = min(sizes.values())
    return next(s for s in STRIDES if sizes[s] <= least * MULTIBIT_SLACK)


def build_multibit(rules: FamilyRules, strides: tuple[int, ...] | None = None) -> Multibit:
    """Leaf-pushed multibit trie of an IPv4 table.

    Prefixes are painted shortest first, each into the slots of the level where it ends;
    a chunk is made when a longer prefix needs one and starts as 16 copies of the leaf its
    parent slot held, so every shorter prefix's verdict is pushed down into it.
    """
    if rules.version != 4:
        raise ValueError("multibit tables are IPv4 only")
    items = list(rules.items)
    if strides is None:
        strides = choose_strides(items)
    if (
        sum(strides) != 32
        or not 1 < len(strides) <= 6
        or strides[0] > 24
        or len(set(strides[1:])) != 1
    ):  # one chunk size below the root
        raise ValueError(f"bad multibit strides {strides}")
    bounds = _bounds(strides)
    level_of = [next(i for i, b in enumerate(bounds) if b >= plen) for plen in range(33)]
    slots = array("I", [LEAF] * (1 << strides[0]))
    bases: list[dict[int, int]] = [{0: 0}] + [{} for _ in strides[1:]]

    fills: dict[tuple[int, int], array] = {}

    def fill(value: int, count: int) -> array:
        got = fills.get((value, count))
        if got is None:
            got = fills[value, count] = array("I", [value]) * count
        return got

    def chunk(level: int, prefix: int) -> int:
        """Slot index of the chunk at ``level`` for the top bounds[level-1] bits ``prefix``."""
        base = bases[level].get(prefix)
        if base is not None:
            return base
        if level == 1:
            parent = prefix
        else:
            s = strides[level - 1]
            parent = chunk(level - 1, prefix >> s) + (prefix & ((1 << s) - 1))
        base = len(slots)
        slots.extend(fill(slots[parent], 1 << strides[level]))
        slots[parent] = base * 4
        bases[level][prefix] = base
        return base

    for plen, addr, verdict in items:
        level = level_of[plen]
        end = bounds[level]
        if level == 0:
            first = addr >> (32 - end)
        else:
            first = chunk(level, addr >> (32 - bounds[level - 1])) + (
                (addr >> (32 - end)) & ((1 << strides[level]) - 1)
            )
        count = 1 << (end - plen)
        slots[first : first + count] = fill(LEAF | verdict, count)
    if len(slots) * 4 >= LEAF:
        raise ValueError("multibit table too large")
    return Multibit(tuple(strides), slots, len(items))


# ---- lenhash table (IPv6) -----------------------------------------------------------------

LENHASH_NAME = "ipacctd_lh_root"
LENHASH_MAGIC = b"ipaclh01"
LENHASH_TRAILER = 128
SINGLE = 1 << 63  # slot flag: exactly one longer prefix below; its entry index in bits 32-62
SINGLE_SIZE = 40  # u32 address words[4], u32 mask words[4] (as in the packet), u32 verdict
KEY_WORDS = (1, 2, 3, 4)  # hashes by key size: address words after the u32 length


def lenhash_root_bits(entries: int) -> int:
    """Root bits for a table of ``entries`` prefixes: 20 (8 MiB of slots) from 4096
    prefixes on, 16 (512 KiB) below.

    A miss costs a probe per length under its slot, so the root should leave most slots
    empty. Real lists (and bench/datapath.py's) sit in 2000::/3, which wastes the first
    three bits: 2^17 slots at r = 20 leave 100k random prefixes one prefix per occupied
    slot and half the slots empty, 10k prefixes 93% empty (r = 17 left only 40% empty
    and cost misses two probes, ~25 ns).
    """
    if LENHASH_ROOT is not None:
        return LENHASH_ROOT
    return 20 if entries >= 4096 else 16


def key_words(length: int) -> int:
    """Address words (u32) a prefix of ``length`` bits touches: its hash's key class."""
    return max(1, (length + 31) // 32)


class LenHash(Record):
    """A built lenhash table: the root slots, the single entries, the lengths above the
    root that share a slot with others, and the hash entries (per key class:
    concatenated keys and verdict bytes)."""

    _fields = ("root_bits", "slots", "singles", "lengths", "keys", "values", "prefixes")
    __slots__ = _fields
    root_bits: int
    slots: array  # array("Q")
    singles: bytes  # SINGLE_SIZE bytes per slot holding exactly one longer prefix
    lengths: tuple[int, ...]  # lengths of the shared slots' prefixes, longest first: bit j+1
    keys: dict[int, bytes]  # key words -> concatenated keys
    values: dict[int, bytes]  # key words -> one verdict byte per key
    prefixes: int

    def __init__(
        self,
        root_bits: int,
        slots: array,
        singles: bytes,
        lengths: tuple[int, ...],
        keys: dict[int, bytes],
        values: dict[int, bytes],
        prefixes: int,
    ) -> None:
        set_ = object.__setattr__
        set_(self, "root_bits", root_bits)
        set_(self, "slots", slots)
        set_(self, "singles", singles)
        set_(self, "lengths", lengths)
        set_(self, "keys", keys)
        set_(self, "values", values)
        set_(self, "prefixes", prefixes)

    @property
    def n_singles(self) -> int:
        return len(self.singles) // SINGLE_SIZE

    @property
    def slots_size(self) -> int:
        return len(self.slots) * 8

    @property
    def size(self) -> int:
        """Bytes of the root map's value (slots, single entries and trailer)."""
        return self.slots_size + len(self.singles) + LENHASH_TRAILER

    def value(self) -> bytes:
        """The root map's value: slots in host byte order, the single entries, the trailer."""
        return (
            self.slots.tobytes()
            + self.singles
            + lenhash_trailer(self.root_bits, self.lengths, self.prefixes, self.n_singles)
        )

    def count(self, words: int) -> int:
        """Entries in the hash of one key class."""
        return len(self.values.get(words, b""))

    def lookup(self, address: int) -> int:
        """The verdict for an IPv6 address as an integer (what the program computes)."""
        slot = self.slots[address >> (128 - self.root_bits)]
        if slot & SINGLE:
            i = (slot >> 32 & 0x7FFF_FFFF) * SINGLE_SIZE
            value = int.from_bytes(self.singles[i : i + 16], "big")
            mask = int.from_bytes(self.singles[i + 16 : i + 32], "big")
            if address & mask == value:
                return struct.unpack_from("=I", self.singles, i + 32)[0]
            return slot & 1
        found: dict[bytes, int] = {}
        for j, length in enumerate(self.lengths):
            if not slot >> (j + 1) & 1:
                continue
            words = key_words(length)
            masked = address >> (128 - length) << (128 - length)
            key = struct.pack("=I", length) + (masked >> (128 - 32 * words)).to_bytes(
                4 * words, "big"
            )
            if not found:
                found = self._entries()
            verdict = found.get(key)
            if verdict is not None:
                return verdict
        return slot & 1

    def _entries(self) -> dict[bytes, int]:
        out = {}
        for words, keys in self.keys.items():
            size = 4 + 4 * words
            for i, verdict in enumerate(self.values[words]):
                out[keys[i * size : (i + 1) * size]] = verdict
        return out


def lenhash_trailer(
    root_bits: int, lengths: tuple[int, ...], prefixes: int, singles: int = 0
) -> bytes:
    """magic, u32 prefixes, u8 root bits, u8 number of lengths, u8 lengths[62], u32
    single entries (at offset 80)."""
    body = LENHASH_MAGIC + struct.pack("=IBB", prefixes, root_bits, len(lengths)) + bytes(lengths)
    return body.ljust(80, b"\0") + struct.pack("=I", singles) + bytes(LENHASH_TRAILER - 84)


def parse_lenhash_trailer(value: bytes) -> dict[str, object] | None:
    """What the trailer of a lenhash root value says (None if it has none)."""
    tail = value[-LENHASH_TRAILER:]
    if not tail.startswith(LENHASH_MAGIC):
        return None
    prefixes, root, n = struct.unpack_from("=IBB", tail, len(LENHASH_MAGIC))
    start = len(LENHASH_MAGIC) + 6
    (singles,) = struct.unpack_from("=I", tail, 80)
    return {
        "prefixes": prefixes,
        "root_bits": root,
        "lengths": list(tail[start : start + n]),
        "singles": singles,
    }


def build_lenhash(rules: FamilyRules, root_bits: int | None = None) -> LenHash:
    """The root slots and hash entries of an IPv6 table (see the module's notes).

    Prefixes are handled shortest first: one of at most ``root_bits`` bits paints its
    verdict over the slots it covers (a longer one overwrites a shorter one inside it).
    A longer prefix alone under its slot becomes a single entry; several under one slot
    set their lengths' bits and go into the hashes.
    """
    if rules.version != 6:
        raise ValueError("lenhash tables are IPv6 only")
    items = rules.items
    r = root_bits if root_bits is not None else lenhash_root_bits(len(items))
    if not 1 <= r <= 24:
        raise ValueError(f"bad lenhash root bits {r}")
    shift = 128 - r
    slots = array("Q", [0]) * (1 << r)
    fills: dict[tuple[int, int], array] = {}
    under: dict[int, list[Item]] = {}  # slot -> the longer prefixes under it
    for item in items:
        plen, addr, verdict = item
        if plen <= r:
            first, count = addr >> shift, 1 << (r - plen)
            fill = fills.get((verdict, count))
            if fill is None:
                fill = fills[verdict, count] = array("Q", [verdict]) * count
            slots[first : first + count] = fill
        else:
            under.setdefault(addr >> shift, []).append(item)
    shared = [i for group in under.values() if len(group) > 1 for i in group]
    lengths = tuple(sorted({plen for plen, _, _ in shared}, reverse=True))
    if len(lengths) > LENHASH_MAX_LENGTHS:
        raise ValueError(f"{len(lengths)} prefix lengths above the root: too many for lenhash")
    bit = {length: 1 << (j + 1) for j, length in enumerate(lengths)}
    keys: dict[int, list[bytes]] = {}
    values: dict[int, bytearray] = {}
    singles: list[bytes] = []
    top = (1 << 128) - 1
    for index, group in under.items():
        if len(group) == 1:
            ((plen, addr, verdict),) = group
            mask = top >> (128 - plen) << (128 - plen)
            slots[index] |= SINGLE | len(singles) << 32
            singles.append(
                addr.to_bytes(16, "big") + mask.to_bytes(16, "big") + struct.pack("=II", verdict, 0)
            )
            continue
        for plen, addr, verdict in group:
            slots[index] |= bit[plen]
            words = key_words(plen)
            keys.setdefault(words, []).append(
                plen.to_bytes(4, sys.byteorder)
                + (addr >> (128 - 32 * words)).to_bytes(4 * words, "big")
            )
            values.setdefault(words, bytearray()).append(verdict)
    return LenHash(
        r,
        slots,
        b"".join(singles),
        lengths,
        {w: b"".join(k) for w, k in keys.items()},
        {w: bytes(v) for w, v in values.items()},
        len(items),
    )


# ---- the kernel side ----------------------------------------------------------------------


class Table(Record, frozen=False):
    """One family's lookup: its strategy and the map it needs (none for inline)."""

    _fields = ("rules", "strategy", "map", "multibit", "lenhash", "hashes")
    __slots__ = _fields
    rules: FamilyRules
    strategy: str
    map: Map | None
    multibit: Multibit | None
    lenhash: LenHash | None
    hashes: dict[int, Map]  # lenhash: key words -> hash

    def __init__(
        self,
        rules: FamilyRules,
        strategy: str,
        map: Map | None = None,
        multibit: Multibit | None = None,
        lenhash: LenHash | None = None,
        hashes: dict[int, Map] | None = None,
    ) -> None:
        self.rules = rules
        self.strategy = strategy
        self.map = map
        self.multibit = multibit
        self.lenhash = lenhash
        self.hashes = {} if hashes is None else hashes

    @property
    def version(self) -> int:
        return self.rules.version

    def close(self) -> None:
        if self.map is not None:
            self.map.close()
        for m in self.hashes.values():
            m.close()


def build_table(rules: FamilyRules) -> Table | None:
    """Choose the strategy for ``rules`` and make and fill its map; None: no lookup."""
    how = strategy(rules)
    if how is None:
        return None
    if how == INLINE:
        return Table(rules, how)
    if how == MULTIBIT:
        mb = build_multibit(rules)
        m: Map = ArrayMap.create(4, mb.size, 1, MULTIBIT_NAME, F_RDONLY_PROG)
        try:
            m.update_raw(struct.pack("=I", 0), mb.value())
        except BaseException:
            m.close()
            raise
        return Table(rules, how, m, mb)
    if how == LENHASH:
        return _build_lenhash_table(rules)
    trie = LPMTrieMap.new(rules.version, 1, len(rules), f"ipacctd_ipv{rules.version}")
    try:
        alen = 4 if rules.version == 4 else 16
        keys = b"".join(
            plen.to_bytes(4, sys.byteorder) + addr.to_bytes(alen, "big")
            for plen, addr, _ in rules.items
        )
        trie.update_batch_raw(keys, bytes(v for _, _, v in rules.items))
    except BaseException:
        trie.close()
        raise
    return Table(rules, how, trie)


def _build_lenhash_table(rules: FamilyRules) -> Table:
    lh = build_lenhash(rules)
    table = Table(rules, LENHASH, lenhash=lh)
    try:
        table.map = ArrayMap.create(4, lh.size, 1, LENHASH_NAME, F_RDONLY_PROG)
        table.map.update_raw(struct.pack("=I", 0), lh.value())
        for words in sorted(lh.keys):
            m = HashMap.create(
                4 + 4 * words, 1, lh.count(words), f"ipacctd_lh_k{words}", F_RDONLY_PROG
            )
            table.hashes[words] = m
            m.update_batch_raw(lh.keys[words], lh.values[words])
    except BaseException:
        table.close()
        raise
    return table
