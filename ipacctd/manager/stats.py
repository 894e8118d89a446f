"""Run statistics of units' programs: the cost column of ``top`` and ``/metrics``.

The kernel adds to a program's ``run_time_ns``/``run_cnt`` only while BPF statistics are on
(``kernel.bpf_stats_enabled``, or any holder of a ``BPF_ENABLE_STATS`` fd:
:func:`enabled_stats`). Front doors (``cli/``, ``daemon/``) read them through this module,
never through ``bpf/`` themselves.
"""

from __future__ import annotations

import logging

from ipacctd.bpf.errors import BPFError
from ipacctd.bpf.info import ProgramStats
from ipacctd.bpf.links import linked_program_stats
from ipacctd.bpf.programs import Program, pinned_program_stats, return_one
from ipacctd.bpf.stats import enabled_stats
from ipacctd.datapath.counters import Direction
from ipacctd.datapath.unit import LINK, PROG_PIN

__all__ = ["ProgramStats", "StatsProbe", "enabled_stats", "program_stats"]

#: The probe serves /metrics: its warning keeps the logger it had in daemon/metrics.py.
log = logging.getLogger("ipacctd.metrics")

PROBE_FRAME = bytes(12) + b"\x08\x00" + b"\x45" + bytes(19)  # Ethernet + IPv4 header


def program_stats(pin_dir: str) -> dict[Direction, ProgramStats]:
    """The run statistics of a unit's programs, per direction, from its pin directory.

    The program the unit's pinned link holds now; for a unit systemd arms (no link of ours:
    systemd attaches the unit's pinned programs itself), the pinned program. A direction with
    neither (no datapath, a unit being removed) is left out.
    """
    out = {}
    for direction in Direction:
        try:
            out[direction] = linked_program_stats(f"{pin_dir}/{LINK[direction]}")
        except (BPFError, OSError):
            try:
                out[direction] = pinned_program_stats(f"{pin_dir}/{PROG_PIN[direction]}")
            except (BPFError, OSError):
                continue
    return out


class StatsProbe:
    """Whether the kernel collects BPF run-time statistics now (``kernel.bpf_stats_enabled``
    or any holder of a ``BPF_ENABLE_STATS`` fd, e.g. ``ipacctd top``).

    A ``return 1`` program is test-run once per question and its run count read: the kernel
    counts the run only while statistics are on. Two syscalls, where reading the program
    statistics of every unit costs about ten per unit (~70 ms at 1,000 units).
    """

    def __init__(self) -> None:
        self.prog: Program | None = None
        self.count = 0
        self.broken = False

    def on(self) -> bool:
        if self.broken:
            return True  # cannot tell: read them
        try:
            if self.prog is None:
                self.prog = Program.load(return_one(), name="ipacctd_probe")
                self.count = self.prog.stats().run_cnt
            self.prog.test_run(PROBE_FRAME)
            count = self.prog.stats().run_cnt
        except (BPFError, OSError) as exc:
            log.warning("cannot tell whether BPF stats are on (%s): reading them always", exc)
            self.broken = True
            return True
        on, self.count = count > self.count, count
        return on
