"""What the kernel reports about BPF objects: the records behind ``Map.info()``,
``Program.info()``, ``Program.test_run()``, ``CgroupLink.info()`` and ``prog_query()``.

They live here, imported on first use, rather than in :mod:`~ipacctd.bpf.maps`,
:mod:`~ipacctd.bpf.programs` and :mod:`~ipacctd.bpf.links`: ``ipacctd run`` never needs
them. They are :class:`~ipacctd.record.Record` classes, not dataclasses, because the read
verbs do need some (``status`` asks PROG_QUERY whether a unit's programs are in force) and
``dataclasses`` costs every such command ~5 ms of imports (see :mod:`ipacctd.record`).
"""

from __future__ import annotations

from collections import namedtuple

from ipacctd.bpf.types import MapType, ProgType
from ipacctd.record import Record


def _set(obj: Record, values: dict[str, object]) -> None:
    """A record's ``__init__``: its fields from its arguments (``locals()``), in order."""
    for name in obj._fields:
        object.__setattr__(obj, name, values[name])


class MapInfo(Record):
    """What the kernel reports about a map (struct bpf_map_info)."""

    _fields = ("id", "type", "key_size", "value_size", "max_entries", "flags", "name")
    __slots__ = _fields

    id: int
    type: int
    key_size: int
    value_size: int
    max_entries: int
    flags: int
    name: str

    def __init__(
        self,
        id: int,
        type: int,
        key_size: int,
        value_size: int,
        max_entries: int,
        flags: int,
        name: str,
    ) -> None:
        _set(self, locals())

    @property
    def type_name(self) -> str:
        try:
            return MapType(self.type).name.lower()
        except ValueError:
            return f"type{self.type}"


class ProgramInfo(Record):
    """What the kernel reports about a loaded program (struct bpf_prog_info)."""

    _fields = (
        "id",
        "type",
        "tag",
        "name",
        "jited_len",
        "xlated_len",
        "load_time_ns",
        "created_by_uid",
        "map_ids",
        "run_time_ns",
        "run_cnt",
        "verified_insns",
        "gpl",
    )
    __slots__ = _fields

    id: int
    type: int
    tag: str
    name: str
    jited_len: int
    xlated_len: int
    load_time_ns: int  # since boot
    created_by_uid: int
    map_ids: tuple[int, ...]
    run_time_ns: int
    run_cnt: int
    verified_insns: int
    gpl: bool

    def __init__(
        self,
        id: int,
        type: int,
        tag: str,
        name: str,
        jited_len: int,
        xlated_len: int,
        load_time_ns: int,
        created_by_uid: int,
        map_ids: tuple[int, ...],
        run_time_ns: int,
        run_cnt: int,
        verified_insns: int,
        gpl: bool,
    ) -> None:
        _set(self, locals())

    @property
    def type_name(self) -> str:
        try:
            return ProgType(self.type).name.lower()
        except ValueError:
            return f"type{self.type}"


class ProgramStats(namedtuple("ProgramStats", ("run_time_ns", "run_cnt", "recursion_misses"))):
    """A program's run statistics (struct bpf_prog_info's run_time_ns, run_cnt and
    recursion_misses; cf. cilium/ebpf ``ProgramStats``).

    The kernel counts run time and runs only while BPF stats are on (``BPF_ENABLE_STATS``
    held, or sysctl kernel.bpf_stats_enabled); ``recursion_misses`` (runs skipped because
    the program was already running on that CPU) always, on kernels that have it (5.12+).
    A tuple, so ``run_time_ns, run_cnt, _ = stats`` reads it.
    """

    __slots__ = ()
    run_time_ns: int
    run_cnt: int
    recursion_misses: int


class TestRun(Record):
    """Result of BPF_PROG_TEST_RUN: the program's return value and mean ns per run."""

    _fields = ("retval", "duration_ns", "data_out")
    __slots__ = _fields

    __test__ = False  # not a pytest test class

    retval: int
    duration_ns: int
    data_out: bytes

    def __init__(self, retval: int, duration_ns: int, data_out: bytes) -> None:
        _set(self, locals())


class LinkInfo(Record):
    """What the kernel reports about a link (struct bpf_link_info, cgroup variant)."""

    _fields = ("id", "type", "prog_id", "cgroup_id", "attach_type")
    __slots__ = _fields

    id: int
    type: int
    prog_id: int
    cgroup_id: int
    attach_type: int

    def __init__(self, id: int, type: int, prog_id: int, cgroup_id: int, attach_type: int) -> None:
        _set(self, locals())


class Attached(Record):
    """Programs on one hook of one cgroup, as PROG_QUERY reports them."""

    _fields = ("attach_flags", "prog_ids", "link_ids")
    __slots__ = _fields

    attach_flags: int
    prog_ids: tuple[int, ...]
    # As reported by the kernel; for cgroup hooks it fills none (6.18 leaves them 0 even for
    # programs held by a bpf_link), so use the links' own info to map links to programs.
    link_ids: tuple[int, ...]

    def __init__(
        self, attach_flags: int, prog_ids: tuple[int, ...], link_ids: tuple[int, ...]
    ) -> None:
        _set(self, locals())
