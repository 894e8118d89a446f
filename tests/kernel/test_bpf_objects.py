"""The BPF layer's readers of kernel state: a program's run statistics (by fd, by id, by pin
and through a pinned link) and the prepared per-CPU sum the counter reader uses."""

from __future__ import annotations

import os
import struct

import model

from ipacctd.bpf.links import CgroupLink, linked_program_stats, open_cgroup
from ipacctd.bpf.maps import PerCPUArrayMap, possible_cpus
from ipacctd.bpf.programs import Program, pinned_program_stats, program_stats_by_id, return_one
from ipacctd.bpf.stats import enabled_stats
from ipacctd.bpf.types import AttachType

FRAME = model.ipv4_udp("192.0.2.1", "198.51.100.1")


def test_program_stats_count_the_runs_by_fd_id_pin_and_link(cgroup_dir, pin_root) -> None:
    with Program.load(return_one(), name="stats_probe") as prog:
        prog.pin(os.path.join(pin_root, "prog"))
        cg = open_cgroup(cgroup_dir)
        try:
            link = CgroupLink.create(cg, prog, AttachType.CGROUP_INET_EGRESS)
        finally:
            os.close(cg)
        with link:
            link.pin(os.path.join(pin_root, "link"))
            before = prog.stats()
            with enabled_stats():
                prog.test_run(FRAME, repeat=7)
            after = prog.stats()
            # Nobody else runs this program (its cgroup is empty): exactly the 7 test runs.
            assert after.run_cnt - before.run_cnt == 7
            assert after.run_time_ns > before.run_time_ns
            assert after.recursion_misses == 0
            run_time_ns, run_cnt, _ = after  # a tuple, as the metrics read it
            assert (run_time_ns, run_cnt) == (after.run_time_ns, after.run_cnt)
            assert program_stats_by_id(prog.info().id) == after
            assert pinned_program_stats(os.path.join(pin_root, "prog")) == after
            assert linked_program_stats(os.path.join(pin_root, "link")) == after
            link.detach()


def test_prepared_per_cpu_sum_adds_every_cpu_and_reuses_an_unchanged_result() -> None:
    cpus = possible_cpus()
    with PerCPUArrayMap.new(24, 2, "sum_probe") as pmap:
        # Index 1, three u64 fields, CPU c holding (c+1, 10*(c+1), 0): a 24-byte value is
        # laid out in 24-byte (8-aligned) slots, one per possible CPU.
        slots = b"".join(struct.pack("=QQQ", c + 1, 10 * (c + 1), 0) for c in range(cpus))
        pmap.update_raw(struct.pack("=I", 1), slots)
        total = cpus * (cpus + 1) // 2
        prepared = pmap.prepared_sum(1)
        first = prepared.read()
        assert first == (total, 10 * total, 0)
        assert list(first) == pmap.sum_u64(1)
        assert prepared.read() is first  # unchanged: the same tuple, not unpacked again
        pmap.update_raw(struct.pack("=I", 1), struct.pack("=QQQ", 5, 0, 1) + slots[24:])
        second = prepared.read()
        assert second == (total - 1 + 5, 10 * total - 10, 1)
        assert prepared.read() is second
        assert pmap.prepared_sum(0).read() == (0, 0, 0)


def test_prepared_sums_of_many_maps_share_buffers_but_not_values() -> None:
    """Prepared reads of several maps (one buffer set per thread and shape) each read their
    own map, interleaved, from two threads."""
    import threading

    cpus = possible_cpus()
    maps = [PerCPUArrayMap.new(16, 1, f"sum_share{i}") for i in range(3)]
    try:
        for i, pmap in enumerate(maps):
            pmap.update_raw(struct.pack("=I", 0), struct.pack("=QQ", i + 1, 100 + i) * cpus)
        prepared = [pmap.prepared_sum(0) for pmap in maps]
        want = [((i + 1) * cpus, (100 + i) * cpus) for i in range(3)]
        for _ in range(2):
            assert [p.read() for p in prepared] == want
        seen: list = []
        t = threading.Thread(target=lambda: seen.extend(p.read() for p in reversed(prepared)))
        t.start()
        t.join(10)
        assert seen == want[::-1]
        maps[1].update_raw(struct.pack("=I", 0), struct.pack("=QQ", 7, 0) * cpus)
        assert [p.read() for p in prepared] == [want[0], (7 * cpus, 0), want[2]]
    finally:
        for pmap in maps:
            pmap.close()
