"""What the kernel reports about BPF objects: the records behind ``Map.info()``,
``Program.info()``, ``Program.test_run()``, ``CgroupLink.info()`` and ``prog_query()``.

They live here, imported on first use, rather than in :mod:`~ipacctd.bpf.maps`,
:mod:`~ipacctd.bpf.programs` and :mod:`~ipacctd.bpf.links`: each dataclass costs start-up
time, and ``ipacctd run`` never needs them. Import them from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from ipacctd.bpf.types import MapType, ProgType


@dataclass(frozen=True)
class MapInfo:
    """What the kernel reports about a map (struct bpf_map_info)."""

    id: int
    type: int
    key_size: int
    value_size: int
    max_entries: int
    flags: int
    name: str

    @property
    def type_name(self) -> str:
        try:
            return MapType(self.type).name.lower()
        except ValueError:
            return f"type{self.type}"


@dataclass(frozen=True)
class ProgramInfo:
    """What the kernel reports about a loaded program (struct bpf_prog_info)."""

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

    @property
    def type_name(self) -> str:
        try:
            return ProgType(self.type).name.lower()
        except ValueError:
            return f"type{self.type}"


class ProgramStats(NamedTuple):
    """A program's run statistics (struct bpf_prog_info's run_time_ns, run_cnt and
    recursion_misses; cf. cilium/ebpf ``ProgramStats``).

    The kernel counts run time and runs only while BPF stats are on (``BPF_ENABLE_STATS``
    held, or sysctl kernel.bpf_stats_enabled); ``recursion_misses`` (runs skipped because
    the program was already running on that CPU) always, on kernels that have it (5.12+).
    A tuple, so ``run_time_ns, run_cnt, _ = stats`` reads it.
    """

    run_time_ns: int
    run_cnt: int
    recursion_misses: int


@dataclass(frozen=True)
class TestRun:
    """Result of BPF_PROG_TEST_RUN: the program's return value and mean ns per run."""

    __test__ = False  # not a pytest test class

    retval: int
    duration_ns: int
    data_out: bytes


@dataclass(frozen=True)
class LinkInfo:
    """What the kernel reports about a link (struct bpf_link_info, cgroup variant)."""

    id: int
    type: int
    prog_id: int
    cgroup_id: int
    attach_type: int


@dataclass(frozen=True)
class Attached:
    """Programs on one hook of one cgroup, as PROG_QUERY reports them."""

    attach_flags: int
    prog_ids: tuple[int, ...]
    # As reported by the kernel; for cgroup hooks it fills none (6.18 leaves them 0 even for
    # programs held by a bpf_link), so use the links' own info to map links to programs.
    link_ids: tuple[int, ...]
