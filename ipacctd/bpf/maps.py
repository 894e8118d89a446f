"""Typed BPF maps: array, per-CPU array, LPM trie keyed by networks, hash and LRU hash."""

from __future__ import annotations

import _thread
import ctypes
import errno
import functools
import ipaddress
import struct
from collections.abc import Iterator

from ipacctd.bpf.errors import BPFError, BPFNotFound, BPFNotSupported
from ipacctd.bpf.objects import Object, fd_by_id, obj_get
from ipacctd.bpf.syscall import addr, bpf, close
from ipacctd.bpf.types import ANY, ENOTSUPP, F_NO_PREALLOC, Cmd, MapType
from ipacctd.uapi import BpfAttr, BpfLpmTrieKeyHdr, BpfMapInfo

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing
if TYPE_CHECKING:
    from typing import Self

    from ipacctd.bpf.info import MapInfo

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@functools.cache
def possible_cpus() -> int:
    """Number of possible CPUs: the slots a per-CPU map value has."""
    with open("/sys/devices/system/cpu/possible") as f:
        text = f.read().strip()
    top = 0
    for part in text.split(","):
        top = max(top, int(part.split("-")[-1]))
    return top + 1


class Map(Object):
    """A BPF map with raw ``bytes`` keys and values. Subclasses add typed keys/values."""

    kind = "map"
    map_type = MapType.UNSPEC

    def __init__(self, fd: int, key_size: int, value_size: int, max_entries: int,
                 name: str = "", flags: int = 0) -> None:
        super().__init__(fd, name)
        self.key_size = key_size
        self.value_size = value_size
        self.max_entries = max_entries
        self.flags = flags

    # -- creating and opening --------------------------------------------------------------

    @classmethod
    def create(cls, key_size: int, value_size: int, max_entries: int, name: str = "",
               flags: int = 0) -> Self:
        """BPF_MAP_CREATE a map of this class's type."""
        attr = BpfAttr()
        attr.map_type = cls.map_type
        attr.key_size = key_size
        attr.value_size = value_size
        attr.max_entries = max_entries
        attr.map_flags = flags
        attr.map_name = name.encode()[:15]
        fd = bpf(Cmd.MAP_CREATE, attr, f"{cls.map_type.name.lower()} {name!r}")
        return cls(fd, key_size, value_size, max_entries, name, flags)

    @classmethod
    def from_fd(cls, fd: int) -> Self:
        """Wrap an open map fd, reading its shape from the kernel; checks the map type."""
        try:
            info = _map_info(fd)
        except BaseException:
            close(fd)
            raise
        if cls.map_type != MapType.UNSPEC and info.type != cls.map_type:
            close(fd)
            raise BPFError(errno.EINVAL, f"map {info.name!r} (id {info.id}) is a "
                           f"{info.type_name}, not a {cls.map_type.name.lower()}")
        return cls(fd, info.key_size, info.value_size, info.max_entries, info.name, info.flags)

    @classmethod
    def open_pinned(cls, path: str) -> Self:
        """Open the map pinned at ``path``."""
        return cls.from_fd(obj_get(path, "map"))

    @classmethod
    def from_id(cls, map_id: int) -> Self:
        """Open a map by its kernel id."""
        return cls.from_fd(fd_by_id(Cmd.MAP_GET_FD_BY_ID, map_id, "map"))

    def info(self) -> MapInfo:
        """The kernel's info on this map (id, type, sizes, name)."""
        return _map_info(self.fd)

    # -- raw element access ----------------------------------------------------------------

    @property
    def _value_buf_size(self) -> int:
        return self.value_size

    def _elem_attr(self, key: ctypes.Array | None, value: ctypes.Array | None,
                  flags: int = ANY) -> BpfAttr:
        """The bpf_attr of a BPF_MAP_*_ELEM command on this map (``value`` is ``next_key``
        for BPF_MAP_GET_NEXT_KEY); the buffers must outlive its use."""
        attr = BpfAttr()
        attr.map_fd = self.fd
        attr.key = addr(key)
        attr.value = addr(value)
        attr.flags = flags
        return attr

    def lookup_raw(self, key: bytes) -> bytes | None:
        """The value stored under ``key``, or None."""
        k = ctypes.create_string_buffer(key, self.key_size)
        v = ctypes.create_string_buffer(self._value_buf_size)
        try:
            bpf(Cmd.MAP_LOOKUP_ELEM, self._elem_attr(k, v), self._what())
        except BPFNotFound:
            return None
        return v.raw

    def update_raw(self, key: bytes, value: bytes, flags: int = ANY) -> None:
        """Store ``value`` under ``key``."""
        k = ctypes.create_string_buffer(key, self.key_size)
        v = ctypes.create_string_buffer(value, self._value_buf_size)
        bpf(Cmd.MAP_UPDATE_ELEM, self._elem_attr(k, v, flags), self._what())

    def delete_raw(self, key: bytes) -> bool:
        """Delete ``key``; return False when it was not there."""
        k = ctypes.create_string_buffer(key, self.key_size)
        try:
            bpf(Cmd.MAP_DELETE_ELEM, self._elem_attr(k, None), self._what())
        except BPFNotFound:
            return False
        return True

    def keys_raw(self) -> Iterator[bytes]:
        """Iterate over the keys (BPF_MAP_GET_NEXT_KEY), bounded by max_entries."""
        cur: ctypes.Array | None = None
        nxt = ctypes.create_string_buffer(self.key_size)
        for _ in range(self.max_entries + 1):
            try:
                bpf(Cmd.MAP_GET_NEXT_KEY, self._elem_attr(cur, nxt), self._what())
            except BPFNotFound:
                return
            key = nxt.raw
            yield key
            cur = ctypes.create_string_buffer(key, self.key_size)

    def items_raw(self) -> Iterator[tuple[bytes, bytes]]:
        """Iterate over (key, value); batched where the kernel supports it for this map."""
        try:
            yield from self._items_batch()
        except _NoBatch:
            for key in self.keys_raw():
                value = self.lookup_raw(key)
                if value is not None:
                    yield key, value

    def _items_batch(self, chunk: int = 256) -> Iterator[tuple[bytes, bytes]]:
        vsize = self._value_buf_size
        keys = ctypes.create_string_buffer(self.key_size * chunk)
        values = ctypes.create_string_buffer(vsize * chunk)
        out_batch = ctypes.create_string_buffer(max(self.key_size, 8))
        in_batch: ctypes.Array | None = None
        first = True
        for _ in range(self.max_entries // chunk + 2):
            attr = self._batch_attr(keys, values, chunk, in_batch, out_batch)
            done = False
            try:
                bpf(Cmd.MAP_LOOKUP_BATCH, attr, self._what())
            except BPFNotFound:
                done = True
            except BPFError as exc:
                if first and exc.errno in (errno.EINVAL, errno.ENOTSUP, ENOTSUPP):
                    raise _NoBatch from None
                raise
            first = False
            count = attr.batch.count
            kr, vr = keys.raw, values.raw
            for i in range(count):
                yield (kr[i * self.key_size:(i + 1) * self.key_size], vr[i * vsize:(i + 1) * vsize])
            if done:
                return
            in_batch = ctypes.create_string_buffer(out_batch.raw, len(out_batch))

    def update_batch_raw(self, keys: bytes, values: bytes, chunk: int = 8192) -> None:
        """Store many elements: ``keys`` and ``values`` are the concatenated keys and values
        (BPF_MAP_UPDATE_BATCH, one syscall per ``chunk`` elements; element by element where
        the kernel has no batch operation for this map type)."""
        count = len(keys) // self.key_size
        vsize = self._value_buf_size
        if len(keys) != count * self.key_size or len(values) != count * vsize:
            raise ValueError("keys and values do not match the map's sizes")
        done = 0
        while done < count:
            n = min(chunk, count - done)
            kbuf = ctypes.create_string_buffer(
                keys[done * self.key_size : (done + n) * self.key_size], n * self.key_size
            )
            vbuf = ctypes.create_string_buffer(values[done * vsize : (done + n) * vsize], n * vsize)
            attr = self._batch_attr(kbuf, vbuf, n)
            try:
                bpf(Cmd.MAP_UPDATE_BATCH, attr, self._what())
            except BPFError as exc:
                if done or exc.errno not in (errno.EINVAL, errno.ENOTSUP, ENOTSUPP):
                    raise
                for i in range(count):
                    self.update_raw(
                        keys[i * self.key_size : (i + 1) * self.key_size],
                        values[i * vsize : (i + 1) * vsize],
                    )
                return
            done += n

    def _batch_attr(self, keys: ctypes.Array, values: ctypes.Array, count: int,
                    in_batch: ctypes.Array | None = None,
                    out_batch: ctypes.Array | None = None) -> BpfAttr:
        attr = BpfAttr()
        attr.batch.in_batch = addr(in_batch)
        attr.batch.out_batch = addr(out_batch)
        attr.batch.keys = addr(keys)
        attr.batch.values = addr(values)
        attr.batch.count = count
        attr.batch.map_fd = self.fd
        return attr

    def _what(self) -> str:
        return f"{self.map_type.name.lower()} {self.name!r}"


class _NoBatch(Exception):
    pass


def _map_info(fd: int) -> MapInfo:
    from ipacctd.bpf.info import MapInfo
    from ipacctd.bpf.objects import info_by_fd

    i = info_by_fd(fd, BpfMapInfo(), "map")
    return MapInfo(i.id, i.type, i.key_size, i.value_size, i.max_entries, i.map_flags,
                   i.name.decode(errors="replace"))


class ArrayMap(Map):
    """BPF_MAP_TYPE_ARRAY: u32 index → fixed-size value."""

    map_type = MapType.ARRAY

    @classmethod
    def new(cls, value_size: int, max_entries: int, name: str = "") -> Self:
        """Create an array of ``max_entries`` zeroed values."""
        return cls.create(4, value_size, max_entries, name)

    def __getitem__(self, index: int) -> bytes:
        value = self.lookup_raw(struct.pack("=I", index))
        if value is None:
            raise IndexError(index)
        return value

    def __setitem__(self, index: int, value: bytes) -> None:
        self.update_raw(struct.pack("=I", index), value)


class PerCPUArrayMap(Map):
    """BPF_MAP_TYPE_PERCPU_ARRAY: each index holds one value per possible CPU."""

    map_type = MapType.PERCPU_ARRAY

    @classmethod
    def new(cls, value_size: int, max_entries: int, name: str = "") -> Self:
        """Create a per-CPU array of zeroed values."""
        return cls.create(4, value_size, max_entries, name)

    @property
    def _stride(self) -> int:
        return (self.value_size + 7) & ~7

    @property
    def _value_buf_size(self) -> int:
        return self._stride * possible_cpus()

    def sum_u64(self, index: int) -> list[int]:
        """Interpret each CPU's value as u64 fields and add them up across CPUs."""
        raw = self.lookup_raw(struct.pack("=I", index))
        if raw is None:
            raise IndexError(index)
        return list(_sum_per_cpu(raw, self._stride // 8, self.value_size // 8))

    def prepared_sum(self, index: int = 0) -> PerCPUSum:
        """A prepared read of :meth:`sum_u64` of ``index``, for reading it again and again."""
        return PerCPUSum(self, index)


def _sum_per_cpu(raw: bytes, words: int, fields: int) -> tuple[int, ...]:
    """Add up ``fields`` u64 fields over the per-CPU slots (``words`` u64 each) of ``raw``."""
    flat = struct.unpack(f"={len(raw) // 8}Q", raw)
    return tuple(sum(flat[f::words]) for f in range(fields))


class PerCPUSum:
    """A prepared MAP_LOOKUP_ELEM of one index of a per-CPU array, summed over CPUs.

    The key, value and attr buffers are made once per thread and shape (index, value size)
    and shared by all prepared reads of that shape: a read sets the map fd and is one
    syscall; a daemon holding one of these per unit keeps no buffers per unit (they were
    half a KiB each). When the value is unchanged since this object's previous read,
    :meth:`read` returns the very same tuple without unpacking it again (callers may cache
    what they derive from it by identity). The map keeps the fd: close ``self.map`` when
    done.
    """

    __slots__ = ("_fields", "_index", "_last", "_last_raw", "_size", "_what", "_words", "map")

    #: Per thread: (index, value buffer size) → (key, value, attr). Per thread because a
    #: bpf(2) call through ctypes releases the GIL: another thread must not write the same
    #: buffers meanwhile. (``threading.local`` is this C type: importing :mod:`threading`
    #: for it would cost every CLI command ~0.7 ms.)
    _shared = _thread._local()

    def __init__(self, pmap: PerCPUArrayMap, index: int = 0) -> None:
        self.map = pmap
        stride = pmap._stride
        self._words = stride // 8
        self._fields = pmap.value_size // 8
        self._index = index
        self._size = stride * possible_cpus()
        self._what = pmap._what()
        self._last_raw = b""
        self._last: tuple[int, ...] = ()

    def _buffers(self) -> tuple[ctypes.Array, BpfAttr]:
        shared = self._shared.__dict__.setdefault("buffers", {})
        found = shared.get((self._index, self._size))
        if found is None:
            key = ctypes.create_string_buffer(struct.pack("=I", self._index), 4)
            value = ctypes.create_string_buffer(self._size)
            attr = self.map._elem_attr(key, value)
            found = shared[(self._index, self._size)] = (key, value, attr)
        return found[1], found[2]

    def read(self) -> tuple[int, ...]:
        """The u64 fields of the value, each summed over all CPUs (one bpf(2) call)."""
        value, attr = self._buffers()
        attr.map_fd = self.map.fd
        bpf(Cmd.MAP_LOOKUP_ELEM, attr, self._what)
        raw = value.raw
        if raw != self._last_raw or not self._last:
            self._last = _sum_per_cpu(raw, self._words, self._fields)
            self._last_raw = raw
        return self._last


def prefix_key(net: Network) -> bytes:
    """LPM trie key: its header (prefix length, host order) + address (network order)."""
    return bytes(BpfLpmTrieKeyHdr(net.prefixlen)) + net.network_address.packed


def address_key(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bytes:
    """LPM trie lookup key for one address (full-length prefix)."""
    return bytes(BpfLpmTrieKeyHdr(ip.max_prefixlen)) + ip.packed


class LPMTrieMap(Map):
    """BPF_MAP_TYPE_LPM_TRIE keyed by IPv4 or IPv6 networks (one family per map)."""

    map_type = MapType.LPM_TRIE

    @classmethod
    def new(cls, version: int, value_size: int, max_entries: int, name: str = "") -> Self:
        """Create a trie for IP ``version`` 4 or 6; the kernel requires BPF_F_NO_PREALLOC."""
        alen = 4 if version == 4 else 16
        return cls.create(4 + alen, value_size, max(1, max_entries), name, F_NO_PREALLOC)

    @property
    def version(self) -> int:
        return 4 if self.key_size == 8 else 6

    def __setitem__(self, net: Network, value: bytes) -> None:
        self.update_raw(prefix_key(net), value)

    def get(self, net: Network) -> bytes | None:
        """Exact-prefix value, or None."""
        return self.lookup_raw(prefix_key(net))

    def lookup_address(self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bytes | None:
        """Longest-prefix match for one address, as the kernel program sees it."""
        return self.lookup_raw(address_key(ip))

    def __delitem__(self, net: Network) -> None:
        if not self.delete_raw(prefix_key(net)):
            raise KeyError(net)

    def items(self) -> Iterator[tuple[Network, bytes]]:
        """(network, value) for every prefix in the trie."""
        for key, value in self.items_raw():
            yield _key_network(key), value

    def _items_batch(self, chunk: int = 256) -> Iterator[tuple[bytes, bytes]]:
        raise _NoBatch  # the LPM trie has no batch ops


def _key_network(key: bytes) -> Network:
    plen = BpfLpmTrieKeyHdr.from_buffer_copy(key).prefixlen
    body = key[ctypes.sizeof(BpfLpmTrieKeyHdr):]
    if len(body) == 4:
        return ipaddress.IPv4Network((body, plen))
    return ipaddress.IPv6Network((body, plen))


class HashMap(Map):
    """BPF_MAP_TYPE_HASH with raw bytes keys and values."""

    map_type = MapType.HASH

    @classmethod
    def new(cls, key_size: int, value_size: int, max_entries: int, name: str = "") -> Self:
        """Create a hash map."""
        return cls.create(key_size, value_size, max_entries, name)


class LRUHashMap(HashMap):
    """BPF_MAP_TYPE_LRU_HASH: bounded; the least recently used entry makes room."""

    map_type = MapType.LRU_HASH


_BY_TYPE: dict[int, type[Map]] = {
    MapType.ARRAY: ArrayMap,
    MapType.PERCPU_ARRAY: PerCPUArrayMap,
    MapType.LPM_TRIE: LPMTrieMap,
    MapType.HASH: HashMap,
    MapType.LRU_HASH: LRUHashMap,
}


def open_map_id(map_id: int) -> Map:
    """Open any map by id as its typed class (or the raw :class:`Map`)."""
    fd = fd_by_id(Cmd.MAP_GET_FD_BY_ID, map_id, "map")
    info = _map_info(fd)
    cls = _BY_TYPE.get(info.type, Map)
    return cls(fd, info.key_size, info.value_size, info.max_entries, info.name, info.flags)


def probe_map_type(map_type: MapType) -> None:
    """Raise BPFNotSupported when the kernel cannot create maps of ``map_type``."""
    cls = _BY_TYPE[map_type]
    try:
        if map_type == MapType.LPM_TRIE:
            m = LPMTrieMap.new(4, 1, 1, "probe")
        else:
            m = cls.create(4, 8, 1, "probe")
    except BPFError as exc:
        if exc.errno in (errno.EINVAL, errno.ENOTSUP):
            raise BPFNotSupported(f"kernel lacks {map_type.name.lower()} maps") from exc
        raise
    m.close()


__all__ = [
    "ArrayMap",
    "HashMap",
    "LPMTrieMap",
    "LRUHashMap",
    "Map",
    "PerCPUArrayMap",
    "PerCPUSum",
    "address_key",
    "open_map_id",
    "possible_cpus",
    "prefix_key",
    "probe_map_type",
]
